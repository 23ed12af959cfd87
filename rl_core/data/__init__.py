"""Dataset layer: the episode store, training-window samplers, Minari import/export."""

from __future__ import annotations

from rl_core.data.minari_io import export_minari, import_minari
from rl_core.data.samplers import ADWindowSampler, DTWindowSampler, returns_to_go
from rl_core.data.store import (
    REQUIRED_KEYS,
    CorruptShardError,
    EpisodeStore,
    EpisodeWriter,
    cache_root,
    open_or_build,
)

__all__ = [
    "REQUIRED_KEYS",
    "ADWindowSampler",
    "CorruptShardError",
    "DTWindowSampler",
    "EpisodeStore",
    "EpisodeWriter",
    "cache_root",
    "export_minari",
    "import_minari",
    "open_or_build",
    "returns_to_go",
]
