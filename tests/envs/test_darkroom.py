"""Dark-Room / Key-Door: gymnasium API, step rules, official RA-DT task splits, registry."""

from __future__ import annotations

import functools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.darkroom import (
    MOVES,
    DarkRoomEnv,
    DarkRoomTasks,
    KeyDoorEnv,
    KeyDoorTask,
    KeyDoorTasks,
    darkroom_reward,
    darkroom_step,
    keydoor_reward,
)

UP, RIGHT, DOWN, LEFT, STAY = range(5)
SIZES = [(10, 10), (20, 20), (40, 20), (3, 7), (2, 1)]


# ----------------------------------------------------------------------------- gymnasium API
@pytest.mark.parametrize("gym_id", ["icrl/DarkRoom-v0", "icrl/KeyDoor-v0"])
@pytest.mark.parametrize("size", SIZES)
def test_check_env_without_warnings(gym_id, size):
    width, height = size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for render_mode in (None, "ansi"):
            env = gym.make(gym_id, width=width, height=height, render_mode=render_mode)
            check_env(env.unwrapped)


def test_gymnasium_make_and_envs_make():
    env = gym.make("icrl/DarkRoom-v0", width=20, height=20, goal=(3, 4))
    assert isinstance(env.unwrapped, DarkRoomEnv) and env.unwrapped.goal == (3, 4)
    assert env.unwrapped.max_steps == 400
    env = gym.make("icrl/KeyDoor-v0", width=40, height=20, key=(1, 2), door=(30, 5))
    assert isinstance(env.unwrapped, KeyDoorEnv) and env.unwrapped.max_steps == 800
    assert isinstance(envs.make("darkroom", goal=(1, 1)), DarkRoomEnv)
    assert isinstance(envs.make("icrl/KeyDoor-v0"), KeyDoorEnv)
    assert {"darkroom", "keydoor"} <= set(envs.registered_envs())


def test_make_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="unknown env 'darkrom'") as err:
        envs.make("darkrom")
    assert "darkroom" in str(err.value) and "keydoor" in str(err.value)
    with pytest.raises(ValueError, match="darkroom"):
        envs.make_tasks("nope")


def test_register_clash_is_loud():
    envs.register_env("darkroom", DarkRoomEnv)  # same factory again: fine
    with pytest.raises(ValueError, match="already registered"):
        envs.register_env("darkroom", KeyDoorEnv)


def test_spaces_and_dtypes():
    env = DarkRoomEnv(40, 20)
    assert env.observation_space == gym.spaces.MultiDiscrete([40, 20])
    assert env.action_space == gym.spaces.Discrete(5)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.int64 and obs.shape == (2,)
    assert info["goal"] == (39, 19)


# ----------------------------------------------------------------------------- Dark-Room rules
def test_start_and_each_action():
    env = DarkRoomEnv(10, 10, goal=(9, 9))
    obs, _ = env.reset()
    assert tuple(obs) == (0, 0)
    for action, expected in [(DOWN, (0, 1)), (RIGHT, (1, 1)), (UP, (1, 0)), (LEFT, (0, 0))]:
        obs, *_ = env.step(action)
        assert tuple(obs) == expected
    obs, *_ = env.step(STAY)
    assert tuple(obs) == (0, 0)


def test_walls_clamp():
    env = DarkRoomEnv(4, 3, goal=(3, 2), max_steps=50)
    env.reset()
    for action in (UP, LEFT):
        assert tuple(env.step(action)[0]) == (0, 0)
    for _ in range(6):
        obs, *_ = env.step(RIGHT)
    assert tuple(obs) == (3, 0)
    for _ in range(6):
        obs, *_ = env.step(DOWN)
    assert tuple(obs) == (3, 2)


def test_reward_every_step_on_goal_and_staying():
    env = DarkRoomEnv(10, 10, goal=(2, 1))
    env.reset()
    rewards = [env.step(a)[1] for a in (RIGHT, RIGHT, DOWN, STAY, STAY, LEFT, RIGHT)]
    assert rewards == [0, 0, 1, 1, 1, 0, 1]


def test_truncation_at_cells_never_terminated_last_step_pays_nothing():
    for width, height in [(10, 10), (20, 20), (40, 20)]:
        env = DarkRoomEnv(width, height, goal=(0, 0))
        env.reset()
        total, n = 0.0, 0
        while True:
            _, reward, terminated, truncated, _ = env.step(STAY)
            n += 1
            total += reward
            assert not terminated
            if truncated:
                break
        assert n == width * height
        assert reward == 0.0  # official: NLE aborts before the reward manager runs
        assert total == width * height - 1


