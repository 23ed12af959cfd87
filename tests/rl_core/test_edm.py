"""rl_core.nn.edm: preconditioning, noise distributions, the Karras grid and the ODE samplers.

The samplers are checked with the exact denoiser of a Gaussian data distribution, for which
the probability-flow ODE has a closed-form solution: with data N(μ, s²) per pixel,
D(x, σ) = (s² x + σ² μ)/(s² + σ²) and x(σ) = μ + (x(σ_max) - μ) √((s² + σ²)/(s² + σ_max²)).
"""

from __future__ import annotations

import math

import pytest
import torch

from rl_core.nn.edm import (
    EDMConfig,
    FourierFeatures,
    add_noise,
    edm_loss,
    edm_sample,
    edm_target,
    euler_sample,
    heun_sample,
    karras_sigmas,
    precondition,
    sample_sigma_train,
)

MU, S = 0.3, 0.5  # the Gaussian data distribution of the sampler tests


def gaussian_denoiser(mu: float = MU, s: float = S):
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return (s**2 * x + s2 * mu) / (s**2 + s2)

    return denoise


# ---- preconditioning --------------------------------------------------------------------------


def test_precondition_hand_computed():
    c_in, c_out, c_skip, c_noise = precondition(torch.tensor([0.5]), sigma_data=0.5)
    assert c_skip.item() == pytest.approx(0.5)  # 0.25 / 0.5
    assert c_in.item() == pytest.approx(math.sqrt(2))  # 1 / sqrt(0.5)
    assert c_out.item() == pytest.approx(0.25 / math.sqrt(0.5))  # 0.5 * 0.5 / sqrt(0.5)
    assert c_noise.item() == pytest.approx(math.log(0.5) / 4)
    # σ = 2, σ_d = 0.5: σ² + σ_d² = 4.25
    c_in, c_out, c_skip, c_noise = precondition(torch.tensor(2.0), sigma_data=0.5)
    assert c_skip.item() == pytest.approx(0.25 / 4.25)
    assert c_in.item() == pytest.approx(1 / math.sqrt(4.25))
    assert c_out.item() == pytest.approx(1.0 / math.sqrt(4.25))
    assert c_noise.item() == pytest.approx(math.log(2.0) / 4)


def test_precondition_offset_noise_uses_effective_sigma():
    # σ = 0.4 with σ_off = 0.3 is σ_eff = 0.5: the same conditioners as σ = 0.5 without offset
    with_offset = precondition(torch.tensor([0.4]), 0.5, sigma_offset_noise=0.3)
    plain = precondition(torch.tensor([0.5]), 0.5)
    for a, b in zip(with_offset, plain, strict=True):
        torch.testing.assert_close(a, b)
    # at σ -> 0 the offset keeps c_noise finite: ln(0.3) / 4
    *_, c_noise = precondition(torch.tensor([0.0]), 0.5, sigma_offset_noise=0.3)
    assert c_noise.item() == pytest.approx(math.log(0.3) / 4)


def test_precondition_identities():
    sd = 0.5
    sigma = torch.logspace(-3, 1.5, 50)
    c_in, c_out, c_skip, _ = precondition(sigma, sd)
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd**2), torch.ones(50))
    torch.testing.assert_close(c_skip + c_out**2 / sd**2, torch.ones(50))
    torch.testing.assert_close(c_out**2 / c_skip, sigma**2)
    torch.testing.assert_close(c_out, sigma * c_skip.sqrt())
    assert c_skip[0] > 0.99 and c_skip[-1] < 0.01  # skip dominates at low noise, F at high


def test_target_has_unit_variance():
    """EDM's point: for data of std σ_d, the training target has unit variance at every σ."""
    g = torch.Generator().manual_seed(0)
    sd = 0.5
    for sigma_value in (0.01, 0.3, 2.0, 15.0):
        x0 = sd * torch.randn(20_000, 1, 1, 1, generator=g)
        sigma = torch.full((20_000,), sigma_value)
        x_noisy = add_noise(x0, sigma, generator=g)
        _, c_out, c_skip, _ = precondition(sigma, sd)
        target = edm_target(x0, x_noisy, c_skip, c_out)
        assert target.std().item() == pytest.approx(1.0, abs=0.03)


