"""Headless videos of one episode per task with MuJoCo's offscreen renderer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from policydistill.policy import Policy
from policydistill.suite import Suite
from policydistill.types import select_groups, stack_obs

log = logging.getLogger(__name__)


def configure_headless_gl() -> str:
    """Pick MuJoCo's GL backend unless the user set one: EGL with a GPU driver, OSMesa otherwise."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if Path("/dev/nvidia0").exists() else "osmesa"
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def _writer_suffix() -> str:
    try:
        import imageio_ffmpeg  # noqa: F401

        return ".mp4"
    except ImportError:
        return ".gif"


def record_video(suite: Suite, task: int | str, policy: Policy, path: str | Path, seed: int = 0,
                 max_steps: int = 200, fps: int | None = None) -> Path:
    """Roll out one seeded episode (at most ``max_steps``) and write it as MP4 (with imageio-ffmpeg)
    or GIF. Returns the written path (its suffix tells the format)."""
    import imageio.v3 as iio

    configure_headless_gl()
    env = suite.make_env(task, render_mode="rgb_array")
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        policy.reset(None)
        frames.append(env.render())
        for _ in range(max_steps):
            action = policy.act(select_groups(stack_obs([obs]), policy.groups))[0]
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            if terminated or truncated:
                break
        dt = getattr(env.unwrapped, "dt", 0.05)
    finally:
        env.close()
    path = Path(path).with_suffix(_writer_suffix())
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = fps or max(1, round(1.0 / dt))
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if path.suffix == ".mp4":
        iio.imwrite(tmp, np.stack(frames), fps=fps, extension=".mp4", macro_block_size=1)
    else:
        iio.imwrite(tmp, np.stack(frames), duration=1000.0 / fps, loop=0)
    os.replace(tmp, path)
    log.info("video of task %s: %s (%d frames)", task, path, len(frames))
    return path
