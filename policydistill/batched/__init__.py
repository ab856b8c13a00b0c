"""Batched tensor environments (IsaacGym-style): the protocol and its adapters.

Adapters import their engine only when used: :mod:`.gym_vector` (gymnasium vector envs),
:mod:`.vectask` (IsaacGym VecTask and envs in its style), :mod:`.rsl_rl` (rsl_rl's VecEnv, both ways).
"""

from policydistill.batched.protocol import BatchedEnv, BatchedEnvFactory, make_batched_env, obs_to_numpy

__all__ = ["BatchedEnv", "BatchedEnvFactory", "make_batched_env", "obs_to_numpy"]
