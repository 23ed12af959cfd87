"""Genie's video tokenizer: an ST-ViViT VQ-VAE that turns each frame into a grid of discrete codes.

Paper: Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391, §2.1
(video tokenizer), Table 3 (ST-ViViT beats ViT and C-ViViT), App. F (CoinRun case study). No
official code; the open port FLAIROx/jafar (`models/tokenizer.py`) was read, not copied.

Why this shape: the dynamics model predicts frame tokens, so the tokenizer must compress a video
into a few discrete codes per frame *and* be causal in time (frame t's codes depend only on frames
<= t), so that a generated frame can be encoded/decoded without looking at frames that do not
exist yet. Pipeline (shape legend: b batch, t frames, c h w a frame, p patch, n = hw/p^2 tokens
per frame, d width, l latent width):

    frames (b t c h w) in [0, 1] -> patchify (b t n cpp) -> Linear -> d
    -> STTransformer encoder (causal in time) -> Linear -> l -> VectorQuantizer (codes (b t n))
    -> Linear -> d -> STTransformer decoder (causal in time) -> Linear -> cpp -> sigmoid
    -> unpatchify (b t c h w)

Loss: MSE reconstruction (pixels in [0, 1], as the paper's sigmoid output) + the VQ-VAE loss
(codebook + beta * commitment, beta 0.25). Metrics: loss_recon, psnr = 10 log10(1 / MSE) on the
batch's valid pixels, and the quantiser's usage, perplexity and resets.

Sizes: the defaults are CPU smoke sizes (reference §6.5: 32x32 frames, patch 4 = 64 tokens per
frame, 2 ST blocks d 128, codebook 256 x 32). `TokenizerConfig.paper_coinrun()` gives the CoinRun
case study (App. F): 64x64 frames, patch 4, encoder and decoder 8 layers / d 512 / 8 heads,
1024 codes of 32 dims, 16 frames (batch 48 x 16 frames, AdamW lr 3e-4 in the paper).

Deviations and choices the paper leaves open:
- `l2_normalize=False` (default): the plain VQ-VAE L2 lookup of the paper's reference (van den
  Oord et al. 2017). jafar normalises encoder outputs and codes (cosine-similarity lookup, after
  ViT-VQGAN, Yu et al. 2021); `l2_normalize=True` reproduces that. Why not the default: on our
  CPU smoke (16x16 sprite clips, d 64, 1 block, 64 codes, AdamW 1e-3, 250 steps) the normalised
  codebook learned slower: +1.5..+2.4 dB over the mean frame on held-out clips (seeds 0-2) vs
  +6.5..+7.7 dB for plain L2 on the same seeds (+4.8..+7.7 over seeds 0-5); both reach ~24 dB
  after 600 steps (seed 0).
- Dead-code reset after `reset_after` = 50 idle training calls (jafar's LAM threshold, reused
  here; `rl_core.nn.vq_st`); no codebook dropout (jafar has an option, default 0).
- Positions: the ST-transformer's learned factorised spatial + temporal embeddings (jafar:
  sinusoids); Linear in/out projections (jafar: LayerNorm-Dense-LayerNorm in).
- The encoder is causal in time as well as the decoder (the paper: "causal"; jafar's early
  versions were not). Optional `dec_*` fields give the decoder its own size (the paper's
  Platformers tokenizer: encoder 12 L / 512, decoder 20 L / 1024).
- Padding (`frame_mask` False frames, the shared `SegmentSampler` convention): such frames are
  zeroed before the encoder (so with left padding their contents cannot leak into later
  frames), excluded from the VQ loss, codebook statistics and resets, and from the
  reconstruction loss; their codes are still the nearest codes (no gradient), so `forward`
  returns a full video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.genie.patches import check_patchable, patchify, unpatchify
from rl_core.nn.convnet import as_float_frames
from rl_core.nn.st_transformer import STConfig, STTransformer, st_config_like
from rl_core.nn.vq_st import VectorQuantizer

__all__ = ["TokenizerConfig", "VideoTokenizer", "psnr_from_mse"]


@dataclass
class TokenizerConfig:
    image_channels: int = 3
    image_size: int | tuple[int, int] = 32  # side, or (h, w)
    patch: int = 4
    d_model: int = 128  # encoder width (and the decoder's unless dec_d_model)
    n_layer: int = 2
    n_head: int = 4
    dec_d_model: int | None = None  # None: same as the encoder
    dec_n_layer: int | None = None
    dec_n_head: int | None = None
    ffn_mult: int = 4
    dropout: float = 0.0
    qk_norm: bool = False
    pos: str = "learned"  # learned | sinusoidal (STConfig.pos)
    codebook_size: int = 256
    latent_dim: int = 32
    beta: float = 0.25
    reset_after: int | None = 50
    l2_normalize: bool = False  # True: jafar's cosine-similarity codebook
    max_frames: int = 16

    def __post_init__(self) -> None:
        check_patchable(self.hw, self.patch, "patch")
        if self.pos == "none":
            raise ValueError("pos='none': the tokenizer relies on the ST-transformer's positions")

    @property
    def hw(self) -> tuple[int, int]:
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.hw
        return (h // self.patch) * (w // self.patch)

    def st_config(self, decoder: bool = False) -> STConfig:
        """The encoder's (or decoder's) ST-transformer: causal in time, one position per patch."""
        sizes = {}
        if decoder:
            sizes = {"d_model": self.dec_d_model or self.d_model,
                     "n_layer": self.dec_n_layer or self.n_layer,
                     "n_head": self.dec_n_head or self.n_head}  # fmt: skip
        return st_config_like(
            self, max_tokens_per_frame=self.tokens_per_frame, causal=True, **sizes
        )

    @classmethod
    def paper_coinrun(cls, **overrides) -> TokenizerConfig:
        """Genie App. F CoinRun tokenizer: 64x64, patch 4, enc/dec 8 L / 512 / 8 h, 1024 x 32."""
        sizes = dict(
            image_channels=3, image_size=64, patch=4, d_model=512, n_layer=8, n_head=8,
            codebook_size=1024, latent_dim=32, max_frames=16,
        )  # fmt: skip
        return cls(**{**sizes, **overrides})


def psnr_from_mse(mse: float | Tensor, max_value: float = 1.0) -> float:
    """10 log10(max^2 / MSE) in dB (inf for a perfect reconstruction)."""
    mse = float(mse)
    return math.inf if mse <= 0 else 10.0 * math.log10(max_value**2 / mse)


class VideoTokenizer(nn.Module):
    """ST-ViViT VQ-VAE: frames (b t c h w) in [0, 1] <-> codes (b t n), causal in time."""

    def __init__(self, cfg: TokenizerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TokenizerConfig()
        enc, dec = cfg.st_config(), cfg.st_config(decoder=True)
        patch_dim = cfg.image_channels * cfg.patch**2
        self.patch_in = nn.Linear(patch_dim, enc.d_model)
        self.encoder = STTransformer(enc)
        self.to_latent = nn.Linear(enc.d_model, cfg.latent_dim)
        self.vq = VectorQuantizer(
            cfg.codebook_size, cfg.latent_dim, beta=cfg.beta, reset_after=cfg.reset_after,
            l2_normalize=cfg.l2_normalize,
        )  # fmt: skip
        self.from_latent = nn.Linear(cfg.latent_dim, dec.d_model)
        self.decoder = STTransformer(dec)
        self.patch_out = nn.Linear(dec.d_model, patch_dim)

    @property
    def tokens_per_frame(self) -> int:
        return self.cfg.tokens_per_frame

    # ------------------------------------------------------------------ pieces

    def _check_frames(self, frames: Tensor) -> Tensor:
        """uint8 or float frames (b t c h w) -> float in [0, 1], with a clear shape error."""
        c, (h, w) = self.cfg.image_channels, self.cfg.hw
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (c, h, w):
            raise ValueError(
                f"frames of shape {tuple(frames.shape)}: expected (b, t, {c}, {h}, {w}) "
                f"(TokenizerConfig image_channels={c}, image_size={self.cfg.image_size})"
            )
        return as_float_frames(frames)

    def _latents(self, frames: Tensor) -> Tensor:
        """float frames (b t c h w) -> continuous pre-quantisation latents (b t n l)."""
        x = self.patch_in(patchify(frames, self.cfg.patch))
        return self.to_latent(self.encoder(x))

    def _decode_latents(self, z_q: Tensor) -> Tensor:
        """quantised latents (b t n l) -> frames (b t c h w) in [0, 1]."""
        x = torch.sigmoid(self.patch_out(self.decoder(self.from_latent(z_q))))
        return unpatchify(x, self.cfg.patch, self.cfg.hw, self.cfg.image_channels)

    def _quantize(
        self, z: Tensor, frame_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """VQ over the valid frames only (loss, statistics, resets); padded frames get their
        nearest codes without gradient or codebook updates."""
        if frame_mask is None or bool(frame_mask.all()):
            return self.vq(z)
        z_q, codes, loss, metrics = self.vq(z[frame_mask])  # (m n l) over valid frames
        with torch.no_grad():
            pad_q, pad_codes, _, _ = self.vq(z[~frame_mask].detach(), update=False)
        z_q_full = z.new_zeros(z.shape)
        codes_full = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)
        z_q_full[frame_mask], codes_full[frame_mask] = z_q, codes
        z_q_full[~frame_mask], codes_full[~frame_mask] = pad_q.to(z.dtype), pad_codes
        if not frame_mask.any():  # nothing valid: no VQ loss (the statistics are of nothing)
            loss = z.sum() * 0.0
        return z_q_full, codes_full, loss, metrics

    # ------------------------------------------------------------------ public API

    def forward(
        self, frames: Tensor, frame_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """frames (b t c h w) float [0, 1] or uint8 -> (recon (b t c h w) in [0, 1], codes
        (b t n) long, vq_loss scalar, vq_metrics). `frame_mask` (b t) bool: False = padding."""
        frames = self._check_frames(frames)
        if frame_mask is not None:
            frame_mask = frame_mask.to(device=frames.device, dtype=torch.bool)
            frames = frames * frame_mask[:, :, None, None, None].to(frames.dtype)
        z_q, codes, vq_loss, vq_metrics = self._quantize(self._latents(frames), frame_mask)
        return self._decode_latents(z_q), codes, vq_loss, vq_metrics

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """frames (b t c h w) -> codes (b t n) long; no gradient, no codebook updates."""
        z = self._latents(self._check_frames(frames))
        return self.vq(z, update=False)[1]

    def decode(self, codes: Tensor) -> Tensor:
        """codes (b t n) long -> frames (b t c h w) in [0, 1] (differentiable w.r.t. the decoder)."""
        if codes.dim() != 3 or codes.shape[-1] != self.tokens_per_frame:
            raise ValueError(
                f"codes of shape {tuple(codes.shape)}: expected (b, t, {self.tokens_per_frame})"
            )
        return self._decode_latents(self.vq.lookup(codes.long()))

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """batch["frames"] (b T c h w) float [0, 1] or uint8, optional batch["frame_mask"] (b T)
        bool -> (MSE reconstruction on valid frames + VQ loss, metrics)."""
        frames = self._check_frames(batch["frames"])
        frame_mask = batch.get("frame_mask")
        if frame_mask is not None:
            frame_mask = torch.as_tensor(frame_mask, device=frames.device).bool()
        recon, _, vq_loss, vq_metrics = self(frames, frame_mask)
        sq_err = (recon - frames).pow(2)
        if frame_mask is None:
            loss_recon = sq_err.mean()
        else:
            weight = frame_mask[:, :, None, None, None].to(sq_err.dtype).expand_as(sq_err)
            loss_recon = (sq_err * weight).sum() / weight.sum().clamp_min(1.0)
        loss = loss_recon + vq_loss
        metrics = {
            "loss": float(loss.detach()),
            "loss_recon": float(loss_recon.detach()),
            "loss_vq": float(vq_loss.detach()),
            "psnr": psnr_from_mse(loss_recon.detach()),
            **{k: vq_metrics[k] for k in ("usage", "perplexity", "resets")},
            "codebook_loss": vq_metrics["codebook_loss"],
            "commitment_loss": vq_metrics["commitment_loss"],
        }
        return loss, metrics
