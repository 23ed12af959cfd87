"""Retrieval for RA-DT (Schmied et al. 2024): FAISS trajectory index, embedders, memory.

- `retrieval.index`: `TrajectoryIndex`, a FAISS inner-product/cosine index whose ids map back
  to (episode, step, task, trajectory, return); Flat/IVF/HNSW, shards, GPU, save/load.
- `retrieval.embedders`: `DTEmbedder` (frozen pretrained DT) and `LMEmbedder` (frozen LM behind
  FrozenHopfield), both giving the mean of last-layer states at state tokens.
- `retrieval.memory`: chunking into keys/values, `RetrievalMemory` (training: cut-off,
  own-trajectory exclusion, task reweighting, dedup, short-query rule), `EvalMemory` (paper
  Algorithm 1) and `retrieval_stats`.

The embedders import torch (and `transformers` for the LM) and are not imported here.
"""

from __future__ import annotations

from retrieval.index import KEY_FIELDS, IndexConfig, SearchResult, TrajectoryIndex, gpu_available
from retrieval.memory import (
    Chunks,
    EvalMemory,
    Retrieval,
    RetrievalConfig,
    RetrievalMemory,
    chunk_episodes,
    chunk_store,
    deduplicate,
    retrieval_stats,
    reweight,
)

__all__ = [
    "KEY_FIELDS",
    "Chunks",
    "EvalMemory",
    "IndexConfig",
    "Retrieval",
    "RetrievalConfig",
    "RetrievalMemory",
    "SearchResult",
    "TrajectoryIndex",
    "chunk_episodes",
    "chunk_store",
    "deduplicate",
    "gpu_available",
    "retrieval_stats",
    "reweight",
]
