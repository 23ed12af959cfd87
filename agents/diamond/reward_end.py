"""DIAMOND's reward/termination model: a separate CNN-LSTM on transitions (x_t, a_t, x_{t+1}).

Why separate (official `src/models/rew_end_model.py`): the diffusion model only produces frames,
so the reward sign and the episode end come from a small recurrent classifier run next to it in
imagination. Per step, the two frames are stacked channel-wise (in [-1, 1]) and encoded by
conv ResBlocks whose adaptive GroupNorms are conditioned on the action embedding (the same
blocks as the denoiser's U-Net encoder: levels with stride-2 downsampling between them, then two
self-attention ResBlocks), flattened, fed to an LSTM (xavier input weights, orthogonal recurrent
weights, forget bias 1) and a Linear-SiLU-Linear head to 3 reward classes (sign r + 1) and 2
end classes, trained with cross-entropies over the valid steps of a segment (the LSTM starts
from zeros at the segment's first step; every valid step counts, `loss_burn_in` can exclude
the first ones). In imagination the LSTM is first run over the real burn-in transitions.

Sizes: defaults are CPU smoke sizes (reference §6.4: channels [16]*3, depth 1, LSTM 128). The
paper (`config/agent/default.yaml`, `config/trainer.yaml`): cond_dim 128, channels [32]*4,
depths [2]*4, attn_depths [false]*4, lstm_dim 512, segments of 19 = burn-in 4 + horizon 15.

Shape legend: b batch, t time (transitions), c h w a frame, d cond width, k classes.

Deviations from the official code (eloialonso/diamond):
- Segments come from the shared sampler (`sample_left_padded` pads only before the start;
  official rew/end segments may also run past the episode end, `can_sample_beyond_end`). The
  real final frame is in the segment already (official: swaps `info["final_observation"]` in
  for the grey padding at a death).
- `loss_burn_in` (default 0 = official: every valid step counts) can leave the first steps of
  a segment out of the loss.
- Training metrics: losses and reward/end accuracies (official: torcheval confusion matrices,
  precision/recall/F1 per class); held-out recalls are in `evaluation.py`.
- The LSTM input size is computed with ceil(s / 2) per stride-2 level (official assumes powers
  of two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from agents.diamond.denoiser import Downsample, ResBlocks, pad_invalid_frames, to_model_space

LSTMState = tuple[Tensor, Tensor]  # (1 b d) each, nn.LSTM layout


@dataclass
class RewardEndConfig:
    num_actions: int = 4
    image_channels: int = 3
    image_size: int = 32
    cond_dim: int = 128
    channels: list[int] = field(default_factory=lambda: [16, 16, 16])
    depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    attn_depths: list[bool] = field(default_factory=lambda: [False, False, False])
    mid_attention: bool = True
    lstm_dim: int = 128
    loss_burn_in: int = 0  # first steps of a segment left out of the loss (official: none)

    def __post_init__(self) -> None:
        if not len(self.channels) == len(self.depths) == len(self.attn_depths):
            raise ValueError(
                f"channels {self.channels}, depths {self.depths} and attn_depths "
                f"{self.attn_depths} must have one entry per level"
            )

    @property
    def feature_side(self) -> int:
        """Side of the encoder's output grid (each stride-2 conv gives ceil(s / 2))."""
        side = self.image_size
        for _ in range(len(self.channels) - 1):
            side = math.ceil(side / 2)
        return side


