"""Genie's spatio-temporal (ST) transformer, shared by the video tokenizer, latent action model and
dynamics model, and a full spatio-temporal attention baseline.

Paper: Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391, §2.1 and
Fig. 4. Each of the L blocks is [spatial self-attention over the N tokens of one frame] ->
[temporal self-attention over the T frames at one token position, causal mask] -> one FFN; there
is no FFN after the spatial layer. Why: full attention over all T*N tokens costs O((T N)^2) per
layer, the two factorised attentions cost O(T N^2 + N T^2), linear in T for a fixed frame size,
which is what lets Genie model 16-frame memories. The temporal mask makes frame t depend only on
frames <= t (the property the dynamics model and the causal tokenizer rely on; open ports shipped
a non-causal version, jafar's "Fix model causality").

Kept: the block order above, pre-norm residual sublayers (LayerNorm), a GELU FFN of width
`ffn_mult * d_model`, optional QK-norm (LayerNorm on queries and keys per head, as Genie uses at
scale, after Dehghani et al. 2023), a final norm.
Deviations and choices the paper leaves open:
- positions: factorised additive embeddings, a spatial one per token index within a frame (the
  flattened patch index) plus a temporal one per frame index, added once to the input.
  `pos="learned"` (default) or `"sinusoidal"` (fixed 1-D sinusoids on each axis, so a model can be
  built for any `max_*`) or `"none"` (the caller adds its own). The paper does not say which it
  uses; GenieRedux uses PEG + ALiBi, jafar sinusoids before every attention.
- `causal=False` (config) turns the temporal mask off, for an encoder that may look ahead; the
  paper's ST-ViViT tokenizer is causal in time, so True is the default.
- dropout: on each sublayer's output (and inside the FFN), none on attention weights (that would
  force SDPA's slow path on CPU).

`FullAttentionTransformer` is the baseline for `benchmarks/genie_speed.py`: the same config, the
same position embeddings and per block the same sublayer sizes (`d_model`, `n_head`, `ffn_mult`,
`qk_norm`), but one joint attention over all T*N tokens of a clip with a block-causal mask (a
token sees every token of its own frame and of earlier frames) followed by the FFN, i.e. a plain
ViT-style block as in the paper's tokenizer ablation (Table 3). It has one attention sublayer
per block where the ST block has two, so it has fewer parameters (both counts are reported).

Shape legend: b batch, t frames, n tokens per frame, d width, h heads, e head width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class STConfig:
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    ffn_mult: int = 4
    dropout: float = 0.0  # on sublayer outputs and inside the FFN
    max_frames: int = 16  # T: longest clip (size of the temporal position table)
    max_tokens_per_frame: int = 64  # N: tokens of one frame (size of the spatial position table)
    qk_norm: bool = (
        False  # LayerNorm on queries and keys (Genie at scale, for stable bf16 training)
    )
    pos: str = "learned"  # learned | sinusoidal | none
    causal: bool = True  # temporal attention sees only frames <= its own

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.pos not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"pos={self.pos!r}: expected one of learned, sinusoidal, none")


def st_config_like(cfg: Any, **overrides: Any) -> STConfig:
    """An `STConfig` from every field a component's config shares with it by name (d_model,
    n_layer, n_head, ffn_mult, dropout, max_frames, qk_norm, pos, ...), then `overrides`: the
    Genie components keep their ST sizes as flat fields of their own configs."""
    shared = {
        f.name: getattr(cfg, f.name) for f in dataclasses.fields(STConfig) if hasattr(cfg, f.name)
    }
    return STConfig(**{**shared, **overrides})


class Attention(nn.Module):
    """Multi-head self-attention over the middle axis of (B, L, d) on SDPA, optional QK-norm."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.q_norm = nn.LayerNorm(head_dim) if cfg.qk_norm else None
        self.k_norm = nn.LayerNorm(head_dim) if cfg.qk_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, is_causal: bool = False, attn_mask: Tensor | None = None
    ) -> Tensor:
        """`is_causal`: token i sees tokens <= i; `attn_mask` (L, L) bool, True = may attend."""
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_head)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.drop(self.proj(rearrange(out, "b h l e -> b l (h e)")))


def feed_forward(cfg: STConfig) -> nn.Sequential:
    width = cfg.ffn_mult * cfg.d_model
    return nn.Sequential(
        nn.Linear(cfg.d_model, width),
        nn.GELU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(width, cfg.d_model),
        nn.Dropout(cfg.dropout),
    )


