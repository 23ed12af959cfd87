"""TrajectoryIndex: exact neighbours (Flat/IVF/HNSW), rich ids, exclusion, shards, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.index import IndexConfig, TrajectoryIndex


def meta(n: int, per_traj: int = 3) -> dict[str, np.ndarray]:
    i = np.arange(n)
    return {
        "episode": i // per_traj,
        "step": (i % per_traj) * 25,
        "task": i % 7,
        "trajectory": i // per_traj,
        "ret": (i * 0.5).astype(np.float32),
    }


def data(n: int = 400, d: int = 8, q: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(q, d)).astype(np.float32)
    return keys, queries


def exact(keys, queries, k, metric="cosine", exclude=None, traj=None):
    if metric == "cosine":
        keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = queries @ keys.T
    if exclude is not None:
        s = np.where(traj[None] == exclude[:, None], -np.inf, s)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, 1)


def test_metric_cosine_vs_inner_product_by_hand():
    keys = np.array([[1, 0], [0, 1], [3, 3]], np.float32)
    q = np.array([[1, 0.1]], np.float32)
    for metric, best, score in [("ip", 2, 3.3), ("cosine", 0, 1 / np.sqrt(1.01))]:
        index = TrajectoryIndex(2, IndexConfig(metric=metric))
        index.add(keys, **meta(3))
        res = index.search(q, 1)
        assert res.ids[0, 0] == best
        assert res.scores[0, 0] == pytest.approx(score, rel=1e-5)


@pytest.mark.parametrize(
    "factory,extra",
    [("Flat", {}), ("IVF4,Flat", {"nprobe": 4}), ("HNSW16", {"ef_search": 256})],
)
def test_factories_find_the_exact_neighbours(factory, extra):
    keys, queries = data()
    index = TrajectoryIndex(8, IndexConfig(factory=factory, **extra))
    index.add(keys, **meta(len(keys)))
    res = index.search(queries, 5)
    want, scores = exact(keys, queries, 5)
    np.testing.assert_array_equal(res.ids, want)
    np.testing.assert_allclose(res.scores, scores, atol=1e-5)


def test_search_returns_rich_ids():
    keys, queries = data()
    m = meta(len(keys))
    index = TrajectoryIndex(8)
    index.add(keys, **m)
    res = index.search(queries, 4)
    for field, col in m.items():
        np.testing.assert_array_equal(res.meta[field], col[res.ids])


def test_exclude_own_trajectory_is_exact_per_query():
    keys, _ = data()
    m = meta(len(keys), per_traj=4)
    index = TrajectoryIndex(8)
    index.add(keys, **m)
    queries = keys[::37] + 1e-3  # each query's own trajectory holds its best match
    own = m["trajectory"][::37]
    res = index.search(queries, 6, exclude_trajectory=own)
    want, _ = exact(keys, queries, 6, exclude=own, traj=m["trajectory"])
    np.testing.assert_array_equal(res.ids, want)
    assert not (res.meta["trajectory"] == own[:, None]).any()


def test_more_neighbours_than_keys_are_padded():
    keys, queries = data(n=3)
    index = TrajectoryIndex(8)
    index.add(keys, **meta(3))
    res = index.search(queries, 5)
    assert (res.ids[:, 3:] == -1).all() and np.isneginf(res.scores[:, 3:]).all()
    assert (res.meta["task"][:, 3:] == -1).all() and np.isnan(res.meta["ret"][:, 3:]).all()
    assert res.valid[:, :3].all()


def test_shards_equal_one_index_including_later_adds():
    keys, queries = data(n=500)
    one, three = TrajectoryIndex(8), TrajectoryIndex(8, IndexConfig(shards=3))
    for index in (one, three):
        index.add(keys[:400], **meta(400))
        ids = index.add(keys[400:], **{k: v[400:] for k, v in meta(500).items()})
        np.testing.assert_array_equal(ids, np.arange(400, 500))
    a, b = one.search(queries, 10), three.search(queries, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("cfg", [IndexConfig(), IndexConfig(shards=2), IndexConfig("IVF4,Flat")])
def test_save_load_round_trip(tmp_path, cfg):
    keys, queries = data()
    m = meta(len(keys))
    index = TrajectoryIndex(8, cfg)
    index.add(keys, **m)
    before = index.search(queries, 7)
    loaded = TrajectoryIndex.load(index.save(tmp_path / "idx"))
    after = loaded.search(queries, 7)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    for field in m:
        np.testing.assert_array_equal(loaded.meta[field], index.meta[field])
    assert loaded.cfg == index.cfg and loaded.max_per_trajectory == index.max_per_trajectory
    more = loaded.add(keys[:2], **{k: v[:2] for k, v in m.items()})
    np.testing.assert_array_equal(more, [len(keys), len(keys) + 1])


def test_save_load_empty_index(tmp_path):
    loaded = TrajectoryIndex.load(TrajectoryIndex(4).save(tmp_path / "empty"))
    assert len(loaded) == 0
    with pytest.raises(ValueError, match="empty"):
        loaded.search(np.zeros((1, 4), np.float32), 1)


def test_clear_errors():
    index = TrajectoryIndex(4)
    with pytest.raises(ValueError, match="empty"):
        index.search(np.ones((1, 4), np.float32), 3)
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.add(np.ones((2, 5), np.float32), **meta(2))
    with pytest.raises(ValueError, match="metadata lengths"):
        index.add(np.ones((2, 4), np.float32), **meta(3))
    index.add(np.ones((2, 4), np.float32), **meta(2))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.search(np.ones((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="cannot train"):
        TrajectoryIndex(4, IndexConfig("IVF64,Flat")).add(np.ones((3, 4), np.float32), **meta(3))
    with pytest.raises(FileNotFoundError):
        TrajectoryIndex.load("/nonexistent/index")
    with pytest.raises(ValueError, match="metric"):
        IndexConfig(metric="l2")
