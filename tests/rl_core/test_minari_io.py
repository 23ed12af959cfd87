"""Minari import/export: exact round trips through real Minari HDF5 datasets."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from rl_core.data import EpisodeStore, export_minari, import_minari

minari = pytest.importorskip("minari")


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def make_store(root, n=5, obs_shape=(2,), obs_dtype=np.int64, next_obs=False, seed=0):
    rng = np.random.default_rng(seed)
    store = EpisodeStore(root)
    eps, metas = [], []
    for i in range(n):
        t = int(rng.integers(1, 15))
        hi = 255 if obs_dtype == np.uint8 else 9
        ep = {
            "obs": rng.integers(0, hi, size=(t, *obs_shape)).astype(obs_dtype),
            "action": rng.integers(0, 4, size=t).astype(np.int64),
            "reward": rng.normal(size=t).astype(np.float32),
            "terminated": np.arange(t) == t - 1,
            "truncated": np.zeros(t, bool),
        }
        if next_obs:
            ep["next_obs"] = rng.integers(0, hi, size=(t, *obs_shape)).astype(obs_dtype)
        eps.append(ep)
        metas.append({"env": "darkroom", "seed": 100 + i, "history": i // 2, "index": i % 2})
    store.append(eps[:3], metas[:3])
    if n > 3:
        store.append(eps[3:], metas[3:])
    store.set_attrs({"made_by": "test", "n": n})
    return store


def assert_same(a: EpisodeStore, b: EpisodeStore, keys):
    assert len(a) == len(b)
    for i in range(len(a)):
        ea, eb = a.episode(i), b.episode(i)
        for k in keys:
            assert ea[k].dtype == eb[k].dtype, k
            np.testing.assert_array_equal(ea[k], eb[k])


KEYS = ("obs", "action", "reward", "terminated", "truncated")


def test_round_trip_is_exact_with_metadata(tmp_path):
    src = make_store(tmp_path / "src")
    path = export_minari(
        src,
        "test/darkroom/random-v0",
        observation_space=gym.spaces.Box(0, 9, (2,), np.int64),
        action_space=gym.spaces.Discrete(4),
    )
    assert (path / "data" / "main_data.hdf5").is_file()
    dst = import_minari("test/darkroom/random-v0", tmp_path / "dst")
    assert_same(src, dst, KEYS)
    assert set(dst.schema) == set(KEYS)
    for m_src, m_dst in zip(src.metadata, dst.metadata):
        assert m_dst.pop("source") == "minari:test/darkroom/random-v0"
        m_dst.pop("minari_episode")
        assert m_dst == m_src
    assert dst.attrs == {"made_by": "test", "n": 5, "source": "minari:test/darkroom/random-v0"}
    # the exported dataset is an ordinary Minari dataset
    ds = minari.load_dataset("test/darkroom/random-v0")
    assert ds.total_episodes == 5 and ds.total_steps == src.num_steps
    ep = ds[3]
    np.testing.assert_array_equal(ep.observations[:-1], src.episode(3)["obs"])
    np.testing.assert_array_equal(ep.observations[-1], src.episode(3)["obs"][-1])  # repeated


def test_uint8_frames_round_trip_exactly_and_by_path(tmp_path):
    src = make_store(tmp_path / "src", n=3, obs_shape=(32, 32, 3), obs_dtype=np.uint8)
    path = export_minari(
        src,
        "frames-v0",
        observation_space=gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),  # an "image space"
        action_space=gym.spaces.Discrete(4),
    )
    dst = import_minari(path, tmp_path / "dst")  # a directory works as well as an id
    assert_same(src, dst, KEYS)
    assert dst.episode(0)["obs"].dtype == np.uint8


def test_next_obs_supplies_the_final_observation(tmp_path):
    src = make_store(tmp_path / "src", next_obs=True)
    export_minari(
        src,
        "next-v0",
        observation_space=gym.spaces.Box(0, 9, (2,), np.int64),
        action_space=gym.spaces.Discrete(4),
    )
    ep = minari.load_dataset("next-v0")[1]
    np.testing.assert_array_equal(ep.observations[-1], src.episode(1)["next_obs"][-1])
    dst = import_minari("next-v0", tmp_path / "dst", with_next_obs=True)
    assert "next_obs" in dst.schema
    for i in range(len(src)):
        e = src.episode(i)
        want = np.concatenate([e["obs"][1:], e["next_obs"][-1:]])
        np.testing.assert_array_equal(dst.episode(i)["next_obs"], want)


def test_failed_export_leaves_no_half_dataset(tmp_path, minari_root):
    src = make_store(tmp_path / "src")
    with pytest.raises(ValueError, match="Text"):
        export_minari(
            src, "bad-v0", observation_space=gym.spaces.Text(5), action_space=gym.spaces.Discrete(4)
        )
    with pytest.raises(gym.error.Error):  # unregistered env id: Minari fails inside
        export_minari(
            src,
            "bad-v0",
            observation_space=gym.spaces.Box(0, 9, (2,), np.int64),
            action_space=gym.spaces.Discrete(4),
            env_id="NoSuchEnv-v0",
        )
    assert not (minari_root / "bad-v0").exists()


def test_missing_minari_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # what an install without the extra sees
    with pytest.raises(ImportError, match=r'pip install "icrl\[minari\]"'):
        import_minari("anything-v0", tmp_path / "dst")
