"""Δ-IRIS context-aware transition tokenizer: (x_t, a_t, x_{t+1}) -> k Δ-tokens -> x̂_{t+1}.

Why transitions and not frames: the decoder also sees x_t and a_t, so it does the deterministic
part of the dynamics itself and the few tokens only have to carry what (x_t, a_t) cannot predict
(the stochastic "delta"). The world model then predicts k = 4 tokens per step instead of the
16-64 tokens of a frame tokenizer.

Encoder: concat(x_t, action rendered as one image-sized channel, x_{t+1}) -> CNN to an 8x8
latent -> a g x g grid of patches (g = sqrt(k)), each flattened and projected to `token_dim`,
quantised by a cosine EMA codebook (`rl_core.nn.EMACosineCodebook`). Decoder at the latent
resolution: concat(frame-CNN(x_t), action embedding map, tokens projected back to their patch)
-> mirrored CNN -> x̂_{t+1}. Loss: 0.1 L1 + L2 + 0.01 worst-pixel squared error + 0.02
commitment, over valid transitions only. Frames are float in [0, 1], (b, c, h, w).

Default sizes are the CPU smoke sizes (32x32, 0.4 M parameters). The paper's Atari sizes
(official `config/params/atari.yaml`)::

    TokenizerConfig(num_actions=A, image_size=64, channels=64, mult=[1, 1, 2, 2, 4],
                    down=[1, 0, 1, 1, 0], latent_dim=64, token_dim=64, codebook_size=1024,
                    frame_channels=16, frame_cnn_channels=32, action_channels=4,
                    max_updates_with_revival=400)  # 400 = tokenizer steps of the first epoch

Shape legend: b batch, t time, k tokens per transition, d token width, c h w a frame,
g token grid side, p patch side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from rl_core.nn.convnet import FrameDecoder, FrameEncoder, as_float_frames
from rl_core.nn.vq import EMACosineCodebook


@dataclass
class TokenizerConfig:
    num_actions: int = 3
    image_channels: int = 3
    image_size: int = 32
    num_tokens: int = 4  # k, a perfect square: a g x g grid over the latent
    channels: int = 32  # encoder/decoder base width
    mult: list[int] = field(default_factory=lambda: [1, 1, 2])
    down: list[int] = field(default_factory=lambda: [1, 1, 0])  # 32x32 -> 8x8
    residual: bool = True  # residual blocks (official) or single convs (faster)
    latent_dim: int = 32  # encoder output channels at the latent resolution
    token_dim: int = 32  # codebook width
    codebook_size: int = 256
    frame_channels: int = 8  # decoder's frame-CNN(x_t) output channels
    frame_cnn_channels: int = 16  # frame-CNN base width (same mult/down as the encoder)
    action_channels: int = 4  # decoder's action embedding channels
    revival_margin_bits: float = 2.0
    max_updates_with_revival: int | None = None  # None: revive whenever usage collapses
    l1_weight: float = 0.1
    l2_weight: float = 1.0
    worst_pixel_weight: float = 0.01
    commitment_weight: float = 0.02

    def __post_init__(self) -> None:
        side = math.isqrt(self.num_tokens)
        if side * side != self.num_tokens:
            raise ValueError(f"num_tokens={self.num_tokens} must be a perfect square")
        scale = 2 ** sum(bool(d) for d in self.down)
        if self.image_size % scale or (self.image_size // scale) % side:
            raise ValueError(
                f"image_size={self.image_size} with down={self.down} gives a latent of side "
                f"{self.image_size / scale}, which must be an integer divisible by {side}"
            )

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** sum(bool(d) for d in self.down)

    @property
    def tokens_per_side(self) -> int:
        return math.isqrt(self.num_tokens)

    @property
    def patch_size(self) -> int:
        return self.latent_size // self.tokens_per_side


def init_linear_embedding(module: nn.Module) -> None:
    """Official `init_weights`: N(0, 0.02) linear/embedding weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class Tokenizer(nn.Module):
    """Transition tokenizer; see the module docstring."""

    def __init__(self, cfg: TokenizerConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TokenizerConfig()
        self.cfg = cfg
        c, hw, lat = cfg.image_channels, cfg.image_size, cfg.latent_size
        patch_width = cfg.patch_size**2 * cfg.latent_dim
        self.encoder_action = nn.Embedding(cfg.num_actions, hw * hw)
        self.decoder_action = nn.Embedding(cfg.num_actions, cfg.action_channels * lat * lat)
        conv = {"mult": cfg.mult, "down": cfg.down, "residual": cfg.residual}
        self.encoder = FrameEncoder(2 * c + 1, cfg.latent_dim, cfg.channels, **conv)
        self.frame_cnn = FrameEncoder(c, cfg.frame_channels, cfg.frame_cnn_channels, **conv)
        decoder_in = cfg.frame_channels + cfg.action_channels + cfg.latent_dim
        self.decoder = FrameDecoder(decoder_in, c, cfg.channels, **conv)
        self.pre_quant = nn.Linear(patch_width, cfg.token_dim)
        self.post_quant = nn.Linear(cfg.token_dim, patch_width)
        self.codebook = EMACosineCodebook(
            cfg.codebook_size,
            cfg.token_dim,
            revival_margin_bits=cfg.revival_margin_bits,
            max_updates_with_revival=cfg.max_updates_with_revival,
        )
        self.apply(init_linear_embedding)

    # ---- encoder / decoder -------------------------------------------------------------------

    def _encode(
        self, prev: Tensor, action: Tensor, nxt: Tensor, update: bool | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """-> (z (b k d) before quantisation, q (b k d), tokens (b k), metrics)."""
        a_map = rearrange(self.encoder_action(action), "b (h w) -> b 1 h w", h=prev.shape[-2])
        latent = self.encoder(torch.cat([prev, a_map, nxt], dim=1))  # (b c' g*p g*p)
        patches = rearrange(
            latent,
            "b c (g1 p1) (g2 p2) -> b (g1 g2) (p1 p2 c)",
            g1=self.cfg.tokens_per_side,
            g2=self.cfg.tokens_per_side,
        )
        z = self.pre_quant(patches)
        q, tokens, metrics = self.codebook(z, update=update)
        return z, q, tokens, metrics

    def encode(
        self, prev: Tensor, action: Tensor, nxt: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """prev, nxt (b c h w) in [0, 1], action (b,) -> (q (b k d), tokens (b k), metrics).

        Updates the codebook in training mode."""
        _, q, tokens, metrics = self._encode(prev, action, nxt)
        return q, tokens, metrics

    def decode(self, prev: Tensor, action: Tensor, q: Tensor) -> Tensor:
        """prev (b c h w), action (b,), q (b k d) -> x̂_{t+1} (b c h w), unclamped."""
        lat = self.cfg.latent_size
        frame = self.frame_cnn(prev)  # (b frame_channels lat lat)
        a_map = rearrange(
            self.decoder_action(action), "b (c h w) -> b c h w", c=self.cfg.action_channels, h=lat
        )
        grid = rearrange(
            self.post_quant(q),
            "b (g1 g2) (p1 p2 c) -> b c (g1 p1) (g2 p2)",
            g1=self.cfg.tokens_per_side,
            p1=self.cfg.patch_size,
            p2=self.cfg.patch_size,
        )
        return self.decoder(torch.cat([frame, a_map, grid], dim=1))

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens (..., k) long -> q (..., k, d): the unit code vectors `decode` takes."""
        return self.codebook.lookup(tokens)

    # ---- training and tokenisation -----------------------------------------------------------

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction + commitment loss over the valid transitions of a segment batch.

        batch: frames (b, t+1, c, h, w) in [0, 1], action (b, t) long, mask (b, t) bool.
        """
        frames = as_float_frames(batch["frames"])
        mask = batch["mask"].bool()
        if not bool(mask.any()):
            raise ValueError("the batch has no valid transition (mask is all False)")
        prev, nxt = frames[:, :-1][mask], frames[:, 1:][mask]  # (n c h w)
        action = batch["action"][mask].long()
        z, q, _, metrics = self._encode(prev, action, nxt)
        delta = nxt - self.decode(prev, action, q)
        l1 = delta.abs().mean()
        l2 = delta.pow(2).mean()
        worst = delta.pow(2).flatten(1).max(dim=1).values.mean()
        commitment = self.codebook.commitment_loss(z, q)
        c = self.cfg
        loss = (
            c.l1_weight * l1
            + c.l2_weight * l2
            + c.worst_pixel_weight * worst
            + c.commitment_weight * commitment
        )
        return loss, {
            "loss": loss.item(),
            "l1": l1.item(),
            "mse": l2.item(),
            "worst_pixel": worst.item(),
            "commitment": commitment.item(),
            **metrics,
        }

    @torch.no_grad()
    def tokenize(self, batch: dict[str, Tensor]) -> Tensor:
        """Δ-tokens (b, t, k) long of every transition (padded ones too: mask them downstream),
        with the codebook frozen whatever the mode."""
        frames = as_float_frames(batch["frames"])
        b, t = batch["action"].shape
        if t == 0:
            return torch.zeros(b, 0, self.cfg.num_tokens, dtype=torch.long, device=frames.device)
        prev = rearrange(frames[:, :-1], "b t c h w -> (b t) c h w")
        nxt = rearrange(frames[:, 1:], "b t c h w -> (b t) c h w")
        action = rearrange(batch["action"].long(), "b t -> (b t)")
        _, _, tokens, _ = self._encode(prev, action, nxt, update=False)
        return rearrange(tokens, "(b t) k -> b t k", b=b)

    @torch.no_grad()
    def reconstruct(self, prev: Tensor, action: Tensor, nxt: Tensor) -> Tensor:
        """Encode-decode one transition batch with a frozen codebook, clamped to [0, 1]."""
        _, q, _, _ = self._encode(prev, action, nxt, update=False)
        return self.decode(prev, action, q).clamp(0.0, 1.0)
