"""Δ-IRIS world model: an autoregressive transformer over blocks [I(x_t), a_t, z¹..zᵏ].

Why the I-token: a continuous embedding of the current frame x_t (small CNN + LayerNorm) opens
each block, so the transformer knows the state without attending back through old Δ-tokens,
which only describe changes. From the a_t position it predicts the reward class (sign of r_t:
-1/0/+1) and the termination; from [a_t, z¹..z^{k-1}] it predicts the next Δ-token (teacher
forcing), a cross-entropy over the tokenizer's codebook. The transformer is the shared
`rl_core.nn.GPT` (pre-LN, learned positions, no dropout) with its KV cache for imagination.

Default sizes are the CPU smoke sizes (2 layers, d 128, 16 blocks). The paper's Atari sizes
(official `config/params/atari.yaml`)::

    WorldModelConfig(num_actions=A, codebook_size=1024, image_size=64, d_model=256, n_layer=3,
                     n_head=4, max_blocks=26, frame_cnn_channels=32, frame_cnn_latent=4,
                     mult=[1, 1, 2, 2, 4], down=[1, 0, 1, 1, 0],
                     latents_weight=0.1, rewards_weight=1.0, ends_weight=0.1)

Shape legend: b batch, t time (blocks), k Δ-tokens per block, n = 2 + k tokens per block,
d width, v codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agents.delta_iris.tokenizer import as_float_frames, init_linear_embedding
from rl_core.nn.convnet import FrameEncoder
from rl_core.nn.gpt import GPT, GPTConfig, KVCache


@dataclass
class WorldModelConfig:
    num_actions: int = 3
    codebook_size: int = 256  # vocabulary of Δ-tokens (the tokenizer's codebook size)
    num_tokens: int = 4  # k Δ-tokens per step (the tokenizer's num_tokens)
    image_channels: int = 3
    image_size: int = 32
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    max_blocks: int = 16  # longest sequence in time steps; the transformer holds max_blocks*(2+k)
    frame_cnn_channels: int = 16  # I-token CNN
    frame_cnn_latent: int = 2  # its output channels: 8 * 8 * 2 = 128 = d_model, no projection
    mult: list[int] = field(default_factory=lambda: [1, 1, 2])
    down: list[int] = field(default_factory=lambda: [1, 1, 0])
    residual: bool = True
    latents_weight: float = 1.0
    rewards_weight: float = 1.0
    ends_weight: float = 1.0

    @property
    def tokens_per_block(self) -> int:
        return 2 + self.num_tokens


def mlp_head(d: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out))


class WorldModel(nn.Module):
    """Δ-token, reward and termination predictor; see the module docstring."""

    def __init__(self, cfg: WorldModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or WorldModelConfig()
        self.cfg = cfg
        d = cfg.d_model
        self.frame_cnn = FrameEncoder(
            cfg.image_channels,
            cfg.frame_cnn_latent,
            cfg.frame_cnn_channels,
            cfg.mult,
            cfg.down,
            cfg.residual,
        )
        side = cfg.image_size // self.frame_cnn.downsampling
        flat = side * side * cfg.frame_cnn_latent
        self.frame_norm = nn.LayerNorm(flat)
        self.frame_proj = nn.Identity() if flat == d else nn.Linear(flat, d)
        self.action_emb = nn.Embedding(cfg.num_actions, d)
        self.latent_emb = nn.Embedding(cfg.codebook_size, d)
        self.head_latents = mlp_head(d, cfg.codebook_size)
        self.head_rewards = mlp_head(d, 3)
        self.head_ends = mlp_head(d, 2)
        self.apply(init_linear_embedding)
        self.transformer = GPT(
            GPTConfig(
                d_model=d,
                n_layer=cfg.n_layer,
                n_head=cfg.n_head,
                dropout=0.0,
                max_len=cfg.max_blocks * cfg.tokens_per_block,
                pos="learned",
            )
        )

    # ---- embeddings and heads (also used step by step by the imagination) --------------------

    def embed_frames(self, frames: Tensor) -> Tensor:
        """frames (..., c, h, w) in [0, 1] -> I-token embeddings (..., d)."""
        x = self.frame_cnn(as_float_frames(frames))
        x = rearrange(x, "... c h w -> ... (h w c)")
        return self.frame_proj(self.frame_norm(x))

    def new_cache(self) -> KVCache:
        return self.transformer.new_cache()

    def sequence(self, frames: Tensor, actions: Tensor, tokens: Tensor) -> Tensor:
        """frames (b t c h w), actions (b t), tokens (b t k) -> embeddings (b (t n) d)."""
        blocks = torch.cat(
            [
                self.embed_frames(frames)[:, :, None],
                self.action_emb(actions.long())[:, :, None],
                self.latent_emb(tokens.long()),
            ],
            dim=2,
        )  # (b t n d)
        return rearrange(blocks, "b t n d -> b (t n) d")

    def forward(self, frames: Tensor, actions: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """Teacher-forced logits for t full blocks: frames (b t c h w) are x_0..x_{t-1}.

        -> latents (b t k v) for z¹..zᵏ of each block, rewards (b t 3), ends (b t 2).
        """
        t = actions.shape[1]
        if t > self.cfg.max_blocks:
            raise ValueError(f"{t} time steps exceed max_blocks={self.cfg.max_blocks}")
        h = self.transformer(self.sequence(frames, actions, tokens))
        h = rearrange(h, "b (t n) d -> b t n d", n=self.cfg.tokens_per_block)
        at_action = h[:, :, 1]
        return {
            "latents": self.head_latents(h[:, :, 1:-1]),  # positions a_t, z¹..z^{k-1}
            "rewards": self.head_rewards(at_action),
            "ends": self.head_ends(at_action),
        }

    # ---- training ----------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Weighted CE of Δ-tokens, reward sign and termination over valid transitions.

        batch: frames (b, t+1, c, h, w), action (b, t), reward (b, t), end (b, t), mask (b, t),
        tokens (b, t, k) from the frozen tokenizer. Padding must be at the end of a segment
        (causal attention: earlier tokens never see it).
        """
        mask = batch["mask"].bool()
        if not bool(mask.any()):
            raise ValueError("the batch has no valid transition (mask is all False)")
        out = self(batch["frames"][:, :-1], batch["action"], batch["tokens"])
        tokens = batch["tokens"][mask].long()  # (m k)
        logits_latents = out["latents"][mask]  # (m k v)
        reward_labels = (batch["reward"][mask].sign() + 1).long()
        end_labels = batch["end"][mask].long()
        loss_latents = F.cross_entropy(logits_latents.flatten(0, 1).float(), tokens.flatten())
        loss_rewards = F.cross_entropy(out["rewards"][mask].float(), reward_labels)
        loss_ends = F.cross_entropy(out["ends"][mask].float(), end_labels)
        c = self.cfg
        loss = (
            c.latents_weight * loss_latents
            + c.rewards_weight * loss_rewards
            + c.ends_weight * loss_ends
        )
        accuracy = (logits_latents.argmax(-1) == tokens).float().mean()
        return loss, {
            "loss": loss.item(),
            "loss_latents": loss_latents.item(),
            "loss_rewards": loss_rewards.item(),
            "loss_ends": loss_ends.item(),
            "latent_accuracy": accuracy.item(),
        }