def test_reward_on_last_step_option():
    env = DarkRoomEnv(3, 3, goal=(0, 0), reward_on_last_step=True)
    env.reset()
    assert sum(env.step(STAY)[1] for _ in range(9)) == 9


def test_max_steps_and_reset_options_and_determinism():
    env = DarkRoomEnv(10, 10, goal=(1, 0), max_steps=7)
    obs, info = env.reset(seed=3, options={"goal": (0, 1)})
    assert info["goal"] == (0, 1)
    truncs = [env.step(DOWN)[3] for _ in range(7)]
    assert truncs == [False] * 6 + [True]
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, 100)
    runs = []
    for _ in range(2):
        env = DarkRoomEnv(10, 10, goal=(4, 4))
        env.reset(seed=123)
        runs.append([env.step(a)[:2] for a in actions])
    runs = [[(tuple(obs), reward) for obs, reward in run] for run in runs]
    assert runs[0] == runs[1]


def test_invalid_inputs():
    with pytest.raises(ValueError, match="outside"):
        DarkRoomEnv(10, 10, goal=(10, 0))
    with pytest.raises(ValueError, match="action"):
        DarkRoomEnv().step(5)
    with pytest.raises(ValueError, match="action"):
        darkroom_step(np.zeros((1, 2)), np.array([-1]), 3, 3)


def test_vectorised_helpers_match_env():
    """The env and the numpy helpers share one transition/reward rule."""
    rng = np.random.default_rng(1)
    width, height, horizon = 6, 4, 24
    goals = [(int(rng.integers(width)), int(rng.integers(height))) for _ in range(16)]
    keys = [(int(rng.integers(width)), int(rng.integers(height))) for _ in range(16)]
    dark = [DarkRoomEnv(width, height, goal=g, max_steps=horizon) for g in goals]
    kd = [KeyDoorEnv(width, height, key=k, door=g, max_steps=horizon) for k, g in zip(keys, goals)]
    for env in dark + kd:
        env.reset()
    pos = np.zeros((16, 2), dtype=np.int64)
    has_key = np.zeros(16, dtype=bool)
    for t in range(1, horizon + 1):
        actions = rng.integers(0, 5, 16)
        pos = darkroom_step(pos, actions, width, height)
        r_dark = darkroom_reward(pos, np.array(goals), t, horizon)
        r_kd, has_key = keydoor_reward(pos, has_key, np.array(keys), np.array(goals), t, horizon)
        for i in range(16):
            obs, reward, *_ = dark[i].step(actions[i])
            assert tuple(obs) == tuple(pos[i]) and reward == r_dark[i]
            obs, reward, *_, info = kd[i].step(actions[i])
            assert tuple(obs) == tuple(pos[i]) and reward == r_kd[i]
            assert info["has_key"] == has_key[i]
    assert darkroom_step(np.array([1, 1]), 0, 3, 3).tolist() == [1, 0]
    assert len(MOVES) == 5


# ----------------------------------------------------------------------------- Key-Door rules
def test_keydoor_door_pays_only_after_key_key_pays_once():
    env = KeyDoorEnv(5, 5, key=(0, 2), door=(1, 0))
    env.reset()
    assert [env.step(a)[1] for a in (RIGHT, STAY, LEFT)] == [0, 0, 0]  # door before key: nothing
    assert [env.step(a)[1] for a in (DOWN, DOWN)] == [0, 1]  # key
    assert [env.step(a)[1] for a in (STAY, UP, DOWN)] == [0, 0, 0]  # key pays once
    assert [env.step(a)[1] for a in (UP, UP, RIGHT, STAY, STAY, DOWN, UP)] == [0, 0, 1, 1, 1, 0, 1]
    assert env.has_key


def test_keydoor_key_at_start_and_key_on_door():
    env = KeyDoorEnv(5, 5, key=(0, 0), door=(1, 0))
    env.reset()
    assert [env.step(a)[1] for a in (STAY, RIGHT, STAY)] == [1, 1, 1]
    env = KeyDoorEnv(5, 5, key=(1, 0), door=(1, 0))
    env.reset()
    assert [env.step(a)[1] for a in (RIGHT, STAY, STAY)] == [1, 1, 1]  # key, then door per step


