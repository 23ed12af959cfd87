"""DIAMOND model pieces: denoiser, reward/end model, imagination, held-out metrics.

The learning checks use a synthetic sprite task whose next frame is fully determined by the last
frame and the action: a red square on a 4x4 grid of cells moved up/down/left/right by the action
(blocked at the walls). A tiny denoiser (16x16 frames, ~250 steps, ~10 s on one core) must, on
held-out episodes, sample next frames with a higher PSNR than copying the last frame and lose
PSNR when given a wrong action. The slow test does the same at 32x32 with the CPU default sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.diamond.denoiser import (
    DenoiserConfig,
    DiamondDenoiser,
    quantize_model_space,
)
from agents.diamond.evaluation import (
    denoiser_metrics,
    denoiser_windows,
    other_actions,
    reward_end_metrics,
    rollout_rows,
)
from agents.diamond.imagination import DiamondImagination
from agents.diamond.reward_end import RewardEndConfig, RewardEndModel
from rl_core.actor_critic import (
    ActorCritic,
    ActorCriticConfig,
    ImaginationConfig,
    ImaginationLearner,
)
from rl_core.config import to_dataclass
from rl_core.data.segments import SegmentSampler
from rl_core.imagination_eval import psnr, rollout_error_curve

ROW_KEYS = {"metric", "model", "baseline", "value_model", "value_baseline"}

# ---- helpers ---------------------------------------------------------------------------------


def sprite_episodes(n: int, length: int, seed: int, size: int = 16) -> dict[str, torch.Tensor]:
    """A segment batch of n episodes of `length` transitions, frames (n, length+1, 3, size, size).

    A red square on a 4x4 grid over a dim blue background; action 0 up, 1 down, 2 left, 3 right
    (blocked at the walls). Reward +1 for stepping into the right column, -1 for bumping a wall;
    end when the square steps into the bottom-right cell."""
    rng = np.random.default_rng(seed)
    k = size // 4
    frames = np.zeros((n, length + 1, 3, size, size), np.float32)
    frames[:, :, 2] = 0.2
    actions = rng.integers(0, 4, (n, length))
    reward = np.zeros((n, length), np.float32)
    end = np.zeros((n, length), bool)
    for e in range(n):
        r, c = rng.integers(0, 3, 2)
        for t in range(length + 1):
            if t > 0:
                dr, dc = [(-1, 0), (1, 0), (0, -1), (0, 1)][actions[e, t - 1]]
                if 0 <= r + dr < 4 and 0 <= c + dc < 4:
                    reward[e, t - 1] = float(c + dc == 3 and c != 3)
                    r, c = r + dr, c + dc
                    end[e, t - 1] = (r, c) == (3, 3)
                else:
                    reward[e, t - 1] = -1.0
            frames[e, t, 0, k * r : k * r + k, k * c : k * c + k] = 1.0
    return {
        "frames": torch.from_numpy(frames),
        "action": torch.from_numpy(actions).long(),
        "reward": torch.from_numpy(reward),
        "end": torch.from_numpy(end),
        "mask": torch.ones(n, length, dtype=torch.bool),
    }


def windows(data: dict, b: int, t: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """b random windows of t transitions from the episodes in `data`."""
    n, length = data["action"].shape
    ep = torch.randint(0, n, (b, 1), generator=g)
    idx = torch.randint(0, length - t + 1, (b, 1), generator=g) + torch.arange(t + 1)
    out = {k: v[ep, idx[:, :t]] for k, v in data.items() if k != "frames"}
    return {"frames": data["frames"][ep, idx], **out}


def tiny_denoiser(**kw) -> DiamondDenoiser:
    cfg = dict(
        num_actions=4, image_size=16, channels=[8, 16], depths=[1, 1],
        attn_depths=[False, False], cond_dim=32,
    )  # fmt: skip
    cfg.update(kw)
    return DiamondDenoiser(DenoiserConfig(**cfg))


def tiny_reward_end(**kw) -> RewardEndModel:
    cfg = dict(
        num_actions=4, image_size=16, channels=[8, 8], depths=[1, 1],
        attn_depths=[False, False], cond_dim=32, lstm_dim=32,
    )  # fmt: skip
    cfg.update(kw)
    return RewardEndModel(RewardEndConfig(**cfg))


def wake_zero_inits(model: torch.nn.Module) -> None:
    """Give the zero-initialised weights (output convs, residual second convs, attention output)
    small values so that gradients reach every parameter from the first backward pass."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not bool(p.any()):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def assert_all_grads(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.any())]
    assert not missing, f"no gradient reached {missing}"


