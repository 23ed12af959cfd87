"""Environments and task distributions; ``envs.make(name, **kwargs)`` creates any of them.

Importing this package registers every env with our registry and, for
single-agent envs, with gymnasium (ids ``icrl/...``). New env modules register
themselves at import and are imported here.
"""

from __future__ import annotations

from envs.aloha import AlohaEnv
from envs.atari import AtariConfig, AtariEnv
from envs.crafter_env import CrafterEnv, crafter_score
from envs.darkroom import (
    DarkRoomEnv,
    DarkRoomTasks,
    KeyDoorEnv,
    KeyDoorTask,
    KeyDoorTasks,
    darkroom_reward,
    darkroom_step,
    keydoor_reward,
)
from envs.matrix_games import (
    GAMES,
    PARTNERS,
    MatrixGame,
    MatrixGameEnv,
    SingleAgentMatrixGame,
    best_response_value,
    make_game,
    make_partner,
)
from envs.minigrid_env import MiniGridEnv
from envs.point_reach import PointReachEnv, PointReachExpert
from envs.procgen_env import ProcgenEnv
from envs.registry import (
    make,
    make_tasks,
    register_env,
    register_tasks,
    registered_envs,
    registered_tasks,
)
from envs.vector import env_fns, make_vector, vectorization

__all__ = [
    "AlohaEnv",
    "AtariConfig",
    "AtariEnv",
    "CrafterEnv",
    "MiniGridEnv",
    "ProcgenEnv",
    "crafter_score",
    "env_fns",
    "make_vector",
    "vectorization",
    "GAMES",
    "PARTNERS",
    "MatrixGame",
    "MatrixGameEnv",
    "SingleAgentMatrixGame",
    "best_response_value",
    "make_game",
    "make_partner",
    "DarkRoomEnv",
    "DarkRoomTasks",
    "KeyDoorEnv",
    "KeyDoorTask",
    "KeyDoorTasks",
    "PointReachEnv",
    "PointReachExpert",
    "darkroom_reward",
    "darkroom_step",
    "keydoor_reward",
    "make",
    "make_tasks",
    "register_env",
    "register_tasks",
    "registered_envs",
    "registered_tasks",
]