def test_keydoor_resets_key_each_episode_and_never_terminates():
    env = KeyDoorEnv(3, 3, key=(1, 0), door=(2, 0))
    env.reset()
    steps = [env.step(a) for a in [RIGHT, RIGHT] + [STAY] * 7]
    assert [s[1] for s in steps] == [1] + [1] * 7 + [0]  # last (9th) step pays nothing
    assert not any(s[2] for s in steps) and steps[-1][3]
    _, info = env.reset()
    assert info["has_key"] is False and not env.has_key
    assert env.step(LEFT)[1] == 0
    assert [env.step(RIGHT)[1] for _ in range(2)] == [1, 1]  # the key pays (and is needed) again
    env.reset(options={"key": (2, 2), "door": (0, 0)})
    assert (env.key, env.door) == ((2, 2), (0, 0))


# ----------------------------------------------------------------------------- task splits
# Entries copied from ml-jku/RA-DT configs/env_params/*.yaml (commit 745ebef).
OFFICIAL_10_EVAL = [
    (9, 0), (8, 4), (3, 4), (6, 5), (7, 5), (5, 0), (3, 5), (9, 8), (8, 7), (3, 0),
    (6, 6), (5, 9), (1, 7), (5, 1), (1, 6), (5, 8), (2, 1), (4, 9), (6, 4), (6, 8),
]  # fmt: skip
OFFICIAL_10_TRAIN_HEAD = [(2, 0), (0, 2), (1, 5), (2, 2), (5, 7), (9, 1), (6, 9), (5, 5)]
OFFICIAL_10_KEYS_EVAL_HEAD = [(6, 3), (3, 1), (3, 7), (2, 9), (0, 1)]
OFFICIAL_10_KEYS_TRAIN_HEAD = [(8, 3), (5, 3), (7, 0), (4, 5), (4, 4)]
OFFICIAL = {
    (20, 20): {
        "train": [(2, 15), (13, 11), (19, 10), (5, 5)],
        "train_tail": (9, 3),
        "eval": [(16, 12), (9, 15), (1, 6), (5, 17)],
        "eval_tail": (0, 18),
        "keys_train": [(10, 9), (14, 0), (1, 13)],
        "keys_eval": [(0, 3), (0, 18), (10, 2)],
    },
    (40, 20): {
        "train": [(29, 6), (38, 6), (36, 2), (29, 0)],
        "train_tail": (26, 10),
        "eval": [(14, 13), (31, 2), (5, 19), (18, 5)],
        "eval_tail": (12, 9),
        "keys_train": [(34, 16), (33, 7), (3, 3)],
        "keys_eval": [(21, 8), (6, 17), (3, 12)],
    },
}


def test_darkroom_split_matches_official_10x10():
    tasks = DarkRoomTasks()
    assert tasks.eval == OFFICIAL_10_EVAL
    assert tasks.train[:8] == OFFICIAL_10_TRAIN_HEAD and tasks.train[-1] == (0, 4)
    assert len(tasks.train) == 80 and len(set(tasks.train) | set(tasks.eval)) == 100
    assert tasks.train[13] == (0, 0)  # the official list has a goal on the start cell


@pytest.mark.parametrize("size", [(20, 20), (40, 20)])
def test_splits_match_official_larger_grids(size):
    ref = OFFICIAL[size]
    tasks = DarkRoomTasks(*size)
    assert tasks.train[:4] == ref["train"] and tasks.train[-1] == ref["train_tail"]
    assert tasks.eval[:4] == ref["eval"] and tasks.eval[-1] == ref["eval_tail"]
    kd = KeyDoorTasks(*size)
    assert [t.door for t in kd.train] == tasks.train and [t.door for t in kd.eval] == tasks.eval
    assert [t.key for t in kd.train[:3]] == ref["keys_train"]
    assert [t.key for t in kd.eval[:3]] == ref["keys_eval"]


def test_keydoor_split_matches_official_10x10():
    tasks = KeyDoorTasks()
    assert [t.key for t in tasks.eval[:5]] == OFFICIAL_10_KEYS_EVAL_HEAD  # incl. hand fix (3, 1)
    assert [t.key for t in tasks.train[:5]] == OFFICIAL_10_KEYS_TRAIN_HEAD
    assert [t.door for t in tasks.eval] == OFFICIAL_10_EVAL
    assert KeyDoorTasks(40, 20).train[37] == KeyDoorTask((19, 18), (19, 18))  # kept, as official