class RewardEndEncoder(nn.Module):
    """conv3x3 -> per level [downsample (not the first), ResBlocks] -> 2 attention ResBlocks."""

    def __init__(self, cfg: RewardEndConfig) -> None:
        super().__init__()
        ch, d = cfg.channels, cfg.cond_dim
        self.conv_in = nn.Conv2d(2 * cfg.image_channels, ch[0], 3, padding=1)
        blocks = []
        for i, n in enumerate(cfg.depths):
            c1, c2 = ch[max(0, i - 1)], ch[i]
            blocks.append(ResBlocks([c1] + [c2] * (n - 1), [c2] * n, d, cfg.attn_depths[i]))
        blocks.append(ResBlocks([ch[-1]] * 2, [ch[-1]] * 2, d, cfg.mid_attention))
        self.blocks = nn.ModuleList(blocks)
        self.downsamples = nn.ModuleList(
            [nn.Identity(), *(Downsample(c) for c in ch[:-1]), nn.Identity()]
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # (b 2c h w), (b d)
        x = self.conv_in(x)
        for block, down in zip(self.blocks, self.downsamples, strict=True):
            x, _ = block(down(x), cond)
        return x


def init_lstm(lstm: nn.LSTM) -> None:
    """Official `init_lstm`: xavier input weights, orthogonal recurrent ones, forget bias 1."""
    for name, p in lstm.named_parameters():
        if "weight_ih" in name:
            nn.init.xavier_uniform_(p)
        elif "weight_hh" in name:
            nn.init.orthogonal_(p)
        elif "bias" in name:
            nn.init.zeros_(p)
            if "bias_ih" in name:
                n = p.shape[0]
                nn.init.ones_(p[n // 4 : n // 2])


class RewardEndModel(nn.Module):
    """(x_t, a_t, x_{t+1}) sequences -> reward-sign logits (b t 3), end logits (b t 2)."""

    def __init__(self, cfg: RewardEndConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RewardEndEncoder(cfg)
        self.action_emb = nn.Embedding(cfg.num_actions, cfg.cond_dim)
        self.lstm = nn.LSTM(cfg.channels[-1] * cfg.feature_side**2, cfg.lstm_dim, batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(cfg.lstm_dim, cfg.lstm_dim),
            nn.SiLU(),
            nn.Linear(cfg.lstm_dim, 3 + 2, bias=False),
        )
        init_lstm(self.lstm)

    @property
    def device(self) -> torch.device:
        return self.action_emb.weight.device

    def reset_state(self, b: int, device: torch.device | str | None = None) -> LSTMState:
        """Zero LSTM state for b sequences."""
        z = torch.zeros(1, b, self.cfg.lstm_dim, device=device or self.device)
        return z, z.clone()

    def forward(
        self,
        frames: Tensor,
        actions: Tensor,
        next_frames: Tensor,
        state: LSTMState | None = None,
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """frames, next_frames (b t c h w) in [0, 1] (or uint8), actions (b t) -> reward logits
        (b t 3), end logits (b t 2) and the LSTM state after the last step."""
        b = actions.shape[0]
        x = torch.cat([to_model_space(frames), to_model_space(next_frames)], dim=2)
        return self._from_model_space(x, actions, state, b)

    def _from_model_space(
        self, x: Tensor, actions: Tensor, state: LSTMState | None, b: int
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """x = [x_t, x_{t+1}] (b t 2c h w) in [-1, 1]."""
        cond = self.action_emb(rearrange(actions.long(), "b t -> (b t)"))
        feats = self.encoder(rearrange(x, "b t c h w -> (b t) c h w"), cond)
        feats = rearrange(feats, "(b t) c h w -> b t (c h w)", b=b)
        out, state = self.lstm(feats, state)
        logits = self.head(out)
        return logits[..., :3], logits[..., 3:], state

    @torch.no_grad()
    def burn_in(self, frames: Tensor, actions: Tensor, state: LSTMState | None = None) -> LSTMState:
        """Run the LSTM over the t real transitions of frames (b t+1 c h w) and actions (b t);
        t = 0 gives the zero (or the given) state."""
        b, t = actions.shape
        if state is None:
            state = self.reset_state(b, frames.device)
        if t == 0:
            return state
        *_, state = self(frames[:, :-1], actions, frames[:, 1:], state)
        return state

    def predict(
        self, frame: Tensor, action: Tensor, next_frame: Tensor, state: LSTMState | None
    ) -> tuple[Tensor, Tensor, LSTMState]:
        """One step: frame, next_frame (b c h w), action (b,) -> reward logits (b 3), end logits
        (b 2), new state (None: from zeros)."""
        rew, end, state = self(frame[:, None], action[:, None], next_frame[:, None], state)
        return rew[:, 0], end[:, 0], state

    def segment_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits (b T 3), (b T 2) over a segment batch (LSTM from zeros): frames
        (b, T+1, ...), action (b, T), optional frame_mask (b, T+1) (False: grey padding)."""
        x = pad_invalid_frames(to_model_space(batch["frames"]), batch.get("frame_mask"))
        actions = batch["action"]
        pairs = torch.cat([x[:, :-1], x[:, 1:]], dim=2)
        logits_rew, logits_end, _ = self._from_model_space(pairs, actions, None, actions.shape[0])
        return logits_rew, logits_end

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropies of sign(reward) + 1 and end on a segment batch: frames (b, T+1, ...),
        action, reward, end, mask (b, T); optional frame_mask (b, T+1) (False: grey padding)."""
        valid = batch["mask"].bool().clone()
        valid[:, : self.cfg.loss_burn_in] = False
        if not bool(valid.any()):
            raise ValueError("the batch has no valid transition after the loss burn-in")
        logits_rew, logits_end = self.segment_logits(batch)
        logits_rew, logits_end = logits_rew[valid], logits_end[valid]
        target_rew = batch["reward"][valid].sign().long() + 1
        target_end = batch["end"][valid].long()
        loss_rew = F.cross_entropy(logits_rew, target_rew)
        loss_end = F.cross_entropy(logits_end, target_end)
        loss = loss_rew + loss_end
        with torch.no_grad():
            pred_rew, pred_end = logits_rew.argmax(-1), logits_end.argmax(-1)
            metrics = {
                "loss_reward": loss_rew.item(),
                "loss_end": loss_end.item(),
                "reward_accuracy": (pred_rew == target_rew).float().mean().item(),
                "end_accuracy": (pred_end == target_end).float().mean().item(),
            }
        return loss, metrics
