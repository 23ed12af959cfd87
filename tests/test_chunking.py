"""rl_core.chunking: temporal ensembling, execution modes, chunk sampling, action representations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_core.chunking import (
    ActionRepresentation,
    ChunkedActionHead,
    ChunkExecutor,
    ChunkSampler,
    TemporalEnsembler,
    chunk_stats,
    ensemble_weights,
    masked_l1,
)
from rl_core.data import EpisodeStore


def chunk(*values: float) -> torch.Tensor:
    """One env's chunk (1 k 1) of scalar actions, float64 for exact comparisons."""
    return torch.tensor(values, dtype=torch.float64).reshape(1, -1, 1)


# ----------------------------------------------------------------------------- ensembler


def test_ensemble_weights_put_w0_on_the_oldest_prediction() -> None:
    w = ensemble_weights(3, 0.5)
    np.testing.assert_allclose(w, [1.0, math.exp(-0.5), math.exp(-1.0)])
    m = 0.5
    ens = TemporalEnsembler(3, coeff=m)
    a0, a1, a2 = chunk(1, 2, 3), chunk(10, 20, 30), chunk(100, 200, 300)
    # step 0: only the chunk predicted at 0
    assert ens.update(a0).item() == pytest.approx(1.0)
    # step 1: A0[1] (older, w_0) and A1[0] (w_1)
    w0, w1, w2 = 1.0, math.exp(-m), math.exp(-2 * m)
    assert ens.update(a1).item() == pytest.approx((w0 * 2 + w1 * 10) / (w0 + w1))
    # step 2: A0[2] oldest (w_0), A1[1] (w_1), A2[0] newest (w_2) -- paper Algorithm 2
    want = (w0 * 3 + w1 * 20 + w2 * 100) / (w0 + w1 + w2)
    assert ens.update(a2).item() == pytest.approx(want)
    # with m > 0 the oldest prediction weighs most: the result is nearer 3 than the plain mean
    assert abs(want - 3) < abs((3 + 20 + 100) / 3 - 3)


def test_default_coefficient_and_window_of_k_predictions() -> None:
    k, m = 4, 0.01
    ens = TemporalEnsembler(k)  # m = 0.01 by default
    rng = np.random.default_rng(0)
    chunks = [torch.as_tensor(rng.normal(size=(1, k, 2))) for _ in range(8)]
    for t, c in enumerate(chunks):
        got = ens.update(c)[0].numpy()
        # every chunk predicted at s in (t-k, t] has an entry for step t; oldest first
        preds = [chunks[s][0, t - s].numpy() for s in range(max(0, t - k + 1), t + 1)]
        w = np.exp(-m * np.arange(len(preds)))
        np.testing.assert_allclose(got, (w[:, None] * np.stack(preds)).sum(0) / w.sum())


def test_an_all_zero_action_is_kept() -> None:
    """The official buffer treats an exact 0 as "no prediction"; here it is a real action."""
    m = 0.01
    ens = TemporalEnsembler(2, coeff=m)
    ens.update(chunk(0.0, 0.0))  # the first prediction for step 1 is exactly zero
    got = ens.update(chunk(1.0, 1.0)).item()
    w1 = math.exp(-m)
    assert got == pytest.approx((1.0 * 0.0 + w1 * 1.0) / (1.0 + w1))
    assert got < 0.6  # the zero-marker implementation would have returned 1.0


def test_negative_coefficient_favours_newer_predictions() -> None:
    ens = TemporalEnsembler(2, coeff=-1.0)
    ens.update(chunk(0.0, 0.0))
    assert ens.update(chunk(1.0, 1.0)).item() == pytest.approx(math.e / (1 + math.e))


def test_reset_envs_forgets_only_those_envs() -> None:
    ens = TemporalEnsembler(3, coeff=0.0)  # plain mean
    ens.update(torch.zeros(2, 3, 1, dtype=torch.float64))
    ens.reset_envs(np.array([True, False]))
    out = ens.update(torch.ones(2, 3, 1, dtype=torch.float64))
    assert out[0].item() == 1.0  # env 0: only the new chunk
    assert out[1].item() == pytest.approx(0.5)  # env 1: mean of 0 and 1