def test_split_disjoint_deterministic_and_errors():
    for cls in (DarkRoomTasks, KeyDoorTasks):
        a, b = cls(20, 20), cls(20, 20)
        assert a.train == b.train and a.eval == b.eval
        assert len(a.train) == 80 and len(a.eval) == 20
        assert not set(a.train) & set(a.eval)
        assert a.split("eval") == a.eval
        with pytest.raises(ValueError, match="'test'.*train, eval"):
            a.split("test")
        with pytest.raises(ValueError):
            a.env_fns("validation")
    assert DarkRoomTasks(seed=0).eval != DarkRoomTasks().eval
    small = DarkRoomTasks(3, 3, num_train=6, num_eval=3)
    assert sorted(small.train + small.eval) == [(x, y) for x in range(3) for y in range(3)]
    with pytest.raises(ValueError, match="cells"):
        DarkRoomTasks(3, 3)
    assert isinstance(envs.make_tasks("keydoor", width=20, height=20), KeyDoorTasks)


def test_env_fns_build_the_right_envs():
    tasks = DarkRoomTasks()
    fns = tasks.env_fns("eval", max_steps=50)
    assert len(fns) == 20
    built = [fn() for fn in fns]
    assert [e.goal for e in built] == tasks.eval and all(e.max_steps == 50 for e in built)
    # picklable constructors: async vector envs with "spawn" workers must receive them
    spawned = gym.vector.AsyncVectorEnv(fns[:2], context="spawn")
    try:
        obs, _ = spawned.reset(seed=0)
        assert obs.tolist() == [[0, 0], [0, 0]]
    finally:
        spawned.close()
    kd = KeyDoorTasks(40, 20)
    env = kd.env_fns("train")[5]()
    assert (env.key, env.door, env.width, env.height) == (*kd.train[5], 40, 20)
    vec = gym.vector.SyncVectorEnv(tasks.env_fns("train")[:4])
    obs, info = vec.reset(seed=0)
    assert obs.shape == (4, 2) and list(info["goal"]) == tasks.train[:4]
    vec.close()


# ----------------------------------------------------------------------------- optimal returns
def test_mean_optimal_returns_match_reference():
    assert DarkRoomTasks().mean_optimal_return("eval") == pytest.approx(90.05)  # paper: 90.1
    assert DarkRoomTasks().mean_optimal_return("train") == pytest.approx(91.2, abs=0.05)
    assert DarkRoomTasks(20, 20).mean_optimal_return("eval") == pytest.approx(377.25)
    assert DarkRoomTasks(40, 20).mean_optimal_return("eval") == pytest.approx(773.2)
    tasks = DarkRoomTasks()
    assert tasks.optimal_return((0, 0)) == 99 and tasks.optimal_return((9, 9)) == 82
    assert DarkRoomTasks(reward_on_last_step=True).optimal_return((9, 9)) == 83


def _best_return(env, horizon: int) -> float:
    """Exact optimum by dynamic programming over (x, y, has_key) with the env's own step."""

    @functools.cache
    def value(x: int, y: int, has_key: bool, t: int) -> float:
        if t == horizon:
            return 0.0
        best = 0.0
        for action in range(5):
            env._x, env._y, env._t = x, y, t
            if isinstance(env, KeyDoorEnv):
                env.has_key = has_key
            obs, reward, *_ = env.step(action)
            nxt = value(int(obs[0]), int(obs[1]), bool(getattr(env, "has_key", False)), t + 1)
            best = max(best, reward + nxt)
        return best

    env.reset()
    return value(0, 0, False, 0)


@pytest.mark.parametrize("last", [False, True])
def test_optimal_return_formula_is_exact(last):
    rng = np.random.default_rng(7)
    width, height, horizon = 5, 4, 12
    dark = DarkRoomTasks(
        width, height, num_train=15, num_eval=5, max_steps=horizon, reward_on_last_step=last
    )
    for goal in dark.train + dark.eval:
        env = DarkRoomEnv(**dark.env_kwargs(goal))
        assert _best_return(env, horizon) == dark.optimal_return(goal)
    kd = KeyDoorTasks(
        width, height, num_train=15, num_eval=5, max_steps=horizon, reward_on_last_step=last
    )
    tasks = kd.train + kd.eval + [KeyDoorTask((0, 0), (0, 0)), KeyDoorTask((4, 3), (4, 3))]
    tasks += [KeyDoorTask(tuple(rng.integers(0, 4, 2)), (0, 0)) for _ in range(3)]
    for task in tasks:
        env = KeyDoorEnv(**kd.env_kwargs(task))
        assert _best_return(env, horizon) == kd.optimal_return(task), task
