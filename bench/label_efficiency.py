"""Label efficiency: teacher labels needed to reach 0.95 of the teachers' score, per method.

    .venv/bin/python -m bench label_efficiency --suite default_hazard --groups policy task --rounds 10 \
        --updates 250 --seeds 0 1 2 3 4 5 6 7 8 9 --tag _hazard_u250   # also 500 (_hazard) and 1000 (_hazard_u1000)
    .venv/bin/python -m bench label_efficiency --suite default_hazard --groups policy task --rounds 10 \
        --updates 500 --seeds 0 1 2 3 4 --methods dagger gated intervention bc --tag _gated
    .venv/bin/python -m bench label_efficiency --suite default_hazard --groups policy task --rounds 10 \
        --updates 500 --seeds 0 1 2 3 4 --methods dagger gated intervention bc --tag _budgeted \
        --method-params '{"intervention": {"query_rate": 0.1, "teacher_round_steps": 50, "rounds": 20}}'

Every method runs the same loop with the same collection per round (``--episodes-per-task`` episodes of every
task, cut at ``--collect-steps``), student, updates, teacher noise and evaluation. BC: the teacher always acts.
DAgger: ``--schedule``, by default the teacher acts in round 0 and the student from round 1 on. ``gated``
(``method=gated``, ensemble disagreement or novelty) and ``intervention`` (``method=gated
method.gate=intervention``): the teacher acts in round 0, then only where the gate asks, with the keys of
``--gate-params``; ``--method-params`` sets a method's own keys (its ``rounds`` too). Labels are counted as the
teacher gave them: a round whose episodes end early (e.g. in the pit of ``default_hazard``) or whose gate asks on
few steps uses fewer. Each run stops at the first round whose mean score (or with ``--metric success`` mean
success ratio) reaches ``--target``. DAgger and the gated methods get ``--rounds`` rounds; BC gets as many as
``--budget-multiple`` times DAgger's median labels to the target need (at least ``--rounds``), so "BC never
reached it within 10x" is measured, not assumed. A run that never reaches the target counts as not reached;
medians treat it as above every label count (a median of "not reached" means most seeds did not reach it).
``--tasks`` keeps a subset of the suite's tasks. Targets: DAgger needs at most 0.3x BC's labels (or BC never
gets there within 10x); a gated method at most 0.3x BC's and 0.5x DAgger's (against a method whose median was not
reached within its budget, the gate's labels over that budget: a bound, printed as ``< x``). Writes a plot of the score
(``--metric``) against labels beside the result (``label_efficiency_<suite><tag>.png``): per method the mean over
seeds of the score each run had reached with that many labels, with its 95% interval.

``--merge A.json B.json ...`` runs nothing: it reads results written before (one suite, the same settings) and
writes them as one result and one plot, each method's seeds from any of them. They must have run on one kind of CPU
(the envelope's ``cpu_kind``: seeded runs differ across kinds), and a method and seed found in several files must be
the same run (the shorter curve a start of the longer, as a run with fewer rounds is); the longer is
kept, so a method's runs come from files that gave it the same rounds and keys.

``--best-of A.json B.json ...`` runs nothing either: of results with the same settings but the methods' own keys
(``--method-params``, e.g. each method's learning rate), it keeps for each method the runs of the result where its
median labels to the target were fewest (the first on a tie), so that each method is compared at its own best
setting. A method is compared on the most seeds it ran on, which must be the same seeds in every result compared;
results with fewer seeds of it are left out, as the output says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench import envelope  # noqa: E402
from bench.common import (  # noqa: E402
    interval_text,
    json_object,
    median_interval,
    one_thread,
    parse,
    parser,
    run_distill,
    schedule_keys,
    shown,
    zoo_teachers,
)
from policydistill import BCConfig, DAggerConfig, GatedConfig, StudentConfig, Suite  # noqa: E402
from policydistill.eval.report import save_figure  # noqa: E402

RATIO_TARGET = 0.3  # DAgger's (and a gated method's) labels to the target at most this share of BC's ...
BUDGET_TARGET = 10.0  # ... or BC not there within this multiple of DAgger's labels
GATED_OVER_DAGGER = 0.5  # a gated method's labels to the target at most this share of DAgger's
METHODS = ("dagger", "gated", "intervention", "bc")
COLORS = {"bc": "tab:blue", "dagger": "tab:orange", "gated": "tab:green", "intervention": "tab:red"}
SMOKE = {"seeds": [0], "rounds": 2, "updates": 10, "eval_episodes": 2, "budget_multiple": 1.0}


METRICS = {"score": "mean_score", "success": "mean_success_ratio"}
"""``--metric``: the round's value it reads."""


