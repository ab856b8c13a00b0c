"""Headless videos of one episode per task with MuJoCo's offscreen renderer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from gymnasium.wrappers import TimeLimit

from policydistill.eval.rollout import drive
from policydistill.files import atomic_write_with
from policydistill.policy import Policy
from policydistill.suites import Suite
from policydistill.suites.batched import GymEnvs
from policydistill.types import select_groups

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


def check_renderable(suite: Suite) -> None:
    """Render one frame of every task of ``suite`` offscreen; a missing renderer raises one clear ValueError
    before any episode is run."""
    from gymnasium.error import DependencyNotInstalled

    configure_headless_gl()
    for t, name in enumerate(suite.task_names):
        env = suite.make_env(t, render_mode="rgb_array")
        try:
            env.reset(seed=0)
            env.render()
        except (DependencyNotInstalled, ImportError) as e:
            raise ValueError(f"video=true cannot render task '{name}': {e}; install its renderer or drop "
                             "video=true") from None
        finally:
            env.close()


def record_video(suite: Suite, task: int | str, policy: Policy, path: str | Path, seed: int = 0,
                 max_steps: int = 200, fps: int | None = None) -> Path:
    """Roll out one seeded episode (at most ``max_steps``) through the rollout loop and write it as MP4
    (with imageio-ffmpeg) or GIF. Returns the written path (its suffix tells the format)."""
    import imageio.v3 as iio

    configure_headless_gl()
    t = suite.index(task) if isinstance(task, str) else task
    env = suite.make_env(t, render_mode="rgb_array")
    dt = getattr(env.unwrapped, "dt", 0.05)
    envs = GymEnvs([TimeLimit(env, max_steps)])
    frames: list[np.ndarray] = []

    def on_reset(mask: np.ndarray) -> None:
        policy.reset(mask)
        if not frames:
            frames.append(env.render())

    policy.reset(None)
    drive(envs, [t], suite.task_names, lambda obs: (policy.act(select_groups(obs, policy.groups)), {}), 1,
          seed=seed, on_reset=on_reset, on_step=lambda n: frames.append(env.render()))
    envs.close()
    path = Path(path).with_suffix(_writer_suffix())
    fps = fps or max(1, round(1.0 / dt))
    if path.suffix == ".mp4":
        atomic_write_with(path, lambda tmp: iio.imwrite(tmp, np.stack(frames), fps=fps, extension=".mp4",
                                                        macro_block_size=1))
    else:
        atomic_write_with(path, lambda tmp: iio.imwrite(tmp, np.stack(frames), extension=".gif",
                                                        duration=1000.0 / fps, loop=0))
    log.info("video of task %s: %s (%d frames)", task, path, len(frames))
    return path