def train(module, data: dict, steps: int, b: int, t: int, lr: float, seed: int = 0) -> list:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss, _ = module.compute_loss(windows(data, b, t, g))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


# ---- denoiser ---------------------------------------------------------------------------------


def test_denoiser_shapes_loss_and_config():
    torch.manual_seed(0)
    m = tiny_denoiser()
    data = sprite_episodes(4, 12, seed=0)
    batch = windows(data, 3, m.cfg.seq_len, torch.Generator().manual_seed(0))
    loss, metrics = m.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert metrics["targets"] == m.cfg.num_autoregressive_steps + 1 == 2
    uint8 = {**batch, "frames": (batch["frames"] * 255).round().to(torch.uint8)}
    g = torch.Generator().manual_seed(3)
    a, _ = m.compute_loss(batch, generator=g)
    b, _ = m.compute_loss(uint8, generator=g.manual_seed(3))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    past, act = batch["frames"][:, :4], batch["action"][:, :4]
    d = m.denoise(past, act, torch.randn(3, 3, 16, 16), torch.tensor([0.1, 1.0, 5.0]))
    assert d.shape == (3, 3, 16, 16)
    assert d.min() >= -1 and d.max() <= 1
    assert m.denoise(past, act, torch.randn(3, 3, 16, 16), 2.0, quantize=False).shape == d.shape
    with pytest.raises(ValueError, match="past frames"):
        m.sample_next(past[:, 1:], act[:, 1:])
    with pytest.raises(ValueError, match="shorter than context"):
        m.compute_loss(windows(data, 2, 3, torch.Generator()))
    with pytest.raises(ValueError, match="divisible"):
        DenoiserConfig(cond_dim=30, context=4)
    # the config is OmegaConf-structurable (nested EDM and sampler settings)
    cfg = to_dataclass(
        {"channels": [8, 8], "edm": {"offset_noise": False}, "sampler": {"n_steps": 1}},
        DenoiserConfig,
    )
    assert cfg.edm.offset == 0.0 and cfg.sampler.n_steps == 1 and cfg.init_noise_std == 1.0


def test_denoiser_gradients_reach_every_parameter():
    torch.manual_seed(1)
    m = tiny_denoiser(mid_attention=True, attn_depths=[False, True])
    wake_zero_inits(m)
    batch = windows(sprite_episodes(4, 10, seed=1), 4, m.cfg.seq_len, torch.Generator())
    loss, _ = m.compute_loss(batch)
    loss.backward()
    assert_all_grads(m)
    assert "noise_emb.weight" in m.state_dict()  # frozen Fourier features: a buffer


def test_denoiser_masked_targets_do_not_change_the_loss():
    torch.manual_seed(2)
    m = tiny_denoiser(num_autoregressive_steps=2)
    wake_zero_inits(m)
    batch = windows(sprite_episodes(6, 12, seed=2), 6, m.cfg.seq_len, torch.Generator())
    batch["mask"][:3, 4:] = False  # rows 0-2: only the first target (frame 5) is real
    batch["mask"][3, 5:] = False
    g = torch.Generator()
    base, _ = m.compute_loss(batch, generator=g.manual_seed(0))
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["frames"][:3, 5:] = torch.rand_like(noisy["frames"][:3, 5:])
    noisy["frames"][3, 6:] = 0.0
    noisy["action"][:3, 4:] = 3 - noisy["action"][:3, 4:]
    changed, _ = m.compute_loss(noisy, generator=g.manual_seed(0))
    assert changed.item() == pytest.approx(base.item(), rel=1e-6)
    batch["mask"][:] = False
    with pytest.raises(ValueError, match="no valid target"):
        m.compute_loss(batch)


