"""Samplers: returns-to-go, DT windows (padding, weighting), AD cross-episode windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_core.data import ADWindowSampler, DTWindowSampler, EpisodeStore, returns_to_go


def episode(t: int, tag: int, action_dtype=np.int64) -> dict:
    """obs = [tag, step]: every sampled step says where it came from."""
    return {
        "obs": np.stack([np.full(t, tag), np.arange(t)], axis=1).astype(np.int64),
        "action": (tag * 1000 + np.arange(t)).astype(action_dtype),
        "reward": (tag + np.arange(t) / 100).astype(np.float32),
        "terminated": np.arange(t) == t - 1,
        "truncated": np.zeros(t, bool),
    }


# ----------------------------------------------------------------------------- returns-to-go


def test_returns_to_go_by_hand():
    r = np.array([1, 2, 3, 4, 5], np.float32)
    starts = np.array([0, 3])
    np.testing.assert_allclose(returns_to_go(r, starts), [6, 5, 3, 9, 5])
    np.testing.assert_allclose(returns_to_go(r, starts, gamma=0.5), [2.75, 3.5, 3, 6.5, 5])
    assert returns_to_go(r, starts).dtype == np.float32
    with pytest.raises(ValueError):
        returns_to_go(r, np.array([1, 3]))


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    gamma=st.sampled_from([1.0, 0.99, 0.5, 0.0]),
    seed=st.integers(0, 2**16),
)
def test_returns_to_go_matches_loop(lengths, gamma, seed):
    r = np.random.default_rng(seed).normal(size=sum(lengths)).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    want = np.zeros(len(r))
    for s, n in zip(starts, lengths):
        acc = 0.0
        for t in reversed(range(s, s + n)):
            acc = r[t] + gamma * acc
            want[t] = acc
    np.testing.assert_allclose(returns_to_go(r, starts, gamma), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- DT


@pytest.fixture
def dt_store(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    store.append([episode(10, 0), episode(30, 1)])
    store.append([episode(60, 2), episode(2, 3)])
    return store


def test_dt_window_contents_and_left_padding(dt_store):
    k = 5
    sampler = DTWindowSampler(dt_store, k)
    b = sampler.sample(2000, np.random.default_rng(0))
    assert b["obs"].shape == (2000, k, 2) and b["obs"].dtype == np.int64
    assert b["action"].shape == (2000, k) and b["action"].dtype == np.int64
    assert b["reward"].dtype == b["rtg"].dtype == np.float32
    assert b["timestep"].dtype == np.int64 and b["mask"].dtype == np.bool_
    lengths = {0: 10, 1: 30, 2: 60, 3: 2}
    rtgs = {
        tag: returns_to_go(episode(n, tag)["reward"], np.array([0])) for tag, n in lengths.items()
    }
    for i in range(2000):
        m = b["mask"][i]
        n_real = m.sum()
        assert m.tolist() == [False] * (k - n_real) + [True] * n_real  # left padding
        tag, last_t = b["obs"][i, -1]
        assert n_real == min(k, last_t + 1)  # shorter only at an episode's start
        ts = np.arange(last_t - n_real + 1, last_t + 1)
        np.testing.assert_array_equal(b["obs"][i, m], np.stack([np.full(n_real, tag), ts], 1))
        np.testing.assert_array_equal(b["timestep"][i, m], ts)
        np.testing.assert_array_equal(b["action"][i, m], tag * 1000 + ts)
        np.testing.assert_allclose(b["rtg"][i, m], rtgs[tag][ts], rtol=1e-6)
        for key in ("obs", "action", "reward", "rtg", "timestep"):
            assert not b[key][i, ~m].any()  # padding is zeros
    assert (~b["mask"]).any()  # some windows were padded


def test_dt_weights_episodes_by_length(dt_store):
    b = DTWindowSampler(dt_store, 4).sample(40_000, np.random.default_rng(1))
    freq = np.bincount(b["obs"][:, -1, 0], minlength=4) / 40_000
    np.testing.assert_allclose(freq, np.array([10, 30, 60, 2]) / 102, atol=0.015)
    # the last step is uniform within an episode too
    t_last = b["obs"][b["obs"][:, -1, 0] == 2, -1, 1]
    assert np.bincount(t_last, minlength=60).min() > 0.5 * len(t_last) / 60


def test_dt_episode_subset_and_discount(dt_store):
    sampler = DTWindowSampler(dt_store, 3, episodes=[3, 0], gamma=0.5)
    b = sampler.sample(500, np.random.default_rng(2))
    assert set(np.unique(b["obs"][:, -1, 0])) == {0, 3}
    r = episode(2, 3)["reward"]
    rows = (b["obs"][:, -1, 0] == 3) & (b["obs"][:, -1, 1] == 0)
    np.testing.assert_allclose(b["rtg"][rows, -1], r[0] + 0.5 * r[1], rtol=1e-6)
    with pytest.raises(IndexError):
        DTWindowSampler(dt_store, 3, episodes=[4])


def test_samplers_are_reproducible(dt_store):
    s = DTWindowSampler(dt_store, 4)
    a, b = s.sample(8, np.random.default_rng(7)), s.sample(8, np.random.default_rng(7))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ----------------------------------------------------------------------------- AD


def ad_store(tmp_path, action_dtype=np.int64) -> tuple[EpisodeStore, dict]:
    """Two histories whose episodes are appended out of order and across shards."""
    spec = {  # history -> lengths of its episodes in learning order
        7: [3, 5, 4],
        2: [6, 2],
    }
    eps, metas, tag = [], [], 0
    for h, lens in spec.items():
        for idx, n in enumerate(lens):
            eps.append(episode(n, tag, action_dtype))
            metas.append({"history": h, "index": idx * 10})  # sparse order values
            tag += 1
    order = [3, 0, 4, 2, 1]
    store = EpisodeStore(tmp_path / "ad")
    store.append([eps[i] for i in order[:2]], [metas[i] for i in order[:2]])
    store.append([eps[i] for i in order[2:]], [metas[i] for i in order[2:]])
    return store, spec


def _reference_history(spec, h, action_dtype=np.int64):
    """Per-step (tag, t), action, reward, episode rank of history ``h`` in learning order."""
    tag0 = sum(len(v) for k, v in spec.items() if list(spec).index(k) < list(spec).index(h))
    steps = []
    for rank, n in enumerate(spec[h]):
        ep = episode(n, tag0 + rank, action_dtype)
        for t in range(n):
            steps.append((tuple(ep["obs"][t]), ep["action"][t], ep["reward"][t], rank))
    return steps


def test_ad_windows_cross_episode_boundaries_in_history_order(tmp_path):
    store, spec = ad_store(tmp_path)
    k = 6
    b = ADWindowSampler(store, k).sample(3000, np.random.default_rng(0))
    refs = {h: _reference_history(spec, h) for h in spec}
    tag_to_hist = {0: 7, 1: 7, 2: 7, 3: 2, 4: 2}
    crossed = 0
    for i in range(3000):
        assert b["mask"][i].all()  # both histories are longer than K
        h = tag_to_hist[int(b["obs"][i, 0, 0])]
        ref = refs[h]
        pos = [s[0] for s in ref].index(tuple(b["obs"][i, 0]))
        window = ref[pos : pos + k]
        assert len(window) == k  # never runs past the history's end
        assert [tuple(o) for o in b["obs"][i]] == [s[0] for s in window]
        np.testing.assert_array_equal(b["action"][i], [s[1] for s in window])
        np.testing.assert_array_equal(b["reward"][i], np.float32([s[2] for s in window]))
        np.testing.assert_array_equal(b["episode_index"][i], [s[3] for s in window])
        prev = [ref[j - 1] if j > 0 else None for j in range(pos, pos + k)]
        np.testing.assert_array_equal(
            b["prev_action"][i], [-1 if p is None else p[1] for p in prev]
        )
        np.testing.assert_array_equal(
            b["prev_reward"][i], np.float32([0 if p is None else p[2] for p in prev])
        )
        np.testing.assert_array_equal(b["first"][i], b["obs"][i, :, 1] == 0)
        np.testing.assert_array_equal(b["timestep"][i], b["obs"][i, :, 1])
        crossed += len(set(b["obs"][i, :, 0].tolist())) > 1
    assert crossed > 1000


def test_ad_history_weighting_and_uniform_starts(tmp_path):
    store, spec = ad_store(tmp_path)
    k = 4
    b = ADWindowSampler(store, k).sample(40_000, np.random.default_rng(3))
    in_h7 = np.isin(b["obs"][:, 0, 0], [0, 1, 2])
    np.testing.assert_allclose(in_h7.mean(), 12 / 20, atol=0.015)  # 12 vs 8 steps
    ref = _reference_history(spec, 7)
    starts = [[s[0] for s in ref].index(tuple(o)) for o in b["obs"][in_h7, 0]]
    counts = np.bincount(starts, minlength=12 - k + 1)
    assert len(counts) == 12 - k + 1  # every valid start, none past the end
    np.testing.assert_allclose(counts / counts.sum(), 1 / (12 - k + 1), atol=0.02)


def test_ad_short_history_is_left_padded(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    ep = episode(3, 0, np.float32)
    store.append(
        [ep, episode(2, 1, np.float32)], [{"history": 0, "index": 0}, {"history": 0, "index": 1}]
    )
    b = ADWindowSampler(store, 8).sample(4, np.random.default_rng(0))
    assert b["mask"][0].tolist() == [False] * 3 + [True] * 5
    assert b["prev_action"].dtype == np.float32
    assert b["prev_action"][0, 3] == 0 and b["prev_reward"][0, 3] == 0  # history start
    assert b["prev_action"][0, 6] == ep["action"][2]  # across the boundary
    assert b["first"][0].tolist() == [False] * 3 + [True, False, False, True, False]
    assert b["episode_index"][0].tolist() == [0] * 3 + [0, 0, 0, 1, 1]
    for key in ("obs", "action", "reward", "prev_action", "timestep"):
        assert not b[key][:, :3].any()


def test_ad_metadata_errors(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    store.append([episode(3, 0), episode(3, 1)], [{"history": 0, "index": 0}, {"history": 0}])
    with pytest.raises(KeyError, match="episode 1 has no metadata key 'index'"):
        ADWindowSampler(store, 2)
    store.append([episode(3, 2)], [{"history": 1, "index": 0}])
    ADWindowSampler(store, 2, episodes=[0, 2])  # the subset avoids the bad episode
    store.append([episode(3, 3)], [{"history": 1, "index": 0}])
    with pytest.raises(ValueError, match="duplicate 'index'"):
        ADWindowSampler(store, 2, episodes=[2, 3])
