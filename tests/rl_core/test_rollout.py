"""rollout(): lock-step envs, multi-episode trials, per-episode metrics, recording into a store."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.darkroom import DarkRoomEnv, DarkRoomTasks
from rl_core.data import EpisodeStore
from rl_core.rollout import Policy, RandomPolicy, RolloutResult, rollout

RIGHT, DOWN, STAY = 1, 2, 4


def darkroom_fns(goals, size: int = 4, max_steps: int | list[int] = 5):
    steps = max_steps if isinstance(max_steps, list) else [max_steps] * len(goals)
    return [
        functools.partial(envs.make, "darkroom", width=size, height=size, goal=g, max_steps=m)
        for g, m in zip(goals, steps)
    ]


class CountingPolicy:
    """Always stays; counts resets and keeps every `dones` row it is shown."""

    def __init__(self) -> None:
        self.resets: list[int] = []
        self.dones: list[np.ndarray] = []

    def reset(self, n_envs: int) -> None:
        self.resets.append(n_envs)
        self.n = n_envs

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.full(self.n, STAY)

    def observe(self, actions, rewards, dones) -> None:
        self.dones.append(np.array(dones, dtype=bool))


class WalkToGoal:
    """Scripted optimal Dark-Room play: right, then down, then stay on the goal."""

    def __init__(self, goals) -> None:
        self.goals = np.asarray(goals)

    def reset(self, n_envs: int) -> None:
        assert n_envs == len(self.goals)

    def act(self, obs: np.ndarray) -> np.ndarray:
        x, y = obs[:, 0], obs[:, 1]
        return np.where(x < self.goals[:, 0], RIGHT, np.where(y < self.goals[:, 1], DOWN, STAY))

    def observe(self, actions, rewards, dones) -> None:
        pass


def test_policy_protocol_is_runtime_checkable():
    assert isinstance(CountingPolicy(), Policy)
    assert isinstance(RandomPolicy(gym.spaces.Discrete(3)), Policy)
    assert not isinstance(object(), Policy)


def test_trial_resets_policy_once_and_reports_every_episode_end():
    policy = CountingPolicy()
    result = rollout(darkroom_fns([(1, 1)] * 3, max_steps=4), policy, episodes=3, progress=False)
    assert policy.resets == [3]
    dones = np.stack(policy.dones)  # (steps, envs)
    assert dones.shape == (12, 3)
    assert np.array_equal(np.flatnonzero(dones[:, 0]), [3, 7, 11]) and (dones.sum(0) == 3).all()
    assert isinstance(result, RolloutResult)
    assert result.lengths.tolist() == [[4, 4, 4]] * 3 and result.steps == 36
    assert result.returns.shape == (3, 3) and (result.returns == 0).all()


def test_scripted_optimal_policy_gets_the_optimal_return_on_held_out_goals():
    tasks = DarkRoomTasks()
    goals = tasks.split("eval")
    result = rollout(tasks.env_fns("eval"), WalkToGoal(goals), episodes=2, seed=0, progress=False)
    optimal = np.array([tasks.optimal_return(g) for g in goals], dtype=float)
    assert np.array_equal(result.returns, np.stack([optimal, optimal], axis=1))
    assert (result.lengths == tasks.horizon).all()
    np.testing.assert_allclose(
        result.mean_return_per_trial, [tasks.mean_optimal_return("eval")] * 2
    )
    assert result.infos[0][0] == {}  # Dark-Room's step info is empty; one entry per episode
    assert [len(i) for i in result.infos] == [2] * len(goals)


def test_envs_with_different_lengths_finish_their_own_trials():
    """A finished env keeps stepping in lock-step but adds no steps, returns or records."""
    goals = [(0, 0), (0, 0)]  # staying on the start cell pays every step but the last
    policy = CountingPolicy()
    result = rollout(darkroom_fns(goals, max_steps=[3, 5]), policy, episodes=2, progress=False)
    assert result.lengths.tolist() == [[3, 3], [5, 5]]
    assert result.returns.tolist() == [[2.0, 2.0], [4.0, 4.0]]
    assert result.steps == 16 and len(policy.dones) == 10


def replay(goal, size: int, max_steps: int, actions) -> dict[str, np.ndarray]:
    """What a fresh env produces for these actions: the ground truth for recorded episodes."""
    env = DarkRoomEnv(width=size, height=size, goal=goal, max_steps=max_steps)
    obs, _ = env.reset()
    out: dict[str, list] = {"obs": [], "reward": [], "terminated": [], "truncated": [], "next": []}
    for a in actions:
        out["obs"].append(obs)
        obs, reward, terminated, truncated, _ = env.step(a)
        for key, value in zip(
            ["reward", "terminated", "truncated", "next"], [reward, terminated, truncated, obs]
        ):
            out[key].append(value)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("vectorization", ["sync", "async"])
def test_recorded_episodes_equal_what_the_envs_produced(tmp_path, vectorization):
    goals, size, max_steps = [(2, 1), (0, 3)], 4, 6
    store = EpisodeStore(tmp_path / "store")
    metadata = [{"env": "darkroom", "task": list(g), "index": i} for i, g in enumerate(goals)]
    policy = RandomPolicy(gym.spaces.Discrete(5), seed=3)
    result = rollout(
        darkroom_fns(goals, size, max_steps),
        policy,
        episodes=3,
        record_to=store,
        metadata=metadata,
        record_next_obs=True,
        seed=0,
        vectorization=vectorization,
        progress=False,
    )
    assert len(store) == 6 and store.num_steps == 36
    seen = set()
    for i, meta in enumerate(store.metadata):
        env_i, k = meta["index"], meta["trial_episode"]
        assert meta == {**metadata[env_i], "trial_episode": k}
        seen.add((env_i, k))
        ep = store.episode(i)
        truth = replay(goals[env_i], size, max_steps, ep["action"])
        np.testing.assert_array_equal(ep["obs"], truth["obs"])
        np.testing.assert_array_equal(ep["next_obs"], truth["next"])
        np.testing.assert_array_equal(ep["reward"], truth["reward"])
        np.testing.assert_array_equal(ep["truncated"], truth["truncated"])
        np.testing.assert_array_equal(ep["terminated"], truth["terminated"])
        assert ep["reward"].dtype == np.float32 and ep["obs"].dtype == np.int64
        assert result.returns[env_i, k] == ep["reward"].sum() and result.lengths[env_i, k] == 6
    assert seen == {(e, k) for e in range(2) for k in range(3)}


def test_async_and_sync_agree():
    goals = [(3, 2), (1, 0)]
    kw = dict(episodes=2, seed=1, progress=False)
    sync = rollout(darkroom_fns(goals, 5, 8), WalkToGoal(goals), vectorization="sync", **kw)
    async_ = rollout(darkroom_fns(goals, 5, 8), WalkToGoal(goals), vectorization="async", **kw)
    assert np.array_equal(sync.returns, async_.returns) and sync.returns.sum() > 0
    assert np.array_equal(sync.lengths, async_.lengths)


class FailingPolicy(CountingPolicy):
    def act(self, obs: np.ndarray) -> np.ndarray:
        if len(self.dones) == 7:
            raise RuntimeError("policy crashed")
        return super().act(obs)


def test_failed_trial_writes_nothing(tmp_path):
    store = EpisodeStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match="policy crashed"):
        rollout(
            darkroom_fns([(1, 1)], max_steps=3),
            FailingPolicy(),
            episodes=4,
            record_to=store,
            progress=False,
        )
    assert len(EpisodeStore(tmp_path / "store")) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"episodes": 0}, "episodes must be >= 1"),
        ({"metadata": [{}]}, "metadata has 1 entries for 2 envs"),
        ({"vectorization": "threads"}, "vectorization='threads'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rollout(darkroom_fns([(1, 1), (2, 2)]), CountingPolicy(), progress=False, **kwargs)


def test_no_envs_is_an_error():
    with pytest.raises(ValueError, match="at least one env"):
        rollout([], CountingPolicy(), progress=False)


def test_random_policy_samples_from_its_space():
    discrete = RandomPolicy(gym.spaces.Discrete(3, start=2), seed=0)
    discrete.reset(50)
    a = discrete.act(np.zeros((50, 2)))
    assert a.shape == (50,) and set(a.tolist()) == {2, 3, 4}
    box = RandomPolicy(gym.spaces.Box(-1.0, 1.0, shape=(2,)), seed=0)
    box.reset(4)
    b = box.act(np.zeros((4, 1)))
    assert b.shape == (4, 2) and np.all(np.abs(b) <= 1)
