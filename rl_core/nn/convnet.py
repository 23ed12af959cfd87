"""Small frame CNNs: an encoder to a low-resolution latent grid and its mirrored decoder.

Why: the world models (Δ-IRIS tokenizer, its I-token and frame CNNs, actor-critic encoders) all
need "image -> (latent_dim, h / 2^s, w / 2^s)" and back. The layout follows Δ-IRIS
`src/models/convnet.py`: a 3x3 stem, one block per level of `channels * mult[i]` channels, a
2x2 stride-2 convolution after levels with `down[i] = 1` (nearest upsampling + 3x3 conv in the
decoder), then GroupNorm, SiLU and a 3x3 conv to the output. Blocks are pre-activation residual
blocks (GN, SiLU, conv, GN, SiLU, conv + skip) or, with `residual=False`, a single GN-SiLU-conv
(about half the cost; for CPU-sized models).

GroupNorm uses gcd(32, channels) groups: 32 as the official code when channels allow, fewer for
the narrow CPU sizes.

Shape legend: b batch (any leading dims), c channels, h height, w width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def as_float_frames(frames: Tensor) -> Tensor:
    """uint8 frames -> float in [0, 1]; float frames pass through."""
    return frames.float().div(255.0) if frames.dtype == torch.uint8 else frames


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            group_norm(c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            group_norm(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.f(x)


def plain_block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check(mult: Sequence[int], down: Sequence[int]) -> None:
    if len(mult) != len(down) or not mult:
        raise ValueError(f"mult {list(mult)} and down {list(down)} must be non-empty, same length")


def _flat(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    return x.reshape(-1, *x.shape[-3:]), tuple(x.shape[:-3])


class FrameEncoder(nn.Module):
    """(..., in_channels, h, w) -> (..., latent_dim, h / 2^sum(down), w / 2^sum(down))."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        channels: int = 32,
        mult: Sequence[int] = (1, 1, 2),
        down: Sequence[int] = (1, 1, 0),
        residual: bool = True,
    ) -> None:
        super().__init__()
        _check(mult, down)
        block = ResidualBlock if residual else plain_block
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        c = channels
        for m, d in zip(mult, down):
            layers.append(block(c, m * channels))
            c = m * channels
            if d:
                layers.append(nn.Conv2d(c, c, 2, stride=2))
        layers += [group_norm(c), nn.SiLU(), nn.Conv2d(c, latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.downsampling = 2 ** sum(bool(d) for d in down)

    def forward(self, x: Tensor) -> Tensor:
        x, lead = _flat(x)
        y = self.net(x)
        return y.reshape(*lead, *y.shape[1:])


class FrameDecoder(nn.Module):
    """Mirror of `FrameEncoder`: (..., latent_dim, h', w') -> (..., out_channels, h, w)."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int,
        channels: int = 32,
        mult: Sequence[int] = (1, 1, 2),
        down: Sequence[int] = (1, 1, 0),
        residual: bool = True,
    ) -> None:
        super().__init__()
        _check(mult, down)
        block = ResidualBlock if residual else plain_block
        widths = [channels] + [m * channels for m in mult]  # widths[i + 1] is level i's width
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, widths[-1], 3, padding=1)]
        for i in reversed(range(len(mult))):
            if down[i]:
                layers.append(Upsample(widths[i + 1]))
            layers.append(block(widths[i + 1], widths[i]))
        layers += [group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x, lead = _flat(x)
        y = self.net(x)
        return y.reshape(*lead, *y.shape[1:])
