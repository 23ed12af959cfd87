"""Small helpers shared across icrl: seeding, device choice, torchrun info, atomic saves.

They live in one place so that every agent seeds, picks devices and writes files the same way.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

# mkstemp creates files 0600; saved files should get the usual permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)


def exists(x: Any) -> bool:
    """True unless ``x`` is None (lucidrains habit: reads better than ``is not None`` chains)."""
    return x is not None


def default(x: T | None, d: T) -> T:
    """``x`` if it is set, else the fallback ``d``."""
    return x if x is not None else d


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy's legacy global RNG and torch (CPU and CUDA).

    Returns a fresh ``np.random.Generator`` so callers can draw from an RNG they own (and can
    checkpoint) instead of the global one.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return np.random.default_rng(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a config string into a device: ``auto`` picks CUDA when present, else CPU.

    A name torch does not understand, or an accelerator that is not present, is a
    ``ValueError`` naming it, so a typo in ``device=`` fails before any work is done.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if exists(device.index) and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available")
    return device


def dist_info() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the environment variables torchrun sets.

    Without torchrun this is ``(0, 0, 1)``: a plain single-process run.
    """
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world_size


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], Any], *, text: bool = False
) -> None:
    """Write ``path`` through ``write(f)`` so that it never holds a half-written file.

    Writes to a temporary file of its own in the same directory (same file system, so the
    rename is atomic; its own, so concurrent writers never share one), flushes and fsyncs it,
    ``os.replace``s it over ``path`` and fsyncs the directory so the rename itself survives a
    crash. A process killed mid-write leaves the old file intact. ``text=True`` opens it in
    text mode with ``newline=""`` (csv's convention: the writer chooses line endings).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, content: str) -> None:
    """`atomic_write` of a string."""
    atomic_write(path, lambda f: f.write(content), text=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file at ``path`` (`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
