"""RA-DT's external memory: sub-trajectory chunks, retrieval, reweighting, regularisation.

Paper: Schmied et al. 2024, "Retrieval-Augmented Decision Transformer: External Memory for
In-context RL" (RA-DT; official code github.com/ml-jku/RA-DT: `src/buffers/cache.py`,
`src/buffers/cache_dataset.py`, `src/buffers/buffer_utils.py`). What is implemented:

- Chunking: a key every C steps of every episode, at key steps p = 0, C, 2C, ... The key is
  the embedding of the window of `context` steps that ends just before p (steps [p-K, p); the
  first one, p = 0, embeds steps [0, 2) as the official code does). Its value is the past C
  plus future C steps [p-C, p+C) of the same episode (states, actions, rewards, returns-to-go,
  timesteps, mask; left-padded at episode edges like the official `pad_sequences`), with the
  task id, trajectory id and episode return. C = 25 by default, as the released config
  (`cache_steps = cache_len = future_cache_len = 25`; the paper writes C = 50).
- Training retrieval (`RetrievalMemory`): search m = 2l = 100 candidates by cosine similarity
  with none from the query's own trajectory, drop those with similarity > 0.98, keep the best
  l = 50 (near-duplicates fill up only when fewer remain), score
  s = minmax(similarity) + α·𝟙[same task] (α = 1; the 0/1 task term is not min-maxed, as in
  the code) and keep the top k = 1. Queries from before step 10 get k random
  sub-trajectories of their task instead (`min_seq_len = 10`). With k > 1 the picks are sorted
  by (episode return, step), ascending, as in the code. `search_scope: task` searches only the
  query's task's keys (the official `only_same_task`; one small exact index per task), so every
  candidate is from the right task, as in the per-task evaluation memory.
- Deduplication before training: a key is dropped when a same-task key from another
  trajectory among its 10 nearest neighbours has cosine similarity > 0.98 (`deduplicate`;
  `dedup_scope: task` searches each task's keys only: faster, removes more).
- Evaluation (`EvalMemory`, paper Algorithm 1): one memory per evaluation task that starts
  empty and receives every finished episode; s = minmax(similarity) + α·minmax(episode return)
  over the top l; raw inner product (the official eval cache does not normalise).
- Retrieval statistics for logging: task hit rate, own-trajectory rate, |Δreturn|.

Deviations from the official code:
- Candidates over the cut-off are left out of the min-max. The official code sets their
  similarity to -1 and keeps them among the top l when fewer than l others remain, where they
  can still be picked; here they likewise fill up the l slots with relevance 0
  (`cutoff_fallback=True`, so a query whose every candidate is a near-duplicate still gets
  something), or are dropped for good (`cutoff_fallback=False`: such rows get id -1).
- The short-query replacement avoids the query's own trajectory when its task has other
  sub-trajectories (the official sampler draws from all of the task's sub-trajectories).
- Deduplication walks the keys one by one in index order (a key already removed removes
  nothing); the official code works in batches of 512 and excludes every trajectory of the
  batch from each search.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index import KEY_FIELDS, IndexConfig, SearchResult, TrajectoryIndex
from rl_core.data.samplers import returns_to_go
from rl_core.data.store import EpisodeStore

__all__ = [
    "WINDOW_KEYS",
    "Chunks",
    "EvalMemory",
    "Retrieval",
    "RetrievalConfig",
    "RetrievalMemory",
    "chunk_episodes",
    "chunk_store",
    "deduplicate",
    "minmax",
    "retrieval_stats",
    "reweight",
]

WINDOW_KEYS = ("obs", "action", "reward", "rtg", "timestep", "mask")


# ----------------------------------------------------------------------------- chunking


@dataclass
class Chunks:
    """One row per key: the window to embed, the value to retrieve, and its metadata."""

    windows: dict[str, np.ndarray]  # WINDOW_KEYS -> (n, K, ...), left-padded, mask False there
    values: dict[str, np.ndarray]  # WINDOW_KEYS -> (n, 2C, ...), left-padded
    meta: dict[str, np.ndarray]  # KEY_FIELDS -> (n,)

    def __len__(self) -> int:
        return len(self.meta["episode"])

    def select(self, idx: np.ndarray) -> Chunks:
        pick = lambda d: {k: v[idx] for k, v in d.items()}  # noqa: E731
        return Chunks(pick(self.windows), pick(self.values), pick(self.meta))


def _per_episode(x: Sequence[int] | np.ndarray | None, n: int, default: np.ndarray, what: str):
    out = default if x is None else np.asarray(x, np.int64).reshape(-1)
    if len(out) != n:
        raise ValueError(f"{what}: {len(out)} entries for {n} episodes")
    return out


def _chunk_flat(
    obs: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    lengths: np.ndarray,
    *,
    chunk: int,
    context: int,
    task: np.ndarray,
    trajectory: np.ndarray,
    episode: np.ndarray,
    gamma: float,
) -> Chunks:
    """Chunks of consecutive episodes stored back to back in flat step arrays."""
    if chunk < 1 or context < 1:
        raise ValueError(f"chunk={chunk} and context={context} must be >= 1")
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) == 0 or lengths.min() < 1:
        raise ValueError("need at least one episode, each with at least one step")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    reward = np.asarray(reward, np.float32)
    rtg = returns_to_go(reward, starts, gamma)
    ep_return = np.add.reduceat(reward.astype(np.float64), starts).astype(np.float32)
    timestep = np.arange(len(reward)) - np.repeat(starts, lengths)
    n_keys = -(-lengths // chunk)  # ceil
    e = np.repeat(np.arange(len(lengths)), n_keys)
    first = np.repeat(np.cumsum(n_keys) - n_keys, n_keys)
    p = (np.arange(len(e)) - first) * chunk  # key step within its episode
    T, base = lengths[e], starts[e]
    pad_row = len(reward)  # index of the all-zero row appended to every column

    cols = {
        "obs": obs,
        "action": action,
        "reward": reward,
        "rtg": rtg,
        "timestep": timestep.astype(np.int64),
        "mask": np.ones(len(reward), bool),
    }
    padded = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), v.dtype)]) for k, v in cols.items()}

    def gather(rel: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
        flat = np.where(ok, base[:, None] + rel, pad_row)
        return {k: v[flat] for k, v in padded.items()}

    end = np.minimum(np.maximum(p, 2), T)  # key window [end - K, end)
    rel = end[:, None] - context + np.arange(context)[None]
    windows = gather(rel, rel >= 0)
    lo, hi, width = np.maximum(p - chunk, 0), np.minimum(p + chunk, T), 2 * chunk
    j = np.arange(width)[None]
    skip = width - (hi - lo)[:, None]  # left padding
    values = gather(lo[:, None] + j - skip, j >= skip)
    meta = {
        "episode": episode[e],
        "step": p,
        "task": task[e],
        "trajectory": trajectory[e],
        "ret": ep_return[e],
    }
    return Chunks(windows, values, meta)


def chunk_episodes(
    episodes: Sequence[Mapping[str, np.ndarray]],
    *,
    chunk: int,
    context: int,
    task: Sequence[int] | np.ndarray,
    trajectory: Sequence[int] | np.ndarray | None = None,
    episode: Sequence[int] | np.ndarray | None = None,
    gamma: float = 1.0,
) -> Chunks:
    """Chunks of episode dicts (`obs`, `action`, `reward`), e.g. finished evaluation episodes.

    `trajectory` and `episode` default to the position in `episodes`.
    """
    n = len(episodes)
    default = np.arange(n, dtype=np.int64)
    lengths = np.array([len(ep["reward"]) for ep in episodes], np.int64)
    cat = {k: np.concatenate([np.asarray(ep[k]) for ep in episodes]) for k in ("obs", "action")}
    reward = np.concatenate([np.asarray(ep["reward"], np.float32) for ep in episodes])
    return _chunk_flat(
        cat["obs"], cat["action"], reward, lengths, chunk=chunk, context=context,
        task=_per_episode(task, n, default, "task"),
        trajectory=_per_episode(trajectory, n, default, "trajectory"),
        episode=_per_episode(episode, n, default, "episode"), gamma=gamma,
    )  # fmt: skip


def _task_key(task: Any) -> Any:
    return tuple(task) if isinstance(task, list) else task


def chunk_store(
    store: EpisodeStore,
    *,
    chunk: int,
    context: int,
    episodes: Sequence[int] | np.ndarray | None = None,
    task_ids: Mapping[Any, int] | Callable[[dict[str, Any]], int] | None = None,
    gamma: float = 1.0,
) -> tuple[Chunks, dict[Any, int]]:
    """Chunks of a store's episodes; the trajectory id is the store's episode index.

    Task ids come from `metadata["task"]`: through `task_ids` (a mapping of the task value,
    lists as tuples, or a function of the metadata), or numbered in order of first
    appearance. Returns the chunks and the task -> id mapping used.
    """
    ids = np.arange(len(store)) if episodes is None else np.asarray(episodes, np.int64)
    metas = store.metadata
    mapping: dict[Any, int] = {} if task_ids is None or callable(task_ids) else dict(task_ids)
    task = np.zeros(len(ids), np.int64)
    for i, ep in enumerate(ids):
        m = metas[ep]
        if callable(task_ids):
            task[i] = task_ids(m)
            continue
        key = _task_key(m.get("task"))
        if key not in mapping:
            if task_ids is not None:
                raise KeyError(f"episode {ep}: task {key!r} is not in task_ids")
            mapping[key] = len(mapping)
        task[i] = mapping[key]
    starts, lengths = store.episode_starts[ids], store.episode_lengths[ids]
    offs = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    steps = np.repeat(starts, lengths) + np.arange(lengths.sum()) - np.repeat(offs, lengths)
    contiguous = len(steps) == store.num_steps and np.array_equal(steps, np.arange(len(steps)))
    col = lambda k: np.asarray(store.column(k)) if contiguous else store.column(k)[steps]  # noqa: E731
    chunks = _chunk_flat(
        col("obs"), col("action"), col("reward"), lengths, chunk=chunk, context=context,
        task=task, trajectory=ids, episode=ids, gamma=gamma,
    )  # fmt: skip
    return chunks, mapping


# ----------------------------------------------------------------------------- scoring


def minmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row min-max to [0, 1] over the valid entries (0 elsewhere), as RA-DT's reweighting."""
    x = np.asarray(x, np.float64)
    lo = np.where(valid, x, np.inf).min(1, keepdims=True)
    hi = np.where(valid, x, -np.inf).max(1, keepdims=True)
    with np.errstate(invalid="ignore"):  # rows without a valid entry give inf - inf
        out = (x - lo) / (hi - lo + 1e-8)
    return np.where(valid, out, 0.0)


