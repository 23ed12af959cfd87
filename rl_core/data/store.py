"""EpisodeStore: an append-only directory of memory-mappable episode shards.

Layout of a store directory::

    root/
      manifest.json          # version, schema, attrs, and every committed shard
      shard_000000/obs.npy   # one .npy per key, episodes concatenated along time
      shard_000000/action.npy
      ...

Why this shape: a flat step index per key lets samplers gather training windows
with one fancy-index per batch, and plain ``.npy`` files can be memory-mapped
without pickle. A shard becomes visible only when the manifest names it, and
both the shard directory and the manifest are published by an atomic rename
after fsync, so a crash mid-write never exposes a half-written shard.

One writer at a time per store (appends are not locked); any number of readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CorruptShardError",
    "EpisodeStore",
    "EpisodeWriter",
    "open_or_build",
]

FORMAT_VERSION = 1
FORMAT_NAME = "icrl-episode-store"
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("obs", "action", "reward", "terminated", "truncated")
_BOOL_KEYS = ("terminated", "truncated")
_SHARD_RE = re.compile(r"^shard_(\d{6,})$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_CRC_CHUNK = 1 << 24


class CorruptShardError(ValueError):
    """A shard on disk does not match what the manifest says about it."""


# --------------------------------------------------------------------------- fs helpers


def _fsync_dir(path: Path) -> None:
    """Persist a directory entry (a rename or a new file) on POSIX filesystems."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any) -> None:
    """temp file + fsync + os.replace + fsync(parent): readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = json.dumps(obj, indent=1, sort_keys=False, allow_nan=True).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"object of type {type(x).__name__} is not JSON serialisable")


def _to_json(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Round-trip through JSON so what we keep in memory equals what a reopen reads."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(obj).__name__}")
    try:
        return json.loads(json.dumps(dict(obj), default=_json_default))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} is not JSON-serialisable: {e}") from e


def _crc32(arr: np.ndarray) -> int:
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    crc = 0
    for i in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(memoryview(flat[i : i + _CRC_CHUNK]), crc)
    return crc


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of an .npy file, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(shape), bool(fortran), dtype, f.tell()


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map an .npy (read only); empty arrays cannot be mapped, so read those."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:
        return np.load(path, allow_pickle=False)


# --------------------------------------------------------------------------- schema


def _spec(arr: np.ndarray) -> dict[str, Any]:
    return {"dtype": arr.dtype.str, "shape": list(arr.shape[1:])}


def _normalise_episode(
    episode: Mapping[str, Any], where: str
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Check one episode's keys/lengths/dtypes; returns arrays and its schema."""
    if not isinstance(episode, Mapping):
        raise TypeError(f"{where}: an episode must be a mapping of arrays, got {type(episode)}")
    missing = [k for k in REQUIRED_KEYS if k not in episode]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}; required: {REQUIRED_KEYS}")
    out: dict[str, np.ndarray] = {}
    for key, value in episode.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"{where}: key {key!r} must match {_KEY_RE.pattern} (it names a file)")
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise ValueError(f"{where}: key {key!r} must have a time axis, got a scalar")
        if arr.dtype.kind in "OV":
            raise TypeError(
                f"{where}: key {key!r} has dtype {arr.dtype}; object/structured arrays "
                "would need pickle and are not stored"
            )
        if key in _BOOL_KEYS and arr.dtype != np.bool_:
            if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
                raise TypeError(f"{where}: key {key!r} must be bool, got dtype {arr.dtype}")
            arr = arr.astype(np.bool_)
        if key == "reward" and arr.ndim != 1:
            raise ValueError(f"{where}: 'reward' must be 1-D [T], got shape {arr.shape}")
        out[key] = arr
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: keys have different lengths {lengths}")
    if lengths["reward"] == 0:
        raise ValueError(f"{where}: episode has zero steps")
    return out, {k: _spec(v) for k, v in out.items()}


