"""Causal GPT blocks on `F.scaled_dot_product_attention` with a KV cache for incremental decoding.

Why a cache: in-context evaluation (AD, DT, RA-DT) adds one token per environment step. Re-encoding the
whole context every step costs O(n) token passes per step (O(n^2) attention); with the cache each step
costs one token pass against the stored keys/values, batched over all evaluation tasks.

Positions use rotary embeddings (RoPE, Su et al. 2021) by default: attention then depends only on the
distance between tokens, so a *rolling* cache that keeps the last `window` tokens decodes token by
token exactly as a full forward with a sliding-window (band) mask of width `window` (the context of
AD at evaluation). With one layer that equals re-encoding the last `window` tokens; with more layers
it does not: cached keys of older tokens were computed when their own windows reached further back,
so the receptive field grows to n_layer x window. Learned absolute positions are available
(`pos="learned"`) for models trained on fixed windows.

Shape legend: b batch, n tokens (new), m tokens (cached + new), h heads, d width, e head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rl_core.nn.layers import CrossAttention


@dataclass
class GPTConfig:
    d_model: int = 64
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.1  # residual/embedding dropout
    attn_dropout: float = 0.0  # dropout on attention weights (forces SDPA's slow path on CPU)
    max_len: int = 1024  # longest token sequence (learned positions / RoPE table size)
    pos: str = "rope"  # rope | learned | none
    mlp_ratio: int = 4
    cross_attn: bool = False  # a cross-attention layer after every self-attention (RA-DT)
    d_context: int | None = None  # width of the cross-attended context (default d_model)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.pos not in ("rope", "learned", "none"):
            raise ValueError(f"pos={self.pos!r}: expected one of rope, learned, none")


class KVCache:
    """Per-layer keys/values of the tokens seen so far, trimmed to the last `window` tokens.

    `offset` is the absolute position of the next token (for RoPE / learned positions); it keeps
    growing when old tokens are dropped, which is exact under RoPE.
    """

    def __init__(self, n_layer: int, window: int) -> None:
        self.window = window
        self.keys: list[Tensor | None] = [None] * n_layer
        self.values: list[Tensor | None] = [None] * n_layer
        self.offset = 0

    def __len__(self) -> int:
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (b h n e) for a layer; return the full (trimmed) tensors."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None:
            k = torch.cat([old_k, k], dim=2)
            v = torch.cat([old_v, v], dim=2)
        if k.shape[2] > self.window:
            k, v = k[:, :, -self.window :], v[:, :, -self.window :]
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def select(self, index: Tensor) -> None:
        """Keep only the batch rows in `index` (e.g. drop finished environments)."""
        self.keys = [None if k is None else k[index] for k in self.keys]
        self.values = [None if v is None else v[index] for v in self.values]


def rope_tables(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables (n, e) for the given absolute positions."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device) / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attn_dropout = cfg.attn_dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        cache: KVCache | None,
        layer: int,
        attn_mask: Tensor | None,
    ) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.n_head)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        n_new = q.shape[2]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        dropout = self.attn_dropout if self.training else 0.0
        if attn_mask is None and k.shape[2] == n_new:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            if attn_mask is None:
                attn_mask = causal_mask(n_new, k.shape[2], x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.resid_drop(self.proj(rearrange(out, "b h n e -> b n (h e)")))


def causal_mask(n_new: int, n_total: int, device: torch.device) -> Tensor:
    """Bool mask (n_new, n_total): new token i sees every cached token and new tokens <= i."""
    cached = n_total - n_new
    cols = torch.arange(n_total, device=device)
    rows = torch.arange(n_new, device=device) + cached
    return cols[None, :] <= rows[:, None]


class Block(nn.Module):
    """Pre-norm block: x + SA(LN(x)), [x + CA(LN(x), context)], then x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_cross = nn.LayerNorm(cfg.d_model) if cfg.cross_attn else None
        self.cross = (
            CrossAttention(cfg.d_model, cfg.n_head, cfg.dropout, cfg.d_context)
            if cfg.cross_attn
            else None
        )
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x, rope, cache, layer, attn_mask, context=None, context_mask=None):
        x = x + self.attn(self.ln1(x), rope, cache, layer, attn_mask)
        if self.cross is not None and context is not None:
            x = x + self.cross(self.ln_cross(x), context, context_mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A stack of causal blocks over token embeddings (b, n, d) -> features (b, n, d).

    Agents own their tokenisation (embedding layers) and heads; this module owns positions,
    attention and the cache. `forward(x, cache=cache)` continues a cached sequence.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.pos == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(_init_weights)

    def new_cache(self, window: int | None = None) -> KVCache:
        return KVCache(self.cfg.n_layer, window or self.cfg.max_len)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """x (b n d); `context (b m d_ctx)` is cross-attended when the config has `cross_attn`
        (`context_mask` (b n m) bool, True = may attend); it is not cached."""
        n = x.shape[1]
        if cache is not None and n > cache.window:
            # the cache is trimmed before attention: the first n - window queries would see nothing
            raise ValueError(f"{n} new tokens exceed the cache window of {cache.window}")
        start = cache.offset if cache is not None else 0
        positions = torch.arange(start, start + n, device=x.device)
        rope = None
        if self.cfg.pos == "rope":
            rope = rope_tables(positions, self.cfg.d_model // self.cfg.n_head)
        elif self.pos_emb is not None:
            if start + n > self.cfg.max_len:
                raise ValueError(
                    f"position {start + n} exceeds max_len={self.cfg.max_len} of learned positions"
                )
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, attn_mask, context, context_mask)
        if cache is not None:
            cache.offset += n
        return self.ln_f(x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
