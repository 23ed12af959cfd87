"""Where AD / DT / RA-DT get their learning histories: one function, cached in `data_dir`.

`cfg.source` picks the learner (config group `source/`): `qlearning` (seconds on a CPU) or `ppo`
(the RA-DT paper's source, one PPO run per training goal). Histories are built once per distinct
(env, source config) and reused by every later run, whatever its training seed.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from agents import qlearning
from rl_core.config import to_dataclass
from rl_core.data import EpisodeStore

PPO_DATA_SEED = 0  # all training seeds share one PPO dataset, as in the paper


def learning_histories(cfg: DictConfig, *, progress: bool | None = None) -> EpisodeStore:
    """The learning histories of the env's training tasks, built on first use."""
    progress = cfg.train.progress if progress is None else progress
    name = cfg.source.name
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
    raise ValueError(f"source.name={name!r}: expected one of qlearning, ppo")


def source_attrs(store: EpisodeStore) -> dict[str, Any]:
    """How a dataset was made (its cache key), minus the long goal list: for run configs."""
    return {k: v for k, v in store.attrs.items() if k != "goals"}
