"""Vectorised envs by name: gymnasium's async vector env where a step is expensive, sync elsewhere.

Why: world-model agents collect from N envs at once. Atari (~1-2K steps/s with the 64x64
preprocessing) and Crafter (~100-300 steps/s, ~1 s per reset) pay for a subprocess each;
MiniGrid, Procgen and the grid worlds step faster than the inter-process round trip, so they
stay in-process. The rollout loop takes constructors (:func:`env_fns`) and the same choice
(:func:`vectorization`) as its `vectorization=` argument.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from envs.registry import make

ASYNC_ENVS = frozenset({"atari", "crafter"})


def vectorization(name: str) -> str:
    """Vectorisation for `name`: async where a step pays for a subprocess, else sync."""
    return "async" if name in ASYNC_ENVS else "sync"


def env_fns(name: str, n: int, **kwargs: Any) -> list[Callable[[], gym.Env]]:
    """`n` picklable constructors of `envs.make(name, **kwargs)`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [functools.partial(make, name, **kwargs) for _ in range(n)]


def make_vector(
    name: str,
    n: int,
    *,
    mode: str | None = None,
    autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """`n` copies of `envs.make(name, **kwargs)` in one vector env; `mode` "sync"/"async" or
    None for :func:`vectorization`'s choice."""
    mode = mode or vectorization(name)
    classes = {"sync": gym.vector.SyncVectorEnv, "async": gym.vector.AsyncVectorEnv}
    if mode not in classes:
        raise ValueError(f"mode={mode!r}: expected one of {sorted(classes)} or None")
    return classes[mode](env_fns(name, n, **kwargs), autoreset_mode=autoreset_mode)