def reweight(
    similarity: np.ndarray,
    valid: np.ndarray,
    utility: np.ndarray,
    *,
    alpha: float,
    k: int,
    minmax_utility: bool,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """RA-DT's s = minmax(relevance) + α·utility over candidates (b, m) -> top-k (positions, s).

    Min-max runs over the `valid` candidates. `eligible` (default: `valid`) may add fallback
    candidates, which get relevance 0. Ties keep candidate order (the most similar first);
    candidates that are not eligible score -inf.
    """
    eligible = valid if eligible is None else eligible | valid
    u = minmax(utility, eligible) if minmax_utility else np.asarray(utility, np.float64)
    score = np.where(eligible, minmax(similarity, valid) + alpha * u, -np.inf)
    pos = np.argsort(-score, axis=1, kind="stable")[:, :k]
    return pos, np.take_along_axis(score, pos, 1)


def rows_by_task(task: np.ndarray) -> dict[int, np.ndarray]:
    """Task id -> its rows, ascending (index order within the task)."""
    order = np.argsort(task, kind="stable")
    uniq, first = np.unique(task[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order, first[1:])))


def task_indexes(
    index: TrajectoryIndex, keys: np.ndarray, by_task: Mapping[int, np.ndarray] | None = None
) -> dict[int, tuple[np.ndarray, TrajectoryIndex]]:
    """Task id -> (its rows, a small exact index over their keys with the same metric).
    `by_task` (from `rows_by_task`) saves recomputing the grouping."""
    sub_cfg = IndexConfig(metric=index.cfg.metric, device=index.cfg.device)
    by_task = rows_by_task(index.meta["task"]) if by_task is None else by_task
    out = {}
    for t, members in by_task.items():
        sub = TrajectoryIndex(keys.shape[1], sub_cfg)
        sub.add(keys[members], **{f: index.meta[f][members] for f in KEY_FIELDS})
        out[t] = (members, sub)
    return out


