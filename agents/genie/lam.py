"""Genie's latent action model (LAM): a pixel-input ST-transformer VQ-VAE whose tiny codebook
becomes the set of actions a user can play with.

Paper: Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391, §2.1
and App. F. The encoder sees frames x_1..x_t and x_{t+1} and emits a continuous latent a~_t,
quantised to a codebook of |A| codes (8 in the paper, 6 in the CoinRun case study, 32-d, patch
16); the decoder sees only the past frames and a~_t and reconstructs x_{t+1}, so through the
|A|-way bottleneck the code has to say "what changed". Inputs are in [0, 1], the decoder output
goes through a sigmoid, the loss is MSE + the VQ-VAE loss. At inference everything but the
codebook is discarded (the dynamics model embeds the codes); `infer_actions` labels videos.

Indexing (this repo's batch convention): frames (b, T+1, c, h, w), transition j = 0..T-1 goes
from frame j to frame j+1, `mask` (b, T) marks the real transitions.
  * encoder: all T+1 frames -> patches -> Linear -> causal ST-transformer. The latent action of
    transition j is read at frame j+1 (the first output that has seen frame j+1; causality makes
    it blind to frames > j+1), mean-pooled over that frame's tokens -> Linear -> VQ.
  * decoder: frames 0..T-1 only (frame j+1 is never an input when predicting it) -> patches ->
    Linear, and the quantised action of transition j (Linear to d) is ADDED to every token of
    FRAME j. Causal ST-transformer -> output at frame j -> Linear -> sigmoid -> frame j+1.
    Why frame j: the output at frame j is the one that predicts frame j+1, and causal attention
    lets it see frames 0..j and the actions added to them, so action j must sit at frame j or
    earlier to be usable and at frame j (not earlier) so that it is a single-step action. The
    open ports' off-by-one (jafar #14, jasmine #122/#127) padded the action sequence at the start,
    i.e. added action j to frame j+1: then the prediction of frame j+1 never sees its own action
    (the first frame gets a padding action) and the code carries no next-frame information.
    Adding it to frame j-1 instead would let the prediction of frame j+1 see action j+1, a leak
    of the future through the code. `tests/test_genie_lam.py` checks both directions.

Deviations and choices the paper leaves open:
- pooling: the encoder output of frame j+1 is mean-pooled over its tokens (no extra learned
  action token: the spatial attention of the ST blocks already mixes the frame, and the ST
  transformer's position table stays the plain patch grid).
- the decoder is a causal ST-transformer over frames 0..T-1 with the action added to the frame
  it conditions (the paper only says the decoder sees past frames and the latent action; the
  dynamics model there adds action embeddings, which we mirror here).
- quantiser: `rl_core.nn.vq_st.VectorQuantizer` with jafar's dead-code reset (codes idle for 50
  training calls are re-initialised to encoder outputs), only the real transitions are quantised
  (padding neither trains the codebook nor counts as usage); padded transitions get a zero
  action embedding.
- sizes: the defaults are CPU smoke sizes (reference §6.5: patch 8, 2 blocks, d 128, 8 codes);
  `LAMConfig.coinrun()` gives the paper's CoinRun case study (enc/dec 8 layers / d 512 / 8 heads,
  6 codes, latent 32, patch 16, 64x64 frames, 16-frame clips). The paper's 300M LAM uses 20
  layers / d 1024 / 16 heads and 8 codes.
- metrics: `psnr` is the mean over real predicted frames of 10 log10(1 / MSE) (pixel range 1).

Shape legend: b batch, t frames, T transitions, n tokens per frame, d width, k latent width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from agents.genie.patches import check_patchable, patchify, unpatchify
from rl_core.nn.convnet import as_float_frames
from rl_core.nn.st_transformer import STConfig, STTransformer, st_config_like
from rl_core.nn.vq_st import VectorQuantizer


@dataclass
class LAMConfig:
    image_channels: int = 3
    image_size: int = 32  # square frames of image_size x image_size pixels
    patch: int = 8
    d_model: int = 128
    n_layer: int = 2  # per encoder and per decoder
    n_head: int = 4
    num_latent_actions: int = 8  # |A|: codebook size
    latent_dim: int = 32  # code width
    beta: float = 0.25  # VQ commitment weight
    reset_after: int | None = 50  # dead-code reset after this many idle training calls
    max_frames: int = 16  # longest clip the encoder sees (T + 1 frames)
    ffn_mult: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_patchable((self.image_size, self.image_size), self.patch)

    @property
    def tokens_per_frame(self) -> int:
        return (self.image_size // self.patch) ** 2

    @classmethod
    def coinrun(cls) -> LAMConfig:
        """Genie App. F CoinRun case study: enc/dec 8 L / 512 / 8 h, 6 codes, latent 32, patch 16,
        64x64 RGB frames, 16-frame clips (jafar uses the same values)."""
        return cls(
            image_channels=3,
            image_size=64,
            patch=16,
            d_model=512,
            n_layer=8,
            n_head=8,
            num_latent_actions=6,
            latent_dim=32,
            max_frames=16,
        )

    def st_config(self) -> STConfig:
        return st_config_like(self, max_tokens_per_frame=self.tokens_per_frame, causal=True)


class LatentActionModel(nn.Module):
    """Encoder (frames 0..T -> T continuous latents -> codes) and decoder (frames 0..T-1 + the
    quantised actions -> predictions of frames 1..T); see the module docstring for alignment."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.image_channels * cfg.patch**2
        self.enc_embed = nn.Linear(patch_dim, cfg.d_model)
        self.encoder = STTransformer(cfg.st_config())
        self.to_latent = nn.Linear(cfg.d_model, cfg.latent_dim)
        self.vq = VectorQuantizer(
            cfg.num_latent_actions, cfg.latent_dim, beta=cfg.beta, reset_after=cfg.reset_after
        )
        self.dec_embed = nn.Linear(patch_dim, cfg.d_model)
        self.action_embed = nn.Linear(cfg.latent_dim, cfg.d_model)
        self.decoder = STTransformer(cfg.st_config())
        self.to_pixels = nn.Linear(cfg.d_model, patch_dim)

    # ---------------------------------------------------------------- helpers
    def _frames(self, frames: Tensor, min_frames: int) -> Tensor:
        """uint8/float (b, t, c, h, w) -> float [0, 1] with a clear error on a wrong shape."""
        cfg = self.cfg
        expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != expected:
            raise ValueError(f"frames {tuple(frames.shape)}: expected (b, t, {expected})")
        if not min_frames <= frames.shape[1] <= cfg.max_frames:
            raise ValueError(
                f"{frames.shape[1]} frames: need {min_frames}..{cfg.max_frames} (max_frames)"
            )
        return as_float_frames(frames)

    # ---------------------------------------------------------------- encoder
    def encode(self, frames: Tensor) -> Tensor:
        """frames (b, T+1, c, h, w) -> continuous latent actions (b, T, k), before quantisation;
        latent j is read at frame j+1, so it has seen frames 0..j+1 and nothing later."""
        x = self._frames(frames, min_frames=2)
        h = self.encoder(self.enc_embed(patchify(x, self.cfg.patch)))  # (b t n d)
        return self.to_latent(h[:, 1:].mean(dim=2))  # (b T k)

    @torch.no_grad()
    def infer_actions(self, frames: Tensor) -> Tensor:
        """frames (b, T+1, c, h, w) -> latent action codes (b, T) long (no codebook update)."""
        _, codes, _, _ = self.vq(self.encode(frames), update=False)
        return codes

    # ---------------------------------------------------------------- decoder
    def _decode(self, past: Tensor, actions: Tensor) -> Tensor:
        """past frames (b, t, c, h, w) float + action vectors (b, t, k) -> predictions (b, t, c,
        h, w); action j is added to frame j and output j predicts frame j+1."""
        cfg = self.cfg
        tokens = self.dec_embed(patchify(past, cfg.patch))  # (b t n d)
        tokens = tokens + self.action_embed(actions)[:, :, None, :]  # action j -> frame j
        pixels = torch.sigmoid(self.to_pixels(self.decoder(tokens)))  # (b t n c p p)
        size = (cfg.image_size, cfg.image_size)
        return unpatchify(pixels, cfg.patch, size, cfg.image_channels)

    def decode_next(self, past_frames: Tensor, codes: Tensor) -> Tensor:
        """past frames 0..t-1 (b, t, c, h, w) + codes (b, t) of transitions 0..t-1 -> predicted
        frames 1..t (b, t, c, h, w): entry j is the prediction of frame j+1 from frames 0..j and
        codes 0..j; entry -1 is the next frame after the clip (for play)."""
        past = self._frames(past_frames, min_frames=1)
        if codes.shape != past.shape[:2]:
            raise ValueError(f"codes {tuple(codes.shape)}: expected {tuple(past.shape[:2])}")
        return self._decode(past, self.vq.lookup(codes.long()))

    # ---------------------------------------------------------------- training
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """MSE of the predicted next frames over real transitions + the VQ-VAE loss of the real
        transitions' latents. batch: frames (b, T+1, c, h, w), optional mask (b, T) bool."""
        frames = self._frames(batch["frames"], min_frames=2)
        b, t1 = frames.shape[:2]
        mask = batch.get("mask")
        mask = (
            torch.ones(b, t1 - 1, dtype=torch.bool, device=frames.device)
            if mask is None
            else mask.to(device=frames.device, dtype=torch.bool)
        )
        if mask.shape != (b, t1 - 1):
            raise ValueError(f"mask {tuple(mask.shape)}: expected {(b, t1 - 1)}")

        z = self.encode(frames)  # (b T k)
        z_q = torch.zeros_like(z)
        if mask.any():
            zq_real, codes, vq_loss, vq_metrics = self.vq(z[mask])
            z_q = z_q.masked_scatter(mask[..., None], zq_real)  # padding keeps a zero action
        else:
            vq_loss = z.sum() * 0.0
            vq_metrics = {"usage": 0.0, "perplexity": 0.0, "resets": 0.0}
        pred = self._decode(frames[:, :-1], z_q)  # (b T c h w): predictions of frames 1..T
        err = (pred - frames[:, 1:]).pow(2).flatten(2).mean(-1)  # (b T) per-frame MSE
        weight = mask.float()
        n_real = weight.sum().clamp_min(1.0)
        loss_recon = (err * weight).sum() / n_real
        loss = loss_recon + vq_loss
        with torch.no_grad():
            psnr = (-10.0 * torch.log10(err.clamp_min(1e-10)) * weight).sum() / n_real
        metrics = {
            "loss": float(loss.detach()),
            "loss_recon": float(loss_recon.detach()),
            "loss_vq": float(vq_loss.detach()),
            "psnr": float(psnr),
            "codebook_usage": vq_metrics["usage"],
            "perplexity": vq_metrics["perplexity"],
            "resets": vq_metrics["resets"],
        }
        return loss, metrics


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def latent_action_agreement(codes: Tensor | np.ndarray, true_actions: Tensor | np.ndarray) -> dict:
    """How well latent codes match the env's true actions (same shape, any; flattened).

    nmi: I(code; action) / ((H(code) + H(action)) / 2) (arithmetic-mean normalisation, as
    sklearn's default), 0 when either variable is constant. majority_accuracy: accuracy after
    mapping each code to its most frequent true action (Genie's latent->real mapping idea);
    chance_accuracy: frequency of the most common true action (what a constant code gets).
    """
    c = np.asarray(codes.cpu() if isinstance(codes, Tensor) else codes).reshape(-1)
    a = np.asarray(true_actions.cpu() if isinstance(true_actions, Tensor) else true_actions)
    a = a.reshape(-1)
    if c.shape != a.shape or c.size == 0:
        raise ValueError(f"codes ({c.size}) and true actions ({a.size}) must be equal, non-empty")
    _, ci = np.unique(c, return_inverse=True)
    _, ai = np.unique(a, return_inverse=True)
    table = np.zeros((ci.max() + 1, ai.max() + 1), dtype=np.float64)  # (codes, actions)
    np.add.at(table, (ci, ai), 1.0)
    n = table.sum()
    h_c, h_a = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_c <= 0.0 or h_a <= 0.0:
        nmi = 0.0
    else:
        p = table / n
        outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
        nz = p > 0
        mi = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
        nmi = max(0.0, min(1.0, mi / (0.5 * (h_c + h_a))))
    return {
        "nmi": nmi,
        "majority_accuracy": float(table.max(1).sum() / n),
        "chance_accuracy": float(table.sum(0).max() / n),
        "codes_used": int(table.shape[0]),
    }
