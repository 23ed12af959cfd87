"""DIAMOND's diffusion world model: a U-Net denoiser of the next frame given L past frames and
actions, trained and sampled with EDM (`rl_core.nn.edm`).

Official code: eloialonso/diamond `src/models/diffusion/{denoiser,inner_model}.py`,
`src/models/blocks.py` (re-written here, not copied). What the network sees:
  * the noisy next frame, scaled by c_in, stacked channel-wise with the L past frames divided
    by σ_data (conv_in takes (L + 1)·C channels);
  * a conditioning vector: Fourier features of c_noise = ¼ ln σ_eff PLUS the L past actions'
    embeddings (Embedding(num_actions, cond_dim / L) per step, flattened to cond_dim), through
    Linear-SiLU-Linear; it scales and shifts every adaptive GroupNorm of the U-Net.
  * U-Net: per level `depths[i]` ResBlocks of `channels[i]` (AdaGN-SiLU-conv, AdaGN-SiLU-conv
    with zero-initialised second conv, + skip), stride-2 conv down, nearest+conv up, skip
    concatenations as the official UNet, two self-attention ResBlocks in the middle, output
    GroupNorm-SiLU-conv with a zero-initialised weight. GroupNorm has max(1, c // 32) groups.
Frames are in [-1, 1] inside (the official convention; public tensors are [0, 1]); a frame
before an episode's start is the official padding, 0 in [-1, 1] (mid-grey).

Training (`compute_loss`, official `Denoiser.forward`): a segment of T >= L transitions gives
targets x_L..x_T; each target is noised with a σ from the log-normal, conditioned on the L
frames before it, and scored with the EDM loss on valid targets; then the frame is replaced by
the model's own one-shot denoised (clamped, 8-bit) prediction so the next target is conditioned
on it. T = L + num_autoregressive_steps reproduces the official segments (L + 1 + 1 frames).

Sampling (`sample_next`, official `DiffusionSampler`): Karras grid (σ_max 5, σ_min 2e-3, ρ 7)
then 0, Euler, 3 steps, start noise of unit std (the official code starts from N(0, 1) whatever
σ_max; `init_noise_std=None` gives Karras' σ_max·ε), every denoised estimate clamped to [-1, 1]
and quantised to 8 bits.

Sizes: the defaults are CPU smoke sizes (reference §6.4: 32x32 frames, channels [16, 32, 32],
depth 1, cond 128, L 4: ≈0.44 M parameters; channels [32]*4 gives ≈0.75 M). The paper's Atari
model (`config/agent/default.yaml`, `config/trainer.yaml`):
    context 4, cond_dim 256, channels [64, 64, 64, 64], depths [2, 2, 2, 2],
    attn_depths [false]*4 (mid attention on), num_autoregressive_steps 1 (train on 6 frames),
    EDM σ_data 0.5, offset noise 0.3, training ln σ ~ N(-0.4, 1.2²) clipped to [2e-3, 20],
    sampler 3 Euler steps -> ≈4.4 M parameters.

Shape legend: b batch, t time (transitions), l past frames (L), c h w a frame, d cond width.

Deviations from the official code (eloialonso/diamond):
- 8-bit quantisation rounds to the nearest level (official: `.byte()` truncation, which loses
  half a level on average and can drop an exact level through float error).
- `compute_loss` accepts any segment of T ≥ L transitions and predicts x_L..x_T in order (each
  one's prediction conditions the next); T = L + `num_autoregressive_steps` (`cfg.seq_len`)
  is the official segment (L + 1 + 1 frames).
- A target step with no valid row is skipped and the loss is the mean over the other steps
  (official: mean over all steps, NaN if one is fully padded).
- Padding is explicit: `frame_mask` False frames are fed as the grey frame, and decide which
  targets are real (official `mask_padding`); without `frame_mask`, a target is real when the
  transition into it is (`mask`), which is the same for right-padded segments.
- Segments: `SegmentSampler.sample_left_padded` reproduces the official `BatchSampler`
  placement (padding only before the episode start); the
  shared `SegmentSampler.sample` (uniform starts, right padding) also works, but then an
  episode's first L frames are never targets. The shared store keeps each episode's final
  observation as its last frame, so the frame after a termination is a target (official: the
  final observation is only in `info`, never a denoiser target).
- Self-attention uses `F.scaled_dot_product_attention` (same math).
- Defaults are CPU smoke sizes (channels [16, 32, 32], depths [1, 1, 1], cond 128: 0.44 M
  parameters); the paper's sizes (channels [64]*4, depths [2]*4, cond 256: 4.41 M with 18
  actions) are in the module docstring for the configs.
- Metrics: `loss_denoising` and `targets` (number of target steps with a valid row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rl_core.nn.convnet import Upsample, as_float_frames
from rl_core.nn.edm import (
    EDMConfig,
    EDMSamplerConfig,
    FourierFeatures,
    add_noise,
    edm_loss,
    edm_sample,
    karras_sigmas,
    precondition,
    sample_sigma_train,
)

GN_GROUP_SIZE = 32  # official: max(1, channels // 32) groups
GN_EPS = 1e-5
ATTN_HEAD_DIM = 8


# ----------------------------------------------------------------------------- frame helpers


def to_model_space(frames: Tensor) -> Tensor:
    """[0, 1] (or uint8) -> [-1, 1], the official convention inside the models."""
    return as_float_frames(frames) * 2.0 - 1.0


def quantize_model_space(x: Tensor) -> Tensor:
    """Clamp to [-1, 1] and snap to the 256 levels of an 8-bit frame (still in [-1, 1])."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


