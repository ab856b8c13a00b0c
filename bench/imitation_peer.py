"""policydistill DAgger vs imitation's ``SimpleDAggerTrainer`` at equal labels, same SB3 expert and env.

    .venv/bin/python -m bench imitation_peer [--labels 2000 4000 8000] [--seeds 0 1 2] [--episodes 20]
        [--eval-episodes 10]

imitation 1.0.1 pins stable-baselines3 2.2 and gymnasium 0.29, so it runs in a venv of its own
(``.venv-imitation``, made by ``scripts/setup_imitation.sh`` when missing) through
``bench/peers/imitation_dagger.py``, one process per run. The expert: an SB3 PPO expert on
InvertedDoublePendulum-v4 trained there once (``runs/bench/imitation/expert.zip``) and imported here with
``policydistill import-sb3``. Both sides on one torch thread, each run alone on the machine:

- imitation: ``SimpleDAggerTrainer(...).train(labels)`` with its defaults (BC on a 32x32 policy);
- policydistill: ``distill method=dagger`` with its defaults, episodes cut at ``labels / 24`` steps (6 rounds
  of 4 episodes: the same number of teacher labels); no final evaluation.

Timed: imitation's ``train()``; ours, the whole ``distill()`` call (which also evaluates the student on 10
validation episodes after every round, what picks the shipped ``best/``; ``--eval-episodes`` sets another number,
written to ``imitation_peer_v<N>.json``) and its training alone (collection
and updates: the rounds' time without their evaluation). torch's one-time import of its compiler on the first
optimizer (~0.8 s) is paid before either timer: imitation's ``BC`` builds its optimizer before ``train()``, and
this benchmark builds one before ours. Each student (imitation's learner, our ``best/``) is
then scored on ``--episodes`` deterministic episodes in its own library's env. Written to
``imitation_peer.json``: per budget, medians over seeds of time and return, and our time over imitation's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import envelope
from bench.common import ROOT, one_thread, parse, parser, runs_dir, setup_logging
from policydistill import DAggerConfig, DistillConfig, load_bundle, load_suite
from policydistill.cli import main as cli
from policydistill.configs import require_int
from policydistill.distill.runner import distill
from policydistill.eval.evaluate import evaluate
from policydistill.files import atomic_write_json, read_json

ENV = "InvertedDoublePendulum-v4"
PEER = ROOT / "bench/peers/imitation_dagger.py"
TARGET = 0.5
VALIDATION = DistillConfig.eval_episodes
SMOKE = {"labels": [300], "seeds": [0], "episodes": 1, "expert_steps": 2048}


def peer(venv: Path, *args: str) -> dict[str, Any]:
    """One run of the peer script in the imitation venv: its JSON line."""
    done = subprocess.run([str(venv / "bin/python"), str(PEER), *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def expert(venv: Path, root: Path, steps: int) -> tuple[Path, dict[str, Any]]:
    """The SB3 expert (trained in the peer venv on first use) and its import as a policydistill teacher folder."""
    zip_path, info_path, teachers = root / "expert.zip", root / "expert.json", root / "teachers"
    if not info_path.is_file():
        info = peer(venv, "expert", "--out", str(zip_path), "--steps", str(steps))
        atomic_write_json(info_path, info)
    if not (teachers / ENV / "policy.json").is_file():
        shutil.rmtree(teachers, ignore_errors=True)
        code = cli(["import-sb3", f"model={zip_path}", f"out={teachers / ENV}", f"suite={ENV}", f"task={ENV}",
                    "vecnormalize=none"])
        if code:
            raise SystemExit(f"import-sb3 of {zip_path} failed")
    return zip_path, read_json(info_path)


def ours(teachers: Path, labels: int, seed: int, out: Path, episodes: int, eval_episodes: int) -> dict[str, Any]:
    """Our DAgger run with its defaults (but ``eval_episodes``) at ``labels`` teacher labels: times and the shipped
    student's return."""
    shutil.rmtree(out, ignore_errors=True)
    method = DAggerConfig(collect_steps=max(1, labels // (DAggerConfig.rounds * DAggerConfig.episodes_per_task)))
    cfg = DistillConfig(suite=ENV, teachers=str(teachers), out=str(out), seed=seed, device="cpu", method=method,
                        final_episodes=0, eval_episodes=eval_episodes)
    t0 = time.perf_counter()
    summary = distill(cfg)  # torch's first optimizer imports its compiler (~0.8 s): main() pays it before
    total = time.perf_counter() - t0
    rounds = summary["rounds"]
    evaluation = sum(r["eval_time_s"] for r in rounds)
    suite = load_suite(ENV)
    result = evaluate(suite, {ENV: load_bundle(out / "best", device="cpu")}, episodes=episodes, seed=0)
    return {"library": "policydistill", "labels": rounds[-1]["labels_used"], "rounds": len(rounds), "seed": seed,
            "wall_time_s": total, "train_time_s": sum(r["collect_time_s"] + r["update_time_s"] for r in rounds),
            "eval_time_s": evaluation, "return_mean": result["tasks"][ENV]["return_mean"],
            "best_round": summary["best_round"]}


def main(argv: list[str] | None = None) -> dict:
    p = parser("imitation_peer", __doc__)
    p.add_argument("--labels", type=int, nargs="+", default=[2000, 4000, 8000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=20, help="test episodes per student")
    p.add_argument("--eval-episodes", type=int, default=VALIDATION,
                   help="our validation episodes after every round (default: distill's own)")
    p.add_argument("--expert-steps", type=int, default=300_000, help="PPO steps of the expert (trained once)")
    p.add_argument("--venv", default=str(ROOT / ".venv-imitation"), help="the imitation venv (made when missing)")
    args = parse(p, argv, SMOKE)
    try:
        require_int("--eval-episodes", args.eval_episodes)
    except ValueError as e:
        p.error(str(e))
    started = envelope.start()
    setup_logging()
    one_thread()
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # as imitation's BC builds its optimizer before train()
    venv = Path(args.venv)
    if not (venv / "bin/python").exists():
        subprocess.run(["bash", str(ROOT / "scripts/setup_imitation.sh")], check=True,
                       env={**os.environ, "IMITATION_VENV": str(venv)})
    root = runs_dir(args.smoke, "imitation")
    root.mkdir(parents=True, exist_ok=True)
    zip_path, expert_info = expert(venv, root, args.expert_steps)
    runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for labels in args.labels:
        runs[labels] = {"imitation": [], "policydistill": []}
        for seed in args.seeds:
            theirs = peer(venv, "dagger", "--expert", str(zip_path), "--labels", str(labels), "--seed", str(seed),
                          "--episodes", str(args.episodes))
            mine = ours(root / "teachers", labels, seed, root / "ours" / f"{labels}_s{seed}", args.episodes,
                        args.eval_episodes)
            runs[labels]["imitation"].append(theirs)
            runs[labels]["policydistill"].append(mine)
            print(f"labels {labels} seed {seed}: imitation {theirs['wall_time_s']:.2f} s, return "
                  f"{theirs['return_mean']:.0f} ({theirs['labels']} labels); policydistill "
                  f"{mine['wall_time_s']:.2f} s (training {mine['train_time_s']:.2f} s), return "
                  f"{mine['return_mean']:.0f} ({mine['labels']} labels)")
    medians: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for labels, both in runs.items():
        med = {lib: {k: statistics.median(r[k] for r in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))
                     and k != "seed"} for lib, rs in both.items()}
        medians[str(labels)] = med
        ratios[str(labels)] = {
            "ours_over_imitation_wall": med["policydistill"]["wall_time_s"] / med["imitation"]["wall_time_s"],
            "ours_training_over_imitation_wall": med["policydistill"]["train_time_s"] / med["imitation"]["wall_time_s"],
            "return_ours_minus_imitation": med["policydistill"]["return_mean"] - med["imitation"]["return_mean"]}
    print(f"\nInvertedDoublePendulum-v4, SB3 PPO expert (return {expert_info['return_mean']:.0f}), medians over seeds "
          f"{args.seeds}, our validation {args.eval_episodes} episode{'s' * (args.eval_episodes != 1)} a round; "
          f"target: ours <= {TARGET}x imitation's wall time at equal return")
    print(f"{'labels':>7} {'imitation s':>12} {'return':>8} {'ours s':>8} {'training s':>11} {'return':>8} "
          f"{'ours/imit':>10} {'training/imit':>14}")
    for labels, med in medians.items():
        r = ratios[labels]
        print(f"{labels:>7} {med['imitation']['wall_time_s']:>12.2f} {med['imitation']['return_mean']:>8.0f} "
              f"{med['policydistill']['wall_time_s']:>8.2f} {med['policydistill']['train_time_s']:>11.2f} "
              f"{med['policydistill']['return_mean']:>8.0f} {r['ours_over_imitation_wall']:>10.2f} "
              f"{r['ours_training_over_imitation_wall']:>14.2f}")
    tag = "" if args.eval_episodes == VALIDATION else f"_v{args.eval_episodes}"
    return envelope.write("imitation_peer", args, started, tag=tag, runs=len(args.seeds), medians=medians,
                          ratios=ratios,
                          results={"env": ENV, "expert": expert_info | {"expert": "runs/bench/imitation/expert.zip"},
                                   "runs": {str(k): v for k, v in runs.items()}, "target": TARGET})


if __name__ == "__main__":
    main()
