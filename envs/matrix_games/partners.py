"""The partner zoo: fixed policies for player 1 of a repeated matrix game.

Paper: Riemer et al. 2024 (arXiv 2412.19726) evaluate against a *single-action* partner and a
*tit-for-tat* partner defined per game: RPS-TFT plays the best response to the agent's previous
action, BoS-TFT copies it, PD-TFT is classic TFT (cooperate first, then copy). The other partners
(cycle, win-stay-lose-shift, grim trigger, biased random, best response to the agent's empirical
frequencies, a partner that switches strategy mid-game) are additions of this framework.

Every partner is a finite-state machine written as three pure functions, so that the same code
drives play *and* the exact best-response oracle (``envs.matrix_games.oracle``):

* ``initial_state()`` -> a hashable state,
* ``policy(state)`` -> probabilities over the partner's actions,
* ``next_state(state, partner_action, agent_action)`` -> the state after a round.

``reset/act/observe`` play it; ``act`` samples only when the policy is not deterministic, from
the partner's own generator, so a partner is deterministic given its seed.

Conventions chosen here (the paper does not say): a TFT partner opens with action 0 (rock,
cooperate, football); "auto" TFT means best response in zero-sum games and copy otherwise, which
gives the paper's three definitions for RPS, BoS and PD; WSLS "wins" when its reward is above
the midpoint of its payoff range and otherwise shifts to its next action (index + 1); ties of a
best response go to the lowest action index.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from envs.matrix_games.games import MatrixGame

State = Hashable


class Partner(ABC):
    """Player 1's policy with memory; subclasses define the three pure functions."""

    name = "partner"

    def __init__(self, game: MatrixGame, seed: int | None = None) -> None:
        self.game = game
        self._eye = np.eye(game.n_partner_actions)
        self.rng = np.random.default_rng(seed)
        self.state: State = None
        self._ready = False  # set by reset(): subclass fields exist only after __init__

    # ---- the machine (pure; the oracle calls these) ---------------------------------------
    @abstractmethod
    def initial_state(self) -> State:
        """State before the first round."""

    @abstractmethod
    def policy(self, state: State) -> np.ndarray:
        """Probabilities of the partner's actions in ``state`` (shape [n_partner_actions])."""

    @abstractmethod
    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        """State after a round in which the partner played ``partner_action``."""

    # ---- play -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start a new game; a seed restarts the partner's random generator."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state = self.initial_state()
        self._ready = True

    def act(self) -> int:
        """The partner's action this round (sampled only if its policy is stochastic)."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}: call reset() before act()")
        probs = self.policy(self.state)
        top = int(np.argmax(probs))
        if probs[top] >= 1.0:
            return top
        return int(self.rng.choice(len(probs), p=probs))

    def observe(self, partner_action: int, agent_action: int) -> None:
        """Advance the partner's memory by one round."""
        self.state = self.next_state(self.state, int(partner_action), int(agent_action))

    # ---- helpers --------------------------------------------------------------------------
    def _onehot(self, action: int) -> np.ndarray:
        return self._eye[action]

    def _partner_action(self, action: int | str | None, default: int = 0) -> int:
        return default if action is None else self.game.action_index(action, player=1)

    def _best_response(self, agent_probs: np.ndarray) -> int:
        """Partner's best response to a distribution over the agent's actions (lowest index on ties)."""
        expected = agent_probs @ self.game.partner_payoffs
        return int(np.argmax(expected >= expected.max() - 1e-9))  # first of the ties


class Constant(Partner):
    """Always the same action ("single action" partner of the paper; default action 0)."""

    name = "constant"

    def __init__(self, game: MatrixGame, seed: int | None = None, action: int | str | None = None):
        super().__init__(game, seed)
        self.action = self._partner_action(action)

    def initial_state(self) -> State:
        return 0

    def policy(self, state: State) -> np.ndarray:
        return self._onehot(self.action)

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        return 0


class Cycle(Partner):
    """Plays ``sequence`` over and over (default: every action in index order)."""

    name = "cycle"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        sequence: Sequence[int | str] | None = None,
    ):
        super().__init__(game, seed)
        seq = range(game.n_partner_actions) if sequence is None else sequence
        self.sequence = tuple(self._partner_action(a) for a in seq)
        if not self.sequence:
            raise ValueError("cycle partner: sequence must not be empty")

    def initial_state(self) -> State:
        return 0

    def policy(self, state: State) -> np.ndarray:
        return self._onehot(self.sequence[state])

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        return (state + 1) % len(self.sequence)