def labels_to_reach(rounds: list[dict], target: float, metric: str = "score") -> int | None:
    return next((r["labels_used"] for r in rounds if (r[METRICS[metric]] or 0.0) >= target), None)


def median_labels(labels: list[int | None]) -> float | None:
    """Median labels to the target over seeds, a seed that never reached it counting as infinite; None when
    that median is infinite (most seeds did not reach it)."""
    m = statistics.median(math.inf if x is None else x for x in labels)
    return None if math.isinf(m) else m


def method_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A method's median labels to the target over its runs, the median's 95% interval and how many reached it."""
    labels = [r["labels_to_target"] for r in runs]
    interval = median_interval([math.inf if x is None else x for x in labels])
    return {"median_labels": median_labels(labels), "median_interval": [None if math.isinf(x) else x for x in interval],
            "reached": f"{sum(x is not None for x in labels)}/{len(runs)}"}


def round_labels(suite: Suite, episodes_per_task: int, collect_steps: int | None) -> int:
    """Labels one round collects when no episode ends early: episodes x (cut) episode length, over tasks."""
    cut = suite.with_episode_limit(collect_steps or 10**9)
    return sum(episodes_per_task * t.max_episode_steps for t in cut.tasks)


def updates_arg(text: str) -> int | None:
    """``--updates``: a positive int, or ``auto`` (None: the runner's own count)."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int or auto, got {text!r}")
    return int(text)


def verdict(bc: float | None, dagger: float | None, bc_budget: int, target: float) -> tuple[str, bool]:
    """A one-line verdict and whether the label-efficiency target is met."""
    if bc and dagger:
        ratio = dagger / bc
        return f"DAgger needs {ratio:.2f}x BC's labels", ratio <= RATIO_TARGET
    if dagger:
        multiple = bc_budget / dagger
        return (f"BC never reached {target} (median) within {bc_budget} labels = {multiple:.1f}x DAgger's",
                multiple >= BUDGET_TARGET)
    if bc:
        return f"DAgger did not reach {target} (median) within its rounds; BC did with {bc:.0f} labels", False
    return f"neither reached {target} (median) within its rounds", False


def score_at(curve: list[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """The score a run had reached with each label count of ``grid``: its last round's at or below it (NaN
    before its first round)."""
    labels = np.asarray([c[0] for c in curve])
    scores = np.asarray([c[1] for c in curve], dtype=float)
    idx = np.searchsorted(labels, grid, side="right") - 1
    return np.where(idx >= 0, scores[np.clip(idx, 0, None)], np.nan)


def plot(path: Path, result: dict[str, Any], title: str) -> None:
    """Per method, the mean score over seeds against labels used with its 95% interval, the target dashed;
    ``title`` over the verdicts (``result["verdict"]``, then each gate's ``verdict``)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, info in result["methods"].items():
        curves = [run["curve"] for run in info["runs"]]
        grid = np.unique([c[0] for curve in curves for c in curve])
        at = np.stack([score_at(curve, grid) for curve in curves])  # (seeds, grid)
        n = np.sum(~np.isnan(at), axis=0)
        mean = np.nanmean(at, axis=0)
        with warnings.catch_warnings():  # a label count only one seed has: no interval there
            warnings.simplefilter("ignore", RuntimeWarning)
            half = 1.96 * np.nanstd(at, axis=0, ddof=1) / np.sqrt(n) if len(curves) > 1 else np.zeros_like(mean)
        rate = {k: v for k, v in result.get("method_params", {}).get(method, {}).items() if k in ("lr", "lr_decay")}
        label = f"{method} ({len(curves)} seeds{''.join(f', {k} {v}' for k, v in rate.items())})"
        ax.plot(grid, mean, drawstyle="steps-post", color=COLORS[method], label=label)
        ax.fill_between(grid, mean - half, mean + half, step="post", color=COLORS[method], alpha=0.15)
    ax.axhline(result["target"], color="grey", ls="--", lw=0.8)
    measure = "success ratio" if result.get("metric") == "success" else "score"
    verdicts = [result["verdict"]] + [info["verdict"] for info in result["methods"].values() if "verdict" in info]
    ax.set(xscale="log", ylim=(max(-0.5, ax.get_ylim()[0]), 1.05), xlabel="teacher labels used",
           ylabel=f"mean {measure} (95% interval over seeds)", title=f"{title}: " + "\n".join(verdicts))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def method_config(name: str, rounds: int, common: dict[str, Any], schedule: dict[str, Any],
                  gate_params: dict[str, Any], own: dict[str, Any] | None = None) -> Any:
    """The distillation config of bench method ``name``; ``own``: its own keys (``rounds`` included), set last."""
    own = dict(own or {})
    rounds = own.pop("rounds", rounds)
    if name == "bc":
        return BCConfig(**{"rounds": rounds, **common, **own})
    if name == "dagger":
        return DAggerConfig(**{"rounds": rounds, **common, **schedule, **own})
    keys = {k: v for k, v in gate_params.items()
            if (k == "intervene_at") == (name == "intervention") or k == "takeover_steps"}
    gated = {k: v for k, v in common.items() if k != "teacher_noise"}
    gate = "intervention" if name == "intervention" else "disagreement+novelty"
    return GatedConfig(**{"rounds": rounds, "gate": gate, **gated, **keys, **own})


def main(argv: list[str] | None = None) -> dict:
    p = parser("label_efficiency", __doc__)
    p.add_argument("--suite", default="locomotion")
    p.add_argument("--tasks", nargs="+", default=None, help="keep only these tasks of the suite")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--groups", nargs="+", default=["policy", "privileged", "task"])
    p.add_argument("--rounds", type=int, default=10, help="DAgger's rounds (BC's at least as many)")
    p.add_argument("--budget-multiple", type=float, default=10.0,
                   help="BC runs up to this multiple of DAgger's median labels to the target")
    p.add_argument("--episodes-per-task", type=int, default=1)
    p.add_argument("--collect-steps", type=int, default=None, help="cut collected episodes at this many steps")
    p.add_argument("--teacher-noise", type=float, default=0.0, help="DART-style noise whenever the teacher acts")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--updates", type=updates_arg, default=1000,
                   help="updates per round of every method, or auto: the runner's default (ten passes over a "
                        "round's labelled steps, 50-500; 500 in a gate's teacher round)")
    p.add_argument("--schedule", default="step")
    p.add_argument("--schedule-params", type=json_object, default='{"switch_round": 1}',
                   help="JSON: DAgger's schedule's parameters")
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--metric", choices=list(METRICS), default="score",
                   help="what must reach --target: score (the random-normalised return over the teachers') or "
                        "success (the success rate over the teachers', per task; for suites that define success, "
                        "as Metaworld's)")
    p.add_argument("--methods", nargs="+", default=["dagger", "bc"], choices=METHODS,
                   help="dagger (always run: it sets BC's budget) and any of gated, intervention, bc")
    p.add_argument("--gate-params", type=json_object,
                   default='{"query_rate": 0.1, "takeover_steps": 5, "intervene_at": 0.3}',
                   help="JSON: the gated methods' keys (intervene_at: intervention only)")
    p.add_argument("--method-params", type=json_object, default="{}",
                   help='JSON: keys of one method\'s config, e.g. {"intervention": {"query_rate": 0.1, "rounds": 24}}')
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="run nothing: write these earlier results (one suite, the same settings) as one result and "
                        "plot, a method's seeds from any of them")
    p.add_argument("--best-of", nargs="+", default=None, metavar="JSON",
                   help="run nothing: write, of these earlier results (one suite, the same settings but the methods' "
                        "own keys, e.g. their learning rates), each method's runs from the one where it needed "
                        "fewest labels")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    if args.merge:
        return write(args, started, *merged(p, args, argv))
    if args.best_of:
        return write(args, started, *best_of(p, args, argv))
    one_thread()
    suite, teachers = zoo_teachers(args.suite)
    if args.tasks:
        suite = dataclasses.replace(suite, tasks=tuple(t for t in suite.tasks if t.name in args.tasks))
        teachers = {n: teachers[n] for n in suite.task_names}
    per_round = round_labels(suite, args.episodes_per_task, args.collect_steps)
    common = {"episodes_per_task": args.episodes_per_task, "updates_per_round": args.updates,
              "teacher_noise": args.teacher_noise, "collect_steps": args.collect_steps}
    schedule = schedule_keys(args.schedule, args.schedule_params)
    gate_params, method_params = args.gate_params, args.method_params
    run = {"dagger", *args.methods}
    if set(method_params) - run or not all(isinstance(v, dict) for v in method_params.values()):
        p.error(f"--method-params: expected {{method: {{key: value}}}} for methods run ({sorted(run)}), "
                f"got {json.dumps(method_params)}")
    if args.smoke:  # the smoke run's rounds for every method
        method_params = {m: {k: v for k, v in keys.items() if k != "rounds"} for m, keys in method_params.items()}
    for name in sorted(run):  # every config is checked before any run
        try:
            method_config(name, args.rounds, common, schedule, gate_params, method_params.get(name))
        except (TypeError, ValueError) as e:
            p.error(f"method {name}: {e}")
    if args.metric == "success" and not all(suite.has_success):
        p.error(f"--metric success: suite {args.suite} defines no success for its tasks (expected --metric score)")
    if args.teacher_noise and {"gated", "intervention"} & set(args.methods):
        p.error("--teacher-noise is not read by the gated methods (the teacher's actions there are its labels)")
    student = StudentConfig(groups=list(args.groups), hidden=list(args.hidden))
    result: dict[str, Any] = {"tasks": suite.task_names, "target": args.target, "metric": args.metric,
                              "labels_per_round": per_round,
                              "dagger_schedule": schedule, "gate_params": gate_params,
                              "method_params": method_params, "methods": {}}
    rounds = {m: args.rounds for m in METHODS}
    for name in [m for m in METHODS if m == "dagger" or m in args.methods]:
        method = method_config(name, rounds[name], common, schedule, gate_params, method_params.get(name))
        runs = []
        for seed in args.seeds:
            stop = {"stop_score" if args.metric == "score" else "stop_success": args.target}
            rows = run_distill(suite, teachers, seed, method, student, args.eval_episodes, **stop)["rounds"]
            runs.append({"seed": seed, "labels_to_target": labels_to_reach(rows, args.target, args.metric),
                         "labels_used": rows[-1]["labels_used"], "rounds_run": len(rows),
                         "curve": [(r["labels_used"], r[METRICS[args.metric]]) for r in rows],
                         "queries": [r["info"].get("queries") for r in rows],
                         "final_tasks": {n: {"score": t["score"], "success_rate": t["success_rate"]}
                                         for n, t in rows[-1]["tasks"].items()}})
            print(f"{name} seed {seed}: labels to {args.target}: {runs[-1]['labels_to_target']}, curve "
                  + " ".join(f"{lab}:{s:.2f}" for lab, s in runs[-1]["curve"]), flush=True)
        result["methods"][name] = {"rounds": method.rounds, "budget_labels": method.rounds * per_round, "runs": runs,
                                   **method_summary(runs)}
        median = result["methods"][name]["median_labels"]
        if name == "dagger":
            want = math.ceil(args.budget_multiple * median / per_round) if median else args.rounds
            rounds["bc"] = max(args.rounds, want)
    return write(args, started, result)


def write(args: Any, started: envelope.Start, result: dict[str, Any], cpu: dict[str, Any] | None = None) -> dict:
    """Ratios and verdicts of ``result`` (its ``methods`` each with runs and their summary), printed and written
    with the plot (``cpu``: the CPU that ran them, when not this one)."""
    medians = {m: v["median_labels"] for m, v in result["methods"].items()}
    target = result["target"]
    ratios: dict[str, float | None] = {}
    lines = []

    def spread(method: str) -> str:
        low, high = (math.inf if x is None else x for x in result["methods"][method]["median_interval"])
        return interval_text(low, high, ".0f")

    def ratio_to(own: float | None, baseline: str) -> tuple[float | None, bool]:
        """A gate's labels over a baseline's median, and whether that is a bound: a baseline whose median was
        not reached within its budget needs more than the budget, so the ratio is below own / budget."""
        theirs = medians[baseline]
        if not own:
            return None, False
        if theirs:
            return own / theirs, False
        return own / result["methods"][baseline]["budget_labels"], True

    if "bc" in medians:
        bc, dagger = medians["bc"], medians["dagger"]
        bc_budget = result["methods"]["bc"]["budget_labels"]
        dagger_at = {d["seed"]: d["labels_to_target"] for d in result["methods"]["dagger"]["runs"]}
        for b in result["methods"]["bc"]["runs"]:  # paired by seed
            d = dagger_at.get(b["seed"])
            b["dagger_over_bc"] = d / b["labels_to_target"] if b["labels_to_target"] and d else None
        paired = [b["dagger_over_bc"] for b in result["methods"]["bc"]["runs"]]
        ratios.update({"dagger_over_bc_labels": dagger / bc if bc and dagger else None,
                       "paired_median_dagger_over_bc_labels": statistics.median(paired) if all(paired) else None,
                       "bc_budget_over_dagger_labels": bc_budget / dagger if dagger else None})
        result["verdict"], result["target_met"] = verdict(bc, dagger, bc_budget, target)
        lines.append(f"BC {bc} ({result['methods']['bc']['reached']} reached, budget {bc_budget}; {spread('bc')}), "
                     f"DAgger {dagger} ({result['methods']['dagger']['reached']} reached; {spread('dagger')}): "
                     f"{result['verdict']} -> target "
                     f"{'met' if result['target_met'] else 'not met'} (<= {RATIO_TARGET}x, or BC never reaching it "
                     f"within {BUDGET_TARGET:g}x)")
    else:
        result["verdict"], result["target_met"] = f"DAgger {medians['dagger']} labels (median)", None
    for name in ("gated", "intervention"):
        if name not in medians:
            continue
        own = medians[name]
        got = {k: ratio_to(own, k) for k in ("bc", "dagger") if k in medians}
        ratios.update({f"{name}_over_{k}_labels": v for k, (v, _) in got.items()})
        ratios.update({f"{name}_over_{k}_labels_below": v for k, (v, below) in got.items() if below})
        met = got["dagger"][0] is not None and got["dagger"][0] <= GATED_OVER_DAGGER and (
            "bc" not in got or (got["bc"][0] is not None and got["bc"][0] <= RATIO_TARGET))
        result["methods"][name]["target_met"] = met
        gist = ", ".join(f"{'< ' if below else ''}{v:.2f}x {SHOWN[k]}'s" if v is not None else f"vs {SHOWN[k]}: n/a"
                         for k, (v, below) in got.items())
        result["methods"][name]["verdict"] = f"{name} {gist}"
        lines.append(f"{name}: {own} labels ({result['methods'][name]['reached']} reached; {spread(name)}): {gist}"
                     + f" -> target {'met' if met else 'not met'} (<= {RATIO_TARGET}x BC's, <= "
                       f"{GATED_OVER_DAGGER}x DAgger's)")
    name = f"label_efficiency_{args.suite}{args.tag}"
    plot(Path(args.results_dir) / f"{name}.png", result, f"{args.suite}{args.tag}")
    print(f"median labels to {target}:\n" + "\n".join(lines))
    seeds = {r["seed"] for info in result["methods"].values() for r in info["runs"]}
    return envelope.write("label_efficiency", args, started, runs=len(seeds),
                          medians={f"{m}_labels_to_target": v for m, v in medians.items()}, ratios=ratios,
                          results=result, tag=f"_{args.suite}{args.tag}", cpu=cpu)


SHOWN = {"bc": "BC", "dagger": "DAgger"}
"""The baselines as the verdicts name them."""

SHARED = {"suite": None, "tasks": None, "groups": None, "episodes_per_task": None, "collect_steps": None,
          "teacher_noise": None, "hidden": None, "updates": None, "schedule": None, "schedule_params": None,
          "eval_episodes": None, "target": None, "gate_params": None, "metric": "score"}
"""The settings that results must share to be merged, each with its value in results that predate it."""


def read_parts(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None, flag: str
               ) -> tuple[list[tuple[str, dict[str, Any], dict[str, Any]]], dict[str, Any]]:
    """The results named by ``flag`` (``--merge`` or ``--best-of``) as (path, args, result), checked to be
    label_efficiency results of one kind of CPU and the same :data:`SHARED` settings, and the machine they ran on
    (``cpu``, ``cpu_kind``); ``args`` takes those settings. Anything else is a usage error."""
    given, default = vars(p.parse_args(argv)), vars(p.parse_args([]))
    own = flag.removeprefix("--").replace("-", "_")
    extra = sorted(k for k, v in given.items() if v != default[k] and k not in (own, "tag", "results_dir", "smoke"))
    if extra:
        p.error(f"{flag} reads only --tag and --results-dir (the rest comes from the files); also given: "
                + ", ".join(f"--{k.replace('_', '-')}" for k in extra))
    files, machines = [], {}  # (path, args, result) of each part; path -> its envelope's machine
    for path in getattr(args, own):
        try:
            data = json.loads(Path(path).read_text())
            if data["bench"] != "label_efficiency":
                raise ValueError(f"a result of bench {data['bench']}")
            files.append((path, data["args"], data["results"]))
            machines[path] = dict(data["machine"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            p.error(f"{flag}: {path} is not a label_efficiency result ({type(e).__name__}: {e})")
    kinds = {path: machine.get("cpu_kind") for path, machine in machines.items()}  # None: not recorded then
    if len(set(kinds.values()) - {None}) > 1:
        ran = ", ".join(f"{path}: {kind}" for path, kind in kinds.items())
        p.error(f"{flag}: the results ran on different kinds of CPU ({ran}), where one seed is not the same run: "
                "compare their medians instead")
    first_path, first, _ = files[0]
    for path, theirs, _ in files[1:]:
        for key, old in SHARED.items():
            if theirs.get(key, old) != first.get(key, old):
                p.error(f"{flag}: {path} has {key} {json.dumps(theirs.get(key, old))}, {first_path} "
                        f"{json.dumps(first.get(key, old))}: the results share {', '.join(SHARED)}")
    for key, old in SHARED.items():
        setattr(args, key, first.get(key, old))
    ran = next((machines[path] for path, kind in kinds.items() if kind is not None), machines[first_path])
    return files, {"cpu": ran.get("cpu"), "cpu_kind": ran.get("cpu_kind")}


def merged(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The result of ``args.merge``'s files as one (see the module doc) and the CPU they ran on (``cpu``,
    ``cpu_kind``); ``args`` takes their shared settings, seeds and methods. A file that is not such a result, or
    results that differ, are a usage error."""
    files, cpu = read_parts(p, args, argv, "--merge")
    runs: dict[str, dict[int, tuple[dict[str, Any], str, dict[str, Any]]]] = {}  # method -> seed -> (run, file, info)
    for path, _, result in files:
        for method, info in result["methods"].items():
            for run in info["runs"]:
                kept = runs.setdefault(method, {}).get(run["seed"])
                if kept is not None:
                    short, long = sorted((kept[0]["curve"], run["curve"]), key=len)
                    if not all(a[0] == b[0] and math.isclose(a[1], b[1], abs_tol=1e-9)
                               for a, b in zip(short, long[:len(short)], strict=True)):
                        p.error(f"--merge: {method} seed {run['seed']} differs between {kept[1]} and {path}: "
                                "one seed of a method must be the same run in every file")
                    if len(run["curve"]) <= len(kept[0]["curve"]):
                        continue
                own = result.get("method_params", {}).get(method)  # results before --method-params have none
                runs[method][run["seed"]] = (run, path, {**info, "own": own})
    result: dict[str, Any] = {**files[0][2], "methods": {}, "merged_from": [shown(f[0]) for f in files]}
    result["method_params"] = {}
    for method in [m for m in METHODS if m in runs]:
        chosen = [runs[method][seed] for seed in sorted(runs[method])]
        rounds, budget = min((info["rounds"], info["budget_labels"]) for _, _, info in chosen)
        # budgets may differ where every run reached the target within the smallest: then they decided nothing
        within = all(r["labels_to_target"] is not None and r["labels_to_target"] <= budget for r, _, _ in chosen)
        owns = {json.dumps(info["own"]) for _, _, info in chosen}
        if len(owns) > 1:
            p.error(f"--merge: the runs kept for {method} come from files that gave it different keys "
                    f"({' / '.join(sorted(owns))})")
        if not within and len({info["rounds"] for _, _, info in chosen}) > 1:
            p.error(f"--merge: the runs kept for {method} come from files that gave it different rounds "
                    f"({' / '.join(str(r) for r in sorted({info['rounds'] for _, _, info in chosen}))}), and not "
                    "every run reached the target within the fewest")
        own = chosen[0][2]["own"]
        if own is not None:
            result["method_params"][method] = own
        result["methods"][method] = {"rounds": rounds, "budget_labels": budget,
                                     "runs": [r for r, _, _ in chosen], **method_summary([r for r, _, _ in chosen])}
    args.seeds = sorted({r["seed"] for info in result["methods"].values() for r in info["runs"]})
    args.methods = list(result["methods"])
    return result, cpu


def best_of(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One result holding each method's runs from the file of ``args.best_of`` where its median labels to the
    target is lowest (the first on a tie; not reached counting as infinite), among the files that ran it on the
    most seeds, which must be the same seeds; and the CPU they ran on. ``best_of`` in the result records each
    method's medians per file and the file kept."""
    files, cpu = read_parts(p, args, argv, "--best-of")
    result: dict[str, Any] = {**files[0][2], "methods": {}, "method_params": {}, "best_of": {}}
    result.pop("merged_from", None)
    lines = []
    for method in [m for m in METHODS if any(m in r["methods"] for _, _, r in files)]:
        ran = {path: r for path, _, r in files if method in r["methods"]}
        seeds = {path: sorted(run["seed"] for run in r["methods"][method]["runs"]) for path, r in ran.items()}
        most = max(len(s) for s in seeds.values())
        compared = [path for path in ran if len(seeds[path]) == most]
        if len({tuple(seeds[path]) for path in compared}) > 1:
            p.error(f"--best-of: {method} ran on different seeds ("
                    + "; ".join(f"{path}: {seeds[path]}" for path in compared) + "): compare it on the same seeds")
        medians = {path: ran[path]["methods"][method]["median_labels"] for path in compared}
        kept = min(compared, key=lambda path: math.inf if medians[path] is None else medians[path])
        result["methods"][method] = ran[kept]["methods"][method]
        own = ran[kept].get("method_params", {}).get(method)
        if own is not None:
            result["method_params"][method] = own
        result["best_of"][method] = {"kept": shown(kept), "medians": {shown(path): medians[path] for path in compared},
                                     "left_out": [shown(path) for path in ran if path not in compared]}
        lines.append(f"{method} on seeds {seeds[kept]}: " + ", ".join(
            f"{shown(path)} {medians[path]}{' (kept)' if path == kept else ''}" for path in compared)
            + "".join(f"; left out (fewer seeds): {shown(path)}" for path in ran if path not in compared))
    print("median labels to the target, per file:\n" + "\n".join(lines))
    args.seeds = sorted({r["seed"] for info in result["methods"].values() for r in info["runs"]})
    args.methods = list(result["methods"])
    return result, cpu


if __name__ == "__main__":
    main()