def test_target_makes_denoiser_exact():
    """D = c_skip x + c_out F with F = target gives back x0, whatever σ; the loss is then 0."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    sigma = torch.tensor([0.002, 0.05, 0.5, 1.0, 5.0, 20.0])
    x_noisy = add_noise(x0, sigma, 0.3, generator=g)
    _, c_out, c_skip, _ = precondition(sigma, 0.5, 0.3)
    f = edm_target(x0, x_noisy, c_skip, c_out)
    d = c_skip[:, None, None, None] * x_noisy + c_out[:, None, None, None] * f
    torch.testing.assert_close(d, x0, atol=1e-5, rtol=1e-5)
    assert edm_loss(f, x0, x_noisy, c_skip, c_out).item() == pytest.approx(0.0, abs=1e-10)


def test_edm_loss_mask():
    g = torch.Generator().manual_seed(2)
    x0, xn, f = (torch.randn(4, 2, 3, 3, generator=g) for _ in range(3))
    _, c_out, c_skip, _ = precondition(torch.ones(4), 0.5)
    mask = torch.tensor([True, False, True, False])
    full = edm_loss(f, x0, xn, c_skip, c_out)
    masked = edm_loss(f, x0, xn, c_skip, c_out, mask)
    target = edm_target(x0, xn, c_skip, c_out)
    assert masked.item() == pytest.approx(((f - target)[mask] ** 2).mean().item(), rel=1e-6)
    assert full.item() != pytest.approx(masked.item())
    f2 = f.clone()
    f2[~mask] += 100.0  # invalid rows do not count
    assert edm_loss(f2, x0, xn, c_skip, c_out, mask).item() == pytest.approx(masked.item())
    f3 = f.clone().requires_grad_(True)
    none = edm_loss(f3, x0, xn, c_skip, c_out, torch.zeros(4, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and f3.grad is not None


def test_add_noise_offset_is_per_image_and_channel():
    g = torch.Generator().manual_seed(3)
    x0 = torch.zeros(4000, 2, 4, 4)
    only_offset = add_noise(x0, torch.zeros(4000), 0.3, generator=g)
    spread = only_offset.flatten(2)
    assert torch.allclose(spread, spread[..., :1].expand_as(spread))  # constant per (b, c)
    assert spread[:, :, 0].std().item() == pytest.approx(0.3, rel=0.05)
    both = add_noise(x0, torch.full((4000,), 0.4), 0.3, generator=g)
    assert both.std().item() == pytest.approx(0.5, rel=0.03)  # √(0.4² + 0.3²)


# ---- noise distributions and grid -------------------------------------------------------------


def test_sample_sigma_train_lognormal():
    g = torch.Generator().manual_seed(4)
    cfg = EDMConfig()
    sigma = sample_sigma_train(200_000, cfg, generator=g)
    assert sigma.shape == (200_000,)
    assert sigma.min().item() >= cfg.sigma_min and sigma.max().item() <= cfg.sigma_max
    log_sigma = sigma.log()
    assert log_sigma.mean().item() == pytest.approx(-0.4, abs=0.01)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.01)
    # the clip binds only at the top (ln 20 = 3.0 is 2.8 std above the mean): ~0.25 % of draws
    assert (sigma == cfg.sigma_max).float().mean().item() == pytest.approx(0.0025, abs=0.001)
    unclipped = EDMConfig(p_mean=0.5, p_std=0.3, sigma_min=1e-6, sigma_max=1e6)
    log_sigma = sample_sigma_train(200_000, unclipped, generator=g).log()
    assert log_sigma.mean().item() == pytest.approx(0.5, abs=0.005)
    assert log_sigma.std().item() == pytest.approx(0.3, abs=0.005)
    again = sample_sigma_train(5, cfg, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        again, sample_sigma_train(5, cfg, generator=torch.Generator().manual_seed(9))
    )


def test_offset_switch():
    assert EDMConfig().offset == 0.3
    assert EDMConfig(offset_noise=False).offset == 0.0


@pytest.mark.parametrize("n", [1, 3, 10, 50])
def test_karras_sigmas(n):
    s = karras_sigmas(n, sigma_min=2e-3, sigma_max=5.0, rho=7)
    assert s.shape == (n + 1,)
    assert s[0].item() == pytest.approx(5.0)
    assert s[-1].item() == 0.0
    if n > 1:
        assert s[-2].item() == pytest.approx(2e-3, rel=1e-4)
    assert bool((s[1:] < s[:-1]).all())


def test_karras_sigmas_midpoint_hand_computed():
    # 3 steps: the middle level is ((5^(1/7) + 0.002^(1/7)) / 2)^7 ≈ 0.2830
    mid = ((5 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert karras_sigmas(3)[1].item() == pytest.approx(mid, rel=1e-6)
    assert mid == pytest.approx(0.2830, abs=1e-3)
    with pytest.raises(ValueError):
        karras_sigmas(0)


# ---- samplers ---------------------------------------------------------------------------------


def test_heun_tracks_the_exact_ode_solution():
    """Same start x(σ_max) as the closed form: Heun's error falls as 1/n² and is small at 50."""
    g = torch.Generator().manual_seed(5)
    x_t = 80.0 * torch.randn(2000, 1, 2, 2, generator=g)
    exact = MU + (x_t - MU) * S / math.sqrt(S**2 + 80.0**2)
    errs = {}
    for n in (18, 50):
        sigmas = karras_sigmas(n, sigma_min=2e-3, sigma_max=80.0)
        out = heun_sample(gaussian_denoiser(), x_t.shape, sigmas, x_init=x_t)
        errs[n] = (out - exact).abs().max().item()
    assert errs[50] < 0.02
    assert errs[18] / errs[50] > 5  # second order: (50/18)² ≈ 7.7