TFT_MODES = ("auto", "copy", "best_response")


class TitForTat(Partner):
    """Tit-for-tat as Riemer et al. define it per game.

    ``mode``: "copy" plays the agent's previous action (BoS, classic PD TFT), "best_response"
    plays the best response to it (RPS), "auto" picks best response for zero-sum games and copy
    otherwise. ``first`` is the opening action (default 0: rock / cooperate / football).
    """

    name = "tit_for_tat"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        mode: str = "auto",
        first: int | str | None = None,
    ):
        super().__init__(game, seed)
        if mode not in TFT_MODES:
            raise ValueError(f"tit_for_tat: mode {mode!r}; valid: {', '.join(TFT_MODES)}")
        self.mode = ("best_response" if game.zero_sum else "copy") if mode == "auto" else mode
        if self.mode == "copy" and game.n_actions != game.n_partner_actions:
            raise ValueError("tit_for_tat mode 'copy' needs both players to have the same actions")
        self.first = self._partner_action(first)
        eye = np.eye(game.n_actions)
        self._reply = [
            a if self.mode == "copy" else self._best_response(eye[a]) for a in range(game.n_actions)
        ]

    def initial_state(self) -> State:
        return None  # no previous agent action yet

    def policy(self, state: State) -> np.ndarray:
        return self._onehot(self.first if state is None else self._reply[state])

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        return agent_action


class WinStayLoseShift(Partner):
    """Win-stay lose-shift (Pavlov): repeat the last action after a win, else move to the next.

    A round is a win when the partner's reward is strictly above ``aspiration`` (default: the
    midpoint of its payoff range; in PD this is classic Pavlov). The state is the action to play.
    """

    name = "wsls"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        first: int | str | None = None,
        aspiration: float | None = None,
    ):
        super().__init__(game, seed)
        pay = game.partner_payoffs
        self.first = self._partner_action(first)
        self.aspiration = (
            float(pay.min() + pay.max()) / 2 if aspiration is None else float(aspiration)
        )

    def initial_state(self) -> State:
        return self.first

    def policy(self, state: State) -> np.ndarray:
        return self._onehot(state)

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        won = self.game.partner_payoffs[agent_action, partner_action] > self.aspiration
        return partner_action if won else (partner_action + 1) % self.game.n_partner_actions


class GrimTrigger(Partner):
    """Plays ``cooperate`` until the agent first plays anything but ``cooperate``; then ``punish``.

    Defaults: cooperate = action 0, punish = the last action (PD: cooperate / defect). The
    agent's cooperative action has the same index (or name) as the partner's.
    """

    name = "grim_trigger"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        cooperate: int | str | None = None,
        punish: int | str | None = None,
    ):
        super().__init__(game, seed)
        self.cooperate = self._partner_action(cooperate)
        self.punish = self._partner_action(punish, default=game.n_partner_actions - 1)
        name = cooperate if isinstance(cooperate, str) else self.cooperate
        self.agent_cooperate = game.action_index(name, player=0)

    def initial_state(self) -> State:
        return False  # not triggered

    def policy(self, state: State) -> np.ndarray:
        return self._onehot(self.punish if state else self.cooperate)

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        return bool(state) or agent_action != self.agent_cooperate


