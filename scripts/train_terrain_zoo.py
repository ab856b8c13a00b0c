"""Reproduce the committed terrain-suite experts: train them, evaluate them, copy the bundles into ``envs/zoo``.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/train_terrain_zoo.py [--suites terrain terrain_hard]

Each suite's expert is PPO over ``[policy, privileged]`` with the settings in ``OVERRIDES`` (the ``train-experts``
keys it was trained with: the same as ``.venv/bin/policydistill train-experts suite=<suite> <OVERRIDES>``) and the
suite's ``train_steps``. Writes ``envs/zoo/<suite>/<task>/`` and ``envs/zoo/<suite>/zoo.json`` (training summary,
evaluation on 20 seeded episodes, the overrides). Training runs under ``runs/zoo/<suite>`` and resumes after a kill.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from policydistill.bundle import load_bundle
from policydistill.cli import compose_config
from policydistill.eval.evaluate import evaluate, format_table
from policydistill.experts import train_experts
from policydistill.files import atomic_write_json
from policydistill.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "expert.net=[128,128]",
    "expert.hyperparams.n_steps=512",
    "expert.hyperparams.batch_size=512",
    "expert.eval_every=50000",
    "expert.eval_episodes=5",
    "expert.checkpoint_every=50000",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suites", nargs="+", default=["terrain", "terrain_hard"])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--runs", default=str(ROOT / "runs/zoo"))
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in args.suites:
        suite = load_suite(name)
        cfg = compose_config("train-experts", [f"suite={name}", *OVERRIDES])
        summary = train_experts(suite, cfg.expert, Path(args.runs) / name, workers=1, seed=cfg.seed)
        zoo = ROOT / "envs/zoo" / name
        for task in suite.task_names:
            dest = zoo / task
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(Path(args.runs) / name / task / "bundle", dest)
        policies = {t: load_bundle(zoo / t, device="cpu") for t in suite.task_names}
        result = evaluate(suite, policies, episodes=args.episodes, seed=1000)
        print(format_table(result))
        atomic_write_json(zoo / "zoo.json", {"suite": name, "overrides": OVERRIDES, "training": summary["tasks"],
                                             "evaluation": result})


if __name__ == "__main__":
    main()