def deduplicate(
    index: TrajectoryIndex,
    keys: np.ndarray,
    *,
    k: int = 10,
    cutoff: float = 0.98,
    batch: int = 1024,
    scope: str = "global",
) -> np.ndarray:
    """Keep-mask over the index's rows: walking in index order, each kept key removes its
    same-task near-duplicates (cosine > cutoff) from other trajectories among its k nearest.

    `scope="global"` (the official `deduplicate_cache`): the k nearest keys of the whole index,
    other-task ones then ignored. `scope="task"`: the k nearest keys of the query's own task,
    searched in a small index per task; it removes more (other tasks' near-identical keys no
    longer crowd the k slots) and costs O(keys per task ^ 2) instead of O(keys ^ 2): seconds
    instead of more than 15 minutes for the 320K keys of the PPO histories on 2 CPU cores.
    """
    if scope not in ("global", "task"):
        raise ValueError(f"dedup scope={scope!r}: expected 'global' or 'task'")
    n = len(index)
    removed = np.zeros(n, bool)
    task, traj = index.meta["task"], index.meta["trajectory"]
    if scope == "global":
        groups = [(index, np.arange(n))]
    else:
        groups = [(sub, members) for members, sub in task_indexes(index, keys).values()]
    for searched, members in groups:
        for start in range(0, len(members), batch):
            rows = members[start : start + batch]
            res = searched.search(keys[rows], k, exclude_trajectory=traj[rows])
            found = np.where(res.valid, members[np.maximum(res.ids, 0)], -1)
            hit = res.valid & (res.scores > cutoff) & (task[found] == task[rows][:, None])
            for r in np.flatnonzero(hit.any(1)):
                if not removed[rows[r]]:
                    removed[found[r][hit[r]]] = True
    return ~removed


