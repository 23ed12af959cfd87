"""FAISS trajectory index: keys in, (similarity, rich id) out.

Paper: Schmied et al. 2024, "Retrieval-Augmented Decision Transformer: External Memory for
In-context RL" (RA-DT; official code github.com/ml-jku/RA-DT, `src/buffers/cache.py`). RA-DT
embeds sub-trajectories, stores the embeddings in a FAISS inner-product index (L2-normalised
keys during training, i.e. cosine similarity; a GPU `Flat` index by default) and maps every
hit back to the sub-trajectory it came from. This module is that index, independent of any
agent: every row carries its episode, key step, task, trajectory and episode return.

Deviations from the official code:
- The index is made with `faiss.index_factory` from a config string (`Flat` by default,
  `IVF{nlist},Flat`, `HNSW32`, ...), not through autofaiss.
- Excluding the query's own trajectory: the official CPU path gives every query of a batch one
  `IDSelector` that drops the trajectories of the *whole batch*, and its GPU path masks after
  the search. Here the search over-fetches `k + (most keys any one trajectory has)` candidates
  and masks per query, so the result is exact (for `Flat`), per query, and the same on CPU and
  GPU.
- Sharding uses `faiss.IndexShards` with successive ids; faiss cannot serialise `IndexShards`,
  so `save` writes one `write_index` file per shard next to the metadata npz.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

__all__ = ["KEY_FIELDS", "IndexConfig", "SearchResult", "TrajectoryIndex", "gpu_available"]

KEY_FIELDS = ("episode", "step", "task", "trajectory", "ret")
_INT_FIELDS = ("episode", "step", "task", "trajectory")
_FORMAT = 1


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass
class IndexConfig:
    factory: str = "Flat"  # any faiss.index_factory string: Flat | IVF1024,Flat | HNSW32 | ...
    metric: str = "cosine"  # cosine (L2-normalise keys and queries, inner product) | ip
    nprobe: int = 16  # IVF lists probed per query
    ef_search: int = 64  # HNSW search breadth
    shards: int = 1  # >1: IndexShards (searched in parallel threads, or one shard per GPU)
    device: str = "auto"  # auto (GPU when faiss-gpu sees CUDA) | cpu | gpu
    max_train: int = 100_000  # IVF trains on at most this many keys (a seeded sample)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in ("cosine", "ip"):
            raise ValueError(f"metric={self.metric!r}: expected 'cosine' or 'ip'")
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"device={self.device!r}: expected 'auto', 'cpu' or 'gpu'")
        if self.shards < 1:
            raise ValueError(f"shards={self.shards} must be >= 1")


@dataclass
class SearchResult:
    """Top-k hits per query, best first. Missing hits have id -1 and score -inf."""

    scores: np.ndarray  # (q, k) float32: inner product (cosine similarity for metric=cosine)
    ids: np.ndarray  # (q, k) int64 row ids in insertion order
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # KEY_FIELDS -> (q, k)

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0


class TrajectoryIndex:
    """Inner-product index over sub-trajectory keys with per-row metadata.

    Ids are row numbers in insertion order, so callers keep values in plain arrays aligned
    with them. Keys are copied and normalised when `metric="cosine"`.
    """

    def __init__(self, dim: int, cfg: IndexConfig | None = None) -> None:
        if dim < 1:
            raise ValueError(f"dim={dim} must be >= 1")
        self.dim = dim
        self.cfg = cfg or IndexConfig()
        self.use_gpu = self.cfg.device == "gpu" or (self.cfg.device == "auto" and gpu_available())
        if self.use_gpu and not gpu_available():
            raise RuntimeError("device='gpu' but faiss has no GPU support or sees no CUDA device")
        if self.use_gpu and "HNSW" in self.cfg.factory.upper():
            self.use_gpu = False  # faiss has no GPU HNSW; keep it on CPU rather than fail
        self._shards: list[faiss.Index] = []
        self._index: faiss.Index | None = None
        self._gpu_res: list = []
        self.meta: dict[str, np.ndarray] = {
            k: np.zeros(0, np.float32 if k == "ret" else np.int64) for k in KEY_FIELDS
        }
        self._per_trajectory: dict[int, int] = {}
        self.max_per_trajectory = 0

    # ------------------------------------------------------------------ building

    def _new_cpu_index(self) -> faiss.Index:
        return faiss.index_factory(self.dim, self.cfg.factory, faiss.METRIC_INNER_PRODUCT)

    def _set_search_params(self, index: faiss.Index) -> None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = self.cfg.nprobe
        hnsw = faiss.downcast_index(index)
        if hasattr(hnsw, "hnsw"):
            hnsw.hnsw.efSearch = self.cfg.ef_search

    def _to_device(self, index: faiss.Index, shard: int) -> faiss.Index:
        if not self.use_gpu:
            return index
        if self.cfg.shards == 1:
            return faiss.index_cpu_to_all_gpus(index)  # one GPU, or replicas on all of them
        res = faiss.StandardGpuResources()
        self._gpu_res.append(res)
        return faiss.index_cpu_to_gpu(res, shard % faiss.get_num_gpus(), index)

    def _assemble(self, cpu_shards: list[faiss.Index]) -> None:
        for s in cpu_shards:
            self._set_search_params(s)
        self._shards = [self._to_device(s, i) for i, s in enumerate(cpu_shards)]
        if len(self._shards) == 1:
            self._index = self._shards[0]
        else:
            self._index = faiss.IndexShards(self.dim, True, True)  # threaded, successive ids
            for s in self._shards:
                self._index.add_shard(s)
            self._index.syncWithSubIndexes()

    def _build(self, keys: np.ndarray) -> None:
        """Create (and for IVF, train) the shards; the first `add` calls this."""
        base = self._new_cpu_index()
        if not base.is_trained:
            rng = np.random.default_rng(self.cfg.seed)
            sample = keys
            if len(keys) > self.cfg.max_train:
                sample = keys[np.sort(rng.choice(len(keys), self.cfg.max_train, replace=False))]
            try:
                base.train(np.ascontiguousarray(sample))
            except RuntimeError as e:
                raise ValueError(
                    f"cannot train {self.cfg.factory!r} on {len(sample)} keys ({e}); add more "
                    "keys in the first call or use factory='Flat'"
                ) from e
        self._assemble([base] + [faiss.clone_index(base) for _ in range(self.cfg.shards - 1)])

    def prepare(self, x: np.ndarray, what: str = "keys") -> np.ndarray:
        """`x` (n, dim) as this index stores and searches it: a float32 copy, L2-normalised for
        `metric="cosine"`; a wrong shape raises naming `what`."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}), got {x.shape}")
        x = np.array(x, dtype=np.float32, order="C", copy=True)
        if self.cfg.metric == "cosine":
            faiss.normalize_L2(x)
        return x

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return len(self.meta["episode"])

    @property
    def ntotal(self) -> int:
        return len(self)

    def add(
        self,
        keys: np.ndarray,
        *,
        episode: np.ndarray,
        step: np.ndarray,
        task: np.ndarray,
        trajectory: np.ndarray,
        ret: np.ndarray,
    ) -> np.ndarray:
        """Append keys (n, dim) with their metadata; returns their ids."""
        x = self.prepare(keys, "keys")
        n = len(x)
        cols = {"episode": episode, "step": step, "task": task, "trajectory": trajectory}
        new = {k: np.asarray(v, np.int64).reshape(-1) for k, v in cols.items()}
        new["ret"] = np.asarray(ret, np.float32).reshape(-1)
        bad = {k: len(v) for k, v in new.items() if len(v) != n}
        if bad:
            raise ValueError(f"{n} keys but metadata lengths {bad}")
        if n == 0:
            return np.zeros(0, np.int64)
        if self._index is None:
            self._build(x)
        if len(self) == 0 and len(self._shards) > 1:
            # first fill: contiguous blocks, shard i holds the i-th block (successive ids)
            for shard, block in zip(self._shards, np.array_split(x, len(self._shards))):
                shard.add(np.ascontiguousarray(block))
        else:
            self._shards[-1].add(x)  # later rows extend the last block; ids stay successive
        if len(self._shards) > 1:
            self._index.syncWithSubIndexes()
        ids = np.arange(len(self), len(self) + n, dtype=np.int64)
        self.meta = {k: np.concatenate([self.meta[k], new[k]]) for k in KEY_FIELDS}
        for t, c in zip(*np.unique(new["trajectory"], return_counts=True)):
            self._per_trajectory[int(t)] = self._per_trajectory.get(int(t), 0) + int(c)
        self.max_per_trajectory = max(self._per_trajectory.values())
        return ids

    def search(
        self, queries: np.ndarray, k: int, *, exclude_trajectory: np.ndarray | None = None
    ) -> SearchResult:
        """Top-k keys per query by inner product; optionally none from the query's trajectory."""
        q = self.prepare(queries, "queries")
        if len(self) == 0:
            raise ValueError("search on an empty index: add keys first")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        extra = 0
        if exclude_trajectory is not None:
            exclude_trajectory = np.asarray(exclude_trajectory, np.int64).reshape(-1)
            if len(exclude_trajectory) != len(q):
                raise ValueError(f"{len(q)} queries but {len(exclude_trajectory)} trajectory ids")
            extra = self.max_per_trajectory
        fetch = min(len(self), k + extra)
        scores, ids = self._index.search(q, fetch)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        if exclude_trajectory is not None:
            own = (ids >= 0) & (self.meta["trajectory"][ids] == exclude_trajectory[:, None])
            ids = np.where(own, -1, ids)
            scores = np.where(own, -np.inf, scores).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, 1)
            scores = np.take_along_axis(scores, order, 1)
        if fetch < k:
            pad = k - fetch
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids, scores = ids[:, :k], scores[:, :k]
        return SearchResult(scores, ids, self.lookup(ids))

    def lookup(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Metadata of ids (any shape); -1 (ints) / nan (return) where id is -1."""
        ids = np.asarray(ids, np.int64)
        ok = ids >= 0
        safe = np.where(ok, ids, 0)
        out = {}
        for name in KEY_FIELDS:
            col = self.meta[name]
            fill = np.nan if name == "ret" else -1
            vals = col[safe] if len(col) else np.zeros(ids.shape, col.dtype)
            out[name] = np.where(ok, vals, fill).astype(col.dtype)
        return out

    def reconstruct_all(self) -> np.ndarray:
        """The stored keys (n, dim) in id order (normalised ones for `metric="cosine"`)."""
        parts = []
        for s in self._cpu_shards():
            ivf = faiss.try_extract_index_ivf(s)
            if ivf is not None:
                ivf.make_direct_map()  # IVF lists do not know their rows' positions otherwise
            parts.append(s.reconstruct_n(0, s.ntotal))
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def _cpu_shards(self) -> list[faiss.Index]:
        return [faiss.index_gpu_to_cpu(s) if self.use_gpu else s for s in self._shards]

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write `index.json`, one `shard_{i}.faiss` per shard and `meta.npz` into `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        shards = self._cpu_shards() if self._index is not None else []
        for old in path.glob("shard_*.faiss"):
            old.unlink()
        for i, s in enumerate(shards):
            faiss.write_index(s, str(path / f"shard_{i}.faiss"))
        np.savez(path / "meta.npz", **self.meta)
        info = {
            "format": _FORMAT,
            "dim": self.dim,
            "cfg": asdict(self.cfg),
            "n_shards": len(shards),
        }
        (path / "index.json").write_text(json.dumps(info, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> TrajectoryIndex:
        """Read an index written by `save` (onto the GPU when `device` allows)."""
        path = Path(path)
        info_path = path / "index.json"
        if not info_path.exists():
            raise FileNotFoundError(f"no saved TrajectoryIndex at {path} (missing index.json)")
        info = json.loads(info_path.read_text())
        if info.get("format") != _FORMAT:
            raise ValueError(f"{info_path}: format {info.get('format')!r}, expected {_FORMAT}")
        cfg = IndexConfig(**info["cfg"])
        if device is not None:
            cfg.device = device
        self = cls(int(info["dim"]), cfg)
        with np.load(path / "meta.npz", allow_pickle=False) as z:
            self.meta = {k: z[k] for k in KEY_FIELDS}
        if info["n_shards"]:
            shards = [
                faiss.read_index(str(path / f"shard_{i}.faiss")) for i in range(info["n_shards"])
            ]
            total = sum(s.ntotal for s in shards)
            if total != len(self):
                raise ValueError(f"{path}: shards hold {total} keys, meta.npz has {len(self)}")
            self._assemble(shards)
        elif len(self):
            raise ValueError(f"{path}: meta.npz has {len(self)} rows but no shard files")
        traj, counts = np.unique(self.meta["trajectory"], return_counts=True)
        self._per_trajectory = {int(t): int(c) for t, c in zip(traj, counts)}
        self.max_per_trajectory = int(counts.max()) if len(counts) else 0
        return self