def to_unit_frames(x: Tensor) -> Tensor:
    """[-1, 1] -> 8-bit levels k / 255 in [0, 1] (exactly the values of a uint8 frame / 255)."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 255.0


def pad_invalid_frames(x: Tensor, frame_mask: Tensor | None) -> Tensor:
    """Frames (b, t, c, h, w) in [-1, 1] where `frame_mask` (b, t) is False become the official
    padding, 0 (a frame before the episode start)."""
    if frame_mask is None:
        return x
    return torch.where(frame_mask.to(x.device)[:, :, None, None, None], x, torch.zeros_like(x))


# ----------------------------------------------------------------------------- blocks


def num_groups(channels: int) -> int:
    return max(1, channels // GN_GROUP_SIZE)


class AdaGroupNorm(nn.Module):
    """GroupNorm without affine, then x (1 + scale) + shift from the conditioning vector."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.groups = num_groups(channels)
        self.linear = nn.Linear(cond_dim, 2 * channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # (b c h w), (b d)
        x = F.group_norm(x, self.groups, eps=GN_EPS)
        scale, shift = rearrange(self.linear(cond), "b (two c) -> two b c 1 1", two=2)
        return x * (1 + scale) + shift


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the h·w positions (heads of 8 channels), zero-initialised
    output. As the official block, the residual is added to the *normalised* input."""

    def __init__(self, channels: int, head_dim: int = ATTN_HEAD_DIM) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = nn.GroupNorm(num_groups(channels), channels, eps=GN_EPS)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:  # (b c h w)
        h, w = x.shape[-2:]
        x = self.norm(x)
        q, k, v = rearrange(
            self.qkv(x), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads
        )
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(y, "b n (h w) d -> b (n d) h w", h=h, w=w))


class ResBlock(nn.Module):
    """AdaGN-SiLU-conv3x3, AdaGN-SiLU-conv3x3 (zero-init), + (projected) input, then attention."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, attn: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.norm1 = AdaGroupNorm(c_in, cond_dim)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = AdaGroupNorm(c_out, cond_dim)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        self.attn = SelfAttention2d(c_out) if attn else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        r = self.proj(x)
        x = self.conv1(F.silu(self.norm1(x, cond)))
        x = self.conv2(F.silu(self.norm2(x, cond)))
        return self.attn(x + r)


class ResBlocks(nn.Module):
    """A chain of ResBlocks; with `skips`, block i first concatenates skips[i] to its input."""

    def __init__(self, c_ins: list[int], c_outs: list[int], cond_dim: int, attn: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(a, b, cond_dim, attn) for a, b in zip(c_ins, c_outs, strict=True)
        )

    def forward(
        self, x: Tensor, cond: Tensor, skips: list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        outs = []
        for i, block in enumerate(self.blocks):
            if skips is not None:
                x = torch.cat([x, skips[i]], dim=1)
            x = block(x, cond)
            outs.append(x)
        return x, outs


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        nn.init.orthogonal_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """The official conditional U-Net: level i has `depths[i]` blocks of `channels[i]`; the
    decoder concatenates every encoder output of its level (and the level's input) in reverse."""

    def __init__(
        self,
        cond_dim: int,
        depths: list[int],
        channels: list[int],
        attn_depths: list[bool],
        mid_attention: bool = True,
    ) -> None:
        super().__init__()
        if not len(depths) == len(channels) == len(attn_depths):
            raise ValueError(
                f"depths {depths}, channels {channels} and attn_depths {attn_depths} must have "
                "one entry per level"
            )
        self.n_down = len(channels) - 1
        down, up = [], []
        for i, n in enumerate(depths):
            c1, c2 = channels[max(0, i - 1)], channels[i]
            down.append(ResBlocks([c1] + [c2] * (n - 1), [c2] * n, cond_dim, attn_depths[i]))
            up.append(
                ResBlocks([2 * c2] * n + [c1 + c2], [c2] * n + [c1], cond_dim, attn_depths[i])
            )
        self.down_blocks = nn.ModuleList(down)
        self.up_blocks = nn.ModuleList(reversed(up))
        c = channels[-1]
        self.mid_blocks = ResBlocks([c, c], [c, c], cond_dim, attn=mid_attention)
        self.downsamples = nn.ModuleList([nn.Identity(), *(Downsample(ch) for ch in channels[:-1])])
        self.upsamples = nn.ModuleList(
            [nn.Identity(), *(Upsample(ch) for ch in reversed(channels[:-1]))]
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:  # (b c h w), (b d)
        h, w = x.shape[-2:]
        m = 2**self.n_down
        x = F.pad(x, (0, math.ceil(w / m) * m - w, 0, math.ceil(h / m) * m - h))
        skips = []
        for block, down in zip(self.down_blocks, self.downsamples, strict=True):
            x_in = down(x)
            x, outs = block(x_in, cond)
            skips.append([x_in, *outs])
        x, _ = self.mid_blocks(x, cond)
        for block, up, skip in zip(self.up_blocks, self.upsamples, reversed(skips), strict=True):
            x, _ = block(up(x), cond, skip[::-1])
        return x[..., :h, :w]


# ----------------------------------------------------------------------------- denoiser


@dataclass
class DenoiserConfig:
    """Sizes and EDM settings (defaults: CPU smoke sizes; paper sizes in the module docstring)."""

    num_actions: int = 4
    image_channels: int = 3
    image_size: int = 32  # informational (the U-Net pads to a multiple of 2^(levels-1))
    context: int = 4  # L past frames and actions
    cond_dim: int = 128  # divisible by `context`
    channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    depths: list[int] = field(default_factory=lambda: [1, 1, 1])
    attn_depths: list[bool] = field(default_factory=lambda: [False, False, False])
    mid_attention: bool = True
    num_autoregressive_steps: int = 1  # training segments hold context + this many transitions
    edm: EDMConfig = field(default_factory=EDMConfig)
    sampler: EDMSamplerConfig = field(default_factory=EDMSamplerConfig)
    init_noise_std: float | None = 1.0  # sampler start noise std (official 1; None: σ_max)

    def __post_init__(self) -> None:
        if self.cond_dim % self.context:
            raise ValueError(
                f"cond_dim={self.cond_dim} must be divisible by context={self.context} (one "
                "action embedding of cond_dim / context per past step)"
            )
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        if self.sampler.method not in ("euler", "heun"):
            raise ValueError(f"sampler.method must be 'euler' or 'heun', got {self.sampler.method}")

    @property
    def seq_len(self) -> int:
        """Transitions per training segment: L context steps + the autoregressive ones."""
        return self.context + self.num_autoregressive_steps


class DiamondDenoiser(nn.Module):
    """D(x_σ, σ | past L frames, past L actions) = c_skip x_σ + c_out F(...), and its sampler."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c, ch0 = cfg.cond_dim, cfg.image_channels, cfg.channels[0]
        self.noise_emb = FourierFeatures(d)
        self.action_emb = nn.Embedding(cfg.num_actions, d // cfg.context)
        self.cond_proj = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.conv_in = nn.Conv2d((cfg.context + 1) * c, ch0, 3, padding=1)
        self.unet = UNet(d, cfg.depths, cfg.channels, cfg.attn_depths, cfg.mid_attention)
        self.norm_out = nn.GroupNorm(num_groups(ch0), ch0, eps=GN_EPS)
        self.conv_out = nn.Conv2d(ch0, c, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    # ------------------------------------------------------------------ network

    def network(self, x_in: Tensor, c_noise: Tensor, past: Tensor, actions: Tensor) -> Tensor:
        """F: x_in = c_in x_σ (b c h w), c_noise (b,), past = frames / σ_data (b l c h w) in
        model space, actions (b l) -> (b c h w)."""
        b = x_in.shape[0]
        act = rearrange(self.action_emb(actions.long()), "b l e -> b (l e)")
        cond = self.cond_proj(self.noise_emb(c_noise.expand(b)) + act)
        x = torch.cat([rearrange(past, "b l c h w -> b (l c) h w"), x_in], dim=1)
        x = self.unet(self.conv_in(x), cond)
        return self.conv_out(F.silu(self.norm_out(x)))

    def _check_context(self, past: Tensor, actions: Tensor) -> None:
        L = self.cfg.context
        if past.ndim != 5 or past.shape[1] != L or actions.shape != past.shape[:2]:
            raise ValueError(
                f"need past frames (b, {L}, c, h, w) and actions (b, {L}); got "
                f"{tuple(past.shape)} and {tuple(actions.shape)}"
            )

    def _d(self, past_model: Tensor, actions: Tensor, x_noisy: Tensor, sigma: Tensor) -> Tensor:
        """Unquantised D in model space; past_model (b l c h w) in [-1, 1]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x_noisy.device)
        sigma = sigma.expand(x_noisy.shape[0]) if sigma.ndim == 0 else sigma
        c_in, c_out, c_skip, c_noise = precondition(
            sigma, self.cfg.edm.sigma_data, self.cfg.edm.offset
        )
        f = self.network(
            x_noisy * c_in[:, None, None, None],
            c_noise,
            past_model / self.cfg.edm.sigma_data,
            actions,
        )
        return c_skip[:, None, None, None] * x_noisy + c_out[:, None, None, None] * f

    def denoise(
        self,
        past_frames: Tensor,
        past_actions: Tensor,
        x_noisy: Tensor,
        sigma: Tensor | float,
        quantize: bool = True,
    ) -> Tensor:
        """D(x_noisy, σ): past_frames (b l c h w) in [0, 1] (or uint8), past_actions (b l),
        x_noisy (b c h w) and the result in model space ([-1, 1] data + noise); σ (b,) or scalar.
        `quantize`: clamp and snap to 8-bit levels as the official `denoise`."""
        self._check_context(past_frames, past_actions)
        d = self._d(to_model_space(past_frames), past_actions, x_noisy, sigma)
        return quantize_model_space(d) if quantize else d

    @torch.no_grad()
    def sample_next(
        self,
        past_frames: Tensor,
        past_actions: Tensor,
        n_steps: int | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample x_{t+1} (b c h w) in [0, 1], on 8-bit levels, from the L past frames (b l c h w)
        in [0, 1] and the L past actions (b l), the last one taken at the last frame."""
        self._check_context(past_frames, past_actions)
        s = self.cfg.sampler
        device = self.device
        past = to_model_space(past_frames.to(device))
        actions = past_actions.to(device)
        sigmas = karras_sigmas(n_steps or s.n_steps, s.sigma_min, s.sigma_max, s.rho, device=device)
        b, _, c, h, w = past.shape

        def denoise_fn(x: Tensor, sigma: Tensor) -> Tensor:
            return quantize_model_space(self._d(past, actions, x, sigma))

        x = edm_sample(
            denoise_fn,
            (b, c, h, w),
            sigmas,
            method or s.method,
            generator=generator,
            device=device,
            init_noise_std=self.cfg.init_noise_std,
            s_churn=s.s_churn,
            s_tmin=s.s_tmin,
            s_tmax=s.s_tmax,
            s_noise=s.s_noise,
        )
        return to_unit_frames(x)

    # ------------------------------------------------------------------ training

    def compute_loss(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """EDM loss on a segment batch: frames (b, T+1, c, h, w) in [0, 1] (or uint8), action
        (b, T), mask (b, T) (True: a real transition), optional frame_mask (b, T+1) (False:
        padding, fed as the official grey frame; when given it decides which targets are real,
        so an episode's first frame is a target as in the official code). T >= L; targets are
        x_L..x_T, each conditioned on the L frames before it, the earlier targets replaced by
        the model's own denoised prediction (official autoregressive training steps)."""
        L, edm = self.cfg.context, self.cfg.edm
        action = batch["action"].long()
        frame_mask = batch.get("frame_mask")
        x = pad_invalid_frames(to_model_space(batch["frames"]), frame_mask).clone()
        b, t = action.shape
        # a target is valid when it is a real frame: frame_mask (official `mask_padding`), or
        # else the transition into it is real (the same thing for right-padded segments)
        target_ok = (
            frame_mask.bool()[:, 1:] if frame_mask is not None else batch["mask"].bool()
        ).to(x.device)
        if t < L:
            raise ValueError(f"segments of {t} transitions are shorter than context={L}")
        if x.shape[:2] != (b, t + 1):
            raise ValueError(f"frames {tuple(x.shape)} must be (b, T+1, ...) for action {(b, t)}")
        device = x.device if generator is None else generator.device
        losses = []
        for j in range(L, t + 1):  # target frame index
            x0, valid = x[:, j], target_ok[:, j - 1]
            sigma = sample_sigma_train(b, edm, generator, device).to(x.device)
            noisy = add_noise(x0, sigma, edm.offset, generator)
            c_in, c_out, c_skip, c_noise = precondition(sigma, edm.sigma_data, edm.offset)
            f = self.network(
                noisy * c_in[:, None, None, None],
                c_noise,
                x[:, j - L : j] / edm.sigma_data,
                action[:, j - L : j],
            )
            if bool(valid.any()):
                losses.append(edm_loss(f, x0, noisy, c_skip, c_out, valid))
            if j < t:  # condition the next target on this prediction
                d = c_skip[:, None, None, None] * noisy + c_out[:, None, None, None] * f.detach()
                x[:, j] = quantize_model_space(d)
        if not losses:
            raise ValueError("the batch has no valid target frame (mask is all False)")
        loss = torch.stack(losses).mean()
        return loss, {"loss_denoising": loss.item(), "targets": float(len(losses))}
