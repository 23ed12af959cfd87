"""Tabular Q-learning on Dark-Room: a fast source of learning histories for AD / DT.

Why: the RA-DT paper's source data is one PPO run per training goal (`agents.ppo`, minutes of
CPU). For small runs and tests we need histories in seconds. Watkins' Q-learning (Sutton & Barto
§6.5) with ε-greedy exploration decaying over the history gives the same kind of data: a
learner whose episodes improve from random walks to walking straight to the goal. All goals and
all histories are learned at once: one Q-table per (history), stepped with one numpy call
(`envs.darkroom.darkroom_step`, the env's own transition rule).

Choices (the same spirit as corl-team/headless-ad, which also uses tabular Q-learning
histories): ε decays linearly from `eps_start` to `eps_end` over `eps_decay_frac` of the history;
after each episode the episode's transitions are replayed backwards once ("episodic backward
update", Lee et al. 2019), so a reward found late in an episode reaches the start state in one
episode, as in a learner with replay. `histories_per_task` > 1 runs independent seeds per goal.

`python -m agents.qlearning collect env=darkroom` writes the histories of the train goals to
`data_dir` (reused when the same config asks again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from envs.darkroom import NUM_ACTIONS, DarkRoomTasks, darkroom_reward, darkroom_step
from rl_core.cli import run_cli, setup_run
from rl_core.config import to_dataclass
from rl_core.data import EpisodeStore, cache_root, open_or_build

Pos = tuple[int, int]


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


def run_qlearning(
    tasks: DarkRoomTasks, goals: Sequence[Pos], cfg: QLearningConfig, *, progress: bool = False
):
    """Learn every goal `histories_per_task` times; yield (episode arrays, metadata) in order.

    Yields one dict per (history, episode) with `obs [T,2] int64, action [T], reward [T],
    terminated [T], truncated [T]`, episode by episode (all histories advance together).
    """
    rng = np.random.default_rng(cfg.seed)
    w, h, horizon = tasks.width, tasks.height, tasks.horizon
    goal_arr = np.repeat(np.asarray(goals, dtype=np.int64), cfg.histories_per_task, axis=0)
    n = len(goal_arr)
    q = np.full((n, w, h, NUM_ACTIONS), cfg.q_init, dtype=np.float64)
    rows = np.arange(n)

    def update(pos, act, rew, new_pos):
        target = rew + cfg.gamma * q[rows, new_pos[:, 0], new_pos[:, 1]].max(axis=1)
        current = q[rows, pos[:, 0], pos[:, 1], act]
        q[rows, pos[:, 0], pos[:, 1], act] = current + cfg.lr * (target - current)

    for episode in tqdm(range(cfg.episodes), desc="q-learning", disable=not progress, leave=False):
        frac = episode / max(1.0, cfg.eps_decay_frac * cfg.episodes)
        eps = max(cfg.eps_end, cfg.eps_start - (cfg.eps_start - cfg.eps_end) * frac)
        obs = np.zeros((n, horizon, 2), dtype=np.int64)
        actions = np.zeros((n, horizon), dtype=np.int64)
        rewards = np.zeros((n, horizon), dtype=np.float32)
        pos = np.zeros((n, 2), dtype=np.int64)
        for t in range(horizon):
            values = q[rows, pos[:, 0], pos[:, 1]]
            greedy = (values + 1e-9 * rng.random(values.shape)).argmax(axis=1)  # random ties
            explore = rng.random(n) < eps
            act = np.where(explore, rng.integers(0, NUM_ACTIONS, n), greedy)
            new_pos = darkroom_step(pos, act, w, h)
            rew = darkroom_reward(
                new_pos, goal_arr, t + 1, horizon, tasks.reward_on_last_step
            ).astype(np.float64)
            update(pos, act, rew, new_pos)
            obs[:, t], actions[:, t], rewards[:, t] = pos, act, rew
            pos = new_pos
        if cfg.backward_update:
            for t in reversed(range(horizon - 1)):
                update(obs[:, t], actions[:, t], rewards[:, t].astype(np.float64), obs[:, t + 1])
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
                "task": [int(goal_arr[i, 0]), int(goal_arr[i, 1])],
                "history": i,
                "index": episode,
                "seed": cfg.seed,
            }
            yield episode_arrays, meta


def collect_histories(
    env_cfg: DictConfig | dict, cfg: QLearningConfig, data_dir: str | Path, *, progress: bool = True
) -> EpisodeStore:
    """Learning histories of the train goals, cached in `data_dir` by (env, config)."""
    tasks = darkroom_tasks(env_cfg)
    attrs = {
        "env": dict(env_cfg),
        "split": "train",
        "goals": [list(g) for g in tasks.train],
        "source": asdict(cfg),
    }
    root = dataset_root(data_dir, env_cfg, attrs)

    def build(store: EpisodeStore) -> None:
        with store.writer(max_steps_per_shard=200_000) as writer:
            for episode, meta in run_qlearning(tasks, tasks.train, cfg, progress=progress):
                writer.add(episode, {**meta, "env": env_cfg["name"], "source": "qlearning"})

    return open_or_build(root, attrs, build)


def darkroom_tasks(env_cfg: DictConfig | dict) -> DarkRoomTasks:
    """The task split an env config describes (only Dark-Room has a Q-learning source)."""
    if env_cfg["name"] != "darkroom":
        raise ValueError(
            f"env={env_cfg['name']!r}: the learning-history sources support env=darkroom only"
        )
    return DarkRoomTasks(
        width=env_cfg["width"],
        height=env_cfg["height"],
        seed=env_cfg["task_seed"],
        num_train=env_cfg["num_train_tasks"],
        num_eval=env_cfg["num_eval_tasks"],
        max_steps=env_cfg["max_steps"],
    )


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
