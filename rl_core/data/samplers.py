"""Training-window samplers over an :class:`EpisodeStore` (pure numpy).

Both samplers copy the columns they need into RAM once at construction (fine
for the dataset sizes icrl targets; a memmap-backed variant would trade speed
for memory) and precompute everything that does not depend on the draw, so a
batch is a handful of vectorised fancy-index operations with no Python loop
over batch elements. Padding is always on the left, with zeros, and ``mask``
is False there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rl_core.data.store import EpisodeStore

__all__ = ["ADWindowSampler", "DTWindowSampler", "returns_to_go"]


def returns_to_go(reward: np.ndarray, episode_starts: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Discounted return from each step to the end of its episode, float32 [N].

    ``reward`` is the flat step array of consecutive episodes and ``episode_starts``
    the (sorted) index of each episode's first step. Accumulates in float64.
    """
    r = np.asarray(reward, dtype=np.float64).reshape(-1)
    n = len(r)
    starts = np.asarray(episode_starts, dtype=np.int64).reshape(-1)
    if n == 0:
        return np.zeros(0, np.float32)
    if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n:
        raise ValueError("episode_starts must be strictly increasing, start at 0, and be < len")
    ends = np.append(starts[1:], n)  # exclusive
    ep = np.repeat(np.arange(len(starts)), ends - starts)
    if gamma == 1.0:
        suffix = np.append(np.cumsum(r[::-1])[::-1], 0.0)  # suffix[t] = sum r[t:]
        return (suffix[:-1] - suffix[ends[ep]]).astype(np.float32)
    # One vectorised pass per distance-from-end: rtg[t] = r[t] + gamma * rtg[t+1].
    out = r.copy()
    lengths = ends - starts
    for d in range(1, int(lengths.max())):
        live = lengths > d
        t = ends[live] - 1 - d
        out[t] += gamma * out[t + 1]
    return out.astype(np.float32)


