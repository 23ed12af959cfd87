"""EDM diffusion pieces (Karras et al. 2022) shared by every diffusion model in the framework.

Why here: the preconditioning, the training noise distribution, the Karras noise grid and the
Euler/Heun ODE samplers do not depend on what is denoised (DIAMOND's next frame, a future
video or action model); a model only supplies its network F and calls these.

The formulation (identity schedule, x_σ = x₀ + σ ε), as in DIAMOND (Alonso et al. 2024, App. C;
eloialonso/diamond `src/models/diffusion/denoiser.py`, `diffusion_sampler.py`):
    D(x_σ, σ) = c_skip(σ) x_σ + c_out(σ) F(c_in(σ) x_σ, c_noise(σ), ...)
    c_in = 1/√(σ² + σ_d²), c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_noise = ¼ ln σ
    loss = ‖F - (x₀ - c_skip x_σ)/c_out‖²        (unit-variance target for every σ)
    training σ: ln σ ~ N(P_mean, P_std²), clipped to [σ_min, σ_max]
Offset noise (a DIAMOND code detail, not in the paper): training adds one N(0, σ_off²) constant
per image and channel on top of σ ε, and the conditioners are computed at the effective level
σ_eff = √(σ² + σ_off²), at training *and* at sampling time (the sampler itself steps on σ).

Sampling integrates the probability-flow ODE dx/dσ = (x - D(x, σ))/σ on the Karras grid
σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, followed by σ_n = 0, with Euler
(1 network call per step) or Heun (2, Euler on the last step to σ = 0), optional "churn"
(stochastic sampling, EDM Alg. 2). DIAMOND samples with 3 Euler steps and no churn.

Shape legend: b batch, n samples, c channels, h w spatial (any trailing dims are allowed).

Deviations from the official code (eloialonso/diamond):
- Churn (off by default, as in DIAMOND): the network is called at the raised level σ̂ (EDM
  Alg. 2); the official sampler passes σ. Identical when `s_churn = 0`.
- The start noise of `edm_sample` defaults to σ_max·ε (Karras); the DIAMOND denoiser passes
  `init_noise_std = 1.0` (the official unit-variance start, `DenoiserConfig.init_noise_std`;
  `None` gives Karras'). Measured on an exact Gaussian denoiser: 3 Euler steps shrink the
  sample std to ~½ of the data's, and the unit start noise to ~1/10 (near-deterministic
  frames, fine for Atari-like dynamics).
- Randomness goes through an optional `torch.Generator` (reproducible imagination and metrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EDMConfig",
    "EDMSamplerConfig",
    "FourierFeatures",
    "add_noise",
    "edm_loss",
    "edm_target",
    "euler_sample",
    "heun_sample",
    "karras_sigmas",
    "precondition",
    "edm_sample",
    "sample_sigma_train",
]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]  # (x_noisy (b ...), sigma (b,)) -> D (b ...)
Method = Literal["euler", "heun"]


@dataclass
class EDMConfig:
    """Training-side EDM settings (DIAMOND `config/trainer.yaml` `denoiser.sigma_distribution`
    and `config/agent/default.yaml` `denoiser`)."""

    sigma_data: float = 0.5
    p_mean: float = -0.4  # mean of ln σ
    p_std: float = 1.2  # std of ln σ
    sigma_min: float = 2e-3  # training σ clip
    sigma_max: float = 20.0
    sigma_offset_noise: float = 0.3
    offset_noise: bool = True  # off: no offset noise and σ_eff = σ (official: sigma_offset_noise 0)

    @property
    def offset(self) -> float:
        """The offset-noise std actually used (0 when switched off)."""
        return self.sigma_offset_noise if self.offset_noise else 0.0


@dataclass
class EDMSamplerConfig:
    """Sampler settings (DIAMOND `world_model_env.diffusion_sampler`: 3 Euler steps, no churn)."""

    n_steps: int = 3
    sigma_min: float = 2e-3
    sigma_max: float = 5.0
    rho: float = 7.0
    method: str = "euler"  # "euler" | "heun" (a str, not a Literal: OmegaConf-structurable)
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0


def _expand(c: Tensor, like: Tensor) -> Tensor:
    """(b,) -> (b, 1, ..., 1) to broadcast against `like` (b ...); scalars pass through."""
    return c.reshape(c.shape + (1,) * (like.ndim - c.ndim)) if c.ndim else c


def precondition(
    sigma: Tensor, sigma_data: float = 0.5, sigma_offset_noise: float = 0.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_in, c_out, c_skip, c_noise), each shaped like `sigma`, at σ_eff = √(σ² + σ_off²)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    s = (sigma.pow(2) + sigma_offset_noise**2).sqrt()
    total = s.pow(2) + sigma_data**2
    c_in = total.rsqrt()
    c_skip = sigma_data**2 / total
    c_out = s * sigma_data * total.rsqrt()
    c_noise = s.log() / 4
    return c_in, c_out, c_skip, c_noise


def sample_sigma_train(
    n: int,
    cfg: EDMConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n,) training noise levels: ln σ ~ N(p_mean, p_std²), clipped to [sigma_min, sigma_max]."""
    if generator is not None:
        device = generator.device
    z = torch.randn(n, generator=generator, device=device)
    return (z * cfg.p_std + cfg.p_mean).exp().clamp(cfg.sigma_min, cfg.sigma_max)


