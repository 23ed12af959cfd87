"""Environments and task distributions; ``envs.make(name, **kwargs)`` creates any of them.

Importing this package registers every env with our registry and, for
single-agent envs, with gymnasium (ids ``icrl/...``). New env modules register
themselves at import and are imported here.
"""

from __future__ import annotations

from envs.aloha import AlohaEnv
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
from envs.point_reach import PointReachEnv, PointReachExpert
from envs.registry import (
    make,
    make_tasks,
    register_env,
    register_tasks,
    registered_envs,
    registered_tasks,
)

__all__ = [
    "AlohaEnv",
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
