"""Tabular Q-learning on Dark-Room and Dark Key-Door: a fast source of learning histories for AD / DT.

Why: the RA-DT paper's source data is one PPO run per training goal (`agents.ppo`, minutes of
CPU). For small runs and tests we need histories in seconds. Watkins' Q-learning (Sutton & Barto
§6.5) with ε-greedy exploration decaying over the history gives the same kind of data: a
learner whose episodes improve from random walks to walking straight to the goal. All goals and
all histories are learned at once: one Q-table per (history), stepped with one numpy call
(`envs.darkroom.darkroom_step`, the env's own transition rule; rewards from `darkroom_reward` /
`keydoor_reward`, the env's own reward rules).

Key-Door: the learner's Q-table is indexed by `(x, y, has_key)`, where `has_key` is the learner's
own memory of having been paid the key's +1 in this episode (the env's observation, and so the
recorded `obs`, stays `(x, y)`). A Key-Door task is recorded as `[key_x, key_y, door_x, door_y]`,
a Dark-Room goal as `[x, y]`.

Choices (the same spirit as corl-team/headless-ad, which also uses tabular Q-learning
histories): ε decays linearly from `eps_start` to `eps_end` over `eps_decay_frac` of the history;
after each episode the episode's transitions are replayed backwards once ("episodic backward
update", Lee et al. 2019), so a reward found late in an episode reaches the start state in one
episode, as in a learner with replay. `histories_per_task` > 1 runs independent seeds per goal.

Larger grids need longer histories: `episodes` defaults to the env config's
`qlearning_episodes` where it has one (configs/source/qlearning.yaml, configs/qlearning.yaml), else
60; `source.episodes=N` (or `agent.episodes=N`) overrides it.

`python -m agents.qlearning collect env=darkroom` (or `env=keydoor`, `env=darkroom_20x20`, ...)
writes the histories of the train tasks to `data_dir` (reused when the same config asks again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from envs.darkroom import (
    NUM_ACTIONS,
    DarkRoomTasks,
    KeyDoorTasks,
    darkroom_reward,
    darkroom_step,
    keydoor_reward,
)
from rl_core.cli import run_cli, setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore, cache_root, open_or_build

Pos = tuple[int, int]
Tasks = DarkRoomTasks | KeyDoorTasks
SUPPORTED_ENVS = ("darkroom", "keydoor")  # env names with a task split and a Q-learning source
# Env-config keys that do not change the recorded data (evaluation targets, the per-env default of
# `episodes`): left out of the dataset's cache key, so adding them keeps existing datasets valid.
NON_DATA_ENV_KEYS = ("target_mean", "target_std", "qlearning_episodes", "run_tag")


@dataclass
class QLearningConfig:
    name: str = "qlearning"
    episodes: int = 60  # episodes per learning history
    histories_per_task: int = 2  # independent learners (seeds) per goal
    lr: float = 0.5
    gamma: float = 0.9
    eps_start: float = 1.0
    eps_end: float = 0.0
    eps_decay_frac: float = 0.6  # fraction of the history over which ε decays linearly
    backward_update: bool = True  # replay each finished episode backwards once
    q_init: float = 0.0
    seed: int = 0  # data seed, separate from the training seed so all runs share one dataset


def task_id(task: Any) -> list[int]:
    """A task as a flat JSON-able list of ints: goal `[x, y]`, Key-Door `[kx, ky, dx, dy]`."""
    flat = np.asarray(task, dtype=np.int64).reshape(-1)
    return [int(v) for v in flat]


def run_qlearning(
    tasks: Tasks, goals: Sequence[Any], cfg: QLearningConfig, *, progress: bool = False
):
    """Learn every task `histories_per_task` times; yield (episode arrays, metadata) in order.

    `goals` are Dark-Room goals `(x, y)` or, when `tasks` is a `KeyDoorTasks`, Key-Door tasks
    `((kx, ky), (dx, dy))`. Yields one dict per (history, episode) with `obs [T,2] int64,
    action [T], reward [T], terminated [T], truncated [T]`, episode by episode (all histories
    advance together); metadata `task` is `task_id(task)`.
    """
    rng = np.random.default_rng(cfg.seed)
    keydoor = isinstance(tasks, KeyDoorTasks)
    w, h, horizon = tasks.width, tasks.height, tasks.horizon
    ids = np.array([task_id(g) for g in goals], dtype=np.int64).reshape(len(goals), -1)
    if ids.shape[1] != (4 if keydoor else 2):
        raise ValueError(f"tasks of {type(tasks).__name__} must have {4 if keydoor else 2} ints")
    task_arr = np.repeat(ids, cfg.histories_per_task, axis=0)
    n = len(task_arr)
    # Q[history, x, y, has_key, action]; Dark-Room has one key state (always 0).
    q = np.full((n, w, h, 2 if keydoor else 1, NUM_ACTIONS), cfg.q_init, dtype=np.float64)
    rows = np.arange(n)

    def update(pos, key, act, rew, new_pos, new_key):
        target = rew + cfg.gamma * q[rows, new_pos[:, 0], new_pos[:, 1], new_key].max(axis=1)
        current = q[rows, pos[:, 0], pos[:, 1], key, act]
        q[rows, pos[:, 0], pos[:, 1], key, act] = current + cfg.lr * (target - current)

    for episode in tqdm(range(cfg.episodes), desc="q-learning", disable=not progress, leave=False):
        frac = episode / max(1.0, cfg.eps_decay_frac * cfg.episodes)
        eps = max(cfg.eps_end, cfg.eps_start - (cfg.eps_start - cfg.eps_end) * frac)
        obs = np.zeros((n, horizon, 2), dtype=np.int64)
        keys = np.zeros((n, horizon), dtype=np.int64)  # has_key before each step
        actions = np.zeros((n, horizon), dtype=np.int64)
        rewards = np.zeros((n, horizon), dtype=np.float32)
        pos = np.zeros((n, 2), dtype=np.int64)
        key = np.zeros(n, dtype=np.int64)
        for t in range(horizon):
            values = q[rows, pos[:, 0], pos[:, 1], key]
            greedy = (values + 1e-9 * rng.random(values.shape)).argmax(axis=1)  # random ties
            explore = rng.random(n) < eps
            act = np.where(explore, rng.integers(0, NUM_ACTIONS, n), greedy)
            new_pos = darkroom_step(pos, act, w, h)
            if keydoor:
                rew, holds_key = keydoor_reward(
                    new_pos, key.astype(bool), task_arr[:, :2], task_arr[:, 2:], t + 1, horizon,
                    tasks.reward_on_last_step,
                )  # fmt: skip
                new_key = holds_key.astype(np.int64)
            else:
                rew = darkroom_reward(new_pos, task_arr, t + 1, horizon, tasks.reward_on_last_step)
                new_key = key
            rew = rew.astype(np.float64)
            update(pos, key, act, rew, new_pos, new_key)
            obs[:, t], keys[:, t], actions[:, t], rewards[:, t] = pos, key, act, rew
            pos, key = new_pos, new_key
        if cfg.backward_update:
            for t in reversed(range(horizon - 1)):
                update(
                    obs[:, t], keys[:, t], actions[:, t], rewards[:, t].astype(np.float64),
                    obs[:, t + 1], keys[:, t + 1],
                )  # fmt: skip
        truncated = np.zeros(horizon, dtype=bool)
        truncated[-1] = True
        for i in range(n):
            episode_arrays = {
                "obs": obs[i],
                "action": actions[i],
                "reward": rewards[i],
                "terminated": np.zeros(horizon, dtype=bool),
                "truncated": truncated,
            }
            meta = {
                "task": [int(v) for v in task_arr[i]],
                "history": i,
                "index": episode,
                "seed": cfg.seed,
            }
            yield episode_arrays, meta


def collect_histories(
    env_cfg: DictConfig | dict, cfg: QLearningConfig, data_dir: str | Path, *, progress: bool = True
) -> EpisodeStore:
    """Learning histories of the train tasks, cached in `data_dir` by (env, config)."""
    tasks = darkroom_tasks(env_cfg)
    attrs = histories_attrs(env_cfg, cfg)
    root = dataset_root(data_dir, env_cfg, attrs)

    def build(store: EpisodeStore) -> None:
        with store.writer(max_steps_per_shard=200_000) as writer:
            for episode, meta in run_qlearning(tasks, tasks.train, cfg, progress=progress):
                writer.add(episode, {**meta, "env": env_cfg["name"], "source": "qlearning"})

    return open_or_build(root, attrs, build)


def histories_attrs(env_cfg: DictConfig | dict, cfg: QLearningConfig) -> dict[str, Any]:
    """Everything the histories depend on: the cache key (and `attrs`) of their store.

    The env part is the env config minus `NON_DATA_ENV_KEYS`; tasks are `task_id` lists.
    """
    return {
        "env": {k: v for k, v in dict(env_cfg).items() if k not in NON_DATA_ENV_KEYS},
        "split": "train",
        "goals": [task_id(g) for g in darkroom_tasks(env_cfg).train],  # name kept: same keys
        "source": asdict(cfg),
    }


def darkroom_tasks(env_cfg: DictConfig | dict) -> Tasks:
    """The task split an env config describes: `DarkRoomTasks` or `KeyDoorTasks`.

    Named for its first env; it serves every grid env with a learning-history source
    (`SUPPORTED_ENVS`: env=darkroom and env=keydoor, any size). Both objects offer `.train`,
    `.eval`, `.horizon`, `.width`, `.height`, `.env_fns(split)` and `.mean_optimal_return(split)`.
    Key-Door keys come from the config's `key_seed` (default 42, the official split). Another
    env is a `ConfigError` (a ValueError) naming it.
    """
    name = env_cfg["name"]
    if name not in SUPPORTED_ENVS:
        raise ConfigError(
            f"env={name!r}: the learning-history sources and the in-context evaluation support "
            f"env={' or env='.join(SUPPORTED_ENVS)} only"
        )
    common = dict(
        width=env_cfg["width"],
        height=env_cfg["height"],
        seed=env_cfg["task_seed"],
        num_train=env_cfg["num_train_tasks"],
        num_eval=env_cfg["num_eval_tasks"],
        max_steps=env_cfg["max_steps"],
    )
    if name == "keydoor":
        return KeyDoorTasks(**common, key_seed=env_cfg.get("key_seed", 42))
    return DarkRoomTasks(**common)


def dataset_root(data_dir: str | Path, env_cfg: Any, attrs: dict) -> Path:
    """`data_dir/<env>_<w>x<h>/<source>_<hash of attrs>`: one folder per distinct dataset."""
    group = f"{env_cfg['name']}_{env_cfg['width']}x{env_cfg['height']}"
    return cache_root(data_dir, group, attrs["source"]["name"], attrs)


def collect(cfg: DictConfig) -> EpisodeStore:
    """CLI: build (or reuse) the Q-learning histories and report how well the learners did."""
    setup_run(cfg)
    qcfg = to_dataclass(cfg.agent, QLearningConfig, "agent")
    store = collect_histories(cfg.env, qcfg, cfg.data_dir, progress=cfg.train.progress)
    returns = np.array([store.episode(i)["reward"].sum() for i in range(len(store))])
    index = np.array([m["index"] for m in store.metadata])
    first, last = returns[index == 0].mean(), returns[index == index.max()].mean()
    print(
        f"{len(store)} episodes, {store.num_steps} steps in {store.root}; mean return first "
        f"episode {first:.1f}, last episode {last:.1f}"
    )
    return store


if __name__ == "__main__":
    run_cli({"collect": collect}, config_name="qlearning")
