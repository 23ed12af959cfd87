"""Retrieval memory: chunk windows, reweighting formula, cut-off, exclusion, dedup, eval memory."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.index import TrajectoryIndex
from retrieval.memory import (
    Chunks,
    EvalMemory,
    RetrievalConfig,
    RetrievalMemory,
    chunk_episodes,
    chunk_store,
    deduplicate,
    retrieval_stats,
    reweight,
)
from rl_core.data import EpisodeStore


def episode(t: int, tag: int, reward_at: int | None = None) -> dict[str, np.ndarray]:
    """obs = [tag, step], action = step % 5; one reward of 1 at `reward_at`."""
    reward = np.zeros(t, np.float32)
    if reward_at is not None:
        reward[reward_at] = 1.0
    return {
        "obs": np.stack([np.full(t, tag), np.arange(t)], 1).astype(np.int64),
        "action": (np.arange(t) % 5).astype(np.int64),
        "reward": reward,
        "terminated": np.zeros(t, bool),
        "truncated": np.arange(t) == t - 1,
    }


def unit(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a)], np.float32)


def angle_for(similarity: float) -> float:
    return float(np.rad2deg(np.arccos(similarity)))


def hand_chunks(task, trajectory, ret, step=None, chunk: int = 2) -> Chunks:
    """Metadata-only chunks (values carry the row number in `obs`) for hand-made keys."""
    n = len(task)
    values = {
        "obs": np.repeat(np.arange(n)[:, None, None], 2 * chunk, 1),
        "mask": np.ones((n, 2 * chunk), bool),
    }
    meta = {
        "episode": np.asarray(trajectory, np.int64),
        "step": np.asarray(step if step is not None else [20] * n, np.int64),
        "task": np.asarray(task, np.int64),
        "trajectory": np.asarray(trajectory, np.int64),
        "ret": np.asarray(ret, np.float32),
    }
    return Chunks({}, values, meta)


def cfg(**kw) -> RetrievalConfig:
    base = {"top_l": 4, "candidates": 8, "dedup": False, "min_query_step": None}
    return RetrievalConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- chunking


def test_values_hold_past_and_future_steps_with_left_padding():
    ch = chunk_episodes(
        [episode(7, tag=0, reward_at=5), episode(4, tag=1, reward_at=0)],
        chunk=3, context=4, task=[3, 4],
    )  # fmt: skip
    # episode 0 (T=7): keys at 0, 3, 6; episode 1 (T=4): keys at 0, 3
    np.testing.assert_array_equal(ch.meta["step"], [0, 3, 6, 0, 3])
    np.testing.assert_array_equal(ch.meta["episode"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ch.meta["task"], [3, 3, 3, 4, 4])
    np.testing.assert_array_equal(ch.meta["ret"], [1, 1, 1, 1, 1])
    v = ch.values
    # values [p-3, p+3) clipped to the episode, left-padded to 6 steps
    want = {0: [-1, -1, -1, 0, 1, 2], 3: [0, 1, 2, 3, 4, 5], 6: [-1, -1, 3, 4, 5, 6]}
    for row, p in enumerate([0, 3, 6]):
        steps = np.array(want[p])
        np.testing.assert_array_equal(v["mask"][row], steps >= 0)
        np.testing.assert_array_equal(v["timestep"][row], np.maximum(steps, 0))
        np.testing.assert_array_equal(v["obs"][row, :, 1], np.maximum(steps, 0))
        np.testing.assert_array_equal(v["obs"][row, :, 0], 0)  # never another episode
        np.testing.assert_array_equal(v["rtg"][row], np.where(steps >= 0, steps <= 5, 0))
    # episode 1, key at 3: steps 0..3 then nothing beyond the episode end
    np.testing.assert_array_equal(v["mask"][4], [False, False, True, True, True, True])
    np.testing.assert_array_equal(v["obs"][4, 2:], [[1, 0], [1, 1], [1, 2], [1, 3]])
    np.testing.assert_array_equal(v["reward"][4, 2:], [1, 0, 0, 0])
    # key windows: the `context` steps before p (the first key embeds steps 0 and 1)
    w = ch.windows
    np.testing.assert_array_equal(w["mask"][0], [False, False, True, True])
    np.testing.assert_array_equal(w["timestep"][0, 2:], [0, 1])
    np.testing.assert_array_equal(w["timestep"][2], [2, 3, 4, 5])
    np.testing.assert_array_equal(w["action"][2], [2, 3, 4, 0])


def test_chunk_store_maps_tasks_and_trajectories(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    with store.writer() as w:
        for i, task in enumerate([[1, 2], [3, 4], [1, 2]]):
            w.add(episode(5, tag=i), {"task": task})
    ch, mapping = chunk_store(store, chunk=5, context=3, episodes=[2, 1])
    assert mapping == {(1, 2): 0, (3, 4): 1}
    np.testing.assert_array_equal(ch.meta["trajectory"], [2, 1])
    np.testing.assert_array_equal(ch.meta["task"], [0, 1])
    np.testing.assert_array_equal(ch.values["obs"][0, -5:, 0], 2)  # episode 2's steps
    with pytest.raises(KeyError, match="task_ids"):
        chunk_store(store, chunk=5, context=3, task_ids={(1, 2): 0})


# ----------------------------------------------------------------------------- reweighting


def test_reweight_formula_by_hand():
    sim = np.array([[0.9, 0.8, 0.5, 0.7]])
    valid = np.array([[True, True, True, False]])
    same_task = np.array([[0.0, 1.0, 0.0, 1.0]])
    # training: minmax(sim) = [1, .75, 0] (+ 0/1 task) -> [1, 1.75, 0]; the invalid one never wins
    pos, score = reweight(sim, valid, same_task, alpha=1.0, k=3, minmax_utility=False)
    np.testing.assert_array_equal(pos, [[1, 0, 2]])
    np.testing.assert_allclose(score, [[1.75, 1.0, 0.0]], atol=1e-6)
    # the 0/1 task term is added as is, not min-maxed (all same task: +1 everywhere)
    _, score = reweight(sim, valid, np.ones_like(sim), alpha=1.0, k=1, minmax_utility=False)
    assert score[0, 0] == pytest.approx(2.0)
    # alpha = 0 is pure relevance
    pos, _ = reweight(sim, valid, same_task, alpha=0.0, k=1, minmax_utility=False)
    assert pos[0, 0] == 0
    # inference: minmax(return) = [0, 1, .75] -> [1, 1.75, .75]
    returns = np.array([[10.0, 50.0, 40.0, 99.0]])
    pos, score = reweight(sim, valid, returns, alpha=1.0, k=3, minmax_utility=True)
    np.testing.assert_array_equal(pos, [[1, 0, 2]])
    np.testing.assert_allclose(score, [[1.75, 1.0, 0.75]], atol=1e-6)
    # a small alpha lets relevance win; the utility term is min-maxed, not raw returns
    pos, _ = reweight(sim, valid, returns, alpha=0.2, k=1, minmax_utility=True)
    assert pos[0, 0] == 0
    # no valid candidate: nothing scores
    _, score = reweight(sim, np.zeros_like(valid), same_task, alpha=1, k=1, minmax_utility=True)
    assert np.isneginf(score).all()


def test_training_retrieval_prefers_same_task_as_the_formula_says():
    # query along 0 deg; other-task key at sim .95, same-task keys at .90 and .60
    keys = np.stack([unit(angle_for(s)) for s in (0.95, 0.90, 0.60)])
    ch = hand_chunks(task=[1, 0, 0], trajectory=[10, 11, 12], ret=[5, 5, 5])
    q = unit(0)[None]
    picked = RetrievalMemory(keys, ch, cfg(top_k=1)).retrieve(q, task=[0], trajectory=[99])
    # minmax sim = [1, .857, 0]; + task -> [1, 1.857, 1]
    assert picked.ids[0, 0] == 1 and picked.score[0, 0] == pytest.approx(1 + 0.3 / 0.35, 1e-4)
    assert picked.values["obs"][0, 0, 0, 0] == 1
    plain = RetrievalMemory(keys, ch, cfg(top_k=1, alpha=0.0)).retrieve(q, task=[0])
    assert plain.ids[0, 0] == 0


def test_own_trajectory_and_similarity_cutoff_are_excluded():
    sims = [1.0, 0.99, 0.97, 0.90]  # own copy, near-duplicate, then two usable ones
    keys = np.stack([unit(angle_for(s)) for s in sims])
    ch = hand_chunks(task=[0, 0, 1, 0], trajectory=[7, 8, 9, 10], ret=[1, 1, 1, 1])
    mem = RetrievalMemory(keys, ch, cfg(top_k=1, alpha=0.0))
    r = mem.retrieve(unit(0)[None], task=[0], trajectory=[7])
    assert r.ids[0, 0] == 2 and r.similarity[0, 0] == pytest.approx(0.97, abs=1e-5)
    # without the cut-off the near-duplicate wins; without exclusion the own copy passes too
    loose = RetrievalMemory(keys, ch, cfg(top_k=1, alpha=0.0, sim_cutoff=None))
    assert loose.retrieve(unit(0)[None], task=[0], trajectory=[7]).ids[0, 0] == 1
    leaky = RetrievalMemory(
        keys, ch, cfg(top_k=1, alpha=0.0, sim_cutoff=None, exclude_own_trajectory=False)
    )
    assert leaky.retrieve(unit(0)[None], task=[0], trajectory=[7]).ids[0, 0] == 0


def test_near_duplicates_only_fill_up_when_nothing_else_is_left():
    keys = np.stack([unit(0), unit(1), unit(40)])  # two above the cut-off, one below
    ch = hand_chunks(task=[1, 0, 1], trajectory=[1, 2, 3], ret=[1, 1, 1])
    mem = RetrievalMemory(keys, ch, cfg(top_k=2, top_l=2))
    r = mem.retrieve(unit(0)[None], task=[0])
    # l = 2: the kept key (relevance 1, other task: s = 1) and the best near-duplicate
    # (relevance 0, other task: s = 0); the same-task near-duplicate does not fit in l
    assert sorted(r.ids[0].tolist()) == [0, 2] and not np.isin(1, r.ids)
    only_dups = RetrievalMemory(keys[:2], hand_chunks([1, 0], [1, 2], [1, 1]), cfg(top_k=1))
    r = only_dups.retrieve(unit(0)[None], task=[0])
    assert r.ids[0, 0] == 1 and r.similarity[0, 0] > 0.98  # fallback, picked by task
    strict = cfg(top_k=1, cutoff_fallback=False)
    r = RetrievalMemory(keys[:2], hand_chunks([1, 0], [1, 2], [1, 1]), strict).retrieve(
        unit(0)[None], task=[0]
    )
    assert r.ids[0, 0] == -1 and not r.values["mask"].any() and r.score[0, 0] == -np.inf


def test_top_k_sorted_by_return_then_step():
    keys = np.stack([unit(a) for a in (30, 35, 40, 45)])
    ch = hand_chunks(task=[0] * 4, trajectory=[1, 2, 3, 4], ret=[9, 3, 3, 1], step=[0, 50, 25, 0])
    r = RetrievalMemory(keys, ch, cfg(top_k=4)).retrieve(unit(0)[None], task=[0])
    np.testing.assert_array_equal(r.ids[0], [3, 2, 1, 0])


def test_short_query_rule_draws_random_same_task_chunks():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(12, 2)).astype(np.float32)
    task = [0] * 4 + [1] * 4 + [2] * 4
    ch = hand_chunks(task=task, trajectory=np.arange(12) // 2, ret=[1] * 12)
    mem = RetrievalMemory(keys, ch, cfg(top_k=2, min_query_step=10))
    q = rng.normal(size=(200, 2)).astype(np.float32)
    qtask = np.tile([0, 1, 2, 1], 50)
    qtraj = np.tile([0, 2, 4, 3], 50)  # the first trajectory of the query's task
    step = np.tile([0, 9, 10, 50], 50)
    r = mem.retrieve(q, task=qtask, trajectory=qtraj, step=step)
    short = step < 10
    np.testing.assert_array_equal(r.replaced, short)
    assert (r.meta["task"][short] == qtask[short, None]).all()
    assert (r.meta["trajectory"][short] != qtraj[short, None]).all()
    assert np.isnan(r.similarity[short]).all() and np.isfinite(r.similarity[~short]).all()
    picked = set(r.ids[short & (qtask == 0)].ravel().tolist())
    assert picked == {2, 3}  # both chunks of task 0's other trajectory get drawn


def test_random_same_task_replacement_at_any_step():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(12, 2)).astype(np.float32)
    ch = hand_chunks(task=[0] * 4 + [1] * 4 + [2] * 4, trajectory=np.arange(12) // 2, ret=[1] * 12)
    mem = RetrievalMemory(keys, ch, cfg(p_random_same_task=0.5))
    q = rng.normal(size=(2000, 2)).astype(np.float32)
    qtask, qtraj = np.tile([0, 1, 2], 667)[:2000], np.tile([0, 2, 4], 667)[:2000]
    r = mem.retrieve(q, task=qtask, trajectory=qtraj, step=np.full(2000, 50))
    assert 0.45 < r.replaced.mean() < 0.55  # about half, whatever the step
    rep = r.replaced
    assert (r.meta["task"][rep] == qtask[rep, None]).all()
    assert (r.meta["trajectory"][rep] != qtraj[rep, None]).all()
    with pytest.raises(ValueError, match="p_random_same_task"):
        cfg(p_random_same_task=1.5)


def test_failed_same_task_replacement_draws_zero_return_chunks():
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(12, 2)).astype(np.float32)
    ret = [0, 0, 5, 5, 0, 0, 7, 7, 9, 9, 9, 9]  # task 2 has no failed episode
    ch = hand_chunks(task=[0] * 4 + [1] * 4 + [2] * 4, trajectory=np.arange(12) // 2, ret=ret)
    mem = RetrievalMemory(keys, ch, cfg(p_failed_same_task=1.0))
    q = rng.normal(size=(300, 2)).astype(np.float32)
    qtask, qtraj = np.tile([0, 1, 2], 100), np.tile([1, 3, 5], 100)
    r = mem.retrieve(q, task=qtask, trajectory=qtraj, step=np.full(300, 50))
    assert r.replaced.all() and (r.meta["task"] == qtask[:, None]).all()
    has_failed = qtask < 2
    assert (r.meta["ret"][has_failed] == 0).all()  # tasks 0, 1: only their failed episode
    assert (r.meta["ret"][~has_failed] > 0).all()  # task 2: any of its chunks instead


# ----------------------------------------------------------------------------- dedup


def test_dedup_drops_same_task_near_duplicates_from_other_trajectories():
    keys = np.stack([unit(a) for a in (0, 0.5, 0.5, 0.7, 60, 61, 120)])
    #       0: kept (first)   1: dup of 0 (other traj, same task) -> removed
    #       2: same trajectory as 0 -> not a duplicate        3: other task -> kept
    #       4, 5: cos(1 deg) > .98, same task, other trajectories -> 5 removed; 6: alone
    ch = hand_chunks(task=[0, 0, 0, 1, 2, 2, 2], trajectory=[1, 2, 1, 3, 4, 5, 6], ret=[1] * 7)
    index = TrajectoryIndex(2)
    index.add(keys, **ch.meta)
    keep = deduplicate(index, keys, k=10, cutoff=0.98)
    np.testing.assert_array_equal(keep, [True, False, True, True, True, False, True])
    mem = RetrievalMemory(keys, ch, cfg(dedup=True))
    assert mem.n_removed == 2 and len(mem) == 5
    np.testing.assert_array_equal(mem.values["obs"][:, 0, 0], [0, 2, 3, 4, 6])


# ----------------------------------------------------------------------------- evaluation


def test_eval_memory_starts_empty_and_prefers_high_returns():
    mem = EvalMemory(n_slots=2, dim=2, cfg=cfg(top_k=1))
    q = np.stack([unit(0), unit(0)])
    empty = mem.retrieve(q, slots=[0, 1])
    assert (empty.ids == -1).all() and empty.values == {}
    episodes = [
        (np.stack([unit(0), unit(10)]), hand_chunks([0, 0], [0, 0], ret=[2, 2])),
        (np.stack([unit(20)]), hand_chunks([0], [7], ret=[9])),
        (np.stack([unit(60)]), hand_chunks([0], [3], ret=[5])),
    ]
    for keys, ch in episodes:
        mem.add(0, keys, ch)
    assert mem.sizes() == [4, 0]
    np.testing.assert_array_equal(mem.indexes[0].meta["trajectory"], [0, 0, 1, 2])
    r = mem.retrieve(q, slots=[0, 1])
    # sims [1, .985, .940, .5] -> minmax [1, .97, .88, 0]; returns [2, 2, 9, 5] -> [0, 0, 1, .43]
    assert r.ids[0, 0] == 2 and r.ids[1, 0] == -1
    assert r.meta["ret"][0, 0] == 9 and r.similarity[0, 0] == pytest.approx(unit(20)[0], 1e-5)
    assert r.values["mask"][0].all() and not r.values["mask"][1].any()
    relevance = EvalMemory(2, 2, cfg(top_k=1, alpha=0.1))
    for keys, ch in episodes:
        relevance.add(0, keys, ch)
    assert relevance.retrieve(q[:1], slots=[0]).ids[0, 0] == 0
    mem.reset()
    assert mem.sizes() == [0, 0]


def test_eval_memory_uses_raw_inner_product():
    mem = EvalMemory(1, 2, cfg(top_k=1, alpha=0.0))
    ch = hand_chunks(task=[0, 0], trajectory=[0, 0], ret=[1, 1])
    mem.add(0, np.array([[1, 0], [3, 3]], np.float32), ch)
    assert mem.retrieve(np.array([[1, 0.1]], np.float32), slots=[0]).ids[0, 0] == 1


@pytest.mark.parametrize("top_k", [1, 3])
def test_eval_memory_batched_search_equals_a_faiss_search_per_slot(top_k):
    """The batched exact path (default, Flat) returns what one faiss search per slot returns:
    slots of different sizes, one empty, fewer keys than l, repeated slots, k > 1."""
    rng = np.random.default_rng(0)
    mems = [EvalMemory(4, 6, cfg(top_k=top_k, top_l=5)) for _ in range(2)]
    mems[1].batched = False  # the per-slot faiss path
    assert mems[0].batched
    for slot, n_eps in [(0, 3), (1, 1), (3, 6)]:  # slot 2 stays empty
        for e in range(n_eps):
            ch = chunk_episodes([episode(40, e, reward_at=e * 5)], chunk=10, context=8, task=[slot])
            keys = rng.normal(size=(len(ch), 6)).astype(np.float32)
            for mem in mems:
                mem.add(slot, keys, ch)
    slots = np.array([0, 1, 2, 3, 3, 0])
    q = rng.normal(size=(len(slots), 6)).astype(np.float32)
    fast, slow = (mem.retrieve(q, slots) for mem in mems)
    np.testing.assert_array_equal(fast.ids, slow.ids)
    assert (fast.ids[2] == -1).all() and (fast.ids[[0, 3]] >= 0).all()
    np.testing.assert_allclose(fast.similarity, slow.similarity, rtol=1e-5)
    np.testing.assert_allclose(fast.score, slow.score, rtol=1e-5)
    for f in fast.meta:
        np.testing.assert_array_equal(fast.meta[f], slow.meta[f])
    assert fast.values.keys() == slow.values.keys()
    for key in fast.values:
        np.testing.assert_array_equal(fast.values[key], slow.values[key])


# ----------------------------------------------------------------------------- persistence, stats


def test_memory_save_load_gives_the_same_retrieval(tmp_path):
    rng = np.random.default_rng(1)
    ch = chunk_episodes([episode(60, i, i) for i in range(6)], chunk=10, context=8, task=[0, 1] * 3)
    keys = rng.normal(size=(len(ch), 4)).astype(np.float32)
    mem = RetrievalMemory(keys, ch, cfg(top_k=2))
    loaded = RetrievalMemory.load(mem.save(tmp_path / "mem"))
    q = rng.normal(size=(5, 4)).astype(np.float32)
    kw = {"task": [0, 1, 0, 1, 0], "trajectory": [0, 1, 2, 3, 4]}
    a, b = mem.retrieve(q, **kw), loaded.retrieve(q, **kw)
    np.testing.assert_array_equal(a.ids, b.ids)
    for k in a.values:
        np.testing.assert_array_equal(a.values[k], b.values[k])
    assert loaded.cfg == mem.cfg


def test_retrieval_stats():
    keys = np.stack([unit(a) for a in (30, 35, 40)])
    ch = hand_chunks(task=[0, 1, 1], trajectory=[1, 2, 3], ret=[4, 8, 8])
    r = RetrievalMemory(keys, ch, cfg(top_k=1, alpha=0.0)).retrieve(
        np.stack([unit(0), unit(60)]), task=[0, 0], trajectory=[5, 3]
    )
    np.testing.assert_array_equal(r.ids[:, 0], [0, 1])
    s = retrieval_stats(r, task=[0, 0], trajectory=[5, 3], ret=[6, 6], prefix="train/")
    assert s["train/task_hit_rate"] == 0.5
    assert s["train/trajectory_hit_rate"] == 0.0
    assert s["train/abs_delta_return"] == pytest.approx(2.0)
    assert s["train/valid_rate"] == 1.0


def test_config_rejects_cutoff_without_cosine():
    with pytest.raises(ValueError, match="cosine"):
        RetrievalConfig(index={"metric": "ip"})
    with pytest.raises(ValueError, match="top_k"):
        RetrievalConfig(top_k=60)


def test_dedup_task_scope_sees_past_other_tasks_crowding_the_neighbours():
    # key 0 and key 3 (same task, other trajectory) are near-identical, but two other-task keys
    # are even closer to key 0: with k=2 the global search never sees key 3, the task one does
    keys = np.stack([unit(a) for a in (0, 0.1, 0.2, 0.5)])
    ch = hand_chunks(task=[0, 1, 1, 0], trajectory=[1, 2, 3, 4], ret=[1] * 4)
    index = TrajectoryIndex(2)
    index.add(keys, **ch.meta)
    np.testing.assert_array_equal(deduplicate(index, keys, k=2), [True, True, False, True])
    np.testing.assert_array_equal(
        deduplicate(index, keys, k=2, scope="task"), [True, True, False, False]
    )
    with pytest.raises(ValueError, match="scope='both'"):
        deduplicate(index, keys, scope="both")


def test_task_search_scope_finds_same_task_chunks_beyond_other_tasks_crowd(tmp_path):
    """With l = 2 of m = 2 candidates, a query surrounded by another task's keys gets only
    those under `search_scope="all"`; `"task"` searches its own task's keys (the official
    `only_same_task`), keeps the own-trajectory exclusion, and survives save/load."""
    keys = np.stack([unit(a) for a in (0, 1, 2, 3, 60, 61, 62)])
    ch = hand_chunks(task=[1, 1, 1, 1, 0, 0, 0], trajectory=[0, 1, 2, 3, 4, 5, 6], ret=[1] * 7)
    q = np.stack([unit(1.5)] * 2)
    kw = dict(top_l=2, candidates=2, dedup=False, min_query_step=None)
    crowd = RetrievalMemory(keys, ch, cfg(**kw)).retrieve(q, task=[0, 0], trajectory=[4, 5])
    assert (crowd.meta["task"] == 1).all()  # the task-0 keys are never among the candidates
    own = RetrievalMemory(keys, ch, cfg(search_scope="task", **kw))
    r = own.retrieve(q, task=[0, 0], trajectory=[4, 5])
    assert (r.meta["task"] == 0).all()
    assert r.ids.ravel().tolist() == [5, 4]  # the nearest of task 0 that is not its own trajectory
    loaded = RetrievalMemory.load(own.save(tmp_path / "mem"))
    again = loaded.retrieve(q, task=[0, 0], trajectory=[4, 5])
    assert np.array_equal(again.ids, r.ids)
    missing = own.retrieve(q[:1], task=[7], trajectory=[9])  # a task the memory does not hold
    assert (missing.ids == -1).all()
    with pytest.raises(ValueError, match="search_scope"):
        cfg(search_scope="tasks")
