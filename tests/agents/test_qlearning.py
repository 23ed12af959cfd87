"""Q-learning histories (Dark-Room and Key-Door), the env configs and the source/env checks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hydra import compose, initialize_config_module

from agents import qlearning, sources
from agents.icl import evaluate_in_context
from agents.ppo import PPOConfig, ppo_attrs
from agents.qlearning import (
    QLearningConfig,
    collect_histories,
    darkroom_tasks,
    histories_attrs,
    run_qlearning,
)
from envs.darkroom import DarkRoomEnv, DarkRoomTasks, KeyDoorEnv, KeyDoorTask, KeyDoorTasks
from rl_core.config import ConfigError, to_dataclass
from rl_core.rollout import RandomPolicy

TINY = QLearningConfig(episodes=30, histories_per_task=2)


def small_env(name: str, width: int = 5, height: int = 5, **extra) -> dict:
    return {
        "name": name, "width": width, "height": height, "max_steps": None, "task_seed": 43,
        "num_train_tasks": 4, "num_eval_tasks": 2, **extra,
    }  # fmt: skip


def replay(env: gym.Env, actions: np.ndarray) -> dict[str, np.ndarray]:
    """What a fresh env produces for these actions: the ground truth of a recorded episode."""
    obs, _ = env.reset()
    out: dict[str, list] = {"obs": [], "reward": [], "terminated": [], "truncated": []}
    for a in actions:
        out["obs"].append(obs)
        obs, reward, terminated, truncated, _ = env.step(int(a))
        out["reward"].append(reward)
        out["terminated"].append(terminated)
        out["truncated"].append(truncated)
    return {k: np.array(v) for k, v in out.items()}


def check_histories_follow_the_env(tasks, task_list, make_env, cfg=TINY) -> np.ndarray:
    """Every recorded episode equals the env's replay of its actions; returns [history, ep]."""
    n = len(task_list) * cfg.histories_per_task
    returns = np.zeros((n, cfg.episodes))
    for ep, meta in run_qlearning(tasks, task_list, cfg):
        task = task_list[meta["history"] // cfg.histories_per_task]
        assert meta["task"] == qlearning.task_id(task)
        assert ep["obs"].dtype == np.int64 and ep["obs"].shape == (tasks.horizon, 2)
        truth = replay(make_env(task), ep["action"])
        for key in ("obs", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(ep[key], truth[key], err_msg=key)
        returns[meta["history"], meta["index"]] = ep["reward"].sum()
    return returns


def test_darkroom_histories_follow_the_env():
    tasks = darkroom_tasks(small_env("darkroom"))
    goals = [*tasks.train, (0, 0)]  # (0, 0): paid by staying from step 1
    returns = check_histories_follow_the_env(
        tasks, goals, lambda g: DarkRoomEnv(**tasks.env_kwargs(g))
    )
    assert (returns[:, -5:].mean(1) > 0).all()


def test_keydoor_histories_follow_the_env_and_learn_the_door():
    tasks = darkroom_tasks(small_env("keydoor"))
    assert isinstance(tasks, KeyDoorTasks)
    extra = [KeyDoorTask((0, 0), (2, 1)), KeyDoorTask((3, 3), (3, 3)), KeyDoorTask((4, 0), (0, 4))]
    task_list = [*tasks.train, *extra]  # key on the start, key on the door, far corners
    returns = check_histories_follow_the_env(
        tasks, task_list, lambda t: KeyDoorEnv(**tasks.env_kwargs(t)), QLearningConfig(episodes=60)
    )
    last = returns[:, -5:].mean(1)
    assert (last > 1).all(), last  # key (+1) and then the door, for every learner


def test_keydoor_learners_solve_official_10x10_tasks_with_the_default_config():
    tasks = KeyDoorTasks()
    cfg = QLearningConfig(histories_per_task=1)  # the default 60 episodes
    task_list = tasks.train[:6]
    returns = np.zeros((len(task_list), cfg.episodes))
    for ep, meta in run_qlearning(tasks, task_list, cfg):
        returns[meta["history"], meta["index"]] = ep["reward"].sum()
    best = np.array([tasks.optimal_return(t) for t in task_list])
    last = returns[:, -10:].mean(1)
    assert (last > 1).all() and last.mean() > 0.8 * best.mean(), (last, best)  # door reached
    assert returns[:, :5].mean() < 5


def test_keydoor_histories_are_cached_per_env_and_size(tmp_path):
    env = small_env("keydoor")
    cfg = QLearningConfig(episodes=3, histories_per_task=1)
    store = collect_histories(env, cfg, tmp_path, progress=False)
    assert store.root.parent == tmp_path / "keydoor_5x5"
    assert len(store) == 4 * 3 and store.num_steps == 4 * 3 * 25
    meta = store.metadata[0]
    assert (meta["env"], meta["source"]) == ("keydoor", "qlearning")
    assert meta["task"] == [*KeyDoorTasks(5, 5, num_train=4, num_eval=2).train[0][0],
                            *KeyDoorTasks(5, 5, num_train=4, num_eval=2).train[0][1]]  # fmt: skip
    again = collect_histories(env, cfg, tmp_path, progress=False)
    assert again.root == store.root
    other = collect_histories(small_env("keydoor", 6, 5), cfg, tmp_path, progress=False)
    darkroom = collect_histories(small_env("darkroom"), cfg, tmp_path, progress=False)
    assert other.root.parent.name == "keydoor_6x5" and darkroom.root.parent.name == "darkroom_5x5"
    # evaluation targets and the per-env episode default are not part of the cache key
    plus = {**env, "target_mean": 90, "target_std": 5, "qlearning_episodes": 60}
    assert histories_attrs(plus, cfg) == histories_attrs(env, cfg)


def test_in_context_evaluation_runs_on_keydoor():
    env = small_env("keydoor")
    policy = RandomPolicy(gym.spaces.Discrete(5), seed=0)
    result = evaluate_in_context(env, policy, trials=2, progress=False)
    assert result.returns.shape == (2, 2) and (result.lengths == 25).all()


# ----------------------------------------------------------------------------- configs
def compose_cfg(config: str, *overrides: str):
    with initialize_config_module("configs", version_base="1.3"):
        return compose(config, overrides=list(overrides))


ENV_CONFIGS = {
    "darkroom": ("darkroom", 10, 10, 90, 5, 60),
    "darkroom_20x20": ("darkroom", 20, 20, 370, 10, 150),
    "darkroom_40x20": ("darkroom", 40, 20, 500, 10, 200),
    "keydoor": ("keydoor", 10, 10, 90, 5, 60),
    "keydoor_20x20": ("keydoor", 20, 20, 370, 10, 150),
    "keydoor_40x20": ("keydoor", 40, 20, 500, 10, 200),
}


@pytest.mark.parametrize("env", sorted(ENV_CONFIGS))
def test_env_configs_compose_with_targets_and_episode_defaults(env):
    name, width, height, mean, std, episodes = ENV_CONFIGS[env]
    for config in ("ad", "dt", "radt"):
        cfg = compose_cfg(config, f"env={env}")
        assert (cfg.env.name, cfg.env.width, cfg.env.height) == (name, width, height)
        assert (cfg.env.target_mean, cfg.env.target_std) == (mean, std)
        assert to_dataclass(cfg.source, QLearningConfig, "source").episodes == episodes
    tasks = darkroom_tasks(cfg.env)
    assert (tasks.width, tasks.height, len(tasks.train), len(tasks.eval)) == (width, height, 80, 20)
    assert tasks.horizon == width * height
    assert compose_cfg("qlearning", f"env={env}").agent.episodes == episodes
    assert compose_cfg("ad", f"env={env}", "source.episodes=7").source.episodes == 7


def test_darkroom_tasks_of_the_keydoor_config_is_the_official_split():
    tasks = darkroom_tasks(compose_cfg("ad", "env=keydoor").env)
    assert isinstance(tasks, KeyDoorTasks)
    official = KeyDoorTasks()
    assert tasks.train == official.train and tasks.eval == official.eval
    assert tasks.eval[1].key == (3, 1)  # the official 10x10 hand fix (key would sit on its door)
    assert (tasks.width, tasks.height, tasks.horizon) == (10, 10, 100)
    assert len(tasks.env_fns("eval")) == 20 and isinstance(tasks.env_fns("eval")[0](), KeyDoorEnv)
    assert isinstance(darkroom_tasks(compose_cfg("ad").env), DarkRoomTasks)


def test_default_darkroom_dataset_key_is_unchanged():
    """The committed 10x10 results were made from this dataset: its cache key must not move."""
    cfg = compose_cfg("ad")
    qcfg = to_dataclass(cfg.source, QLearningConfig, "source")
    assert qcfg == QLearningConfig()
    root = qlearning.dataset_root("data", cfg.env, histories_attrs(cfg.env, qcfg))
    assert root.name == "qlearning_ed2c9636d4"


@pytest.mark.parametrize("config", ["ppo", "qlearning", "llm", "rmax", "return_aligned_dt"])
def test_other_primary_configs_still_compose(config):
    assert compose_cfg(config).env.name


def test_unsupported_env_and_source_name_both(tmp_path):
    with pytest.raises(ConfigError, match="source=ppo does not support env=keydoor") as err:
        sources.check_source_env("ppo", "keydoor")
    assert "env=darkroom" in str(err.value) and "source=qlearning" in str(err.value)
    cfg = compose_cfg("ad", "env=keydoor_20x20", "source=ppo", f"data_dir={tmp_path}")
    with pytest.raises(ValueError, match="env=keydoor"):
        sources.learning_histories(cfg, progress=False)
    assert not any(tmp_path.iterdir())  # failed before building anything
    with pytest.raises(ValueError, match="env=keydoor"):
        ppo_attrs(small_env("keydoor"), PPOConfig(), [], 0)
    with pytest.raises(ValueError, match="'matrix'.*darkroom.*keydoor"):
        darkroom_tasks({"name": "matrix"})
    with pytest.raises(ValueError, match="source=qlearning does not support env=matrix"):
        sources.check_source_env("qlearning", "matrix")