def _schema_mismatch(
    expected: Mapping[str, Mapping[str, Any]], got: Mapping[str, Mapping[str, Any]], where: str
) -> str | None:
    """A message naming the first differing key, or None when the schemas agree."""
    for key in expected:
        if key not in got:
            return f"{where}: key {key!r} missing; store schema has keys {sorted(expected)}"
    for key in got:
        if key not in expected:
            return f"{where}: unexpected key {key!r}; store schema has keys {sorted(expected)}"
    for key, spec in expected.items():
        g = got[key]
        if np.dtype(spec["dtype"]) != np.dtype(g["dtype"]) or list(spec["shape"]) != list(
            g["shape"]
        ):
            return (
                f"{where}: key {key!r} expected dtype {np.dtype(spec['dtype'])} per-step shape "
                f"{tuple(spec['shape'])}, got dtype {np.dtype(g['dtype'])} per-step shape "
                f"{tuple(g['shape'])}"
            )
    return None


# --------------------------------------------------------------------------- the store


@dataclass
class _Shard:
    name: str
    num_steps: int
    offsets: np.ndarray
    lengths: np.ndarray
    metadata: list[dict[str, Any]]
    files: dict[str, dict[str, Any]]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "offsets": self.offsets.tolist(),
            "lengths": self.lengths.tolist(),
            "metadata": self.metadata,
            "files": self.files,
        }


