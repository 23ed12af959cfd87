"""Action chunking: predict k future actions per observation and decide which ones to execute.

ACT (Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware",
official code github.com/tonyzhaozh/act) models pi(a_t..a_{t+k-1} | o_t) instead of pi(a_t | o_t);
SRT (Kim et al. 2024, "Surgical Robot Transformer") keeps ACT and predicts actions relative to the
current state. The pieces every chunking agent needs live here, once:

* `TemporalEnsembler`: ACT's temporal ensembling (paper Algorithm 2) as an online running weighted
  mean per env, O(k) memory, as LeRobot's `ACTTemporalEnsembler`. Weights w_i = exp(-m i) with
  w_0 on the OLDEST prediction for a step (so m > 0 favours older predictions, m = 0 is a plain
  mean, m < 0 favours newer ones). Unlike the official `eval_bc`, which marks empty slots with an
  exact 0 and so drops a real all-zero action, every slot carries an explicit count.
* `ChunkExecutor`: the three execution modes, batched over envs with per-env episode resets:
  `open_loop` (query every k steps, run the whole chunk), `replan` (run the first n actions, then
  query again: SRT runs 20 of 100), `ensemble` (query every step, execute the ensembled action).
* `ChunkSampler`: (o_t, a_t..a_{t+k-1}, is_pad) for random steps of an `EpisodeStore`; slots past
  the episode end repeat the last action and are flagged in `is_pad`.
* `ActionRepresentation`: absolute actions, or actions relative to the state at query time
  (SRT's delta-to-current; translation only, no SE(3) rotation composition).
* `ChunkedActionHead` and `masked_l1`: a features -> (k, action_dim) head and the padded L1 loss,
  for any sequence agent that wants to predict chunks (e.g. a DT predicting k actions per step).

Shape legend: b batch (envs), k chunk length, d action dims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from rl_core.data.samplers import _gather_steps, _load, _select
from rl_core.data.store import EpisodeStore

__all__ = [
    "EXECUTIONS",
    "REPRESENTATIONS",
    "ActionRepresentation",
    "ChunkExecutor",
    "ChunkSampler",
    "ChunkedActionHead",
    "TemporalEnsembler",
    "ensemble_weights",
    "masked_l1",
]

EXECUTIONS = ("open_loop", "replan", "ensemble")
REPRESENTATIONS = ("absolute", "relative")
ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


# ----------------------------------------------------------------------------- execution


def ensemble_weights(chunk_size: int, coeff: float = 0.01) -> np.ndarray:
    """w_i = exp(-coeff * i), i = 0..k-1; w_0 weighs the oldest prediction for a step."""
    return np.exp(-coeff * np.arange(chunk_size, dtype=np.float64))


class TemporalEnsembler:
    """Running weighted mean of every chunk's prediction for each upcoming step, per env.

    `update(chunk)` takes the chunk predicted now for steps t..t+k-1 (b k d) and returns the action
    to execute at t (b d): sum_i w_i A_t[i] / sum_i w_i over the predictions A_t[0] (oldest) ..
    made for step t. The buffer then shifts by one step. Each future step keeps its mean and a
    count of the predictions in it, so a new prediction is folded in as
    mean' = (mean * W[c] + a * w_c) / W[c + 1] with W[c] = w_0 + ... + w_{c-1}.
    """

    def __init__(self, chunk_size: int, coeff: float = 0.01) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.coeff = coeff
        w = ensemble_weights(chunk_size, coeff)
        self.weights = torch.as_tensor(w)
        self.cumsum = torch.as_tensor(np.concatenate([[0.0], np.cumsum(w)]))  # W[c], c = 0..k
        self.mean: Tensor | None = None  # (b k d) running mean for steps t..t+k-1
        self.count: Tensor | None = None  # (b k) predictions folded into each slot

    def reset(self, n_envs: int | None = None) -> None:
        """Forget everything (a new trial); the buffer is re-created on the next update."""
        self.mean = self.count = None
        self.n_envs = n_envs

    def reset_envs(self, mask: np.ndarray | Tensor) -> None:
        """Forget the predictions of the envs in `mask` (their episode ended)."""
        if self.count is not None:
            self.count[torch.as_tensor(mask, device=self.count.device)] = 0

    def update(self, chunk: Tensor) -> Tensor:
        """Fold in `chunk` (b k d), predicted at the current step; return the action (b d)."""
        b, k, _ = chunk.shape
        if k != self.chunk_size:
            raise ValueError(f"chunk has {k} steps, the ensembler was built for {self.chunk_size}")
        if self.mean is None or self.count is None or self.mean.shape != chunk.shape:
            self.mean = torch.zeros_like(chunk)
            self.count = torch.zeros(b, k, dtype=torch.long, device=chunk.device)
        weights = self.weights.to(chunk.device, chunk.dtype)
        cumsum = self.cumsum.to(chunk.device, chunk.dtype)
        c = self.count.clamp(max=k - 1)  # a slot j has seen at most k-1-j earlier chunks
        old = (self.mean * cumsum[c].unsqueeze(-1)).masked_fill((c == 0).unsqueeze(-1), 0.0)
        self.mean = (old + chunk * weights[c].unsqueeze(-1)) / cumsum[c + 1].unsqueeze(-1)
        self.count = c + 1
        action = self.mean[:, 0]
        self.mean = torch.cat([self.mean[:, 1:], torch.zeros_like(self.mean[:, :1])], dim=1)
        self.count = torch.cat([self.count[:, 1:], torch.zeros_like(self.count[:, :1])], dim=1)
        return action


class ChunkExecutor:
    """Turns chunks into one action per step for a batch of envs, in one execution mode.

    Use per step: `need = executor.need_query()` (b,) bool; predict chunks (q k d) for the envs
    in `need` only; `action = executor.step(chunks, need)`. Call `end_episodes(dones)` after the
    step so an env whose episode ended queries afresh (nothing carries over an episode boundary).

    open_loop: query every k steps, execute the whole chunk (ACT without ensembling).
    replan: execute the first `n_action_steps` actions of each chunk, then query (SRT: 20 of 100).
    ensemble: query every step; execute the temporal ensemble (`TemporalEnsembler`).
    """

    def __init__(
        self, mode: str, chunk_size: int, n_action_steps: int | None = None, coeff: float = 0.01
    ) -> None:
        if mode not in EXECUTIONS:
            raise ValueError(f"execution {mode!r}: expected one of {', '.join(EXECUTIONS)}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n = chunk_size if mode == "open_loop" or n_action_steps is None else n_action_steps
        if mode == "replan" and not 1 <= n <= chunk_size:
            raise ValueError(f"n_action_steps must be in [1, chunk_size={chunk_size}], got {n}")
        self.mode, self.chunk_size, self.n_action_steps = mode, chunk_size, n
        self.ensembler = TemporalEnsembler(chunk_size, coeff) if mode == "ensemble" else None
        self.reset(0)

    def reset(self, n_envs: int) -> None:
        """A new trial of `n_envs` envs: every env queries at its next step."""
        self.n_envs = n_envs
        self.left = np.zeros(n_envs, dtype=np.int64)  # actions still to run from the queue
        self.pos = np.zeros(n_envs, dtype=np.int64)  # next queue entry to run
        self.queue: Tensor | None = None  # (b k d)
        if self.ensembler is not None:
            self.ensembler.reset(n_envs)

    def end_episodes(self, dones: np.ndarray) -> None:
        dones = np.asarray(dones, dtype=bool)
        self.left[dones] = 0
        if self.ensembler is not None:
            self.ensembler.reset_envs(dones)

    def need_query(self) -> np.ndarray:
        if self.mode == "ensemble":
            return np.ones(self.n_envs, dtype=bool)
        return self.left == 0

    def step(self, chunks: Tensor | None, queried: np.ndarray) -> Tensor:
        """Actions (b d) for this step; `chunks` (q k d) are new chunks of the `queried` envs."""
        queried = np.asarray(queried, dtype=bool)
        if not np.array_equal(queried, self.need_query()):
            raise ValueError("step() needs chunks for exactly the envs need_query() returned")
        if self.ensembler is not None:
            assert chunks is not None
            return self.ensembler.update(chunks)
        if queried.any():
            if chunks is None or len(chunks) != int(queried.sum()):
                raise ValueError(f"expected {int(queried.sum())} chunks, got {chunks!r:.40}")
            if self.queue is None:
                self.queue = chunks.new_zeros(self.n_envs, *chunks.shape[1:])
            self.queue[torch.as_tensor(queried, device=chunks.device)] = chunks
            self.pos[queried] = 0
            self.left[queried] = self.n_action_steps
        assert self.queue is not None
        rows = torch.arange(self.n_envs, device=self.queue.device)
        action = self.queue[rows, torch.as_tensor(self.pos, device=self.queue.device)]
        self.pos += 1
        self.left -= 1
        return action


# ----------------------------------------------------------------------------- data


class ChunkSampler:
    """ACT's training samples from a store: o_t, a_t..a_{t+k-1} and `is_pad`.

    As ACT's `EpisodicDataset`, an episode is drawn uniformly, then a step t uniformly within it
    (`weight="step"` draws t uniformly over all steps instead). Slots past the episode's end repeat
    its last action (a held position rather than ACT's zeros) and are True in `is_pad`; losses must
    ignore them. Batch keys: `obs` (B, ...) in its native dtype, `action` (B, k, ...),
    `is_pad` (B, k) bool, `timestep` (B,) int64, and any `extra_keys` at step t.
    """

    def __init__(
        self,
        store: EpisodeStore,
        chunk_size: int,
        *,
        episodes: Sequence[int] | None = None,
        weight: str = "episode",
        extra_keys: Sequence[str] = (),
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if weight not in ("episode", "step"):
            raise ValueError(f"weight={weight!r}: expected 'episode' or 'step'")
        self.chunk_size, self.weight = chunk_size, weight
        ids = _select(store, episodes)
        steps, lengths = _gather_steps(store, ids)
        self.lengths = lengths.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.num_steps = len(steps)
        self.columns = {key: _load(store, key, steps)[:-1] for key in ("obs", *extra_keys)}
        self.action = _load(store, "action", steps)[:-1]
        self.episode_of = np.repeat(np.arange(len(ids)), lengths)  # flat step -> episode

    def batch_at(self, steps: np.ndarray) -> dict[str, np.ndarray]:
        """The samples starting at flat steps `steps` (B,), in this sampler's step order."""
        steps = np.asarray(steps, dtype=np.int64)
        ep = self.episode_of[steps]
        end = self.starts[ep] + self.lengths[ep]  # exclusive
        idx = steps[:, None] + np.arange(self.chunk_size)[None, :]  # (B k)
        is_pad = idx >= end[:, None]
        idx = np.minimum(idx, end[:, None] - 1)
        batch = {key: col.take(steps, axis=0) for key, col in self.columns.items()}
        batch["action"] = self.action.take(idx, axis=0)
        batch["is_pad"] = is_pad
        batch["timestep"] = steps - self.starts[ep]
        return batch

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.weight == "step":
            steps = rng.integers(0, self.num_steps, size=batch_size)
        else:
            ep = rng.integers(0, len(self.lengths), size=batch_size)
            steps = self.starts[ep] + (rng.random(batch_size) * self.lengths[ep]).astype(np.int64)
        return self.batch_at(steps)


# ----------------------------------------------------------------------------- representation


@dataclass(frozen=True)
class ActionRepresentation:
    """How a chunk's actions are written: absolute, or relative to the state at query time.

    `relative` (SRT's delta-to-current, translation part): a_rel[t+j] = a[t+j] - s_t[:d], where the
    first d entries of the proprioceptive state s_t are what the d action dims command (ACT's
    joint-position targets vs joint positions). `dims` restricts this to some action dims (e.g.
    keep a gripper absolute); None = all. Works on numpy arrays and torch tensors alike.
    """

    kind: str = "absolute"
    dims: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in REPRESENTATIONS:
            raise ValueError(
                f"action representation {self.kind!r}: expected one of {', '.join(REPRESENTATIONS)}"
            )

    def _reference(self, actions: ArrayT, state: ArrayT) -> ArrayT:
        """s_t[:d] broadcast over the chunk, zero on the dims that stay absolute: (..., 1, d)."""
        d = actions.shape[-1]
        if state.shape[-1] < d:
            raise ValueError(f"state has {state.shape[-1]} dims, fewer than the action's {d}")
        ref = state[..., None, :d]
        if self.dims is not None:
            keep = np.zeros(d, dtype=np.float32)
            keep[list(self.dims)] = 1.0
            if isinstance(ref, Tensor):
                ref = ref * torch.as_tensor(keep, dtype=ref.dtype, device=ref.device)
            else:
                ref = ref * keep.astype(ref.dtype)
        return ref

    def to_relative(self, actions: ArrayT, state: ArrayT) -> ArrayT:
        """Absolute chunk (..., k, d) -> this representation, given the state (..., d_s) at t."""
        if self.kind == "absolute":
            return actions
        return actions - self._reference(actions, state)

    def to_absolute(self, actions: ArrayT, state: ArrayT) -> ArrayT:
        """Inverse of `to_relative`: chunk in this representation -> absolute chunk."""
        if self.kind == "absolute":
            return actions
        return actions + self._reference(actions, state)


# ----------------------------------------------------------------------------- model pieces


class ChunkedActionHead(nn.Module):
    """Features (..., d_model) -> a chunk of actions (..., k, action_dim).

    One linear map (or a one-hidden-layer MLP when `hidden > 0`) to all k actions at once: the
    cheap way for a sequence model that has one feature vector per step (DT, AD) to predict a chunk.
    ACT instead decodes k learned query tokens and maps each to one action.
    """

    def __init__(self, d_model: int, chunk_size: int, action_dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.chunk_size, self.action_dim = chunk_size, action_dim
        out = chunk_size * action_dim
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, out)
            )
        else:
            self.net = nn.Linear(d_model, out)

    def forward(self, x: Tensor) -> Tensor:
        return rearrange(self.net(x), "... (k d) -> ... k d", k=self.chunk_size)


