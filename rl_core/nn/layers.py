"""Conditioning layers shared by sequence agents: cross-attention and adaptive LayerNorm.

Cross-attention lets a token sequence read another one: RA-DT's retrieved sub-trajectories
(Schmied et al. 2024, "CA after every SA layer") and Return-Aligned DT's SeqRA over return
embeddings (Tanaka et al. 2024). Adaptive LayerNorm (DiT-style adaLN, Peebles & Xie 2023) is
Return-Aligned DT's StepRA: a per-token scale/shift from a conditioning vector, zero-initialised
so that a fresh layer is a plain (affine-free) LayerNorm.

Shape legend: b batch, n query tokens, m context tokens, h heads, d width, e head width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class CrossAttention(nn.Module):
    """Multi-head attention from `x (b n d)` to `context (b m d_ctx)`.

    mask: bool, broadcastable to (b h n m), True = may attend. A query row that may attend to
    nothing (e.g. no retrieved context yet) gets a zero output instead of NaN.
    """

    def __init__(
        self, d_model: int, n_head: int, dropout: float = 0.0, d_context: int | None = None
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_context or d_model, d_model)
        self.v = nn.Linear(d_context or d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        mask: Tensor | None = None,
        value_context: Tensor | None = None,
    ) -> Tensor:
        """Keys from `context`, values from `value_context` (default: the same tokens)."""
        value_context = context if value_context is None else value_context
        q = rearrange(self.q(x), "b n (h e) -> b h n e", h=self.n_head)
        k = rearrange(self.k(context), "b m (h e) -> b h m e", h=self.n_head)
        v = rearrange(self.v(value_context), "b m (h e) -> b h m e", h=self.n_head)
        if mask is not None:
            mask = mask if mask.dim() == 4 else mask[:, None]
            empty = ~mask.any(dim=-1, keepdim=True)  # (b h|1 n 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | empty)
            out = out.masked_fill(empty, 0.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.drop(self.proj(rearrange(out, "b h n e -> b n (h e)")))


class AdaLayerNorm(nn.Module):
    """LN(x) · (1 + scale(c)) + shift(c), with a zero-initialised modulation (starts as plain LN)."""

    def __init__(self, d_model: int, d_cond: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_cond, 2 * d_model))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (b n d), cond (b n d_cond) (one conditioning vector per token)."""
        scale, shift = self.modulation(cond).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class MultiDiscreteEmbedding(nn.ModuleList):
    """Embedding of a MultiDiscrete observation (b ... k) -> (b ... d): one table per dimension,
    summed (grid x and y get their own tables, so unseen (x, y) pairs still embed sensibly).

    A `ModuleList` of `nn.Embedding`, so its parameters keep the plain `<name>.<i>.weight` keys.
    """

    def __init__(self, sizes: Sequence[int], d_model: int) -> None:
        super().__init__([nn.Embedding(size, d_model) for size in sizes])

    def forward(self, obs: Tensor) -> Tensor:
        return sum(emb(obs[..., i].long()) for i, emb in enumerate(self))


def step_causal_mask(query_steps: Tensor, context_steps: Tensor) -> Tensor:
    """(b n m) True where the query token's step >= the context token's step (SeqRA's mask)."""
    return context_steps[:, None, :] <= query_steps[:, :, None]


__all__ = ["AdaLayerNorm", "CrossAttention", "MultiDiscreteEmbedding", "step_causal_mask"]