def add_noise(
    x0: Tensor,
    sigma: Tensor,
    sigma_offset_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x₀ (b c ...) + one N(0, σ_off²) constant per (image, channel) + σ ε (σ: (b,))."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x = x0 + _expand(sigma.to(x0), x0) * eps
    if sigma_offset_noise > 0:
        shape = x0.shape[:2] + (1,) * (x0.ndim - 2)
        offset = torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x + sigma_offset_noise * offset
    return x


def edm_target(x0: Tensor, x_noisy: Tensor, c_skip: Tensor, c_out: Tensor) -> Tensor:
    """The F that makes D = c_skip x_σ + c_out F equal x₀: (x₀ - c_skip x_σ) / c_out."""
    return (x0 - _expand(c_skip, x0) * x_noisy) / _expand(c_out, x0)


def edm_loss(
    f_out: Tensor,
    x0: Tensor,
    x_noisy: Tensor,
    c_skip: Tensor,
    c_out: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean squared error of F against the EDM target over the rows where `mask` (b,) is True
    (every element of a valid row weighs the same, as `F.mse_loss(out[mask], target[mask])`).
    Returns 0 (with a graph to F) when no row is valid."""
    target = edm_target(x0, x_noisy, c_skip, c_out).detach()
    if mask is None:
        return F.mse_loss(f_out, target)
    if not bool(mask.any()):
        return f_out.sum() * 0.0
    return F.mse_loss(f_out[mask], target[mask])


def karras_sigmas(
    n_steps: int,
    sigma_min: float = 2e-3,
    sigma_max: float = 5.0,
    rho: float = 7.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n_steps + 1,) decreasing noise levels from σ_max to σ_min, then 0 (n_steps = 1: σ_max, 0)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    ramp = torch.linspace(0, 1, n_steps, device=device, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


@torch.no_grad()
def edm_sample(
    denoise_fn: DenoiseFn,
    shape: Sequence[int],
    sigmas: Tensor,
    method: Method = "euler",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    init_noise_std: float | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    x_init: Tensor | None = None,
) -> Tensor:
    """Integrate the probability-flow ODE from σ_0 = sigmas[0] to sigmas[-1] (= 0).

    `denoise_fn(x, sigma)` gets sigma as a (b,) tensor. The start is `x_init` if given, else
    `init_noise_std` · ε with `init_noise_std` = σ_0 by default (Karras); DIAMOND's sampler
    starts from unit-variance noise whatever σ_max (`init_noise_std=1`). Churn (s_churn > 0)
    raises σ by a factor (1 + γ) with fresh noise before each step inside [s_tmin, s_tmax].
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if generator is not None:
        device = generator.device
    sigmas = sigmas.to(device)
    n = len(sigmas) - 1
    if x_init is None:
        std = float(sigmas[0]) if init_noise_std is None else init_noise_std
        x = std * torch.randn(tuple(shape), generator=generator, device=device)
    else:
        x = x_init.to(device)
    b = x.shape[0]
    gamma_max = min(s_churn / max(n, 1), math.sqrt(2) - 1)
    for i in range(n):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device) * s_noise
            x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
        d = (x - denoise_fn(x, x.new_full((b,), sigma_hat))) / sigma_hat
        x_next = x + d * (nxt - sigma_hat)
        if method == "heun" and nxt > 0:
            d2 = (x_next - denoise_fn(x_next, x.new_full((b,), nxt))) / nxt
            x_next = x + (d + d2) / 2 * (nxt - sigma_hat)
        x = x_next
    return x


def euler_sample(denoise_fn: DenoiseFn, shape: Sequence[int], sigmas: Tensor, **kw) -> Tensor:
    """:func:`edm_sample` with Euler steps (one network call per step)."""
    return edm_sample(denoise_fn, shape, sigmas, "euler", **kw)


def heun_sample(denoise_fn: DenoiseFn, shape: Sequence[int], sigmas: Tensor, **kw) -> Tensor:
    """:func:`edm_sample` with Heun steps (two network calls per step, Euler on the last)."""
    return edm_sample(denoise_fn, shape, sigmas, "heun", **kw)


class FourierFeatures(nn.Module):
    """Noise-level embedding: [cos 2π c w, sin 2π c w] with frozen w ~ N(0, 1) (EDM/DIAMOND)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierFeatures needs an even dim, got {dim}")
        self.register_buffer("weight", torch.randn(dim // 2))

    def forward(self, c_noise: Tensor) -> Tensor:  # (b,) -> (b d)
        f = 2 * math.pi * c_noise.float()[:, None] * self.weight[None, :]
        return torch.cat([f.cos(), f.sin()], dim=-1)
