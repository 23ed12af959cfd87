"""Payoff bimatrices of the repeated two-player games and their presets.

Paper: Riemer et al. 2024, "Can Large Language Models Adapt to Other Agents In-Context?"
(arXiv 2412.19726; v2 "Position: Theory of Mind Benchmarks are Broken for LLMs", ICML 2025).
Its games are rock-paper-scissors (RPS), the iterated prisoner's dilemma (IPD) and the iterated
battle of the sexes (IBS). The paper's exact payoffs are not known to us (only a third-party
summary was read): RPS is win/tie/loss = +1/0/-1, and for PD and BoS we take Akata et al. 2023's
numbers ("Playing repeated games with LLMs", code ``eliaka/repeatedgames``: PD 8/0/10/5, BoS
10/7/0), which fit the paper's reported regrets; the textbook payoffs are presets too
(``pd_textbook`` 3/0/5/1, ``bos_textbook`` 2/1/0), and any bimatrix can be given.

Convention: ``payoffs[a, b] = (reward of player 0, reward of player 1)`` when player 0 (the
agent) plays ``a`` and player 1 (the partner) plays ``b``. Action names are what an LLM's prompt
shows; Akata's neutral labels "J"/"F" are replaced by descriptive names (deviation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class MatrixGame:
    """A two-player normal-form game, played repeatedly by the envs of this package.

    Args:
        name: short label used in result tables and prompts.
        actions: names of player 0's actions (and of player 1's unless ``partner_actions``).
        payoffs: ``[n_actions_0, n_actions_1, 2]`` rewards (player 0, player 1).
        partner_actions: names of player 1's actions when they differ from ``actions``.
    """

    name: str
    actions: tuple[str, ...]
    payoffs: np.ndarray
    partner_actions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        payoffs = np.array(self.payoffs, dtype=np.float64)  # a private, read-only copy
        if payoffs.ndim != 3 or payoffs.shape[2] != 2 or min(payoffs.shape[:2]) < 1:
            raise ValueError(
                f"game {self.name!r}: payoffs must have shape [n_actions_0, n_actions_1, 2] "
                f"(one (player 0, player 1) pair per joint action), got shape {payoffs.shape}"
            )
        if not np.isfinite(payoffs).all():
            raise ValueError(f"game {self.name!r}: payoffs must be finite numbers")
        payoffs.setflags(write=False)
        actions = tuple(str(a) for a in self.actions)
        partner = tuple(str(a) for a in self.partner_actions) if self.partner_actions else actions
        n0, n1 = payoffs.shape[:2]
        for who, names, n in (("actions", actions, n0), ("partner_actions", partner, n1)):
            if len(names) != n:
                raise ValueError(
                    f"game {self.name!r}: {len(names)} {who} {names} for {n} rows/columns of payoffs"
                )
            if len(set(names)) != len(names):
                raise ValueError(f"game {self.name!r}: {who} must be distinct, got {names}")
        object.__setattr__(self, "payoffs", payoffs)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "partner_actions", partner)

    @property
    def n_actions(self) -> int:
        """Number of actions of player 0 (the agent)."""
        return int(self.payoffs.shape[0])

    @property
    def n_partner_actions(self) -> int:
        """Number of actions of player 1 (the partner)."""
        return int(self.payoffs.shape[1])

    @property
    def agent_payoffs(self) -> np.ndarray:
        """``[n_actions_0, n_actions_1]`` rewards of player 0."""
        return self.payoffs[..., 0]

    @property
    def partner_payoffs(self) -> np.ndarray:
        """``[n_actions_0, n_actions_1]`` rewards of player 1 (indexed agent action first)."""
        return self.payoffs[..., 1]

    @property
    def r_max(self) -> float:
        """Largest reward player 0 can get (R-max's optimistic value)."""
        return float(self.agent_payoffs.max())

    @property
    def zero_sum(self) -> bool:
        """Whether the two rewards add to the same constant in every cell (RPS)."""
        total = self.payoffs.sum(axis=2)
        return bool(np.allclose(total, total.flat[0]))

    def action_index(self, action: int | str, player: int = 0) -> int:
        """Index of an action given by index or by name (config files may use names)."""
        names = self.actions if player == 0 else self.partner_actions
        assert names is not None
        if isinstance(action, str) and not action.lstrip("-").isdigit():
            if action not in names:
                raise ValueError(
                    f"game {self.name!r} has no action {action!r} for player {player}; "
                    f"valid: {', '.join(names)}"
                )
            return names.index(action)
        index = int(action)
        if not 0 <= index < len(names):
            raise ValueError(
                f"game {self.name!r}: action index {index} out of range [0, {len(names)})"
            )
        return index

    def __repr__(self) -> str:
        return f"MatrixGame({self.name!r}, actions={self.actions}, payoffs={self.payoffs.tolist()})"


def _symmetric(name: str, actions: tuple[str, ...], agent: list[list[float]]) -> MatrixGame:
    """A symmetric game from player 0's matrix: player 1 gets ``agent[b][a]``."""
    a = np.asarray(agent, dtype=np.float64)
    return MatrixGame(name, actions, np.stack([a, a.T], axis=-1))


def _pd(name: str, reward: float, sucker: float, temptation: float, punishment: float):
    return _symmetric(name, ("cooperate", "defect"), [[reward, sucker], [temptation, punishment]])


def _bos(name: str, high: float, low: float, miss: float) -> MatrixGame:
    # Player 0 prefers "football" (index 0), player 1 prefers "ballet" (index 1).
    payoffs = [[(high, low), (miss, miss)], [(miss, miss), (low, high)]]
    return MatrixGame(name, ("football", "ballet"), np.asarray(payoffs, dtype=np.float64))


GAMES: dict[str, MatrixGame] = {
    "rps": _symmetric("rps", ("rock", "paper", "scissors"), [[0, -1, 1], [1, 0, -1], [-1, 1, 0]]),
    "pd": _pd("pd", 8, 0, 10, 5),  # Akata et al.: CC 8/8, CD 0/10, DC 10/0, DD 5/5
    "bos": _bos("bos", 10, 7, 0),  # Akata et al.: 10/7 on the agent's choice, 7/10 on the other
    "pd_textbook": _pd("pd_textbook", 3, 0, 5, 1),  # R/S/T/P
    "bos_textbook": _bos("bos_textbook", 2, 1, 0),
}


def make_game(
    game: str | MatrixGame | Mapping[str, Any] | Sequence[Any],
    *,
    name: str | None = None,
    actions: Sequence[str] | None = None,
    partner_actions: Sequence[str] | None = None,
) -> MatrixGame:
    """A game from a preset name, a config mapping, or a user-given bimatrix.

    Accepted: ``"rps"`` (a key of ``GAMES``); a ``MatrixGame``; a mapping
    ``{name, actions?, payoffs?, partner_actions?}`` (no payoffs: the preset ``name``, optionally
    with renamed actions); or nested lists ``[n_actions_0][n_actions_1][2]`` (actions default to
    ``a0, a1, ...`` and, for a non-square game, the partner's to ``b0, b1, ...``).
    """
    if isinstance(game, MatrixGame):
        return game
    if isinstance(game, str):
        if game not in GAMES:
            raise ValueError(
                f"unknown game {game!r}; presets: {', '.join(GAMES)} "
                "(or give a payoff bimatrix [n_actions_0][n_actions_1][2])"
            )
        return GAMES[game]
    if isinstance(game, Mapping):
        unknown = set(game) - {"name", "actions", "payoffs", "partner_actions"}
        if unknown:
            raise ValueError(
                f"unknown game keys {sorted(unknown)}; valid: name, actions, payoffs, partner_actions"
            )
        if game.get("payoffs") is None:
            preset = make_game(str(game.get("name")))
            if game.get("actions") is None and game.get("partner_actions") is None:
                return preset
            return MatrixGame(
                preset.name,
                tuple(game.get("actions") or preset.actions),
                preset.payoffs,
                game.get("partner_actions") or preset.partner_actions,
            )
        return make_game(
            game["payoffs"],
            name=game.get("name"),
            actions=game.get("actions"),
            partner_actions=game.get("partner_actions"),
        )
    try:
        payoffs = np.asarray(game, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "a payoff bimatrix must be nested lists of numbers with shape "
            "[n_actions_0][n_actions_1][2] (ragged lists are not a matrix)"
        ) from None
    if payoffs.ndim != 3 or payoffs.shape[2] != 2:
        raise ValueError(
            f"a payoff bimatrix must have shape [n_actions_0][n_actions_1][2], got {payoffs.shape}"
        )
    n0, n1 = payoffs.shape[:2]
    names = tuple(actions) if actions is not None else tuple(f"a{i}" for i in range(n0))
    if partner_actions is None and n0 != n1:
        partner_actions = tuple(f"b{i}" for i in range(n1))
    return MatrixGame(name or "custom", names, payoffs, partner_actions)