class EpisodeStore:
    """Append-only episode dataset (and replay buffer) backed by memory-mapped shards.

    ``EpisodeStore(root)`` opens ``root`` or creates an empty store there; with
    ``create=False`` a missing store raises ``FileNotFoundError``. Every shard is
    validated on open: a bad one is skipped with a warning naming it (or raises
    :class:`CorruptShardError` when ``strict=True``), so one damaged file does
    not make the rest of a dataset unreadable.
    """

    def __init__(self, root: str | Path, *, create: bool = True, strict: bool = False) -> None:
        self.root = Path(root)
        self.strict = strict
        manifest = self.root / MANIFEST
        if not manifest.exists():
            if not create:
                raise FileNotFoundError(f"no EpisodeStore at {self.root} (missing {manifest})")
            self.root.mkdir(parents=True, exist_ok=True)
            visible = [p for p in self.root.iterdir() if not p.name.startswith(".")]
            if visible:
                raise FileExistsError(
                    f"{self.root} is not empty and has no {MANIFEST}; refusing to create a "
                    "store on top of other files"
                )
            _write_json_atomic(manifest, self._manifest_json([], {}, {}))
        self.refresh()

    # ------------------------------------------------------------------ manifest

    @staticmethod
    def _manifest_json(
        shards: list[dict[str, Any]], schema: dict[str, Any], attrs: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "schema": schema,
            "attrs": attrs,
            "shards": shards,
        }

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        try:
            m = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not an icrl EpisodeStore manifest")
        if m.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: manifest version {m.get('version')!r} found; this icrl supports "
                f"version {FORMAT_VERSION}"
            )
        return m

    def refresh(self) -> None:
        """(Re)read the manifest and validate every shard; picks up other writers' appends."""
        m = self._read_manifest()
        self._schema: dict[str, dict[str, Any]] = m["schema"]
        self._attrs: dict[str, Any] = m["attrs"]
        self._all_shards: list[dict[str, Any]] = m["shards"]
        self._shards: list[_Shard] = []
        self._bad: list[tuple[str, str]] = []
        for s in self._all_shards:
            reason = self._check_shard(s)
            if reason is None:
                self._shards.append(self._shard_from_json(s))
                continue
            path = self.root / s.get("name", "?")
            if self.strict:
                raise CorruptShardError(f"corrupt shard {path}: {reason}")
            warnings.warn(f"skipping corrupt shard {path}: {reason}", stacklevel=2)
            self._bad.append((s.get("name", "?"), reason))
        self._index()

    @staticmethod
    def _shard_from_json(s: Mapping[str, Any]) -> _Shard:
        return _Shard(
            name=s["name"],
            num_steps=int(s["num_steps"]),
            offsets=np.asarray(s["offsets"], dtype=np.int64),
            lengths=np.asarray(s["lengths"], dtype=np.int64),
            metadata=list(s["metadata"]),
            files=dict(s["files"]),
        )

    def _check_shard(self, s: Mapping[str, Any]) -> str | None:
        """Why shard ``s`` is unusable, or None. Reads only .npy headers and file sizes."""
        try:
            name, n = s["name"], int(s["num_steps"])
            offsets, lengths = list(s["offsets"]), list(s["lengths"])
            files = s["files"]
            if len(offsets) != len(lengths) or len(s["metadata"]) != len(lengths):
                return "manifest entry has inconsistent episode counts"
            if sum(lengths) != n or offsets != list(np.cumsum([0, *lengths[:-1]])):
                return "manifest offsets/lengths do not add up to num_steps"
        except (KeyError, TypeError, ValueError) as e:
            return f"malformed manifest entry ({e!r})"
        if set(files) != set(self._schema):
            return f"files {sorted(files)} do not match schema keys {sorted(self._schema)}"
        for key, spec in self._schema.items():
            path = self.root / name / files[key]["file"]
            if not path.is_file():
                return f"missing file {path.name}"
            size = path.stat().st_size
            if size != files[key]["bytes"]:
                return f"{path.name} has {size} bytes, manifest says {files[key]['bytes']}"
            try:
                shape, fortran, dtype, offset = _read_npy_header(path)
            except Exception as e:  # any parse failure means a bad header
                return f"{path.name} has an unreadable .npy header ({e})"
            want_shape = (n, *spec["shape"])
            if shape != want_shape or dtype != np.dtype(spec["dtype"]) or fortran:
                return (
                    f"{path.name} holds {dtype}{list(shape)}, schema wants "
                    f"{np.dtype(spec['dtype'])}{list(want_shape)}"
                )
            if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
                return f"{path.name} is truncated or padded (size {size})"
        return None

    def _index(self) -> None:
        lengths = [s.lengths for s in self._shards]
        self._lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._starts = (np.cumsum(self._lengths) - self._lengths).astype(np.int64)
        counts = [len(s.lengths) for s in self._shards]
        self._ep_shard = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
        self._ep_local = (
            np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
        ).astype(np.int64)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._lengths)

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.root)!r}, episodes={len(self)}, steps={self.num_steps})"

    @property
    def num_steps(self) -> int:
        return int(self._lengths.sum())

    @property
    def schema(self) -> dict[str, dict[str, Any]]:
        """key -> {"dtype": numpy dtype str, "shape": per-step shape}; empty before any append."""
        return {
            k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in self._schema.items()
        }

    @property
    def attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._attrs))

    @property
    def bad_shards(self) -> list[tuple[str, str]]:
        return list(self._bad)

    @property
    def episode_lengths(self) -> np.ndarray:
        return self._lengths.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        """Start of every episode in the flat step index used by :meth:`column`."""
        return self._starts.copy()

    @property
    def metadata(self) -> list[dict[str, Any]]:
        """One metadata dict per episode, in episode order (copies; edits are not saved)."""
        return [dict(m) for s in self._shards for m in s.metadata]

    def _arrays(self, shard: _Shard) -> dict[str, np.ndarray]:
        if not shard.arrays:
            shard.arrays = {
                k: _load_npy(self.root / shard.name / shard.files[k]["file"]) for k in self._schema
            }
        return shard.arrays

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` as read-only memmap views (copy them to keep or modify)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for a store of {n} episodes")
        i %= n
        shard = self._shards[self._ep_shard[i]]
        j = self._ep_local[i]
        a, b = shard.offsets[j], shard.offsets[j] + shard.lengths[j]
        return {k: v[a:b] for k, v in self._arrays(shard).items()}

    def episodes(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.episode(i)

    def column(self, key: str) -> np.ndarray:
        """All steps of ``key`` over all good shards; a memmap when there is one shard."""
        if key not in self._schema:
            raise KeyError(f"no key {key!r} in store {self.root}; keys: {sorted(self._schema)}")
        parts = [self._arrays(s)[key] for s in self._shards]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            spec = self._schema[key]
            return np.zeros((0, *spec["shape"]), dtype=np.dtype(spec["dtype"]))
        return np.concatenate(parts)

    def verify(self) -> list[tuple[str, str]]:
        """Check every good shard's content against the crc32 stored at write time.

        Returns (shard name, reason) for each mismatch; raises CorruptShardError in strict mode.
        """
        problems = []
        for s in self._shards:
            for key, arr in self._arrays(s).items():
                want = s.files[key].get("crc32")
                if want is not None and _crc32(arr) != want:
                    problems.append((s.name, f"{s.files[key]['file']} fails its crc32 check"))
        if problems and self.strict:
            raise CorruptShardError(f"corrupt shard {self.root / problems[0][0]}: {problems[0][1]}")
        return problems

    # ------------------------------------------------------------------ writing

    def _next_shard_id(self) -> int:
        ids = [-1]
        for s in self._all_shards:
            m = _SHARD_RE.match(s.get("name", ""))
            if m:
                ids.append(int(m.group(1)))
        for p in self.root.iterdir():  # orphans of a crash between rename and manifest write
            m = _SHARD_RE.match(p.name)
            if m:
                ids.append(int(m.group(1)))
        return max(ids) + 1

    def append(
        self,
        episodes: Sequence[Mapping[str, np.ndarray]],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Write ``episodes`` as one new shard, atomically; returns its shard id."""
        if len(episodes) == 0:
            raise ValueError("append() needs at least one episode")
        if metadata is None:
            metadata = [{}] * len(episodes)
        if len(metadata) != len(episodes):
            raise ValueError(f"{len(episodes)} episodes but {len(metadata)} metadata dicts")
        metas = [_to_json(m, f"metadata of episode {i}") for i, m in enumerate(metadata)]
        schema = dict(self._schema)
        arrays: list[dict[str, np.ndarray]] = []
        for i, ep in enumerate(episodes):
            arr, spec = _normalise_episode(ep, f"episode {i}")
            if not schema:
                schema = spec
            msg = _schema_mismatch(schema, spec, f"episode {i}")
            if msg:
                raise ValueError(msg)
            arrays.append(arr)
        lengths = np.asarray([len(a["reward"]) for a in arrays], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

        shard_id = self._next_shard_id()
        name = f"shard_{shard_id:06d}"
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {}
            for key, spec in schema.items():
                data = np.concatenate([a[key] for a in arrays]).astype(
                    np.dtype(spec["dtype"]), copy=False
                )
                fname = f"{key}.npy"
                with open(tmp / fname, "wb") as f:
                    np.save(f, np.ascontiguousarray(data), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                files[key] = {
                    "file": fname,
                    "bytes": (tmp / fname).stat().st_size,
                    "crc32": _crc32(data),
                }
            _fsync_dir(tmp)
            os.rename(tmp, self.root / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.root)

        entry = _Shard(name, int(lengths.sum()), offsets, lengths, metas, files)
        self._all_shards = [*self._all_shards, entry.to_json()]
        self._schema = schema
        _write_json_atomic(
            self.root / MANIFEST, self._manifest_json(self._all_shards, schema, self._attrs)
        )
        self._shards.append(entry)
        self._index()
        return shard_id

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Replace the store-level attrs (how the data was made; a cache key) atomically."""
        attrs = _to_json(attrs, "attrs")
        _write_json_atomic(
            self.root / MANIFEST, self._manifest_json(self._all_shards, self._schema, attrs)
        )
        self._attrs = attrs

    def writer(self, max_steps_per_shard: int = 100_000) -> EpisodeWriter:
        return EpisodeWriter(self, max_steps_per_shard)


class EpisodeWriter:
    """Buffers episodes and appends a shard whenever ``max_steps_per_shard`` is reached.

    Use as a context manager: the remainder is flushed on normal exit only, so an
    exception inside the ``with`` block never commits a partial batch.
    """

    def __init__(self, store: EpisodeStore, max_steps_per_shard: int = 100_000) -> None:
        if max_steps_per_shard < 1:
            raise ValueError("max_steps_per_shard must be >= 1")
        self.store = store
        self.max_steps = max_steps_per_shard
        self.shard_ids: list[int] = []
        self._eps: list[dict[str, np.ndarray]] = []
        self._meta: list[dict[str, Any]] = []
        self._steps = 0
        self._schema: dict[str, dict[str, Any]] = dict(store._schema)

    def add(self, episode: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        where = f"episode {len(self._eps)} of the writer buffer"
        arr, spec = _normalise_episode(episode, where)
        if not self._schema:
            self._schema = spec
        msg = _schema_mismatch(self._schema, spec, where)
        if msg:
            raise ValueError(msg)
        self._meta.append(_to_json(meta or {}, f"metadata of {where}"))
        self._eps.append({k: np.array(v, copy=True) for k, v in arr.items()})
        self._steps += len(arr["reward"])
        if self._steps >= self.max_steps:
            self.flush()

    def flush(self) -> None:
        if self._eps:
            self.shard_ids.append(self.store.append(self._eps, self._meta))
        self._eps, self._meta, self._steps = [], [], 0

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.flush()
        else:
            self._eps, self._meta, self._steps = [], [], 0


# --------------------------------------------------------------------------- cache


def cache_root(data_dir: str | Path, group: str, prefix: str, attrs: Mapping[str, Any]) -> Path:
    """`data_dir/group/<prefix>_<hash of attrs>`: one folder per distinct dataset recipe.

    Why: a dataset is reused only when everything that made it is equal (`open_or_build` checks
    the attrs again), and different recipes never overwrite each other.
    """
    digest = hashlib.sha1(json.dumps(attrs, sort_keys=True).encode()).hexdigest()[:10]
    return Path(data_dir) / group / f"{prefix}_{digest}"


def open_or_build(
    root: str | Path, attrs: Mapping[str, Any], build: Callable[[EpisodeStore], None]
) -> EpisodeStore:
    """Reuse the complete store at ``root`` made with ``attrs``, or build it atomically.

    ``build`` fills a store in a hidden temp directory next to ``root``; the store is
    marked ``complete`` and renamed into place, so an interrupted build leaves nothing
    at ``root``. A store at ``root`` with other attrs is an error, never overwritten.
    """
    root = Path(root)
    want = _to_json(attrs, "attrs")
    want.pop("complete", None)

    def existing() -> EpisodeStore | None:
        if not root.exists():
            return None
        if root.is_dir() and not any(root.iterdir()):
            return None
        if not (root / MANIFEST).exists():
            raise FileExistsError(f"{root} exists and is not an EpisodeStore; not overwriting it")
        store = EpisodeStore(root, create=False)
        have = store.attrs
        complete = have.pop("complete", False) is True
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ValueError(
                f"store at {root} was built with different attrs (differing keys: {diff}); "
                "delete it or choose another root"
            )
        if not complete:
            raise ValueError(f"store at {root} has matching attrs but is not complete; delete it")
        return store

    store = existing()
    if store is not None:
        return store
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.building-{uuid.uuid4().hex}"
    try:
        building = EpisodeStore(tmp, create=True)
        building.set_attrs(want)
        build(building)
        building.set_attrs({**want, "complete": True})
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            store = existing()  # a concurrent builder won the race
            if store is None:
                raise
            return store
        _fsync_dir(root.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return EpisodeStore(root, create=False)
