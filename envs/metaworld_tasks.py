"""Metaworld (MT10 / MT50) tasks as suite envs, each drawing one of its goal variations per reset.

Needs the ``metaworld`` extra, which pins mujoco 3.3.0 and so lives in its own venv
(``scripts/setup_metaworld.sh`` -> ``.venv-metaworld``); this module imports metaworld only when an env is
built, so the default install can import it.

Goal variations: Metaworld's benchmark object (``metaworld.MT10(seed)`` / ``MT50(seed)``, built once per
process and benchmark seed) holds 50 variations per task (object and goal positions). The first
:data:`N_TRAIN_GOALS` are the ``train`` goals, the remaining ones the ``held_out`` goals: a fixed split, the same
in every process. Each reset draws one variation of the chosen split from the reset seed (the same seed gives
the same variation, hence the same episode for a deterministic policy); without a seed, from the env's own
generator.

An episode ends (``terminated``) at success, Metaworld's ``info["success"]`` (reported as
``info["is_success"]``), or is truncated after ``max_episode_steps`` (500) steps.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

N_GOALS = 50
N_TRAIN_GOALS = 40
GOAL_SPLITS = ("train", "held_out", "all")
BENCHMARKS = ("MT10", "MT50")
MAX_EPISODE_STEPS = 500
INSTALL_HINT = ("the Metaworld suites need the 'metaworld' extra (metaworld 3.1.1, mujoco 3.3.0) in their own venv: "
                "bash scripts/setup_metaworld.sh, then use .venv-metaworld/bin/python")


def require_metaworld():
    """The ``metaworld`` module, or an ImportError that says how to install it."""
    try:
        import metaworld
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return metaworld


def goal_indices(goals: str) -> tuple[int, ...]:
    """The variation indices (of :data:`N_GOALS`) of split ``goals``: ``train``, ``held_out`` or ``all``."""
    if goals == "train":
        return tuple(range(N_TRAIN_GOALS))
    if goals == "held_out":
        return tuple(range(N_TRAIN_GOALS, N_GOALS))
    if goals == "all":
        return tuple(range(N_GOALS))
    raise ValueError(f"goals must be one of {GOAL_SPLITS}, got {goals!r}")


def goal_index(seed: int, goals: str = "train") -> int:
    """The variation index a reset with ``seed`` draws from split ``goals`` (deterministic)."""
    pool = goal_indices(goals)
    return pool[int(np.random.default_rng([int(seed), 0x6D77]).integers(len(pool)))]


@functools.lru_cache(maxsize=4)
def _benchmark(name: str, seed: int):
    """Metaworld's benchmark object (its 50 goal variations per task are drawn from ``seed``), once per process."""
    metaworld = require_metaworld()
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {name!r}")
    return getattr(metaworld, name)(seed=seed)


def benchmark_tasks(benchmark: str, task: str, seed: int = 0) -> tuple[type, list[Any]]:
    """The env class of ``task`` (a Metaworld name, e.g. ``reach-v3``) in ``benchmark`` and its 50 variations."""
    bench = _benchmark(benchmark, seed)
    if task not in bench.train_classes:
        raise ValueError(f"{benchmark} has no task {task!r}; its tasks are {list(bench.train_classes)}")
    variations = [t for t in bench.train_tasks if t.env_name == task]
    if len(variations) != N_GOALS:
        raise RuntimeError(f"{benchmark} gives {len(variations)} goal variations of {task}, expected {N_GOALS}")
    return bench.train_classes[task], variations


def task_names(benchmark: str, seed: int = 0) -> list[str]:
    """The Metaworld task names of ``benchmark``, in its order."""
    return list(_benchmark(benchmark, seed).train_classes)


class MetaworldTask(gym.Env):
    """One Metaworld task of ``benchmark`` over the goal variations of split ``goals``.

    Observation groups: ``policy`` = Metaworld's 39-dim observation (hand position, gripper opening, object
    poses, the previous frame's same, goal position). Action: (4,) in [-1, 1] (hand xyz motion, gripper).
    ``info["goal_index"]`` is the variation of the current episode.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array"], "render_fps": 80}

    def __init__(self, task: str = "reach-v3", benchmark: str = "MT10", goals: str = "train",
                 benchmark_seed: int = 0, max_episode_steps: int = MAX_EPISODE_STEPS,
                 render_mode: str | None = None, width: int = 480, height: int = 480,
                 camera_name: str | None = "corner") -> None:
        self.pool = goal_indices(goals)
        if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int) or max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be an int >= 1, got {max_episode_steps!r}")
        cls, self.variations = benchmark_tasks(benchmark, task, benchmark_seed)
        self.task, self.benchmark, self.goals = task, benchmark, goals
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.sim = cls(render_mode=render_mode, width=width, height=height, camera_name=camera_name)
        self.sim.max_path_length = max(self.sim.max_path_length, max_episode_steps)
        self.sim.set_task(self.variations[self.pool[0]])  # sets the observation space (goal observable)
        # unbounded: Metaworld clips stepped observations to its bounds but not the one a reset returns
        dim = self.sim.observation_space.shape[0]
        self.observation_space = spaces.Dict({"policy": spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.goal_index: int | None = None
        self.steps = 0

    @property
    def data(self):
        """The MuJoCo data (what :class:`~policydistill.suites.wrappers.SafeEpisodes` watches for instability)."""
        return self.sim.data

    def _obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"policy": np.asarray(obs, dtype=np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.goal_index = goal_index(seed, self.goals)
            self.sim.seed(int(seed))
        else:
            self.goal_index = self.pool[int(self.np_random.integers(len(self.pool)))]
        self.sim.set_task(self.variations[self.goal_index])
        obs, _ = self.sim.reset()
        self.steps = 0
        return self._obs(obs), {"goal_index": self.goal_index, "is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(4), -1.0, 1.0)
        obs, reward, _, _, info = self.sim.step(action)
        self.steps += 1
        success = bool(info.get("success", False))
        info = {**info, "is_success": success, "goal_index": self.goal_index}
        return self._obs(obs), float(reward), success, self.steps >= self.max_episode_steps and not success, info

    def render(self):
        return self.sim.render()

    def close(self) -> None:
        self.sim.close()