# ----------------------------------------------------------------------------- executor


def query_steps(executor: ChunkExecutor, steps: int, n_envs: int = 1, dones_at=()) -> list[int]:
    """Steps at which env 0 queried; chunk q holds the values 100 q + j."""
    executor.reset(n_envs)
    queried, q = [], 0
    for t in range(steps):
        need = executor.need_query()
        chunks = None
        if need.any():
            if need[0]:
                queried.append(t)
            k = executor.chunk_size
            chunks = 100.0 * q + torch.arange(k, dtype=torch.float64)[None, :, None]
            chunks = chunks.expand(int(need.sum()), k, 1)
            q += 1
        executor.step(chunks, need)
        executor.end_episodes(np.full(n_envs, t in dones_at))
    return queried


def test_execution_modes_query_schedule() -> None:
    assert query_steps(ChunkExecutor("open_loop", 4), 10) == [0, 4, 8]
    assert query_steps(ChunkExecutor("replan", 4, n_action_steps=2), 7) == [0, 2, 4, 6]
    assert query_steps(ChunkExecutor("ensemble", 4), 5) == [0, 1, 2, 3, 4]
    # an episode end makes the env query at its next step, whatever is left in its queue
    assert query_steps(ChunkExecutor("open_loop", 4), 10, dones_at=(1,)) == [0, 2, 6]


def test_open_loop_and_replan_execute_chunks_in_order() -> None:
    ex = ChunkExecutor("replan", 4, n_action_steps=2)
    ex.reset(2)
    got = []
    for q in range(3):
        need = ex.need_query()
        chunks = None
        if need.any():
            chunks = torch.tensor([[[10.0 * q + j] for j in range(4)]] * int(need.sum()))
        got.append(ex.step(chunks, need)[:, 0].tolist())
    assert got == [[0.0, 0.0], [1.0, 1.0], [20.0, 20.0]]  # chunk 0: a0, a1; then chunk 2's a0
    with pytest.raises(ValueError, match="need_query"):
        ex.step(None, np.array([True, False]))
    with pytest.raises(ValueError, match="n_action_steps"):
        ChunkExecutor("replan", 4, n_action_steps=5)
    with pytest.raises(ValueError, match="open_loop, replan, ensemble"):
        ChunkExecutor("closed_loop", 4)


# ----------------------------------------------------------------------------- sampler


def small_store(root: Path, lengths=(3, 5)) -> EpisodeStore:
    store = EpisodeStore(root)
    episodes = []
    for e, n in enumerate(lengths):
        t = np.arange(n, dtype=np.float32)
        episodes.append(
            {
                "obs": np.stack([t, np.full(n, e, np.float32)], axis=1),  # (step, episode)
                "action": np.stack([100 * e + t, -t], axis=1),
                "reward": np.zeros(n, np.float32),
                "terminated": np.zeros(n, bool),
                "truncated": np.arange(n) == n - 1,
            }
        )
    store.append(episodes)
    return store


def test_chunk_sampling_pads_and_masks_past_the_episode_end(tmp_path: Path) -> None:
    sampler = ChunkSampler(small_store(tmp_path / "s"), chunk_size=4)
    batch = sampler.batch_at(np.array([1, 2, 3, 6]))  # ep 0 t=1, ep 0 t=2 (last), ep 1 t=0, t=3
    np.testing.assert_array_equal(batch["timestep"], [1, 2, 0, 3])
    np.testing.assert_array_equal(batch["obs"][:, 0], [1, 2, 0, 3])
    np.testing.assert_array_equal(
        batch["is_pad"],
        [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]],
    )
    # padded slots repeat the episode's last action and never leak into the next episode
    np.testing.assert_array_equal(batch["action"][0, :, 0], [1, 2, 2, 2])
    np.testing.assert_array_equal(batch["action"][1, :, 0], [2, 2, 2, 2])
    np.testing.assert_array_equal(batch["action"][2, :, 0], [100, 101, 102, 103])
    np.testing.assert_array_equal(batch["action"][3, :, 0], [103, 104, 104, 104])


