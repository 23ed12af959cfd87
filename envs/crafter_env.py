"""Crafter (Hafner 2021, "Benchmarking the Spectrum of Agent Capabilities") as a gymnasium env.

Why: Δ-IRIS reports Crafter returns and the Crafter score; the `crafter` package speaks the old
gym API (reset -> obs, step -> 4-tuple), so this wrapper gives it gymnasium's API and seeding.
(The module is not called `crafter.py`, which would shadow the package.)

* obs: the (S, S, 3) uint8 local view with the inventory strip, S = `size` (64 as in the paper);
  17 discrete actions; reward as in the paper (+1 per first unlock of an achievement in the
  episode, +-0.1 per health point gained/lost);
* `terminated` when the player dies, `truncated` at `length` steps (10000, as the paper and
  Δ-IRIS's `TimeLimit`);
* seeding: `reset(seed=s)` reseeds the env's generator; every reset draws the world seed from it,
  so a seeded reset and the resets after it are reproducible, in any process (the package hashes
  (seed, episode) with its own episode counter instead). The package also picks which creature to
  despawn by index into a list built from a `set` of objects (`Env._balance_object`), whose order
  follows the objects' memory addresses: episodes then diverge between two envs with the same seed,
  even in one process. :class:`CrafterEnv` hands that method the set sorted by position, which draws
  from the same distribution in a fixed order;
* `info`: `achievement_<name>` counts for the 22 achievements in this episode (the key names of
  crafter's own `Recorder`), plus `inventory`, `discount`, `player_pos`; the per-step
  `semantic` map is dropped (a 64x64 array per step that vector envs would copy around).
  :func:`unlocked` turns a final `info` into the episode's achievement set.

The Crafter score (paper, Sec. 3): with s_i the success rate in percent of achievement i (the
share of episodes that unlocked it at least once), score = exp(mean_i ln(1 + s_i)) - 1 over all
22 achievements; :func:`crafter_score` computes it from per-episode achievement sets.

Cost on one core (measured with other jobs on the machine): a step ~470 steps/s; a reset
generates a 64x64 world with opensimplex, ~1.3 s in pure Python, ~0.1 s when numba is installed
(the `crafter` extra brings it; the first reset then compiles, ~1.5 s once per machine, cached).
Random-policy episodes are short, so without numba resets dominate (~110 steps/s overall).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

# Crafter paper Table/Appendix and `crafter.constants.achievements` (alphabetical).
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)
PREFIX = "achievement_"


def _import_crafter() -> Any:
    # crafter imports the old `gym` when it is installed (procgen needs it), which prints a
    # deprecation notice on stderr; the notice says nothing about our use, so hide it.
    with contextlib.redirect_stderr(io.StringIO()):
        import crafter
    return crafter


def _position(obj: Any) -> tuple[int, int]:
    return int(obj.pos[0]), int(obj.pos[1])


@functools.cache
def _crafter_env_class() -> type:
    """`crafter.Env` whose creature balancing iterates a chunk's objects in a fixed order."""
    crafter = _import_crafter()

    class _Env(crafter.Env):
        # crafter (1.8.3, env.py `_balance_object`): `creatures = [obj for obj in objs if ...]`
        # over the chunk's `set` of objects, then `creatures[random.randint(0, len(creatures))]`
        # picks the one to despawn; a set of objects iterates in memory-address order, so the
        # pick differed between runs with the same seed. One object per cell: positions are
        # unique keys.
        def _balance_object(self, chunk: Any, objs: Any, *args: Any) -> Any:
            return super()._balance_object(chunk, sorted(objs, key=_position), *args)

    return _Env


class CrafterEnv(gym.Env):
    """Crafter with gymnasium's API; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        size: int = 64,
        area: tuple[int, int] | Sequence[int] = (64, 64),
        view: tuple[int, int] | Sequence[int] = (9, 9),
        length: int = 10_000,
        reward: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.render_mode = render_mode
        self.length = int(length)
        crafter = _import_crafter()
        # seed=0: without one, crafter draws it from the global `np.random` (reset replaces it)
        self._env = _crafter_env_class()(
            area=tuple(area),
            view=tuple(view),
            size=(size, size),
            reward=reward,
            length=length,
            seed=0,
        )
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Discrete(len(crafter.constants.actions))
        self.action_names: list[str] = list(crafter.constants.actions)
        self._obs: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # crafter seeds world i with hash((seed, episode)); fix episode so the seed alone decides
        self._env._seed = int(self.np_random.integers(2**31 - 1))
        self._env._episode = 0
        self._obs = self._env.reset()
        return self._obs, {PREFIX + name: 0 for name in ACHIEVEMENTS}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, done, info = self._env.step(int(action))
        self._obs = obs
        terminated = info["discount"] == 0.0
        truncated = bool(done) and not terminated
        out = {PREFIX + name: count for name, count in info["achievements"].items()}
        out.update(
            inventory=info["inventory"],
            discount=info["discount"],
            player_pos=np.array(info["player_pos"]),  # crafter hands out its live array
        )
        return obs, float(reward), bool(terminated), truncated, out

    def render(self) -> np.ndarray | None:
        return None if self._obs is None else self._obs.copy()


def unlocked(info: Mapping[str, Any]) -> set[str]:
    """Achievements with a count > 0 in a (final-step) `info` of :class:`CrafterEnv`."""
    return {name for name in ACHIEVEMENTS if int(info.get(PREFIX + name, 0)) > 0}


def success_rates(episodes: Sequence[Iterable[str]]) -> dict[str, float]:
    """Per-achievement success rate in percent: share of episodes that unlocked it."""
    if len(episodes) == 0:
        raise ValueError("no episodes given")
    sets = [set(ep) for ep in episodes]
    unknown = set().union(*sets) - set(ACHIEVEMENTS)
    if unknown:
        raise ValueError(
            f"unknown achievements {sorted(unknown)}; known: {', '.join(ACHIEVEMENTS)}"
        )
    return {name: 100.0 * sum(name in s for s in sets) / len(sets) for name in ACHIEVEMENTS}


def crafter_score(episodes: Sequence[Iterable[str]]) -> float:
    """Crafter score (Hafner 2021): exp(mean ln(1 + s_i)) - 1, s_i success rates in percent."""
    rates = np.array(list(success_rates(episodes).values()))
    return float(np.exp(np.mean(np.log1p(rates))) - 1.0)


register_env("crafter", CrafterEnv, gym_id="icrl/Crafter-v0")
