"""Vector quantisation: a cosine-similarity codebook trained by EMA, with dead-code revival.

Why this form (Δ-IRIS, Micheli et al. 2024, `src/models/tokenizer/quantizer.py`): inputs and
codes live on the unit sphere, so the nearest code is the one of largest cosine similarity and
no code can win by its norm alone. The codebook is a buffer, not a parameter: in training mode
each used code moves (EMA, decay 0.99) toward the normalised mean of the vectors assigned to it,
then every code is re-normalised. Gradients reach the encoder through the straight-through
estimator, and the encoder is pulled toward its codes by the commitment loss.

Codebooks collapse (a few codes take every input). Code-usage frequencies are tracked by a
second EMA (decay 0.98, as the official code); when their entropy falls below
log2(n_codes) - margin bits (margin 2), every code whose frequency is below 1 / (10 n_codes) is
replaced by a random vector of the current batch and its frequency reset to 1 / n_codes. The
entropy is computed from the EMA frequencies (as the official code), not from the batch, so
one odd batch neither triggers nor blocks a revival.

Shape legend: n vectors (any leading shape flattened), c codes, d width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EMACosineCodebook(nn.Module):
    """Codebook (n_codes x dim) of unit vectors; `forward(z)` -> (quantised, codes, metrics).

    z (..., d) is L2-normalised inside; `quantised` (..., d) equals the chosen unit codes in value
    and carries the gradient of the normalised z (straight-through). `codes` (...) is long.
    `update=None` updates the codebook only in training mode; pass False to quantise a frozen
    codebook while the module trains (e.g. tokenising targets for another model).
    """

    def __init__(
        self,
        n_codes: int,
        dim: int,
        decay: float = 0.99,
        usage_decay: float = 0.98,
        revival_margin_bits: float = 2.0,
        max_updates_with_revival: int | None = None,
    ) -> None:
        super().__init__()
        if n_codes < 2:
            raise ValueError(f"n_codes={n_codes}: a codebook needs at least 2 codes")
        self.n_codes, self.dim = n_codes, dim
        self.decay, self.usage_decay = decay, usage_decay
        self.revival_threshold_bits = math.log2(n_codes) - revival_margin_bits
        self.max_updates_with_revival = max_updates_with_revival
        self.register_buffer("codebook", F.normalize(torch.randn(n_codes, dim), dim=-1))
        self.register_buffer("usage", torch.full((n_codes,), 1.0 / n_codes))  # EMA frequencies
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    def forward(
        self, z: Tensor, update: bool | None = None
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        lead = z.shape[:-1]
        flat = F.normalize(z.reshape(-1, self.dim).float(), dim=-1)  # (n d)
        with torch.autocast(z.device.type, enabled=False):  # fp32 similarities under bf16 AMP
            codes = (flat @ self.codebook.t()).argmax(dim=-1)  # (n,) largest cosine similarity
        q = self.codebook[codes]
        counts = torch.bincount(codes, minlength=self.n_codes).float()  # (c,)
        revived = 0
        if (self.training if update is None else update) and flat.shape[0] > 0:
            revived = self._update(flat.detach(), codes, counts)
        batch_p = counts[counts > 0] / max(flat.shape[0], 1)
        metrics = {
            "usage_entropy_bits": self.usage_entropy_bits(),
            "batch_entropy_bits": float(-(batch_p * batch_p.log2()).sum()),
            "revived": float(revived),
        }
        quantised = flat + (q - flat).detach()  # straight-through
        return quantised.reshape(*lead, self.dim), codes.reshape(lead), metrics

    @staticmethod
    def commitment_loss(z: Tensor, q: Tensor) -> Tensor:
        """Mean squared distance of the (normalised) encoder output to its codes, codes frozen."""
        return (F.normalize(z, dim=-1) - q.detach()).pow(2).mean()

    def lookup(self, codes: Tensor) -> Tensor:
        """codes (...) long -> unit code vectors (..., d)."""
        return self.codebook[codes]

    def usage_entropy_bits(self) -> float:
        """Entropy of the EMA usage frequencies, normalised (revival resets add mass)."""
        p = self.usage[self.usage > 0]
        p = p / p.sum()
        return float(-(p * p.log2()).sum())

    @torch.no_grad()
    def _update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> int:
        """EMA step of the used codes and of the usage frequencies, then revival; returns the
        number of revived codes."""
        sums = torch.zeros_like(self.codebook).index_add_(0, codes, flat)  # (c d)
        used = counts > 0
        means = F.normalize(sums[used] / counts[used, None], dim=-1)
        self.codebook[used] = torch.lerp(self.codebook[used], means, 1 - self.decay)
        self.usage.lerp_(counts / flat.shape[0], 1 - self.usage_decay)

        entropy = self.usage_entropy_bits()
        may_revive = (
            self.max_updates_with_revival is None
            or int(self.n_updates) < self.max_updates_with_revival
            or entropy < 1.0
        )
        revived = 0
        if may_revive and entropy < self.revival_threshold_bits:
            dead = torch.nonzero(self.usage < 1.0 / (10 * self.n_codes)).flatten()
            dead = dead[torch.randperm(dead.numel(), device=dead.device)[: flat.shape[0]]]
            picks = torch.randperm(flat.shape[0], device=flat.device)[: dead.numel()]
            self.codebook[dead] = flat[picks]
            self.usage[dead] = 1.0 / self.n_codes
            revived = int(dead.numel())
        self.codebook.copy_(F.normalize(self.codebook, dim=-1))
        self.n_updates += 1
        return revived