def test_denoiser_frame_mask_is_grey_padding():
    """Frames with frame_mask False are fed as the official padding (0 in [-1, 1]): their
    content does not matter, and they are not targets."""
    torch.manual_seed(3)
    m = tiny_denoiser(num_autoregressive_steps=0)
    wake_zero_inits(m)
    batch = windows(sprite_episodes(4, 10, seed=3), 4, 4, torch.Generator())
    batch["frame_mask"] = torch.ones(4, 5, dtype=torch.bool)
    batch["frame_mask"][:2, :2] = False
    batch["mask"][:2, :2] = False
    g = torch.Generator()
    base, _ = m.compute_loss(batch, generator=g.manual_seed(0))
    other = {k: v.clone() for k, v in batch.items()}
    other["frames"][:2, :2] = torch.rand_like(other["frames"][:2, :2])
    same, _ = m.compute_loss(other, generator=g.manual_seed(0))
    assert same.item() == pytest.approx(base.item(), rel=1e-6)
    grey = {k: v.clone() for k, v in batch.items()}
    grey["frames"][:2, :2] = 0.5
    del grey["frame_mask"]
    explicit, _ = m.compute_loss(grey, generator=g.manual_seed(0))
    assert explicit.item() == pytest.approx(base.item(), rel=1e-5)


def test_denoiser_autoregressive_step_conditions_on_own_prediction():
    """Official training: the second target sees the model's denoised (clamped, 8-bit) first
    prediction in place of the real frame."""
    torch.manual_seed(4)
    m = tiny_denoiser(num_autoregressive_steps=1)
    wake_zero_inits(m)
    calls = []
    original = m.network

    def recording(x_in, c_noise, past, actions):
        out = original(x_in, c_noise, past, actions)
        calls.append((x_in.detach(), c_noise.detach(), past.detach(), out.detach()))
        return out

    m.network = recording
    batch = windows(sprite_episodes(4, 10, seed=4), 3, 5, torch.Generator())
    m.compute_loss(batch)
    assert len(calls) == 2
    x_in, c_noise, _, f = calls[0]
    sd, off = m.cfg.edm.sigma_data, m.cfg.edm.offset
    sigma_eff = (4 * c_noise).exp()
    sigma2 = sigma_eff**2  # σ_eff² = σ² + σ_off²
    c_in = (sigma2 + sd**2).rsqrt()
    noisy = x_in / c_in[:, None, None, None]
    c_skip = sd**2 / (sigma2 + sd**2)
    c_out = sigma_eff * sd * c_in
    own = quantize_model_space(c_skip[:, None, None, None] * noisy + c_out[:, None, None, None] * f)
    fed = calls[1][2][:, -1] * sd  # past / σ_data, last frame
    torch.testing.assert_close(fed, own, atol=1e-5, rtol=0)
    real = batch["frames"][:, 4] * 2 - 1
    assert not torch.allclose(fed, real)
    torch.testing.assert_close(calls[1][2][:, :-1] * sd, batch["frames"][:, 1:4] * 2 - 1)
    assert off == 0.3