# ----------------------------------------------------------------------------- retrieval


@dataclass
class RetrievalConfig:
    chunk: int = 25  # C: a key every C steps; values hold past C + future C steps
    top_l: int = 50  # l candidates that are reweighted
    candidates: int = 100  # m = 2l searched before the similarity cut-off
    top_k: int = 1  # k sub-trajectories returned per query
    alpha: float = 1.0  # weight of the utility term
    sim_cutoff: float | None = 0.98  # training: drop candidates more similar than this
    cutoff_fallback: bool = True  # ...but let them fill up when fewer than top_l remain
    exclude_own_trajectory: bool = True  # training: never retrieve from the query's trajectory
    dedup: bool = True  # training: deduplicate keys when the memory is built
    dedup_neighbours: int = 10
    dedup_cutoff: float = 0.98
    dedup_scope: str = "global"  # global (official) | task (k nearest within the task: faster)
    # training: search all keys (official default) or only the query's task's keys (the
    # official `only_same_task`, as the per-task evaluation memory does)
    search_scope: str = "all"
    min_query_step: int | None = 10  # training: queries before this step get random same-task
    # training: any query gets a random same-task sub-trajectory with this probability (the
    # official `p_task_rand_trj`, 0 in the released Dark-Room config)
    p_random_same_task: float = 0.0
    # training: any other query gets a random same-task sub-trajectory from an episode that
    # earned nothing, with this probability (not in the paper: teaches the policy not to follow
    # a failed episode, the situation of every in-context trial after a failed one)
    p_failed_same_task: float = 0.0
    index: IndexConfig = field(default_factory=IndexConfig)  # training memory (cosine)
    eval_index: IndexConfig = field(default_factory=lambda: IndexConfig(metric="ip"))
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.index, Mapping):
            self.index = IndexConfig(**self.index)
        if isinstance(self.eval_index, Mapping):
            self.eval_index = IndexConfig(**self.eval_index)
        if (self.sim_cutoff is not None or self.dedup) and self.index.metric != "cosine":
            raise ValueError("sim_cutoff and dedup compare cosine similarities: use metric=cosine")
        if self.search_scope not in ("all", "task"):
            raise ValueError(f"search_scope={self.search_scope!r}: expected 'all' or 'task'")
        for name in ("p_random_same_task", "p_failed_same_task"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a value in [0, 1]")
        if not 1 <= self.top_k <= self.top_l <= self.candidates:
            raise ValueError(
                f"need 1 <= top_k ({self.top_k}) <= top_l ({self.top_l}) <= candidates "
                f"({self.candidates})"
            )


@dataclass
class Retrieval:
    """k retrieved sub-trajectories per query. Rows of `ids` are -1 where nothing was found."""

    values: dict[str, np.ndarray]  # WINDOW_KEYS -> (b, k, 2C, ...); zeros, mask False if none
    ids: np.ndarray  # (b, k) int64
    similarity: np.ndarray  # (b, k); nan for short-query replacements
    score: np.ndarray  # (b, k) reweighted score; nan for replacements, -inf where none
    meta: dict[str, np.ndarray]  # KEY_FIELDS -> (b, k)
    replaced: np.ndarray  # (b,) bool: short-query rule applied

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0


def _gather_values(values: Mapping[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    ok = ids >= 0
    out = {}
    for key, v in values.items():
        got = v[np.where(ok, ids, 0)]
        got[~ok] = 0
        out[key] = got
    return out


def _sort_by_return(ids, sim, score, meta) -> tuple[np.ndarray, ...]:
    """RA-DT orders several retrieved sub-trajectories by (return, step), ascending."""
    ret = np.where(ids >= 0, meta["ret"], np.inf)
    step = np.where(ids >= 0, meta["step"], np.iinfo(np.int64).max)
    order = np.lexsort((step, ret), axis=1)
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    return take(ids), take(sim), take(score), {k: take(v) for k, v in meta.items()}


def _as_ids(x: Any, n: int, what: str) -> np.ndarray:
    out = np.asarray(x, np.int64).reshape(-1)
    if len(out) != n:
        raise ValueError(f"{n} queries but {len(out)} {what}")
    return out


class RetrievalMemory:
    """Training memory over an offline dataset: keys (n, d) aligned with `chunks`.

    Building it deduplicates the keys (`cfg.dedup`) and indexes the rest; `n_removed` says how
    many were dropped.
    """

    def __init__(
        self, keys: np.ndarray, chunks: Chunks, cfg: RetrievalConfig | None = None
    ) -> None:
        self.cfg = cfg or RetrievalConfig()
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 2 or len(keys) != len(chunks):
            raise ValueError(f"keys {keys.shape} do not match {len(chunks)} chunks")
        if len(chunks) == 0:
            raise ValueError("cannot build a retrieval memory from zero chunks")
        index = self._index(keys, chunks.meta)
        self.n_removed = 0
        if self.cfg.dedup:
            keep = deduplicate(
                index, keys, k=self.cfg.dedup_neighbours, cutoff=self.cfg.dedup_cutoff,
                scope=self.cfg.dedup_scope,
            )  # fmt: skip
            self.n_removed = int((~keep).sum())
            if self.n_removed:
                chunks, keys = chunks.select(keep), keys[keep]
                index = self._index(keys, chunks.meta)
        self._setup(index, chunks.values, keys)

    def _index(self, keys: np.ndarray, meta: Mapping[str, np.ndarray]) -> TrajectoryIndex:
        index = TrajectoryIndex(keys.shape[1], self.cfg.index)
        index.add(keys, **{k: meta[k] for k in KEY_FIELDS})
        return index

    def _setup(
        self, index: TrajectoryIndex, values: dict[str, np.ndarray], keys: np.ndarray | None
    ) -> None:
        self.index, self.values = index, values
        self.rng = np.random.default_rng(self.cfg.seed)
        self.by_task = rows_by_task(index.meta["task"])
        self.task_index: dict[int, tuple[np.ndarray, TrajectoryIndex]] = {}
        if self.cfg.search_scope == "task":
            keys = index.reconstruct_all() if keys is None else keys
            self.task_index = task_indexes(index, keys, self.by_task)
        failed = {t: ids[index.meta["ret"][ids] <= 0] for t, ids in self.by_task.items()}
        self.failed_by_task = {t: ids for t, ids in failed.items() if len(ids)}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.index.dim

    def retrieve(
        self,
        queries: np.ndarray,
        *,
        task: Sequence[int] | np.ndarray,
        trajectory: Sequence[int] | np.ndarray | None = None,
        step: Sequence[int] | np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> Retrieval:
        """Top-k sub-trajectories for a batch of queries (b, d) during training.

        `task` and `trajectory` are the queries' own ids; `step` is each query's current step
        in its episode (for the short-query rule).
        """
        cfg, rng = self.cfg, rng or self.rng
        queries = np.asarray(queries, np.float32)
        b = len(queries)
        task = _as_ids(task, b, "task ids")
        own = None
        if trajectory is not None:
            own = _as_ids(trajectory, b, "trajectory ids")
        exclude = own if cfg.exclude_own_trajectory else None
        res = self._search(queries, task, exclude)
        found = res.valid
        kept = found if cfg.sim_cutoff is None else found & (res.scores <= cfg.sim_cutoff)
        usable = found if cfg.cutoff_fallback else kept
        tier = np.where(kept, 0, np.where(usable, 1, 2))  # kept, then fallback, then nothing
        top = np.argsort(tier, axis=1, kind="stable")[:, : cfg.top_l]  # in similarity order
        ids = np.take_along_axis(np.where(usable, res.ids, -1), top, 1)
        sim = np.take_along_axis(res.scores, top, 1)
        valid = np.take_along_axis(kept, top, 1)
        utility = (self.index.lookup(ids)["task"] == task[:, None]).astype(np.float64)
        pos, score = reweight(
            sim, valid, utility, alpha=cfg.alpha, k=cfg.top_k, minmax_utility=False,
            eligible=ids >= 0,
        )  # fmt: skip
        ids = np.where(np.isfinite(score), np.take_along_axis(ids, pos, 1), -1)
        sim = np.take_along_axis(sim, pos, 1).astype(np.float32)
        score = score.astype(np.float32)
        replaced = np.zeros(b, bool)

        def coin(p: float) -> np.ndarray:  # no draw when p = 0: the rng stream stays as before
            return rng.random(b) < p if p else np.zeros(b, bool)

        short = coin(cfg.p_random_same_task)
        if cfg.min_query_step is not None and step is not None:
            short |= _as_ids(step, b, "steps") < cfg.min_query_step
        failed = coin(cfg.p_failed_same_task) & ~short
        for r in np.flatnonzero(short | failed):
            pools = self.failed_by_task if failed[r] else self.by_task
            pool = pools.get(int(task[r]), self.by_task.get(int(task[r])))
            if pool is None:
                continue
            if own is not None:
                others = pool[self.index.meta["trajectory"][pool] != own[r]]
                pool = others if len(others) else pool
            ids[r] = rng.choice(pool, cfg.top_k, replace=len(pool) < cfg.top_k)
            sim[r], score[r], replaced[r] = np.nan, np.nan, True
        meta = self.index.lookup(ids)
        if cfg.top_k > 1:
            ids, sim, score, meta = _sort_by_return(ids, sim, score, meta)
        return Retrieval(_gather_values(self.values, ids), ids, sim, score, meta, replaced)

    def _search(
        self, queries: np.ndarray, task: np.ndarray, exclude: np.ndarray | None
    ) -> SearchResult:
        """The m candidates of every query: from all keys, or from its own task's keys only."""
        m = self.cfg.candidates
        if self.cfg.search_scope == "all":
            return self.index.search(queries, m, exclude_trajectory=exclude)
        ids = np.full((len(queries), m), -1, np.int64)
        scores = np.full((len(queries), m), -np.inf, np.float32)
        for t in np.unique(task):
            rows = np.flatnonzero(task == t)
            if int(t) not in self.task_index:  # a task the memory does not hold: nothing found
                continue
            members, sub = self.task_index[int(t)]
            own = None if exclude is None else exclude[rows]
            res = sub.search(queries[rows], m, exclude_trajectory=own)
            ids[rows] = np.where(res.valid, members[np.maximum(res.ids, 0)], -1)
            scores[rows] = res.scores
        return SearchResult(scores, ids, self.index.lookup(ids))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Index (faiss files + metadata npz), values npz and config json under `path`."""
        path = Path(path)
        self.index.save(path / "index")
        np.savez(path / "values.npz", **self.values)
        info = {"cfg": asdict(self.cfg), "n_removed": self.n_removed}
        (path / "memory.json").write_text(json.dumps(info, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> RetrievalMemory:
        path = Path(path)
        info = json.loads((path / "memory.json").read_text())
        self = cls.__new__(cls)
        self.cfg = RetrievalConfig(**info["cfg"])
        self.n_removed = int(info["n_removed"])
        index = TrajectoryIndex.load(path / "index", device=device)
        with np.load(path / "values.npz", allow_pickle=False) as z:
            values = {k: z[k] for k in z.files}
        if any(len(v) != len(index) for v in values.values()):
            raise ValueError(f"{path}: values and index disagree on the number of keys")
        self._setup(index, values, None)
        return self


class EvalMemory:
    """Paper Algorithm 1: one memory per evaluation task (slot), empty at the start and filled
    with every finished episode; queries of all slots are answered in one call."""

    def __init__(self, n_slots: int, dim: int, cfg: RetrievalConfig | None = None) -> None:
        self.cfg = cfg or RetrievalConfig()
        self.n_slots, self.dim = n_slots, dim
        self.reset()

    def reset(self) -> None:
        self.indexes = [TrajectoryIndex(self.dim, self.cfg.eval_index) for _ in range(self.n_slots)]
        self.values: list[dict[str, np.ndarray] | None] = [None] * self.n_slots
        self._episodes = np.zeros(self.n_slots, np.int64)
        # Exact (Flat) search: every slot's keys, metadata and values also live in arrays padded
        # to a common length, (slots, capacity, ...), so one batched product answers the queries
        # of all slots (a faiss search per slot costs more in calls than in arithmetic here).
        self.batched = self.cfg.eval_index.factory.replace(" ", "").lower() == "flat"
        self._padded: dict[str, np.ndarray] = {}

    def sizes(self) -> list[int]:
        return [len(i) for i in self.indexes]

    def add(self, slot: int, keys: np.ndarray, chunks: Chunks) -> None:
        """Add one or more finished episodes' chunks (keys aligned with `chunks`) to a slot.

        Trajectory ids are renumbered per slot in the order episodes arrive.
        """
        if len(keys) != len(chunks):
            raise ValueError(f"{len(keys)} keys for {len(chunks)} chunks")
        _, traj = np.unique(chunks.meta["trajectory"], return_inverse=True)
        meta = dict(chunks.meta, trajectory=traj + self._episodes[slot])
        self._episodes[slot] += traj.max() + 1 if len(traj) else 0
        index = self.indexes[slot]
        start = len(index)
        index.add(keys, **{k: meta[k] for k in KEY_FIELDS})
        old = self.values[slot]
        new = chunks.values
        self.values[slot] = (
            new if old is None else {k: np.concatenate([old[k], new[k]]) for k in old}
        )
        if self.batched and len(keys):
            rows = {"key": index.prepare(keys)} | {f: index.meta[f][start:] for f in KEY_FIELDS}
            self._append_padded(slot, start, rows | {f"value/{k}": v for k, v in new.items()})

    def _append_padded(self, slot: int, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows start.. of `slot` into the padded arrays, doubling their capacity if needed."""
        for name, rows in arrays.items():
            end = start + len(rows)
            buf = self._padded.get(name)
            if buf is None or buf.shape[1] < end:
                cap = max(end, 16, 0 if buf is None else 2 * buf.shape[1])
                grown = np.zeros((self.n_slots, cap, *rows.shape[1:]), rows.dtype)
                if buf is not None:
                    grown[:, : buf.shape[1]] = buf
                self._padded[name] = buf = grown
            buf[slot, start:end] = rows

    def retrieve(self, queries: np.ndarray, slots: Sequence[int] | np.ndarray) -> Retrieval:
        """Top-k per query from its slot's memory; rows of empty slots get nothing (id -1).

        Before any episode was added anywhere, `values` is an empty dict.
        """
        cfg = self.cfg
        queries = np.asarray(queries, np.float32)
        b, k = len(queries), cfg.top_k
        slots = _as_ids(slots, b, "slots")
        ids = np.full((b, k), -1, np.int64)
        sim = np.full((b, k), np.nan, np.float32)
        score = np.full((b, k), -np.inf, np.float32)
        meta = {f: np.full((b, k), np.nan if f == "ret" else -1, np.float32 if f == "ret" else np.int64) for f in KEY_FIELDS}  # fmt: skip
        spec = next((v for v in self.values if v is not None), None)
        values = {key: np.zeros((b, k, *v.shape[1:]), v.dtype) for key, v in (spec or {}).items()}
        if self.batched:
            return self._retrieve_batched(queries, slots, ids, sim, score, meta, values)
        for s in np.unique(slots):
            index = self.indexes[s]
            if len(index) == 0:
                continue
            rows = np.flatnonzero(slots == s)
            res = index.search(queries[rows], cfg.top_l)
            utility = np.where(res.valid, res.meta["ret"], 0.0)
            pos, sc = reweight(
                res.scores, res.valid, utility, alpha=cfg.alpha, k=k, minmax_utility=True
            )
            got = np.where(np.isfinite(sc), np.take_along_axis(res.ids, pos, 1), -1)
            g_sim = np.take_along_axis(res.scores, pos, 1)
            g_meta = index.lookup(got)
            if k > 1:
                got, g_sim, sc, g_meta = _sort_by_return(got, g_sim, sc, g_meta)
            ids[rows], sim[rows], score[rows] = got, g_sim, sc
            for f in KEY_FIELDS:
                meta[f][rows] = g_meta[f]
            for key, v in _gather_values(self.values[s], got).items():
                values[key][rows] = v
        return Retrieval(values, ids, sim, score, meta, np.zeros(b, bool))

    def _retrieve_batched(self, queries, slots, ids, sim, score, meta, values) -> Retrieval:
        """`retrieve` for exact search: the same candidates, scores and choices as a Flat faiss
        search per slot (up to float rounding in near-ties), for all slots in one product."""
        cfg, b, k = self.cfg, len(queries), self.cfg.top_k
        sizes = np.array(self.sizes())[slots]
        width = int(sizes.max()) if b else 0
        searched = sizes > 0
        if width == 0:
            return Retrieval(values, ids, sim, score, meta, np.zeros(b, bool))
        q = self.indexes[0].prepare(queries, "queries")
        keys = self._padded["key"][slots, :width]
        valid = np.arange(width)[None] < sizes[:, None]
        scores = np.where(valid, np.einsum("bmd,bd->bm", keys, q), -np.inf).astype(np.float32)
        cand = np.argsort(-scores, axis=1, kind="stable")[:, : cfg.top_l]  # faiss: best first
        c_scores = np.take_along_axis(scores, cand, 1)
        c_valid = np.take_along_axis(valid, cand, 1)
        c_ids = np.where(c_valid, cand, -1)
        if c_ids.shape[1] < cfg.top_l:  # fewer keys than l: pad as a faiss search does
            pad = ((0, 0), (0, cfg.top_l - c_ids.shape[1]))
            c_ids = np.pad(c_ids, pad, constant_values=-1)
            c_scores = np.pad(c_scores, pad, constant_values=-np.inf)
            c_valid = c_ids >= 0
        row = slots[:, None]
        utility = np.where(c_valid, self._padded["ret"][row, np.maximum(c_ids, 0)], 0.0)
        pos, sc = reweight(c_scores, c_valid, utility, alpha=cfg.alpha, k=k, minmax_utility=True)
        got = np.where(np.isfinite(sc), np.take_along_axis(c_ids, pos, 1), -1)
        g_sim = np.take_along_axis(c_scores, pos, 1)
        ok, at = got >= 0, np.maximum(got, 0)
        g_meta = {
            f: np.where(ok, self._padded[f][row, at], np.nan if f == "ret" else -1).astype(
                meta[f].dtype
            )
            for f in KEY_FIELDS
        }
        if k > 1:
            got, g_sim, sc, g_meta = _sort_by_return(got, g_sim, sc, g_meta)
            ok, at = got >= 0, np.maximum(got, 0)
        s = searched
        ids[s], sim[s], score[s] = got[s], g_sim[s], sc[s]
        for f in KEY_FIELDS:
            meta[f][s] = g_meta[f][s]
        for key in values:
            v = self._padded[f"value/{key}"][row, at]
            v[~ok] = 0
            values[key][s] = v[s]
        return Retrieval(values, ids, sim, score, meta, np.zeros(b, bool))


def retrieval_stats(
    r: Retrieval,
    *,
    task: Sequence[int] | np.ndarray | None = None,
    trajectory: Sequence[int] | np.ndarray | None = None,
    ret: Sequence[float] | np.ndarray | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Log-friendly summary: found rate, task hit rate, own-trajectory rate, |Δreturn|."""
    ok = r.valid
    out = {"valid_rate": float(ok.mean()), "replaced_rate": float(r.replaced.mean())}
    if ok.any():
        sims = r.similarity[ok]
        if np.isfinite(sims).any():
            out["similarity"] = float(np.nanmean(sims))
        if task is not None:
            hit = r.meta["task"] == np.asarray(task, np.int64).reshape(-1, 1)
            out["task_hit_rate"] = float(hit[ok].mean())
        if trajectory is not None:
            same = r.meta["trajectory"] == np.asarray(trajectory, np.int64).reshape(-1, 1)
            out["trajectory_hit_rate"] = float(same[ok].mean())
        if ret is not None:
            delta = np.abs(r.meta["ret"] - np.asarray(ret, np.float32).reshape(-1, 1))
            out["abs_delta_return"] = float(delta[ok].mean())
    return {prefix + k: v for k, v in out.items()}
