"""Failure monitor: does it see a student's failures coming under a shift it never trained on, how often does
it raise a false alarm in distribution, and what does it cost per tick?

    .venv/bin/python -m bench failure_monitor --suite terrain --shift '{"roughness": 0.2}'
    .venv/bin/python -m bench failure_monitor --suite locomotion --groups policy privileged task \
        --shift '{"mass_range": [1.6, 2.0], "friction_range": [0.2, 0.4]}'
    .venv/bin/python -m bench failure_monitor --suite default --shift-suite default_hazard
    .venv/bin/python -m bench failure_monitor --suite default --shift-suite default_hazard \
        --env-kwargs '{"pit_sensor": 0.1}' --groups policy extero task --ahead 2
    .venv/bin/python -m bench failure_monitor --suite default --shift-suite default_hazard \
        --env-kwargs '{"pit_sensor": 0.3, "frame_skip": 2}' --groups policy extero task   # at 50 Hz

Per seed: a DAgger student is distilled from the suite's zoo (``--rounds`` rounds, linear beta 1 -> 0 over half of
them), its monitor fitted on the run's episodes and calibrated (``--calibration-episodes`` per task, ``--alpha``,
``--delta``: the false-alarm rate holds for each calibration with probability 1 - delta, not only on average over
calibrations; ``--start-ticks``: the longest episode start it scores against the calibration episodes' starts, 0 for
none; ``--statistic``: ``tick`` or ``mean``, the score of the tick or its mean since the reset, see
:class:`~policydistill.runtime.monitor.FailureMonitor`; ``--hidden``: its networks' width). Then the student runs
``--episodes`` held-out episodes per task in distribution and as many under the shift (``--shift``: env keyword
arguments set on every task; ``--shift-suite``: another suite with the same spaces, e.g. the pit of
``default_hazard`` that the ``default`` student never saw; ``--env-kwargs``: env keyword arguments set on every task
of both, e.g. PointReach's pit sensor, which reads nothing in ``default``). An episode fails when it does not
succeed. Its score for predicting that is the monitor's largest statistic before its last ``--ahead`` steps (an
alarm that would have come at least that many control steps before the end). Reported: AUROC of that score for
failure over all episodes (and over the shifted ones alone: failure told apart from the shift itself), the alarm
rate on failing and on succeeding shifted episodes, the alarm rate on in-distribution episodes (an alarm anywhere:
what the threshold is calibrated on) and the false-alarm rate among them (an alarm on an episode that then succeeds,
over all in-distribution episodes; the same where no in-distribution episode fails), and the monitor's cost per tick
over the student's (one env; the monitor's work as a controller does it each tick, by the controller's own timer;
measured alternately in one loop).
Targets: AUROC >= 0.9, false alarms <= 5%, cost <= 20% of the policy's
tick.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench import envelope  # noqa: E402
from bench.common import (  # noqa: E402
    distill_run,
    interval_text,
    json_object,
    median_interval,
    one_thread,
    parse,
    parser,
    setup_logging,
    zoo_teachers,
)
from policydistill import DAggerConfig, StudentConfig, Suite, load_bundle, load_suite  # noqa: E402
from policydistill.data.shards import EpisodeStore  # noqa: E402
from policydistill.distill.monitor import MONITOR_HIDDEN, START_TICKS, episode_scores, fit_monitor, student_episodes  # noqa: E402
from policydistill.runtime.controller import Controller, PolicySource  # noqa: E402
from policydistill.runtime.monitor import STATISTICS  # noqa: E402
from policydistill.types import select_groups  # noqa: E402

AUROC_TARGET, FALSE_ALARM_TARGET, COST_TARGET = 0.9, 0.05, 0.2
TEST_SEED = 30_000
SMOKE = {"seeds": [0], "rounds": 1, "episodes_per_task": 1, "updates": 10, "calibration_episodes": 19,
         "episodes": 2, "ticks": 50, "delta": None}


def shifted(suite: Suite, shift: dict[str, Any], name: str | None = None) -> Suite:
    """``suite`` with ``shift`` set on every task's env keyword arguments, named ``name`` (None: the suite's name
    and ``_shifted``)."""
    tasks = tuple(dataclasses.replace(t, kwargs={**t.kwargs, **shift}) for t in suite.tasks)
    return dataclasses.replace(suite, name=name or f"{suite.name}_shifted", tasks=tasks)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive scores above a negative), ties counting half; None without both."""
    if not len(positive) or not len(negative):
        return None
    p, n = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def tick_cost(monitor: Any, student: Any, suite: Suite, ticks: int) -> dict[str, float]:
    """Median microseconds of the student's ``act`` on one env's observation and of the monitor's work in a
    controller's tick (as its own monitor timer measures it: the score at the env's tick since reset, with
    ``statistic=mean`` the running mean, and the comparison with the threshold), alternated in one loop (the
    machine's load hits both alike)."""
    env = suite.make_env(0)
    obs, _ = env.reset(seed=0)
    env.close()
    batch = {g: np.asarray(v, dtype=np.float32)[None] for g, v in obs.items()}
    mine = select_groups(batch, student.groups)
    policy = []
    with Controller(PolicySource(student), 0.01, monitor=monitor) as ctrl:
        for _ in range(ticks):
            t0 = time.perf_counter()
            student.act(mine, deterministic=True)
            policy.append(time.perf_counter() - t0)
            ctrl.step(batch)
        watch = ctrl.monitor_time.summary()["p50_us"]
    return {"policy_us": 1e6 * statistics.median(policy), "monitor_us": float(watch)}


