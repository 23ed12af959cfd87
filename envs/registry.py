"""One registry for every environment and task distribution of the framework.

Why: agents, configs and the rollout loop name environments by a short string
(``"darkroom"``, later ``"atari"``, ``"crafter"``, matrix games); a single
``make(name, **kwargs)`` keeps that lookup in one place and gives one clear
error for a typo. Single-agent envs are also registered with gymnasium so that
``gymnasium.make("icrl/DarkRoom-v0")`` works for outside tools.

Factories may import heavy dependencies lazily (inside the callable), so
registering an env never imports ale-py, crafter, ... until it is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym

EnvFactory = Callable[..., Any]

_ENVS: dict[str, EnvFactory] = {}
_GYM_IDS: dict[str, str] = {}  # gymnasium id -> our name, so make() accepts both
_TASKS: dict[str, Callable[..., Any]] = {}


def register_env(
    name: str, factory: EnvFactory, *, gym_id: str | None = None, overwrite: bool = False
) -> None:
    """Register ``factory(**kwargs) -> env`` under ``name`` (and ``gym_id`` with gymnasium).

    Registering the same factory twice is a no-op (module reloads); a different
    factory under a taken name needs ``overwrite=True`` so clashes are loud.
    """
    old = _ENVS.get(name)
    if old is not None and old is not factory and not overwrite:
        raise ValueError(f"env {name!r} is already registered; pass overwrite=True to replace it")
    _ENVS[name] = factory
    if gym_id is not None:
        _GYM_IDS[gym_id] = name
        if gym_id not in gym.registry or overwrite:
            gym.register(id=gym_id, entry_point=factory)


def registered_envs() -> list[str]:
    """Sorted names accepted by :func:`make` (gymnasium ids are accepted too)."""
    return sorted(_ENVS)


def make(name: str, **kwargs: Any) -> Any:
    """Create the env registered as ``name`` (or its gymnasium id) with ``kwargs``.

    Returns the bare env (a ``gymnasium.Env`` for single-agent envs, a PettingZoo
    ``ParallelEnv`` for games), without gymnasium's checker wrappers, because the
    rollout loop steps it millions of times.
    """
    key = _GYM_IDS.get(name, name)
    if key not in _ENVS:
        raise ValueError(f"unknown env {name!r}; registered envs: {', '.join(registered_envs())}")
    return _ENVS[key](**kwargs)


def register_tasks(name: str, factory: Callable[..., Any], *, overwrite: bool = False) -> None:
    """Register a task-distribution class/factory (train/eval split) under ``name``."""
    old = _TASKS.get(name)
    if old is not None and old is not factory and not overwrite:
        raise ValueError(f"tasks {name!r} are already registered; pass overwrite=True")
    _TASKS[name] = factory


def registered_tasks() -> list[str]:
    """Sorted names accepted by :func:`make_tasks`."""
    return sorted(_TASKS)


def make_tasks(name: str, **kwargs: Any) -> Any:
    """Create the task distribution registered as ``name`` (e.g. ``DarkRoomTasks``)."""
    if name not in _TASKS:
        raise ValueError(
            f"unknown task distribution {name!r}; registered: {', '.join(registered_tasks())}"
        )
    return _TASKS[name](**kwargs)