def test_heun_recovers_gaussian_data():
    """From noise, ~20 Heun steps recover the data mean and std (σ_max = 80: the start matches
    the data's noised marginal; σ_max = 5: the closed form predicts the small prior bias)."""
    g = torch.Generator().manual_seed(6)
    out = edm_sample(
        gaussian_denoiser(), (20_000, 4), karras_sigmas(20, sigma_max=80.0), "heun", generator=g
    )
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, abs=0.03)
    out = heun_sample(gaussian_denoiser(), (20_000, 4), karras_sigmas(18), generator=g)
    scale = S / math.sqrt(S**2 + 5.0**2)  # x(0) = μ + (x(5) - μ) scale, x(5) ~ N(0, 25)
    assert out.mean().item() == pytest.approx(MU * (1 - scale), abs=0.01)
    assert out.std().item() == pytest.approx(5.0 * scale, abs=0.02)


def test_euler_three_steps_sane():
    """DIAMOND's default, 3 Euler steps from σ_max = 5: mean right, spread shrunk (about half
    the std for this Gaussian; a fifth of that again from DIAMOND's unit start noise), finite;
    Euler's error falls with the number of steps and Heun beats Euler at equal steps."""
    g = torch.Generator().manual_seed(7)
    out = euler_sample(gaussian_denoiser(), (20_000, 4), karras_sigmas(3), generator=g)
    assert torch.isfinite(out).all()
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert 0.15 < out.std().item() < 0.6
    unit = euler_sample(
        gaussian_denoiser(), (20_000, 4), karras_sigmas(3), generator=g, init_noise_std=1.0
    )
    assert unit.mean().item() == pytest.approx(MU, abs=0.03)
    assert unit.std().item() == pytest.approx(out.std().item() / 5, rel=0.1)
    x_t = 5.0 * torch.randn(2000, 1, 2, 2, generator=g)
    exact = MU + (x_t - MU) * S / math.sqrt(S**2 + 25.0)

    def err(method: str, n: int) -> float:
        sigmas = karras_sigmas(n)
        return (
            (edm_sample(gaussian_denoiser(), x_t.shape, sigmas, method, x_init=x_t) - exact)
            .abs()
            .mean()
            .item()
        )

    euler = [err("euler", n) for n in (3, 10, 40)]
    assert euler[0] > euler[1] > euler[2]
    assert err("heun", 10) < euler[1] / 2


def test_sampler_counts_calls_and_init_noise():
    calls = []

    def denoise(x, sigma):
        calls.append(sigma[0].item())
        return torch.zeros_like(x)

    edm_sample(denoise, (2, 3), karras_sigmas(3), "euler", generator=torch.Generator())
    assert len(calls) == 3 and calls[0] == pytest.approx(5.0)
    calls.clear()
    edm_sample(denoise, (2, 3), karras_sigmas(3), "heun", generator=torch.Generator())
    assert len(calls) == 5  # 2 per step, 1 on the last (to σ = 0)
    # the start noise: σ_0 by default (Karras), or the given std (DIAMOND: 1)
    seen = []

    def capture(x, sigma):
        seen.append(x.std().item())
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(7)
    edm_sample(capture, (50_000,), karras_sigmas(1), generator=g)
    edm_sample(capture, (50_000,), karras_sigmas(1), generator=g, init_noise_std=1.0)
    assert seen[0] == pytest.approx(5.0, rel=0.02) and seen[1] == pytest.approx(1.0, rel=0.02)
    with pytest.raises(ValueError):
        edm_sample(capture, (2,), karras_sigmas(1), "rk4")


def test_sampler_deterministic_and_churn():
    sigmas = karras_sigmas(5, sigma_max=20.0)
    a = euler_sample(
        gaussian_denoiser(), (3, 4), sigmas, generator=torch.Generator().manual_seed(8)
    )
    b = euler_sample(
        gaussian_denoiser(), (3, 4), sigmas, generator=torch.Generator().manual_seed(8)
    )
    torch.testing.assert_close(a, b)
    # churn: stochastic sampling still lands on the data distribution
    out = heun_sample(
        gaussian_denoiser(),
        (8000, 4),
        karras_sigmas(30, sigma_max=80.0),
        generator=torch.Generator().manual_seed(9),
        s_churn=10.0,
        s_tmin=0.05,
        s_tmax=50.0,
    )
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, abs=0.03)


def test_fourier_features():
    torch.manual_seed(0)
    ff = FourierFeatures(16)
    out = ff(torch.tensor([0.0, 0.25, -1.0]))
    assert out.shape == (3, 16)
    torch.testing.assert_close(out[0], torch.cat([torch.ones(8), torch.zeros(8)]))
    torch.testing.assert_close(out.pow(2)[:, :8] + out.pow(2)[:, 8:], torch.ones(3, 8))
    assert "weight" in ff.state_dict() and not list(ff.parameters())
    with pytest.raises(ValueError):
        FourierFeatures(7)
