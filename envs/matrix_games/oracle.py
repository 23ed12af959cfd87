"""Exact best response to a known partner over a finite horizon, for exact regret.

Riemer et al. 2024 (arXiv 2412.19726) measure functional theory of mind by the regret
Delta = sum_t (r*_t - r_t) against the best-response policy; against a reactive partner (TFT) the
best response is a policy, not one action. Because every partner of ``partners.py`` is a
finite-state machine, the partner folded into the game is a finite MDP whose state is the
partner's memory, and backward induction over the remaining rounds gives the optimal expected
return exactly: V_T(s) = 0, V_t(s) = max_a sum_b pi(b|s) (R[a, b] + V_{t+1}(next(s, b, a))).
For stochastic partners this is the optimum in expectation for an agent that knows the
partner's policy but not its random draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.matrix_games.games import MatrixGame, make_game
from envs.matrix_games.partners import Partner, State, make_partner


def optimal_values(game: MatrixGame, partner: Partner, rounds: int) -> list[dict[State, float]]:
    """``values[t][s]``: optimal expected return of rounds t..rounds-1 from partner state s.

    Only states reachable from ``partner.initial_state()`` are evaluated (forward sweep first),
    so counting partners stay cheap for T = 100.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    reward = game.agent_payoffs
    n_a = game.n_actions
    layers: list[set[State]] = [{partner.initial_state()}]
    policies: dict[State, tuple[np.ndarray, np.ndarray]] = {}

    def support(state: State) -> tuple[np.ndarray, np.ndarray]:
        if state not in policies:
            probs = np.asarray(partner.policy(state), dtype=np.float64)
            actions = np.flatnonzero(probs > 0)
            policies[state] = (actions, probs[actions])
        return policies[state]

    for _ in range(rounds - 1):
        nxt: set[State] = set()
        for s in layers[-1]:
            for b in support(s)[0]:
                nxt.update(partner.next_state(s, int(b), a) for a in range(n_a))
        layers.append(nxt)

    values: list[dict[State, float]] = [{} for _ in range(rounds + 1)]
    for t in reversed(range(rounds)):
        later = values[t + 1]
        for s in layers[t]:
            actions, probs = support(s)
            best = -np.inf
            for a in range(n_a):
                q = 0.0
                for b, p in zip(actions, probs):
                    b = int(b)
                    future = later[partner.next_state(s, b, a)] if t + 1 < rounds else 0.0
                    q += p * (reward[a, b] + future)
                best = max(best, q)
            values[t][s] = float(best)
    return values


def optimal_value(game: MatrixGame, partner: Partner, rounds: int) -> float:
    """Optimal expected return over ``rounds`` rounds against ``partner`` from its start state."""
    if rounds == 0:
        return 0.0
    return optimal_values(game, partner, rounds)[0][partner.initial_state()]


def best_response_value(
    game: str | MatrixGame, partner_name: str, seed: int | None, rounds: int, **partner_kwargs: Any
) -> float:
    """The exact optimal expected return against partner ``partner_name`` over ``rounds``.

    Regret of an agent that got return G is ``best_response_value(...) - G``.
    """
    g = make_game(game)
    return optimal_value(g, make_partner(partner_name, g, seed, **partner_kwargs), rounds)
