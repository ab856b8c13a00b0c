"""Reproduce the committed expert zoo: train every suite's experts, evaluate them, copy the bundles.

    .venv/bin/python scripts/train_zoo.py [--suites default default_hazard locomotion] [--workers 2] [--episodes 20]
        [--overrides KEY=VALUE ...] [--name ZOO]
    .venv/bin/python scripts/train_zoo.py --diffusion [--suites default_hazard]

``--overrides``: ``train-experts`` keys the experts are trained with (as ``policydistill train-experts
suite=<suite> KEY=VALUE ...``), e.g. the terrain zoo's
``--suites terrain terrain_weak_leg --workers 1 --overrides expert.net=[128,128] expert.hyperparams.n_steps=512
expert.hyperparams.batch_size=512 expert.eval_every=50000 expert.eval_episodes=5 expert.checkpoint_every=50000``.
Writes ``envs/zoo/<suite>/<task>/`` (policy.json + model.safetensors) and ``envs/zoo/<suite>/zoo.json``
(training summary, evaluation numbers and the overrides). Training runs under ``runs/zoo`` and resumes after a
kill.

``--diffusion``: instead, the committed diffusion teacher of each suite (the pipeline's diffusion -> one-step
stage distils it): ``policydistill distill`` with ``method=diffusion`` and the recipe of
:data:`~policydistill.pipeline.diffusion.ZOO_RECIPE` from the suite's expert zoo, copied to
``envs/zoo/diffusion/<suite>/`` beside a ``zoo.json`` (the recipe, training time and evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
from pathlib import Path

import torch

from policydistill.bundle import load_bundle
from policydistill.cli import compose_config
from policydistill.distill.runner import DistillConfig, distill
from policydistill.eval.evaluate import evaluate, format_table
from policydistill.experts import train_experts
from policydistill.files import atomic_write_json
from policydistill.pipeline.diffusion import ZOO_RECIPE
from policydistill.suites import diffusion_zoo_dir, load_suite, zoo_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suites", nargs="+", default=["default", "default_hazard", "locomotion"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--runs", default=str(ROOT / "runs/zoo"))
    p.add_argument("--overrides", nargs="*", default=[], help="train-experts keys, KEY=VALUE")
    p.add_argument("--name", default=None, help="the zoo's folder name (one suite only; default: the suite's)")
    p.add_argument("--diffusion", action="store_true", help="train the suites' diffusion teachers instead")
    args = p.parse_args()
    if args.name is not None and len(args.suites) != 1:
        p.error("--name names the zoo of one suite")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in args.suites:
        if args.diffusion:
            train_diffusion_teacher(name, Path(args.runs) / "diffusion" / name, args.episodes)
            continue
        suite = load_suite(name)
        cfg = compose_config("train-experts", [f"suite={name}", *args.overrides])
        zoo_name = args.name or name
        runs = Path(args.runs) / zoo_name
        summary = train_experts(suite, cfg.expert, runs, workers=args.workers, seed=cfg.seed)
        zoo = ROOT / "envs/zoo" / zoo_name
        for task in suite.task_names:
            dest = zoo / task
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(runs / task / "bundle", dest)
        policies = {t: load_bundle(zoo / t, device="cpu") for t in suite.task_names}
        result = evaluate(suite, policies, episodes=args.episodes, seed=1000)
        print(format_table(result))
        atomic_write_json(zoo / "zoo.json", {"suite": name, "training": summary["tasks"], "evaluation": result,
                                             **({"overrides": args.overrides} if args.overrides else {})})


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository when inside it: the bundle records its training paths, and a
    committed bundle must not name this machine's folders."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def train_diffusion_teacher(name: str, runs: Path, episodes: int) -> None:
    """The committed diffusion teacher of suite ``name``, trained in ``runs`` from the suite's expert zoo (run
    from the repository's root, so that the recorded paths are relative to it)."""
    suite = load_suite(name)
    os.chdir(ROOT)
    cfg = DistillConfig(suite=name, teachers=repo_relative(zoo_dir(name)), out=repo_relative(runs), seed=0,
                        device="cpu", method=ZOO_RECIPE(), eval_episodes=episodes, final_episodes=0)
    summary = distill(cfg, suite)
    zoo = diffusion_zoo_dir(name)
    shutil.rmtree(zoo, ignore_errors=True)
    shutil.copytree(runs / "student", zoo)
    policy = load_bundle(zoo, device="cpu")
    result = evaluate(suite, dict.fromkeys(suite.task_names, policy), episodes=episodes, seed=1000)
    print(format_table(result))
    round_ = summary["rounds"][-1]
    atomic_write_json(zoo / "zoo.json", {"suite": name, "recipe": dataclasses.asdict(ZOO_RECIPE()),
                                         "seed": 0, "updates": round_["updates"], "wall_time_s": round_["wall_time_s"],
                                         "evaluation": result})


if __name__ == "__main__":
    main()