class BiasedRandom(Partner):
    """Draws every action independently: ``probs``, or ``favorite`` with probability ``bias``.

    The rest of the mass is spread evenly over the other actions. Random but reproducible: the
    draws come from the partner's seeded generator.
    """

    name = "biased_random"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        favorite: int | str | None = None,
        bias: float = 0.7,
        probs: Sequence[float] | None = None,
    ):
        super().__init__(game, seed)
        n = game.n_partner_actions
        if probs is None:
            if not 0.0 <= bias <= 1.0:
                raise ValueError(f"biased_random: bias must be in [0, 1], got {bias}")
            fav = self._partner_action(favorite)
            p = np.full(n, (1.0 - bias) / max(n - 1, 1))
            p[fav] = bias if n > 1 else 1.0
        else:
            p = np.asarray(probs, dtype=np.float64)
            if p.shape != (n,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
                raise ValueError(
                    f"biased_random: probs must be {n} non-negative numbers summing to 1, got {probs}"
                )
        self.probs = p / p.sum()
        self.probs.setflags(write=False)

    def initial_state(self) -> State:
        return 0

    def policy(self, state: State) -> np.ndarray:
        return self.probs

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        return 0


class FictitiousPlay(Partner):
    """Best response to the empirical frequencies of the agent's past actions.

    Before any round (no counts) it best-responds to a uniform agent; ties go to the lowest
    index. The state is the tuple of the agent's action counts.
    """

    name = "fictitious_play"

    def initial_state(self) -> State:
        return (0,) * self.game.n_actions

    def policy(self, state: State) -> np.ndarray:
        total = sum(state)
        # Counts instead of frequencies: the same argmax, and exact in float arithmetic.
        weights = np.asarray(state, dtype=np.float64) if total else np.ones(len(state))
        return self._onehot(self._best_response(weights))

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        counts = list(state)
        counts[agent_action] += 1
        return tuple(counts)


class Switching(Partner):
    """Plays partner ``first`` for rounds 0..switch_round-1, then partner ``second``.

    Both inner partners see every round from the start, so ``second`` takes over with its
    memory intact (a TFT taking over reacts to the agent's previous move).
    """

    name = "switching"

    def __init__(
        self,
        game: MatrixGame,
        seed: int | None = None,
        first: str = "constant",
        second: str = "tit_for_tat",
        switch_round: int = 50,
        first_kwargs: Mapping[str, Any] | None = None,
        second_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__(game, seed)
        if switch_round < 0:
            raise ValueError(f"switching: switch_round must be >= 0, got {switch_round}")
        if "switching" in (first, second):
            raise ValueError("switching: the inner partners cannot be switching partners")
        self.switch_round = int(switch_round)
        self.first = make_partner(first, game, seed, **dict(first_kwargs or {}))
        self.second = make_partner(second, game, seed, **dict(second_kwargs or {}))

    def initial_state(self) -> State:
        return (0, self.first.initial_state(), self.second.initial_state())

    def policy(self, state: State) -> np.ndarray:
        t, s1, s2 = state
        return self.first.policy(s1) if t < self.switch_round else self.second.policy(s2)

    def next_state(self, state: State, partner_action: int, agent_action: int) -> State:
        t, s1, s2 = state
        return (
            min(t + 1, self.switch_round),  # the round count matters only until the switch
            self.first.next_state(s1, partner_action, agent_action),
            self.second.next_state(s2, partner_action, agent_action),
        )


_PARTNER_CLASSES: dict[str, type[Partner]] = {
    cls.name: cls
    for cls in (
        Constant,
        Cycle,
        TitForTat,
        WinStayLoseShift,
        GrimTrigger,
        BiasedRandom,
        FictitiousPlay,
        Switching,
    )
}
PARTNERS: tuple[str, ...] = tuple(_PARTNER_CLASSES)


def partner_params(name: str) -> list[str]:
    """Keyword arguments the partner ``name`` accepts (besides game and seed)."""
    cls = _partner_class(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "game", "seed")]


def _partner_class(name: str) -> type[Partner]:
    if name not in _PARTNER_CLASSES:
        raise ValueError(f"unknown partner {name!r}; valid partners: {', '.join(PARTNERS)}")
    return _PARTNER_CLASSES[name]


def make_partner(name: str, game: MatrixGame, seed: int | None = None, **kwargs: Any) -> Partner:
    """Build (and reset) the partner ``name`` for ``game``; bad names or kwargs list the valid ones."""
    cls = _partner_class(name)
    unknown = sorted(set(kwargs) - set(partner_params(name)))
    if unknown:
        valid = ", ".join(partner_params(name)) or "(none)"
        raise ValueError(f"partner {name!r} has no parameter {unknown}; valid: {valid}")
    partner = cls(game, seed, **kwargs)
    partner.reset()
    return partner


def partner_label(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """Name of a partner in result tables: ``constant``, or ``constant[action=paper]``.

    Only parameters that differ from the partner's defaults (and are not None) are shown.
    """
    defaults = {
        k: p.default for k, p in inspect.signature(_partner_class(name).__init__).parameters.items()
    }
    items = [
        f"{k}={_short(v)}"
        for k, v in sorted((kwargs or {}).items())
        if v is not None and not _same(v, defaults.get(k, inspect.Parameter.empty))
    ]
    return f"{name}[{';'.join(items)}]" if items else name


def _same(value: Any, default: Any) -> bool:
    if default is None and isinstance(value, Mapping | list | tuple):
        return len(value) == 0
    return value == default


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ";".join(f"{k}={_short(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list | tuple):
        return "-".join(_short(v) for v in value)
    return str(value)
