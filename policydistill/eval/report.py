"""The run report: markdown sections written by each pipeline stage, with PNG plots beside it."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from policydistill.files import atomic_write_text, atomic_write_with  # noqa: E402


@dataclass
class Report:
    """Sections in the order the stages add them; ``write`` renders ``report.md`` atomically."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, body: str) -> None:
        self.sections.append((heading, body.strip()))

    def write(self, path: str | Path) -> Path:
        text = f"# {self.title}\n\n" + "\n\n".join(f"## {h}\n\n{b}" for h, b in self.sections) + "\n"
        atomic_write_text(path, text)
        return Path(path)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("n/a" if v is None else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def read_curve(path: str | Path) -> list[dict[str, float]]:
    """Rows of a task's ``curve.csv`` as floats (empty when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) if v != "" else float("nan") for k, v in row.items()} for row in csv.DictReader(f)]


def plot_experts(path: str | Path, curves: dict[str, list[dict[str, float]]], experts: dict[str, Any],
                 baseline: dict[str, Any] | None = None) -> Path:
    """Learning curves (return and success vs env steps) and per-task bars (expert vs baseline)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, rows in curves.items():
        if rows:
            steps = [r["env_steps"] for r in rows]
            axes[0].plot(steps, [r["return_mean"] for r in rows], marker=".", label=name)
            axes[1].plot(steps, [r["success_rate"] for r in rows], marker=".", label=name)
    axes[0].set(title="expert return during training", xlabel="env steps", ylabel="return")
    axes[1].set(title="expert success during training", xlabel="env steps", ylabel="success rate",
                ylim=(-0.05, 1.05))
    axes[0].legend(fontsize=8)
    names = list(experts["tasks"])
    x = range(len(names))
    width = 0.4 if baseline else 0.8
    bars = axes[2].bar([i - (width / 2 if baseline else 0) for i in x],
                       [experts["tasks"][n]["return_mean"] for n in names], width,
                       yerr=[experts["tasks"][n]["return_ci95"] for n in names], label="expert", capsize=3)
    label_dropped(axes[2], bars, [experts["tasks"][n] for n in names])
    if baseline:
        bars = axes[2].bar([i + width / 2 for i in x], [baseline["tasks"][n]["return_mean"] for n in names], width,
                           yerr=[baseline["tasks"][n]["return_ci95"] for n in names], label="random", capsize=3)
        label_dropped(axes[2], bars, [baseline["tasks"][n] for n in names])
    axes[2].set_xticks(list(x), names, rotation=20)
    axes[2].set(title="evaluation return per task (95% CI)", ylabel="return")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_distill(path: str | Path, runs: dict[str, dict[str, Any]]) -> Path:
    """Left: mean score (random-normalised) against teacher labels used, one line per run.
    Right: per-task return of each run's final student beside its teacher."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, run in runs.items():
        rows = [r for r in run["rounds"] if r["mean_score"] is not None]
        axes[0].plot([r["labels_used"] for r in rows], [r["mean_score"] for r in rows], marker="o", label=name)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set(title="score vs labels (0 random, 1 teacher)", xlabel="teacher labels used", ylabel="mean score")
    axes[0].legend(fontsize=8)
    first = next(iter(runs.values()))
    tasks = list(first["teacher"])
    width = 0.8 / (len(runs) + 1)
    bars = axes[1].bar([i for i in range(len(tasks))], [first["teacher"][t]["return_mean"] for t in tasks], width,
                       label="teacher")
    label_dropped(axes[1], bars, [first["teacher"][t] for t in tasks])
    for k, (name, run) in enumerate(runs.items(), start=1):
        rows = [run["rounds"][-1]["tasks"][t] for t in tasks]
        bars = axes[1].bar([i + k * width for i in range(len(tasks))], [r["return_mean"] for r in rows], width,
                           label=name)
        label_dropped(axes[1], bars, rows)
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=20)
    axes[1].set(title="final student vs teacher return per task", ylabel="return")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def label_dropped(ax: Any, bars: Any, rows: list[dict[str, Any]]) -> None:
    """Write "<n> dropped" over the bars of the task rows with episodes ended by a fault (``dropped``)."""
    counts = [int(r.get("dropped", 0)) for r in rows]
    if any(counts):
        ax.bar_label(bars, labels=[f"{c} dropped" if c else "" for c in counts], fontsize=7, color="red")


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write the figure as PNG atomically (creating its folder) and close it."""
    path = Path(path)
    try:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path
