"""VQ-VAE vector quantiser trained by gradient, with dead-code reset (Genie's tokenizer and LAM).

Paper: van den Oord, Vinyals, Kavukcuoglu 2017, "Neural Discrete Representation Learning"
(arXiv 1711.00937): each encoder output z takes its nearest code e (L2 distance); the codebook
learns from ||sg[z] - e||^2, the encoder is held near its code by beta ||z - sg[e]||^2
(beta = 0.25), and the decoder's gradient reaches the encoder through the straight-through
estimator z_q = z + sg[e - z]. Genie (Bruce et al. 2024) uses such codebooks for its video
tokenizer (1024 x 32) and latent action model (|A| = 8; 6 for CoinRun).

Dead-code reset: tiny codebooks (the LAM's 6-8 codes) collapse onto a few codes (mini-genie's
LAM ended with one working action). As the open Genie port jafar (FLAIROx/jafar, `train_lam.py`,
`vq_reset_thresh` 50) does, a code unused for `reset_after` consecutive training forward calls
is re-initialised to a random encoder output of the current batch, and its counter restarts.

Deviations: the reset happens inside `forward` (after the outputs are computed, so it changes
the next call) rather than in the training script, and only in training mode (or `update=True`);
the optimiser's moment estimates for a reset code are left stale. `l2_normalize=True` (jafar's
choice) compares and quantises unit vectors: z and codes are normalised before distance,
losses and output.

Shape legend: n vectors (leading shape flattened), c codes, d width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VectorQuantizer(nn.Module):
    """Codebook (n_codes x dim) parameter; `forward(z (..., d))` -> (z_q, codes, loss, metrics).

    z_q (..., d) equals the chosen codes in value and carries the identity gradient to z (to the
    normalised z with l2_normalize; straight-through); codes (...) long; loss = codebook loss + beta * commitment loss (means
    over elements); metrics: usage (fraction of codes used in the batch), perplexity (exp of the
    batch code entropy), resets (codes reset this call), codebook_loss, commitment_loss.
    """

    def __init__(
        self,
        n_codes: int,
        dim: int,
        beta: float = 0.25,
        reset_after: int | None = 50,
        l2_normalize: bool = False,
    ) -> None:
        super().__init__()
        if n_codes < 1:
            raise ValueError(f"n_codes={n_codes}: need at least one code")
        self.n_codes, self.dim, self.beta = n_codes, dim, beta
        self.reset_after, self.l2_normalize = reset_after, l2_normalize
        # uniform(-1/c, 1/c) as the VQ-VAE reference implementations
        self.codebook = nn.Parameter(torch.empty(n_codes, dim).uniform_(-1 / n_codes, 1 / n_codes))
        # consecutive training calls each code went unused; total resets so far
        self.register_buffer("idle_calls", torch.zeros(n_codes, dtype=torch.long))
        self.register_buffer("n_resets", torch.zeros((), dtype=torch.long))

    def _prep(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    def lookup(self, codes: Tensor) -> Tensor:
        """codes (...) long -> code vectors (..., d) (normalised if l2_normalize)."""
        return self._prep(self.codebook)[codes]

    def forward(
        self, z: Tensor, update: bool | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        lead = z.shape[:-1]
        flat = self._prep(z.reshape(-1, self.dim).float())  # (n d)
        book = self._prep(self.codebook.float())  # (c d)
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            dist = (
                flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(-1)[None]
            )  # (n c) squared L2
            codes = dist.argmin(dim=-1)
        q = book[codes]  # (n d), gradient to the codebook
        codebook_loss = (flat.detach() - q).pow(2).mean()
        commitment_loss = (flat - q.detach()).pow(2).mean()
        loss = codebook_loss + self.beta * commitment_loss
        z_q = flat + (q - flat).detach()  # straight-through

        counts = torch.bincount(codes, minlength=self.n_codes).float()
        resets = 0
        if (self.training if update is None else update) and flat.shape[0] > 0:
            resets = self._track_and_reset(flat.detach(), counts)
        p = counts[counts > 0] / max(flat.shape[0], 1)
        metrics = {
            "usage": float((counts > 0).float().mean()),
            "perplexity": float(torch.exp(-(p * p.log()).sum())),
            "resets": float(resets),
            "codebook_loss": float(codebook_loss.detach()),
            "commitment_loss": float(commitment_loss.detach()),
        }
        return z_q.reshape(*lead, self.dim).to(z.dtype), codes.reshape(lead), loss, metrics

    @torch.no_grad()
    def _track_and_reset(self, flat: Tensor, counts: Tensor) -> int:
        """Count idle calls per code; reset the codes idle for `reset_after` calls to random
        vectors of this batch (distinct vectors; extra dead codes wait for the next call)."""
        used = counts > 0
        self.idle_calls.add_(1).masked_fill_(used, 0)
        if self.reset_after is None:
            return 0
        dead = torch.nonzero(self.idle_calls >= self.reset_after).flatten()
        if dead.numel() == 0:
            return 0
        dead = dead[: flat.shape[0]]
        picks = torch.randperm(flat.shape[0], device=flat.device)[: dead.numel()]
        self.codebook.data[dead] = flat[picks].to(self.codebook.dtype)
        self.idle_calls[dead] = 0
        self.n_resets += dead.numel()
        return int(dead.numel())