def run_seed(seed: int, args: Any, suite: Suite, teachers: dict, shift_suite: Suite) -> dict[str, Any]:
    method = DAggerConfig(rounds=args.rounds, episodes_per_task=args.episodes_per_task,
                          updates_per_round=args.updates, beta_rounds=max(1, args.rounds // 2))
    student_cfg = StudentConfig(groups=list(args.groups), check_predictable=False)
    with distill_run(suite, teachers, seed, method, student_cfg, 5) as (summary, out):
        student = load_bundle(out / "student", device="cpu")
        monitor = fit_monitor(suite, student, EpisodeStore(out / "episodes"), args.alpha, args.calibration_episodes,
                              seed=seed, delta=args.delta or None, start_ticks=args.start_ticks,
                              statistic=args.statistic, hidden=args.hidden)
    inside = [r for r in student_episodes(suite, student, args.episodes, TEST_SEED + seed) if not r.episode.error]
    shift = [r for r in student_episodes(shift_suite, student, args.episodes, TEST_SEED + seed)
             if not r.episode.error]
    whole = [episode_scores(monitor, recs) for recs in (inside, shift)]
    ahead = [episode_scores(monitor, recs, args.ahead) for recs in (inside, shift)]
    failed = [np.asarray([not r.episode.success for r in recs]) for recs in (inside, shift)]
    scores, fails = np.concatenate(ahead), np.concatenate(failed)
    shift_alarm = ahead[1] > monitor.threshold
    lengths = [len(r.steps["reward"]) for r in shift]
    inside_alarm = whole[0] > monitor.threshold  # an alarm anywhere: what the threshold is calibrated on
    cost = tick_cost(monitor, student, suite, args.ticks)
    out_row = {"seed": seed, "threshold": monitor.threshold, "calibration_episodes": monitor.episodes,
               "student_score": summary["rounds"][-1]["mean_score"],
               "in_distribution": {"episodes": len(inside), "failed": int(failed[0].sum()),
                                   "alarm_rate": float(inside_alarm.mean()),
                                   "false_alarm_rate": float((inside_alarm & ~failed[0]).mean())},
               "shifted": {"episodes": len(shift), "failed": int(failed[1].sum()),
                           "steps_min_median_max": [float(f(lengths)) for f in (np.min, np.median, np.max)],
                           "alarm_rate_failing": float(shift_alarm[failed[1]].mean()) if failed[1].any() else None,
                           "alarm_rate_succeeding": float(shift_alarm[~failed[1]].mean())
                           if (~failed[1]).any() else None},
               "auroc": auroc(scores[fails], scores[~fails]),
               "auroc_within_shifted": auroc(ahead[1][failed[1]], ahead[1][~failed[1]]), **cost,
               "cost_ratio": cost["monitor_us"] / cost["policy_us"]}
    auc = "n/a" if out_row["auroc"] is None else f"{out_row['auroc']:.3f}"
    print(f"seed {seed}: student score {out_row['student_score']:.3f}; shifted: {int(failed[1].sum())}/{len(shift)} "
          f"failed; AUROC {auc}; in distribution: {int(failed[0].sum())}/{len(inside)} failed, alarms "
          f"{out_row['in_distribution']['alarm_rate']:.3f}, false alarms (on episodes that succeed) "
          f"{out_row['in_distribution']['false_alarm_rate']:.3f}; monitor {cost['monitor_us']:.0f} us per tick over "
          f"the policy's {cost['policy_us']:.0f} us", flush=True)
    return out_row


def main(argv: list[str] | None = None) -> dict:
    p = parser("failure_monitor", __doc__)
    p.add_argument("--suite", default="terrain")
    p.add_argument("--groups", nargs="+", default=["policy", "task"], help="the student's observation groups")
    p.add_argument("--shift", type=json_object, default="{}", help="JSON: env keyword arguments set on every task")
    p.add_argument("--shift-suite", default=None, help="a suite with the same spaces to shift to instead")
    p.add_argument("--env-kwargs", type=json_object, default="{}",
                   help="JSON: env keyword arguments set on every task, in distribution and shifted")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--episodes-per-task", type=int, default=8)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=0.1,
                   help="the false-alarm rate holds with probability 1 - delta per calibration (0: on average)")
    p.add_argument("--calibration-episodes", type=int, default=20, help="per task")
    p.add_argument("--episodes", type=int, default=20, help="held-out and shifted episodes per task")
    p.add_argument("--ahead", type=int, default=10, help="an alarm must come this many steps before the end")
    p.add_argument("--start-ticks", type=int, default=START_TICKS,
                   help="the longest episode start the monitor learns to score (0: none)")
    p.add_argument("--statistic", default="tick", choices=STATISTICS, help="what the alarm compares with the threshold")
    p.add_argument("--hidden", type=int, default=MONITOR_HIDDEN, help="the monitor's networks' width")
    p.add_argument("--ticks", type=int, default=2000, help="calls timed for the cost")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = parse(p, argv, SMOKE)
    shift = args.shift
    if bool(shift) == bool(args.shift_suite):
        p.error("give exactly one of --shift and --shift-suite")
    started = envelope.start()
    one_thread()
    setup_logging()
    suite, teachers = zoo_teachers(args.suite)
    shift_suite = load_suite(args.shift_suite) if args.shift_suite else shifted(suite, shift)
    if args.env_kwargs:
        suite, shift_suite = (shifted(s, args.env_kwargs, s.name) for s in (suite, shift_suite))
    for checked in (suite, shift_suite):  # an env argument it does not take: a usage error before any run
        try:
            checked.make_env(0).close()
        except (TypeError, ValueError) as e:
            p.error(f"--shift / --env-kwargs: suite '{checked.name}': {str(e).splitlines()[0]}")
    rows = [run_seed(seed, args, suite, teachers, shift_suite) for seed in args.seeds]

    def med(get: Any) -> float | None:
        values = [v for v in map(get, rows) if v is not None]
        return statistics.median(values) if values else None

    medians = {"auroc": med(lambda r: r["auroc"]), "auroc_within_shifted": med(lambda r: r["auroc_within_shifted"]),
               "false_alarm_rate": med(lambda r: r["in_distribution"]["false_alarm_rate"]),
               "alarm_rate_in_distribution": med(lambda r: r["in_distribution"]["alarm_rate"]),
               "cost_ratio": med(lambda r: r["cost_ratio"]),
               "shifted_failure_rate": med(lambda r: r["shifted"]["failed"] / max(1, r["shifted"]["episodes"])),
               "alarm_rate_failing": med(lambda r: r["shifted"]["alarm_rate_failing"])}
    targets = {"auroc": (">=", AUROC_TARGET), "false_alarm_rate": ("<=", FALSE_ALARM_TARGET),
               "cost_ratio": ("<=", COST_TARGET)}
    per_seed = {"auroc": [r["auroc"] for r in rows],
                "false_alarm_rate": [r["in_distribution"]["false_alarm_rate"] for r in rows],
                "cost_ratio": [r["cost_ratio"] for r in rows]}
    intervals = {k: median_interval(v) for k, v in per_seed.items() if v and None not in v}
    for key, (op, target) in targets.items():
        got = medians[key]
        met = got is not None and (got >= target if op == ">=" else got <= target)
        shown = "n/a" if got is None else f"{got:.3f}"
        spread = f" ({interval_text(*intervals[key])})" if key in intervals else ""
        print(f"target: {key} {op} {target}   measured (median over {len(rows)} seeds): {shown}{spread} -> "
              f"{'met' if met else 'not met'}")
    what = "_".join([args.shift_suite] if args.shift_suite else [f"{k}{v}" for k, v in shift.items()])
    what += "".join(f"_{k}{v}" for k, v in args.env_kwargs.items())
    return envelope.write("failure_monitor", args, started, runs=len(rows), medians=medians,
                          ratios={"monitor_over_policy_tick": medians["cost_ratio"]},
                          results={"shift": shift or args.shift_suite, "rows": rows,
                                   "median_intervals": {k: list(v) for k, v in intervals.items()}},
                          tag=args.tag or f"_{args.suite}_{what}".replace(" ", "").replace(",", "_"))


if __name__ == "__main__":
    main()