def test_random_chunks_stay_within_one_episode(tmp_path: Path) -> None:
    for weight in ("episode", "step"):
        sampler = ChunkSampler(small_store(tmp_path / weight, (2, 7, 1)), 3, weight=weight)
        batch = sampler.sample(500, np.random.default_rng(0))
        episode = batch["obs"][:, 1].astype(int)
        first = batch["action"][:, 0, 0]
        np.testing.assert_array_equal(first, 100 * episode + batch["timestep"])
        valid_len = (~batch["is_pad"]).sum(1)
        lengths = np.array([2, 7, 1])[episode]
        np.testing.assert_array_equal(valid_len, np.minimum(3, lengths - batch["timestep"]))
    # `episode` weighting draws each episode about equally often, whatever its length
    counts = np.bincount(
        ChunkSampler(small_store(tmp_path / "w", (2, 7, 1)), 3)
        .sample(3000, np.random.default_rng(1))["obs"][:, 1]
        .astype(int)
    )
    assert counts.min() > 800


def test_chunk_stats_cover_valid_slots_only(tmp_path: Path) -> None:
    sampler = ChunkSampler(small_store(tmp_path / "s"), chunk_size=2)
    mean, std = chunk_stats(sampler, ActionRepresentation(), lambda obs: obs)
    # valid slots: ep 0 starts 0,1,2 -> (0,1),(1,2),(2); ep 1 -> (100,101),...,(104)
    first = np.array([0, 1, 1, 2, 2] + [100, 101, 101, 102, 102, 103, 103, 104, 104], float)
    np.testing.assert_allclose(mean[0], first.mean(), rtol=1e-6)
    np.testing.assert_allclose(std[0], first.std(), rtol=1e-6)


# ----------------------------------------------------------------------------- representations


def test_relative_absolute_round_trip_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    actions = rng.normal(size=(5, 4, 3))
    state = rng.normal(size=(5, 6))  # the first 3 entries are what the actions command
    rel = ActionRepresentation("relative")
    r = rel.to_relative(actions, state)
    np.testing.assert_allclose(r, actions - state[:, None, :3])
    np.testing.assert_allclose(rel.to_absolute(r, state), actions)
    t_actions, t_state = torch.as_tensor(actions), torch.as_tensor(state)
    torch.testing.assert_close(
        rel.to_absolute(rel.to_relative(t_actions, t_state), t_state), t_actions
    )
    # some dims relative (e.g. a gripper stays absolute)
    part = ActionRepresentation("relative", dims=(0, 2))
    p = part.to_relative(actions, state)
    np.testing.assert_allclose(p[..., 1], actions[..., 1])
    np.testing.assert_allclose(p[..., 2], actions[..., 2] - state[:, None, 2])
    np.testing.assert_allclose(part.to_absolute(p, state), actions)
    # absolute is the identity
    assert ActionRepresentation().to_relative(actions, state) is actions
    with pytest.raises(ValueError, match="absolute, relative"):
        ActionRepresentation("delta")


# ----------------------------------------------------------------------------- model pieces


def test_chunked_action_head_and_masked_l1() -> None:
    head = ChunkedActionHead(8, chunk_size=5, action_dim=3, hidden=16)
    assert head(torch.randn(2, 7, 8)).shape == (2, 7, 5, 3)  # a chunk per step of a sequence
    assert ChunkedActionHead(8, 5, 3)(torch.randn(4, 8)).shape == (4, 5, 3)
    pred = torch.tensor([[[1.0], [2.0], [5.0]]])
    target = torch.tensor([[[0.0], [0.0], [0.0]]])
    is_pad = torch.tensor([[False, False, True]])
    assert masked_l1(pred, target, is_pad).item() == pytest.approx(1.5)  # (1 + 2) / 2
    assert masked_l1(pred, target, is_pad, "all").item() == pytest.approx(1.0)  # (1 + 2) / 3
