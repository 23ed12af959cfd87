"""Where AD / DT / RA-DT get their learning histories: one function, cached in `data_dir`.

`cfg.source` picks the learner (config group `source/`): `qlearning` (seconds on a CPU) or `ppo`
(the RA-DT paper's source, one PPO run per training goal). Histories are built once per distinct
(env, source config) and reused by every later run, whatever its training seed.

Which env each source supports (`SOURCE_ENVS`): `qlearning` env=darkroom and env=keydoor, `ppo`
env=darkroom; any grid size (configs/env/darkroom_20x20.yaml, keydoor_40x20.yaml, ...). Another
combination is a `ConfigError` (a ValueError) naming the env, the source and what it supports.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from agents import qlearning
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore

PPO_DATA_SEED = 0  # all training seeds share one PPO dataset, as in the paper
SOURCE_ENVS: dict[str, tuple[str, ...]] = {
    "qlearning": qlearning.SUPPORTED_ENVS,
    "ppo": ("darkroom",),
}


def check_source_env(source: str, env: str) -> None:
    """Raise a `ConfigError` naming both if source `source` cannot make histories on `env`."""
    if source not in SOURCE_ENVS:
        raise ConfigError(f"source.name={source!r}: expected one of {', '.join(SOURCE_ENVS)}")
    if env not in SOURCE_ENVS[source]:
        ok = [s for s, envs in SOURCE_ENVS.items() if env in envs]
        hint = f"; env={env} works with source={' or source='.join(ok)}" if ok else ""
        raise ConfigError(
            f"source={source} does not support env={env}: it supports "
            f"env={' or env='.join(SOURCE_ENVS[source])} (any grid size){hint}"
        )


def learning_histories(cfg: DictConfig, *, progress: bool | None = None) -> EpisodeStore:
    """The learning histories of the env's training tasks, built on first use."""
    progress = cfg.train.progress if progress is None else progress
    name = cfg.source.name
    check_source_env(name, cfg.env.name)
    if name == "qlearning":
        qcfg = to_dataclass(cfg.source, qlearning.QLearningConfig, "source")
        return qlearning.collect_histories(cfg.env, qcfg, cfg.data_dir, progress=progress)
    if name == "ppo":
        from agents import ppo

        pcfg = to_dataclass(cfg.source, ppo.PPOConfig, "source")
        goals = qlearning.darkroom_tasks(cfg.env).train
        root = ppo.ppo_data_path(cfg.data_dir, cfg.env, pcfg, goals, PPO_DATA_SEED)
        return ppo.collect_ppo_histories(
            cfg.env, pcfg, goals, root, PPO_DATA_SEED, progress=progress
        )
    raise AssertionError(name)  # check_source_env knows every source


def source_attrs(store: EpisodeStore) -> dict[str, Any]:
    """How a dataset was made (its cache key), minus the long goal list: for run configs."""
    return {k: v for k, v in store.attrs.items() if k != "goals"}