class STBlock(nn.Module):
    """x + SpatialAttn(LN(x)) within each frame, x + TemporalAttn(LN(x)) across frames at each
    token position (causal unless `causal=False`), then x + FFN(LN(x)). Input/output (b t n d)."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.causal = cfg.causal
        self.norm_spatial = nn.LayerNorm(cfg.d_model)
        self.spatial = Attention(cfg)
        self.norm_temporal = nn.LayerNorm(cfg.d_model)
        self.temporal = Attention(cfg)
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.ffn = feed_forward(cfg)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        h = rearrange(self.norm_spatial(x), "b t n d -> (b t) n d")
        x = x + rearrange(self.spatial(h), "(b t) n d -> b t n d", b=b)
        h = rearrange(self.norm_temporal(x), "b t n d -> (b n) t d")
        h = self.temporal(h, is_causal=self.causal)
        x = x + rearrange(h, "(b n) t d -> b t n d", b=b)
        return x + self.ffn(self.norm_ffn(x))


def sinusoid_table(length: int, dim: int) -> Tensor:
    """(length, dim) fixed sin/cos position table (Vaswani et al. 2017)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)[:, : dim // 2]
    return table


class STPositions(nn.Module):
    """Adds a spatial (per token index) plus a temporal (per frame index) embedding to (b t n d)."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.cfg = cfg
        shapes = {"spatial": cfg.max_tokens_per_frame, "temporal": cfg.max_frames}
        for name, length in shapes.items():
            if cfg.pos == "learned":
                setattr(self, name, nn.Parameter(0.02 * torch.randn(length, cfg.d_model)))
            elif cfg.pos == "sinusoidal":
                self.register_buffer(name, sinusoid_table(length, cfg.d_model), persistent=False)
            else:
                self.register_buffer(name, None)

    def forward(self, x: Tensor) -> Tensor:
        t, n = x.shape[1:3]
        if t > self.cfg.max_frames or n > self.cfg.max_tokens_per_frame:
            raise ValueError(
                f"input has {t} frames x {n} tokens; the config allows at most "
                f"{self.cfg.max_frames} x {self.cfg.max_tokens_per_frame}"
            )
        if self.spatial is None:
            return x
        pos = self.temporal[:t, None, :] + self.spatial[None, :n, :]  # (t n d)
        return x + pos.to(x.dtype)


class STTransformer(nn.Module):
    """Stack of `STBlock`s with positions and a final norm: (b t n d) -> (b t n d).

    Callers own their embeddings (patches, token ids, actions) and heads.
    """

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos = STPositions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([STBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.pos(x))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def block_causal_mask(t: int, n: int, device: torch.device | None = None) -> Tensor:
    """(t*n, t*n) bool over frame-major flattened tokens: True where the key's frame <= the
    query's frame (a token sees its whole frame and every earlier frame)."""
    frame = torch.arange(t, device=device).repeat_interleave(n)
    return frame[None, :] <= frame[:, None]


class FullAttentionBlock(nn.Module):
    """x + Attn(LN(x)) jointly over all t*n tokens (block-causal unless `causal=False`), then
    x + FFN(LN(x)). Input/output (b t n d)."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.causal = cfg.causal
        self.norm_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm_ffn = nn.LayerNorm(cfg.d_model)
        self.ffn = feed_forward(cfg)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        t = x.shape[1]
        h = rearrange(self.norm_attn(x), "b t n d -> b (t n) d")
        x = x + rearrange(self.attn(h, attn_mask=mask), "b (t n) d -> b t n d", t=t)
        return x + self.ffn(self.norm_ffn(x))


class FullAttentionTransformer(nn.Module):
    """The full spatio-temporal attention baseline of `STTransformer` (same config, positions,
    final norm and I/O): (b t n d) -> (b t n d)."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos = STPositions(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([FullAttentionBlock(cfg) for _ in range(cfg.n_layer)])
        self.norm = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        t, n = x.shape[1:3]
        mask = block_causal_mask(t, n, x.device) if self.cfg.causal else None
        x = self.drop(self.pos(x))
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def attention_score_entries(b: int, t: int, n: int, kind: str = "st", n_head: int = 1) -> int:
    """Attention score entries (query-key pairs) one block computes, times `n_head`.

    st: spatial b*t clips of n^2 plus temporal b*n sequences of t^2 (the causal mask halves the
    useful part of t^2, but SDPA's cost is counted in full, as for the full baseline's mask);
    full: b sequences of (t*n)^2.
    """
    if kind == "st":
        per_head = b * t * n * n + b * n * t * t
    elif kind == "full":
        per_head = b * (t * n) ** 2
    else:
        raise ValueError(f"kind={kind!r}: expected st or full")
    return per_head * n_head


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = [
    "Attention",
    "FullAttentionBlock",
    "FullAttentionTransformer",
    "STBlock",
    "STConfig",
    "STPositions",
    "STTransformer",
    "attention_score_entries",
    "block_causal_mask",
    "sinusoid_table",
]