def _select(store: EpisodeStore, episodes: Sequence[int] | None) -> np.ndarray:
    n = len(store)
    ids = np.arange(n) if episodes is None else np.asarray(episodes, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        raise ValueError("no episodes to sample from")
    if ids.min() < 0 or ids.max() >= n:
        raise IndexError(f"episode ids must be in [0, {n}), got {ids.min()}..{ids.max()}")
    return ids


def _gather_steps(store: EpisodeStore, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat step indices of episodes ``ids`` (in that order) and their lengths."""
    starts, lengths = store.episode_starts[ids], store.episode_lengths[ids]
    offs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(lengths.sum()) - np.repeat(offs, lengths)
    return np.repeat(starts, lengths) + pos, lengths


def _load(store: EpisodeStore, key: str, steps: np.ndarray, dtype=None) -> np.ndarray:
    """``column(key)[steps]`` copied into RAM plus one all-zero row at the end.

    Padded window slots index that last row, so a batch needs no masking pass.
    """
    col = store.column(key)
    out = np.zeros((len(steps) + 1, *col.shape[1:]), dtype=dtype or col.dtype)
    if len(steps) == len(col) and np.array_equal(steps, np.arange(len(col))):
        out[:-1] = col  # whole column: one sequential read
    else:
        out[:-1] = col[steps]
    return out


def _padded(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.zeros((1, *x.shape[1:]), dtype=x.dtype)])


class DTWindowSampler:
    """Decision-Transformer windows: up to K steps of one episode ending at a uniform step.

    The window's last step is uniform over all steps, so episodes are weighted by
    their length; windows that would start before the episode are left-padded.
    Batch keys: ``obs [B,K,...]`` (native dtype), ``action [B,K,...]``,
    ``reward``/``rtg [B,K] float32``, ``timestep [B,K] int64``, ``mask [B,K] bool``.
    """

    def __init__(
        self,
        store: EpisodeStore,
        context_len: int,
        *,
        gamma: float = 1.0,
        episodes: Sequence[int] | None = None,
    ) -> None:
        if context_len < 1:
            raise ValueError("context_len must be >= 1")
        self.context_len = context_len
        ids = _select(store, episodes)
        steps, lengths = _gather_steps(store, ids)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.num_steps = len(steps)
        timestep = (np.arange(len(steps)) - np.repeat(starts, lengths)).astype(np.int64)
        reward = _load(store, "reward", steps, np.float32)
        # Flat per-step arrays (+1 zero row for padding) that every batch gathers from.
        self.columns: dict[str, np.ndarray] = {
            "obs": _load(store, "obs", steps),
            "action": _load(store, "action", steps),
            "reward": reward,
            "rtg": _padded(returns_to_go(reward[:-1], starts, gamma)),
            "timestep": _padded(timestep),
        }
        self._t = timestep

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.context_len
        last = rng.integers(0, self.num_steps, size=batch_size)
        back = np.arange(-k + 1, 1)  # [K]: -K+1 .. 0
        mask = back[None, :] + self._t[last][:, None] >= 0  # [B, K]
        idx = np.where(mask, last[:, None] + back[None, :], self.num_steps)  # pad row
        batch = {k: v.take(idx, axis=0) for k, v in self.columns.items()}  # take: fast gather
        batch["mask"] = mask
        return batch


class ADWindowSampler:
    """Algorithm-Distillation windows: K consecutive steps of one learning history.

    Episodes are grouped by ``metadata[history_key]`` and ordered by
    ``metadata[order_key]``; a window may span episode boundaries but never two
    histories. A history is drawn with probability proportional to its number of
    steps, then a start uniformly among its ``L-K+1`` valid starts (histories with
    ``L < K`` give one left-padded window).

    Batch keys, besides DT's ``obs, action, reward, timestep, mask``:
    ``prev_action``/``prev_reward`` (previous step of the same history, across
    episode boundaries; -1 for integer actions / 0 otherwise and reward 0 at the
    very start of a history), ``first`` (True on an episode's first step) and
    ``episode_index`` (rank of the step's episode within its history, 0-based, in
    ``order_key`` order). Padded positions are 0/False in every key.
    """

    def __init__(
        self,
        store: EpisodeStore,
        context_len: int,
        *,
        history_key: str = "history",
        order_key: str = "index",
        episodes: Sequence[int] | None = None,
    ) -> None:
        if context_len < 1:
            raise ValueError("context_len must be >= 1")
        self.context_len = context_len
        ids = _select(store, episodes)
        meta = store.metadata
        groups: dict[Any, list[tuple[Any, int]]] = {}
        for i in ids.tolist():
            m = meta[i]
            for key in (history_key, order_key):
                if key not in m:
                    raise KeyError(f"episode {i} has no metadata key {key!r} (metadata: {m})")
            groups.setdefault(m[history_key], []).append((m[order_key], i))
        self.history_ids = sorted(groups, key=lambda h: (str(type(h)), h))
        ordered, ranks, hist_len = [], [], []
        lengths_all = store.episode_lengths
        for h in self.history_ids:
            eps = sorted(groups[h], key=lambda t: t[0])
            orders = [o for o, _ in eps]
            if len(set(map(repr, orders))) != len(orders):
                raise ValueError(f"history {h!r} has duplicate {order_key!r} values {orders}")
            ep_ids = [i for _, i in eps]
            ordered += ep_ids
            ranks += list(range(len(ep_ids)))
            hist_len.append(int(lengths_all[ep_ids].sum()))
        ordered_ids = np.asarray(ordered, dtype=np.int64)
        steps, lengths = _gather_steps(store, ordered_ids)
        ep_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

        timestep = (np.arange(len(steps)) - np.repeat(ep_starts, lengths)).astype(np.int64)
        action = _load(store, "action", steps)
        reward = _load(store, "reward", steps, np.float32)

        self.hist_len = np.asarray(hist_len, dtype=np.int64)
        self.hist_start = np.concatenate([[0], np.cumsum(self.hist_len)[:-1]]).astype(np.int64)
        self._cum_len = np.cumsum(self.hist_len)
        self.num_steps = int(self.hist_len.sum())

        # prev_*: shift by one step in history order, reset at each history's start.
        integer = action.dtype.kind in "iu"
        prev_action = np.zeros_like(action, dtype=np.int64 if action.dtype.kind == "u" else None)
        prev_action[1:-1] = action[:-2]
        prev_action[self.hist_start] = -1 if integer else 0
        prev_reward = np.zeros_like(reward)
        prev_reward[1:-1] = reward[:-2]
        prev_reward[self.hist_start] = 0.0
        # Flat per-step arrays in history order (+1 zero row for padding).
        self.columns: dict[str, np.ndarray] = {
            "obs": _load(store, "obs", steps),
            "action": action,
            "reward": reward,
            "prev_action": prev_action,
            "prev_reward": prev_reward,
            "timestep": _padded(timestep),
            "first": _padded(timestep == 0),
            "episode_index": _padded(np.repeat(np.asarray(ranks, dtype=np.int64), lengths)),
        }

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = self.context_len
        h = np.searchsorted(
            self._cum_len, rng.integers(0, self.num_steps, size=batch_size), "right"
        )
        length = self.hist_len[h]
        start = rng.integers(0, np.maximum(length - k + 1, 1))
        pad = np.maximum(k - length, 0)
        local = start[:, None] + np.arange(k)[None, :] - pad[:, None]  # [B, K]
        mask = local >= 0
        idx = np.where(mask, self.hist_start[h][:, None] + local, self.num_steps)  # pad row
        batch = {k: v.take(idx, axis=0) for k, v in self.columns.items()}  # take: fast gather
        batch["mask"] = mask
        return batch