def masked_l1(pred: Tensor, target: Tensor, is_pad: Tensor, reduction: str = "valid") -> Tensor:
    """L1 between chunks (b k d) that ignores padded slots `is_pad` (b k).

    reduction="valid": mean over the valid slots (every real action weighs the same).
    reduction="all": ACT's `(l1 * ~is_pad).mean()`, a mean over all slots, padded ones counted as
    zero, which down-weights samples near an episode's end.
    """
    valid = (~is_pad).unsqueeze(-1).to(pred.dtype)
    err = (pred - target).abs() * valid
    if reduction == "all":
        return err.mean()
    if reduction == "valid":
        return err.sum() / (valid.sum() * pred.shape[-1]).clamp(min=1.0)
    raise ValueError(f"reduction={reduction!r}: expected 'valid' or 'all'")


def chunk_stats(
    sampler: ChunkSampler,
    representation: ActionRepresentation,
    state_fn: Any,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (d,) of the valid actions of every chunk, in `representation`.

    `state_fn(obs)` gives the proprioceptive state (B, d_s) used by a relative representation.
    For absolute actions this is the statistics of the action column (each action counted once
    per chunk that contains it); accumulated in float64, blockwise.
    """
    total = sq = None
    n = 0.0
    for lo in range(0, sampler.num_steps, block):
        batch = sampler.batch_at(np.arange(lo, min(lo + block, sampler.num_steps)))
        act = representation.to_relative(
            batch["action"].astype(np.float64), np.asarray(state_fn(batch["obs"]), np.float64)
        )
        valid = ~batch["is_pad"]
        a = act[valid]  # (n d)
        total = a.sum(0) if total is None else total + a.sum(0)
        sq = (a**2).sum(0) if sq is None else sq + (a**2).sum(0)
        n += len(a)
    assert total is not None and sq is not None
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)
