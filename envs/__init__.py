"""Task-suite environments, registered with gymnasium under ``policydistill/...`` ids."""

from __future__ import annotations

import gymnasium as gym

POINT_REACH_ID = "policydistill/PointReach-v0"
CHEETAH_SPEED_ID = "policydistill/CheetahSpeed-v0"
QUADRUPED_TERRAIN_ID = "policydistill/QuadrupedTerrain-v0"

_SPECS: dict[str, tuple[str, int]] = {
    POINT_REACH_ID: ("policydistill_envs.point_reach:PointReachEnv", 100),
    CHEETAH_SPEED_ID: ("policydistill_envs.cheetah_speed:CheetahSpeedEnv", 400),
    QUADRUPED_TERRAIN_ID: ("policydistill_envs.quadruped_terrain:QuadrupedTerrainEnv", 500),
}


def register_envs() -> None:
    """Register every suite env with gymnasium; calling it again is a no-op."""
    for env_id, (entry_point, max_steps) in _SPECS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


register_envs()

__all__ = ["CHEETAH_SPEED_ID", "POINT_REACH_ID", "QUADRUPED_TERRAIN_ID", "register_envs"]
