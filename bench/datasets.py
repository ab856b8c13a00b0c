"""Datasets in and out: Minari export and import throughput and peak memory, offline students from the round trip.

    .venv-datasets/bin/python -m bench datasets [--steps 10000000] [--seeds 0 1 2]

Runs in the datasets venv (``bash scripts/setup_datasets.sh``), where the ``minari`` extra lives.

Throughput and memory: a synthetic store of ``--steps`` steps with the default suite's fields (episodes of
``--episode-steps`` steps, random values) is exported to a Minari dataset and imported back, each command in a
process of its own that reports its wall time and peak resident memory; the same for a store of
``--small-steps`` steps. Reported: steps per second both ways, and each command's peak memory at both sizes
beside the store's size on disk: the commands stream (one shard, or 64 episodes, at a time), so their peak
does not grow with the dataset.

Same score: the default suite's PPO experts' own episodes (a BC run's store, ``--episodes-per-task`` per task)
are exported and imported; per seed, offline students (``teachers=none``: BC, and a diffusion policy) train on
the store and on the round trip, and are evaluated on the same seeded episodes. Target: the same score from
both (the round trip is exact, so the same weights).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # python bench/<name>.py: the bench package lives one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import envelope
from bench.common import cache_dir, parse, parser
from policydistill import zoo_dir
from policydistill.data.shards import ShardWriter
from policydistill.files import read_json

SMOKE = {"steps": 20_000, "small_steps": 5_000, "seeds": [0], "episodes_per_task": 1, "bc_updates": 20,
         "diffusion_steps": 10, "eval_episodes": 1}
FIELDS = {"obs/policy": 4, "obs/privileged": 2, "obs/task": 4, "action": 2, "label_mean": 2, "label_std": 2}
MEASURE = ("import json, re, sys, time; from policydistill.cli.main import main; t0 = time.perf_counter(); "
           "rc = main(sys.argv[1:]); hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()); "
           "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t0, 'peak_mb': int(hwm.group(1)) / 1024}))")
"""A policydistill command in a fresh process, reporting its wall time and peak resident memory (MB): the
process's own high-water mark (``VmHWM``; ``ru_maxrss`` would also count the parent's, taken over at exec)."""


def synthetic_store(root: Path, steps: int, episode_steps: int) -> int:
    """A store of ``steps`` random steps in episodes of ``episode_steps`` with the default suite's fields;
    returns its size on disk in bytes."""
    rng = np.random.default_rng(0)
    with ShardWriter(root) as writer:
        for k in range(steps // episode_steps):
            t = episode_steps
            ep = {name: rng.standard_normal((t, dim), dtype=np.float32) for name, dim in FIELDS.items()}
            ep["obs/task"] = np.eye(4, dtype=np.float32)[np.full(t, k % 4)]
            ep["label_std"] = np.abs(ep["label_std"])
            ep.update(actor=np.zeros(t, np.uint8), reward=rng.standard_normal(t, dtype=np.float32),
                      terminated=np.zeros(t, bool), truncated=np.arange(t) == t - 1)
            writer.add(ep, {"task": ["north", "east", "south", "west"][k % 4], "task_index": k % 4, "seed": k,
                            "success": False, "round": 0, "beta": 1.0})
    (root.parent / "run.json").write_text(json.dumps({"command": "distill", "config": {"suite": "default"}}))
    return sum(p.stat().st_size for p in root.iterdir())


def measured(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise RuntimeError(f"{' '.join(args)} exited with {result['rc']}:\n{out.stderr[-2000:]}")
    return result


def round_trip(work: Path, steps: int, episode_steps: int) -> dict[str, Any]:
    """Export and import a synthetic store of ``steps`` steps, each in its own process."""
    store = work / f"run{steps}" / "episodes"
    size = synthetic_store(store, steps, episode_steps)
    minari = work / "minari" / f"synthetic{steps}-v0"
    export = measured(["dataset", "export", f"episodes={store}", "format=minari", f"out={minari}"])
    back = measured(["dataset", "import", f"path={minari}", f"out={work / f'back{steps}'}"])
    row = {"steps": steps, "store_mb": size / 2**20,
           "minari_mb": sum(p.stat().st_size for p in (minari / "data").iterdir()) / 2**20,
           "export_steps_per_s": steps / export["wall_s"], "import_steps_per_s": steps / back["wall_s"],
           "export_peak_mb": export["peak_mb"], "import_peak_mb": back["peak_mb"]}
    print(f"{steps:>11,} steps ({row['store_mb']:.0f} MB store, {row['minari_mb']:.0f} MB Minari): export "
          f"{row['export_steps_per_s']:,.0f} steps/s, peak {row['export_peak_mb']:.0f} MB; import "
          f"{row['import_steps_per_s']:,.0f} steps/s, peak {row['import_peak_mb']:.0f} MB", flush=True)
    return row


def offline_scores(work: Path, args: Any) -> list[dict[str, Any]]:
    """Per seed and method, the offline student's mean score trained on the teachers' store and on its round
    trip through Minari."""
    teachers = work / "teachers"
    if not (teachers / "distill.json").is_file():
        assert measured(["distill", f"teachers={zoo_dir('default')}", "method=bc", "method.rounds=1",
                         f"method.episodes_per_task={args.episodes_per_task}", "method.updates_per_round=1",
                         "eval_episodes=1", "final_episodes=0", f"out={teachers}"])["rc"] == 0
    minari = work / "minari" / "teachers-v0"
    if not minari.exists():
        measured(["dataset", "export", f"episodes={teachers / 'episodes'}", "format=minari", f"out={minari}"])
    if not (work / "teachers_back").exists():
        measured(["dataset", "import", f"path={minari}", f"out={work / 'teachers_back'}"])
    methods = {"bc": ["method.rounds=1", f"method.updates_per_round={args.bc_updates}"],
               "diffusion": [f"method.train_steps={args.diffusion_steps}", "method.sampler_steps=10"]}
    rows = []
    for seed in args.seeds:
        for method, keys in methods.items():
            row: dict[str, Any] = {"seed": seed, "method": method}
            for source, data in (("store", teachers / "episodes"), ("round_trip", work / "teachers_back")):
                out = work / f"{method}_{source}_{seed}"
                if not (out / "distill.json").is_file():
                    measured(["distill", "teachers=none", f"method={method}", f"method.data=[{data}]", *keys,
                              f"seed={seed}", f"eval_episodes={args.eval_episodes}", "final_episodes=0", f"out={out}"])
                last = read_json(out / "distill.json")["rounds"][-1]
                row[source] = {"score": last["mean_score"], "success": last["mean_success"]}
            rows.append(row)
            print(f"seed {seed} {method:<9} score from the store {row['store']['score']:.3f}, from the round trip "
                  f"{row['round_trip']['score']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = parser("datasets", __doc__)
    p.add_argument("--steps", type=int, default=10_000_000)
    p.add_argument("--small-steps", type=int, default=100_000)
    p.add_argument("--episode-steps", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes-per-task", type=int, default=8)
    p.add_argument("--bc-updates", type=int, default=2000)
    p.add_argument("--diffusion-steps", type=int, default=2000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--cache", default=None, help="folder for the offline runs (default: runs/bench/datasets)")
    args = parse(p, argv, SMOKE)
    started = envelope.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        sizes = [round_trip(Path(tmp), n, args.episode_steps) for n in (args.small_steps, args.steps)]
    with cache_dir(args.cache, args.smoke, "datasets") as work:
        scores = offline_scores(work, args)
    same = all(r["store"] == r["round_trip"] for r in scores)
    small, large = sizes
    medians = {"export_steps_per_s": statistics.median(r["export_steps_per_s"] for r in sizes),
               "import_steps_per_s": statistics.median(r["import_steps_per_s"] for r in sizes),
               "export_peak_mb": large["export_peak_mb"], "import_peak_mb": large["import_peak_mb"]}
    ratios = {"export_peak_large_over_small": large["export_peak_mb"] / small["export_peak_mb"],
              "import_peak_large_over_small": large["import_peak_mb"] / small["import_peak_mb"],
              "round_trip_score_equals_store_score": same}
    print(f"target: the same score from the round trip as from the store -> {'met' if same else 'NOT met'}; "
          f"peak memory at {large['steps']:,} steps over {small['steps']:,}: export "
          f"{ratios['export_peak_large_over_small']:.2f}x, import {ratios['import_peak_large_over_small']:.2f}x "
          f"({time.perf_counter() - t0:.0f} s)")
    return envelope.write("datasets", args, started, runs=len(args.seeds), medians=medians, ratios=ratios,
                          results={"sizes": sizes, "offline": scores})


if __name__ == "__main__":
    main()
