"""Repeated two-player matrix games, a partner zoo, and the exact best-response oracle.

Riemer et al. 2024 (arXiv 2412.19726): RPS, battle of the sexes and the prisoner's dilemma,
repeated for 100 rounds against fixed partners, to measure literal theory of mind (predicting
the partner) and functional theory of mind (regret against the best response). Modules:
``games`` (payoff bimatrices, presets), ``partners`` (the zoo), ``oracle`` (exact optimal
return by backward induction over the partner's state), ``env`` (PettingZoo ``ParallelEnv``
and the single-agent gymnasium view with the partner inside).

Registered envs: ``matrix`` (single-agent view, gymnasium id ``icrl/MatrixGame-v0``) and
``matrix_parallel`` (the two-player ``ParallelEnv``).
"""

from __future__ import annotations

from envs.matrix_games.env import AGENTS, MatrixGameEnv, SingleAgentMatrixGame
from envs.matrix_games.games import GAMES, MatrixGame, make_game
from envs.matrix_games.oracle import best_response_value, optimal_value, optimal_values
from envs.matrix_games.partners import (
    PARTNERS,
    Partner,
    make_partner,
    partner_label,
    partner_params,
)
from envs.registry import register_env

register_env("matrix", SingleAgentMatrixGame, gym_id="icrl/MatrixGame-v0")
register_env("matrix_parallel", MatrixGameEnv)

__all__ = [
    "AGENTS",
    "GAMES",
    "PARTNERS",
    "MatrixGame",
    "MatrixGameEnv",
    "Partner",
    "SingleAgentMatrixGame",
    "best_response_value",
    "make_game",
    "make_partner",
    "optimal_value",
    "optimal_values",
    "partner_label",
    "partner_params",
]