def test_sampler_output_range_and_8bit_levels():
    torch.manual_seed(5)
    m = tiny_denoiser()
    with torch.no_grad():  # a wild network output, to exercise the clamp
        for p in m.parameters():
            p.normal_(0, 0.5)
    batch = windows(sprite_episodes(3, 8, seed=5), 5, 4, torch.Generator())
    past, act = batch["frames"][:, :4], batch["action"][:, :4]
    for n, method in ((1, "euler"), (3, "euler"), (2, "heun")):
        x = m.sample_next(past, act, n_steps=n, method=method, generator=torch.Generator())
        assert x.shape == (5, 3, 16, 16)
        assert x.min() >= 0 and x.max() <= 1
        levels = x * 255
        assert torch.equal(levels, levels.round())
        assert not x.requires_grad
    g = torch.Generator()
    a = m.sample_next(past, act, generator=g.manual_seed(7))
    b = m.sample_next(past, act, generator=g.manual_seed(7))
    c = m.sample_next(past, act, generator=g.manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_left_padded_places_segments_as_official():
    sampler = SegmentSampler()
    rng = np.random.default_rng(0)
    lengths = [3, 7, 12]
    for i, n in enumerate(lengths):
        frames = np.full((n + 1, 4, 4, 3), 0, np.uint8)
        frames[:, 0, 0, 0] = np.arange(n + 1) + 10 * i  # frame id: step + 10 episode
        sampler.add_episode(frames, rng.integers(0, 4, n), np.ones(n), np.zeros(n, bool))
    out = sampler.sample_left_padded(400, 5, np.random.default_rng(1))
    fm, mask = out["frame_mask"], out["mask"]
    assert out["frames"].shape == (400, 6, 4, 4, 3) and mask.shape == (400, 5)
    np.testing.assert_array_equal(mask, fm[:, :-1])
    assert fm[:, -1].all() and fm[:, 1:].sum(1).min() >= 1  # ends inside the episode
    # padding only at the front, and every real frame is a contiguous run of one episode
    assert (np.diff(fm.astype(int), axis=1) >= 0).all()
    ids = out["frames"][:, :, 0, 0, 0].astype(int)
    for row, m_ in zip(ids, fm, strict=True):
        real = row[m_]
        assert (np.diff(real) == 1).all()
        episode, first = divmod(int(real[0]), 10)
        assert first == 0 or m_.all()  # a padded segment starts at its episode's first frame
        assert real[-1] % 10 <= lengths[episode]
    assert (~fm[:, 0]).mean() > 0.2  # short episodes force padding often
    assert (out["reward"][~mask] == 0).all() and (out["action"][~mask] == 0).all()
    torch.manual_seed(0)
    m = tiny_denoiser(image_size=4, channels=[8], depths=[1], attn_depths=[False])
    batch = {k: torch.as_tensor(v) for k, v in out.items()}
    batch["frames"] = batch["frames"].permute(0, 1, 4, 2, 3)
    loss, metrics = m.compute_loss(batch)
    assert torch.isfinite(loss) and metrics["targets"] == 2


# ---- reward/end model -------------------------------------------------------------------------


def test_reward_end_shapes_gradients_and_masking():
    torch.manual_seed(6)
    m = tiny_reward_end()
    wake_zero_inits(m)
    data = sprite_episodes(4, 10, seed=6)
    batch = windows(data, 4, 6, torch.Generator())
    rew, end, (h, c) = m(batch["frames"][:, :-1], batch["action"], batch["frames"][:, 1:])
    assert rew.shape == (4, 6, 3) and end.shape == (4, 6, 2) and h.shape == (1, 4, 32)
    loss, metrics = m.compute_loss(batch)
    assert torch.isfinite(loss)
    assert set(metrics) == {"loss_reward", "loss_end", "reward_accuracy", "end_accuracy"}
    loss.backward()
    assert_all_grads(m)
    # masked steps (past an episode end) change nothing
    batch["mask"][:2, 4:] = False
    base, _ = m.compute_loss(batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["frames"][:2, 5:] = torch.rand_like(other["frames"][:2, 5:])
    other["reward"][:2, 4:] = -1.0
    other["end"][:2, 4:] = True
    other["action"][:2, 4:] = 0
    assert m.compute_loss(other)[0].item() == pytest.approx(base.item(), rel=1e-6)
    # the loss burn-in leaves out the first steps
    m.cfg.loss_burn_in = 6
    with pytest.raises(ValueError, match="burn-in"):
        m.compute_loss(batch)


def test_reward_end_stepwise_predict_equals_sequence():
    torch.manual_seed(7)
    m = tiny_reward_end()
    batch = windows(sprite_episodes(3, 10, seed=7), 3, 6, torch.Generator())
    frames, actions = batch["frames"], batch["action"]
    with torch.no_grad():
        rew, end, final = m(frames[:, :-1], actions, frames[:, 1:])
        state = m.burn_in(frames[:, :3], actions[:, :2])
        for t in range(2, 6):
            r, e, state = m.predict(frames[:, t], actions[:, t], frames[:, t + 1], state)
            torch.testing.assert_close(r, rew[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(e, end[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state[0], final[0], atol=1e-5, rtol=1e-5)
    zero = m.reset_state(3)
    assert zero[0].shape == (1, 3, 32) and not zero[0].any()
    torch.testing.assert_close(m.burn_in(frames[:, :1], actions[:, :0])[0], zero[0])


def test_reward_end_loss_falls_on_sprite_rewards():
    """Reward sign (wall bumps, entering the right column) and the end cell follow from
    (x_t, a_t): 250 steps (~9 s) must cut the loss well below its start and beat chance."""
    torch.manual_seed(8)
    m = tiny_reward_end()
    data = sprite_episodes(48, 16, seed=8)
    losses = train(m, data, steps=250, b=16, t=6, lr=1e-3, seed=8)
    assert np.mean(losses[-15:]) < 0.2 * np.mean(losses[:5])
    rows = reward_end_metrics(m, sprite_episodes(16, 16, seed=9))
    assert all(set(r) == ROW_KEYS for r in rows)
    by = {r["metric"]: r for r in rows}
    assert (
        by["reward_nonzero_recall"]["value_model"]
        > 0.5
        > by["reward_nonzero_recall"]["value_baseline"]
    )
    assert by["reward_balanced_accuracy"]["value_model"] > 0.6


# ---- imagination ------------------------------------------------------------------------------


def test_imagination_reset_step_and_determinism():
    torch.manual_seed(9)
    den, rew = tiny_denoiser(), tiny_reward_end()
    den.train()
    rew.eval()
    data = sprite_episodes(3, 12, seed=9)
    frames, actions = data["frames"][:, :7], data["action"][:, :6]
    imag = DiamondImagination(den, rew, n_steps=2, seed=0)
    first = imag.reset(frames, actions)
    torch.testing.assert_close(first, frames[:, -1])
    torch.testing.assert_close(imag.frames, frames[:, -4:])
    torch.testing.assert_close(imag.actions[:, :3], actions[:, -3:])
    outs = []
    for a in ([0, 1, 2], [3, 3, 0], [1, 0, 2]):
        nxt, r, e = imag.step(torch.tensor(a))
        assert nxt.shape == (3, 3, 16, 16) and r.shape == (3,) and e.shape == (3,)
        assert e.dtype == torch.bool and set(r.tolist()) <= {-1.0, 0.0, 1.0}
        assert torch.equal(nxt * 255, (nxt * 255).round()) and not nxt.requires_grad
        torch.testing.assert_close(imag.frames[:, -1], nxt)
        assert imag.actions[:, -2].tolist() == a
        outs.append((nxt, r, e))
    assert den.training and not rew.training  # modes untouched
    again = DiamondImagination(den, rew, n_steps=2, seed=0)
    again.reset(frames, actions)
    for a, (nxt, r, e) in zip(([0, 1, 2], [3, 3, 0], [1, 0, 2]), outs, strict=True):
        n2, r2, e2 = again.step(torch.tensor(a))
        assert torch.equal(n2, nxt) and torch.equal(r2, r) and torch.equal(e2, e)
    other = DiamondImagination(den, rew, n_steps=2, seed=1)
    other.reset(frames, actions)
    assert not torch.equal(other.step(torch.tensor([0, 1, 2]))[0], outs[0][0])


def test_imagination_short_burn_in_is_padded():
    torch.manual_seed(10)
    imag = DiamondImagination(tiny_denoiser(), tiny_reward_end(), sample_reward_end=False)
    data = sprite_episodes(2, 4, seed=10)
    imag.reset(data["frames"][:, :2], data["action"][:, :1])  # 1 transition: 2 frames
    assert torch.equal(imag.frames[:, :2], torch.full_like(imag.frames[:, :2], 0.5))
    torch.testing.assert_close(imag.frames[:, 2:], data["frames"][:, :2])
    assert imag.actions[:, :2].eq(0).all() and torch.equal(imag.actions[:, 2], data["action"][:, 0])
    imag.reset(data["frames"][:, :1], data["action"][:, :0])  # no burn-in at all
    assert torch.equal(imag.frames[:, :3], torch.full_like(imag.frames[:, :3], 0.5))
    nxt, r, e = imag.step(torch.tensor([1, 2]))
    assert nxt.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="t\\+1"):
        imag.reset(data["frames"][:, :3], data["action"][:, :1])
    with pytest.raises(RuntimeError):
        DiamondImagination(tiny_denoiser(), tiny_reward_end()).step(torch.tensor([0, 0]))


def test_actor_critic_trains_in_diamond_imagination():
    torch.manual_seed(11)
    imag = DiamondImagination(tiny_denoiser(), tiny_reward_end(), n_steps=1, seed=0)
    ac = ActorCritic(4, (3, 16, 16), ActorCriticConfig(channels=[8, 8], lstm_dim=16))
    learner = ImaginationLearner(ac, imag, ImaginationConfig(horizon=3, burn_in=3, target_tau=0.0))
    sampler = SegmentSampler()
    data = sprite_episodes(2, 10, seed=11)
    for e in range(2):
        sampler.add_episode(
            (data["frames"][e].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
            data["action"][e].numpy(), data["reward"][e].numpy(), data["end"][e].numpy(),
        )  # fmt: skip
    ctx = sampler.sample_context(4, 3, np.random.default_rng(0))
    batch = {
        "frames": torch.as_tensor(ctx["frames"]).permute(0, 1, 4, 2, 3).float() / 255,
        "action": torch.as_tensor(ctx["action"]).long(),
    }
    loss, metrics = learner.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and np.isfinite(metrics["imagined_return"])
    assert all(p.grad is not None for p in ac.parameters())


# ---- evaluation -------------------------------------------------------------------------------


def test_evaluation_rows_and_curve():
    torch.manual_seed(12)
    den, rew = tiny_denoiser(), tiny_reward_end()
    data = sprite_episodes(6, 12, seed=12)
    batch = windows(data, 6, 5, torch.Generator())
    past, acts, target = denoiser_windows(batch, 4)
    assert past.shape == (12, 4, 3, 16, 16) and acts.shape == (12, 4) and target.shape[0] == 12
    batch["mask"][:3, -1] = False
    assert denoiser_windows(batch, 4)[0].shape[0] == 9
    rows = denoiser_metrics(den, batch)
    assert [r["metric"] for r in rows] == [
        "denoising_loss", "next_frame_psnr_db", "action_sensitivity_psnr_db",
    ]  # fmt: skip
    assert all(set(r) == ROW_KEYS and isinstance(r["value_model"], float) for r in rows)
    # the zero-initialised output layer: F is a constant bias, the loss is near E[target²]
    assert rows[0]["value_model"] == pytest.approx(rows[0]["value_baseline"], rel=0.2)
    assert rows[2]["value_baseline"] == 0.0
    imag = DiamondImagination(den, rew, n_steps=1, seed=0)
    curve = rollout_error_curve(imag, windows(data, 4, 9, torch.Generator()), horizon=6)
    assert curve["model"].shape == (6,) and curve["copy_last"].shape == (6,)
    assert (curve["model"] >= 0).all()
    assert [r["metric"] for r in rollout_rows(curve)] == [
        "rollout_mae_k1", "rollout_mae_k6", "rollout_mae_mean_k1-6",
    ]  # fmt: skip
    a = torch.randint(0, 4, (1000,))
    b = other_actions(a, 4)
    assert (a != b).all() and set(b.tolist()) == {0, 1, 2, 3}
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)


# ---- learning ---------------------------------------------------------------------------------


def test_denoiser_smoke_training_beats_copy_last():
    """250 steps at batch 32 (~15 s on one core): held-out sampled next frames (3 Euler steps)
    beat copy-last in PSNR, a wrong action costs PSNR, and the loss is far below a zero output.
    (At batch 16 the dynamics are learnt too, but after a seed-dependent number of steps.)"""
    torch.manual_seed(13)
    m = tiny_denoiser(channels=[16, 16], cond_dim=64, num_autoregressive_steps=0)
    train(m, sprite_episodes(64, 32, seed=13), steps=250, b=32, t=m.cfg.seq_len, lr=2e-3)
    held_out = windows(sprite_episodes(16, 32, seed=14), 64, 4, torch.Generator().manual_seed(1))
    by = {r["metric"]: r for r in denoiser_metrics(m, held_out)}
    assert by["denoising_loss"]["value_model"] < 0.1 * by["denoising_loss"]["value_baseline"]
    psnr_row = by["next_frame_psnr_db"]
    assert psnr_row["value_model"] > psnr_row["value_baseline"] + 5.0
    assert by["action_sensitivity_psnr_db"]["value_model"] > 3.0


@pytest.mark.slow
def test_denoiser_default_size_training_32px():
    """The CPU default sizes on 32x32 frames with the official autoregressive training step
    (segments of L + 1 transitions): 800 steps at batch 16 (~3 min on one core). Held-out
    next frames beat copy-last, the action matters, and an imagined rollout's first frames are
    closer to reality than copying the starting frame."""
    torch.manual_seed(15)
    m = DiamondDenoiser(DenoiserConfig(num_actions=4, image_size=32))
    assert m.cfg.seq_len == 5
    train(m, sprite_episodes(64, 32, seed=15, size=32), steps=800, b=16, t=5, lr=1e-3)
    held_out = sprite_episodes(16, 32, seed=16, size=32)
    batch = windows(held_out, 64, 5, torch.Generator().manual_seed(1))
    by = {r["metric"]: r for r in denoiser_metrics(m, batch)}
    psnr_row = by["next_frame_psnr_db"]
    assert psnr_row["value_model"] > psnr_row["value_baseline"] + 5.0
    assert by["action_sensitivity_psnr_db"]["value_model"] > 3.0
    imag = DiamondImagination(m, tiny_reward_end(image_size=32), seed=0)
    rollout = windows(held_out, 16, 11, torch.Generator().manual_seed(2))
    curve = rollout_error_curve(imag, rollout, horizon=8)
    assert (curve["model"][:4] < curve["copy_last"][:4]).all()
