"""EpisodeStore: round trips, schema errors, corruption handling, crash leftovers, caching."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rl_core.data import CorruptShardError, EpisodeStore, open_or_build

DTYPES = [np.uint8, np.int64, np.float32, np.bool_]


def make_episode(t: int, rng: np.random.Generator, obs_shape=(2,), obs_dtype=np.int64) -> dict:
    return {
        "obs": rng.integers(0, 9, size=(t, *obs_shape)).astype(obs_dtype),
        "action": rng.integers(0, 5, size=t),
        "reward": rng.random(t).astype(np.float32),
        "terminated": np.arange(t) == t - 1,
        "truncated": np.zeros(t, bool),
    }


def filled(root: Path, n_shards: int = 3, eps_per_shard: int = 2) -> EpisodeStore:
    rng = np.random.default_rng(0)
    store = EpisodeStore(root)
    for s in range(n_shards):
        eps = [make_episode(3 + i + s, rng) for i in range(eps_per_shard)]
        store.append(eps, [{"shard": s, "i": i} for i in range(eps_per_shard)])
    return store


# ----------------------------------------------------------------------------- round trip


@st.composite
def episode_batches(draw):
    shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3)
    schema = {
        "obs": (draw(st.sampled_from(DTYPES)), draw(shapes)),
        "action": (draw(st.sampled_from(DTYPES)), draw(shapes)),
        "reward": (np.float32, ()),
        "terminated": (np.bool_, ()),
        "truncated": (np.bool_, ()),
    }
    if draw(st.booleans()):
        schema["next_obs"] = schema["obs"]
    batches = []
    for _ in range(draw(st.integers(1, 3))):  # shards
        eps, metas = [], []
        for _ in range(draw(st.integers(1, 3))):
            t = draw(st.integers(1, 12))
            ep = {
                k: draw(hnp.arrays(dt, (t, *shape), elements=_elements(dt)))
                for k, (dt, shape) in schema.items()
            }
            eps.append(ep)
            metas.append(
                draw(
                    st.dictionaries(
                        st.sampled_from(["env", "task", "seed", "history", "index", "x"]),
                        st.one_of(st.integers(-(2**40), 2**40), st.text(max_size=5), st.none()),
                        max_size=4,
                    )
                )
            )
        batches.append((eps, metas))
    return batches


def _elements(dt):
    if np.dtype(dt).kind == "f":
        return st.floats(-1e6, 1e6, width=32)
    return None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=episode_batches())
def test_round_trip_property(batches):
    with tempfile.TemporaryDirectory() as d:
        store = EpisodeStore(Path(d) / "s")
        for eps, metas in batches:
            store.append(eps, metas)
        all_eps = [e for eps, _ in batches for e in eps]
        all_meta = [m for _, metas in batches for m in metas]
        for s in (store, EpisodeStore(Path(d) / "s", create=False)):
            assert len(s) == len(all_eps)
            assert s.metadata == all_meta
            assert s.num_steps == sum(len(e["reward"]) for e in all_eps)
            for i, ep in enumerate(all_eps):
                got = s.episode(i)
                assert set(got) == set(ep)
                for k in ep:
                    assert got[k].dtype == ep[k].dtype, k
                    np.testing.assert_array_equal(got[k], ep[k])
            for k in all_eps[0]:
                np.testing.assert_array_equal(s.column(k), np.concatenate([e[k] for e in all_eps]))
            starts, lengths = s.episode_starts, s.episode_lengths
            assert lengths.tolist() == [len(e["reward"]) for e in all_eps]
            assert starts.tolist() == np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
            assert s.verify() == []


def test_native_dtypes_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    store = EpisodeStore(tmp_path / "s")
    store.append([make_episode(5, rng, (4, 4, 3), np.uint8)])
    reopened = EpisodeStore(tmp_path / "s", create=False)
    assert reopened.episode(0)["obs"].dtype == np.uint8
    assert isinstance(reopened.column("obs"), np.memmap)  # single shard: no copy
    assert reopened.schema["obs"] == {"dtype": "|u1", "shape": [4, 4, 3]}
    assert reopened.episode(-1)["obs"].shape == (5, 4, 4, 3)
    with pytest.raises(IndexError):
        reopened.episode(1)


def test_missing_store_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        EpisodeStore(tmp_path / "nope", create=False)


def test_refuses_to_create_over_other_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        EpisodeStore(tmp_path / "s")


# ----------------------------------------------------------------------------- validation


def test_schema_mismatch_names_key(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "s")
    store.append([make_episode(4, rng)])
    bad = make_episode(4, rng)
    bad["obs"] = bad["obs"].astype(np.float32)
    with pytest.raises(ValueError, match=r"'obs' expected dtype int64.*got dtype float32"):
        store.append([bad])
    bad = make_episode(4, rng, obs_shape=(3,))
    with pytest.raises(ValueError, match=r"'obs'.*shape \(2,\).*shape \(3,\)"):
        store.append([bad])
    extra = make_episode(4, rng) | {"next_obs": np.zeros((4, 2), np.int64)}
    with pytest.raises(ValueError, match="unexpected key 'next_obs'"):
        store.append([extra])
    assert len(EpisodeStore(tmp_path / "s")) == 1  # nothing half-written


def test_episode_validation(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "s")
    ep = make_episode(4, rng)
    with pytest.raises(ValueError, match="missing required key"):
        store.append([{k: v for k, v in ep.items() if k != "reward"}])
    with pytest.raises(ValueError, match="different lengths"):
        store.append([ep | {"action": ep["action"][:3]}])
    with pytest.raises(TypeError, match="JSON"):
        store.append([ep], [{"x": object()}])
    with pytest.raises(TypeError, match="pickle"):
        store.append([ep | {"info": np.array([{}] * 4, dtype=object)}])
    with pytest.raises(ValueError, match="zero steps"):
        store.append([{k: v[:0] for k, v in ep.items()}])
    # numpy scalars in metadata become plain JSON values; 0/1 ints are accepted as bools
    store.append([ep | {"truncated": np.zeros(4, np.int64)}], [{"seed": np.int64(3)}])
    assert store.metadata == [{"seed": 3}]
    assert store.episode(0)["truncated"].dtype == np.bool_


def test_writer_flushes_by_size_and_on_exit_only(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore(tmp_path / "s")
    with store.writer(max_steps_per_shard=10) as w:
        for i in range(5):
            w.add(make_episode(4, rng), {"i": i})
    assert w.shard_ids == [0, 1]  # 3 episodes (12 steps >= 10) flushed, 2 more on exit
    assert len(store) == 5 and [m["i"] for m in store.metadata] == list(range(5))
    shards = json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"]
    assert [s["lengths"] for s in shards] == [[4, 4, 4], [4, 4]]
    with pytest.raises(RuntimeError), store.writer(max_steps_per_shard=100) as w:
        w.add(make_episode(4, rng))
        raise RuntimeError("crash")
    assert len(EpisodeStore(tmp_path / "s")) == 5


def test_attrs_atomic_and_persisted(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    store.set_attrs({"env": "darkroom", "n": 3})
    assert EpisodeStore(tmp_path / "s").attrs == {"env": "darkroom", "n": 3}
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["manifest.json"]


def test_unknown_manifest_version(tmp_path):
    EpisodeStore(tmp_path / "s")
    path = tmp_path / "s" / "manifest.json"
    m = json.loads(path.read_text())
    m["version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(ValueError, match="version 99 found.*supports version 1"):
        EpisodeStore(tmp_path / "s")


# ----------------------------------------------------------------------------- corruption


def _corrupt(root: Path, how: str) -> Path:
    f = root / "shard_000001" / "obs.npy"
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[:-7])
    elif how == "garbage":
        f.write_bytes(b"\x00garbage" + data[8:])  # same size, broken magic
    elif how == "delete":
        f.unlink()
    return f


@pytest.mark.parametrize("how", ["truncate", "garbage", "delete"])
def test_corrupt_shard_is_skipped_with_warning(tmp_path, how):
    root = tmp_path / "s"
    full = filled(root)
    keep = [full.episode(i)["obs"].copy() for i in (0, 1, 4, 5)]
    _corrupt(root, how)
    with pytest.warns(UserWarning, match=str(root / "shard_000001")):
        store = EpisodeStore(root)
    assert len(store) == 4 and store.bad_shards[0][0] == "shard_000001"
    assert [m["shard"] for m in store.metadata] == [0, 0, 2, 2]
    for i, obs in enumerate(keep):
        np.testing.assert_array_equal(store.episode(i)["obs"], obs)
    with pytest.raises(CorruptShardError, match="shard_000001"):
        EpisodeStore(root, strict=True)
    # appending still works and never reuses the bad shard's name
    with pytest.warns(UserWarning):
        assert store.append([make_episode(3, np.random.default_rng(0))]) == 3
        assert len(EpisodeStore(root)) == 5


def test_verify_catches_flipped_bytes(tmp_path):
    root = tmp_path / "s"
    filled(root)
    f = root / "shard_000002" / "reward.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # same size and header: only the checksum can tell
    f.write_bytes(bytes(data))
    store = EpisodeStore(root)
    assert [name for name, _ in store.verify()] == ["shard_000002"]
    with pytest.raises(CorruptShardError, match="crc32"):
        EpisodeStore(root, strict=True).verify()


def test_crash_leftovers_are_ignored(tmp_path):
    root = tmp_path / "s"
    filled(root, n_shards=1)
    # a crash mid-shard leaves a temp dir; a crash before the manifest write leaves an orphan
    (root / ".tmp-shard_000001-dead").mkdir()
    (root / ".tmp-shard_000001-dead" / "obs.npy").write_bytes(b"half")
    orphan = root / "shard_000001"
    orphan.mkdir()
    (orphan / "obs.npy").write_bytes(b"orphan")
    (root / ".manifest.json.dead.tmp").write_text("{half")
    store = EpisodeStore(root, strict=True)
    assert len(store) == 2 and store.bad_shards == []
    assert store.append([make_episode(3, np.random.default_rng(0))]) == 2  # skips the orphan id
    assert len(EpisodeStore(root, strict=True)) == 3


def test_failed_shard_write_leaves_no_trace(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store = filled(root, n_shards=1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OSError, match="disk full"):
        store.append([make_episode(3, np.random.default_rng(0))])
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shard_000000"]
    assert len(EpisodeStore(root, strict=True)) == 2


# ----------------------------------------------------------------------------- open_or_build


def test_open_or_build_reuse_rebuild_mismatch(tmp_path):
    root = tmp_path / "cache" / "darkroom"
    calls = []

    def build(store):
        calls.append(store.root)
        store.append([make_episode(4, np.random.default_rng(0))], [{"k": 1}])

    attrs = {"env": "darkroom", "episodes": 1, "seed": 0}
    s1 = open_or_build(root, attrs, build)
    assert len(calls) == 1 and calls[0] != root  # built elsewhere, then renamed in
    assert s1.root == root and len(s1) == 1
    assert s1.attrs == {**attrs, "complete": True}
    s2 = open_or_build(root, dict(attrs), build)
    assert len(calls) == 1 and len(s2) == 1  # reused
    with pytest.raises(ValueError, match=rf"{root}.*differing keys: \['seed'\]"):
        open_or_build(root, attrs | {"seed": 1}, build)
    assert sorted(p.name for p in root.parent.iterdir()) == ["darkroom"]


def test_open_or_build_interrupted_leaves_nothing(tmp_path):
    root = tmp_path / "cache"

    def build(store):
        store.append([make_episode(4, np.random.default_rng(0))])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        open_or_build(root, {"a": 1}, build)
    assert list(tmp_path.iterdir()) == []
    calls = []
    s = open_or_build(
        root,
        {"a": 1},
        lambda st_: calls.append(st_.append([make_episode(2, np.random.default_rng(0))])),
    )
    assert calls == [0] and len(s) == 1


def test_open_or_build_incomplete_store_is_an_error(tmp_path):
    root = tmp_path / "s"
    EpisodeStore(root).set_attrs({"a": 1})
    with pytest.raises(ValueError, match="not complete"):
        open_or_build(root, {"a": 1}, lambda s: None)
