"""Repeated matrix games: a PettingZoo ``ParallelEnv`` and a single-agent gymnasium view.

Paper: Riemer et al. 2024 (arXiv 2412.19726), repeated RPS / BoS / PD over T = 100 rounds
against a fixed partner. PettingZoo's own ``classic/rps-v2`` shows only the opponent's last
action and fixed payoffs, so this env is written from scratch: any bimatrix, any number of
rounds, and each player observes the last ``history`` joint actions.

Observation of a player: ``history`` pairs ``(own action, other's action)``, oldest first,
flattened to ``MultiDiscrete([n_own + 1, n_other + 1] * history)``; the value ``n`` (one past the
last action) pads rounds that have not happened yet. Rewards come from the payoff bimatrix.
No termination; truncation after ``rounds`` rounds. ``info`` holds ``round`` (rounds played)
and ``history``, the tuple of all ``(own, other)`` joint actions so far (for prompts and
metrics), plus ``partner_action`` in the single-agent view (-1 after reset).

``SingleAgentMatrixGame`` puts a partner from ``partners.py`` inside the env (player 1) so that
every agent of the framework, and the rollout loop, can play; it is stepped through the
``ParallelEnv`` so there is one set of rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.matrix_games.games import MatrixGame, make_game
from envs.matrix_games.partners import Partner, make_partner

AGENTS = ("player_0", "player_1")


class MatrixGameEnv(ParallelEnv):
    """Two players choose simultaneously each round; a payoff bimatrix pays both.

    Args:
        game: preset name, ``MatrixGame``, config mapping or bimatrix (see ``make_game``).
        rounds: rounds per episode (default 100, as in the paper).
        history: how many past joint actions each player observes (>= 1).
        render_mode: None or "ansi".
    """

    metadata = {"name": "matrix_game_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(
        self,
        game: Any = "rps",
        rounds: int = 100,
        history: int = 1,
        render_mode: str | None = None,
    ) -> None:
        self.game: MatrixGame = make_game(game)
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if history < 1:
            raise ValueError(f"history must be >= 1 (rounds observed), got {history}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.rounds, self.history, self.render_mode = int(rounds), int(history), render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._n = (self.game.n_actions, self.game.n_partner_actions)
        self._joint: list[tuple[int, int]] = []
        self._last_rewards = (0.0, 0.0)
        # Built once: PettingZoo requires the same space object on every call.
        self._obs_spaces = {
            a: spaces.MultiDiscrete(
                [self._n[i] + 1, self._n[1 - i] + 1] * self.history, dtype=np.int64
            )
            for i, a in enumerate(AGENTS)
        }
        self._act_spaces = {a: spaces.Discrete(self._n[i]) for i, a in enumerate(AGENTS)}

    def observation_space(self, agent: str) -> spaces.MultiDiscrete:
        return self._obs_spaces[self._check_agent(agent)]

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._act_spaces[self._check_agent(agent)]

    @staticmethod
    def _check_agent(agent: str) -> str:
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r}; agents: {', '.join(AGENTS)}")
        return agent

    @property
    def round(self) -> int:
        """Rounds played so far in this episode."""
        return len(self._joint)

    @property
    def joint_history(self) -> tuple[tuple[int, int], ...]:
        """All ``(player_0 action, player_1 action)`` pairs of this episode."""
        return tuple(self._joint)

    def _view(self, i: int) -> tuple[tuple[int, int], ...]:
        return tuple((p[i], p[1 - i]) for p in self._joint)

    def _obs(self, i: int) -> np.ndarray:
        own, other = self._n[i], self._n[1 - i]
        pairs = [(own, other)] * self.history + [(p[i], p[1 - i]) for p in self._joint]
        return np.asarray(pairs[-self.history :], dtype=np.int64).reshape(-1)

    def _infos(self) -> dict[str, dict[str, Any]]:
        return {a: {"round": self.round, "history": self._view(i)} for i, a in enumerate(AGENTS)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.agents = list(self.possible_agents)
        self._joint = []
        self._last_rewards = (0.0, 0.0)
        return {a: self._obs(i) for i, a in enumerate(AGENTS)}, self._infos()

    def step(self, actions: Mapping[str, Any]):
        if not self.agents:
            raise RuntimeError("step() after the game ended; call reset()")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"step() needs an action for every live agent; missing {missing}")
        joint = tuple(int(actions[a]) for a in AGENTS)
        for agent, action in zip(AGENTS, joint):
            if not self.action_space(agent).contains(np.int64(action)):
                raise ValueError(
                    f"{agent}: action {actions[agent]!r} not in {self.action_space(agent)}"
                )
        self._joint.append(joint)  # type: ignore[arg-type]
        pay = self.game.payoffs[joint[0], joint[1]]
        self._last_rewards = (float(pay[0]), float(pay[1]))
        obs = {a: self._obs(i) for i, a in enumerate(AGENTS)}
        rewards = {a: self._last_rewards[i] for i, a in enumerate(AGENTS)}
        done = self.round >= self.rounds
        terminations = {a: False for a in AGENTS}
        truncations = {a: done for a in AGENTS}
        infos = self._infos()
        if done:
            self.agents = []
        return obs, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        """ANSI text of the last round."""
        if self.render_mode != "ansi":
            return None
        if not self._joint:
            return f"{self.game.name}: round 0 of {self.rounds}\n"
        a, b = self._joint[-1]
        r0, r1 = self._last_rewards
        return (
            f"{self.game.name} round {self.round}/{self.rounds}: player_0 {self.game.actions[a]} "
            f"({r0:+g}), player_1 {self.game.partner_actions[b]} ({r1:+g})\n"
        )

    def close(self) -> None:
        pass


class SingleAgentMatrixGame(gym.Env):
    """The agent is player 0; a partner from the zoo is player 1, inside the env.

    Args:
        game: preset name, ``MatrixGame``, config mapping or bimatrix.
        partner: partner name (``PARTNERS``) or a ``Partner`` built for this game.
        rounds, history: as in ``MatrixGameEnv``.
        seed: the partner's seed for the first reset when ``reset`` gets none; later seedless
            resets draw a fresh partner seed from the env's generator.
        partner_kwargs: keyword arguments of the partner (e.g. ``{"action": "rock"}``).
        render_mode: None or "ansi".
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        game: Any = "rps",
        partner: str | Partner = "tit_for_tat",
        rounds: int = 100,
        history: int = 1,
        seed: int | None = None,
        partner_kwargs: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.parallel = MatrixGameEnv(game, rounds, history, render_mode)
        self.game = self.parallel.game
        if isinstance(partner, Partner):
            if partner_kwargs:
                raise ValueError("partner_kwargs apply to a partner given by name only")
            self.partner = partner
        else:
            self.partner = make_partner(partner, self.game, seed, **dict(partner_kwargs or {}))
        self.render_mode = render_mode
        self.observation_space = self.parallel.observation_space(AGENTS[0])
        self.action_space = self.parallel.action_space(AGENTS[0])
        self._first_seed = seed
        self._reset_once = False

    @property
    def rounds(self) -> int:
        return self.parallel.rounds

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None and not self._reset_once:
            seed = self._first_seed
        self._reset_once = True
        super().reset(seed=seed)
        partner_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self.partner.reset(partner_seed)
        obs, infos = self.parallel.reset()
        return obs[AGENTS[0]], {**infos[AGENTS[0]], "partner_action": -1}

    def step(self, action: Any):
        partner_action = self.partner.act()
        obs, rewards, _, truncations, infos = self.parallel.step(
            {AGENTS[0]: action, AGENTS[1]: partner_action}
        )
        self.partner.observe(partner_action, int(action))
        info = {**infos[AGENTS[0]], "partner_action": partner_action}
        return obs[AGENTS[0]], rewards[AGENTS[0]], False, truncations[AGENTS[0]], info

    def render(self) -> str | None:
        return self.parallel.render()
