"""agents.genie.lam: shapes, encoder causality, no target leak in the decoder, action/frame
alignment (fails if off by one either way), the agreement metric, and a smoke training on a dot
env whose motion is the true action."""

import numpy as np
import pytest
import torch

from agents.genie.lam import LAMConfig, LatentActionModel, latent_action_agreement

MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right (pixels)


def tiny(**kw) -> LatentActionModel:
    torch.manual_seed(0)
    base = dict(image_channels=1, image_size=16, patch=8, d_model=32, n_layer=2, n_head=4)
    base.update(num_latent_actions=4, latent_dim=8, max_frames=6)
    base.update(kw)
    return LatentActionModel(LAMConfig(**base)).eval()


def test_shapes_loss_and_uint8() -> None:
    model = tiny().train()
    frames = torch.randint(0, 256, (2, 5, 1, 16, 16), dtype=torch.uint8)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    loss, metrics = model.compute_loss({"frames": frames, "mask": mask})
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    for key in ("loss_recon", "psnr", "codebook_usage", "perplexity", "resets"):
        assert key in metrics
    assert model.infer_actions(frames).shape == (2, 4)
    assert model.encode(frames).shape == (2, 4, 8)
    pred = model.decode_next(frames[:, :4], torch.zeros(2, 4, dtype=torch.long))
    assert pred.shape == (2, 4, 1, 16, 16) and 0 <= pred.min() and pred.max() <= 1
    with pytest.raises(ValueError, match="frames"):
        model.infer_actions(torch.rand(2, 7, 1, 16, 16))  # more than max_frames
    coinrun = LAMConfig.coinrun()
    assert (coinrun.num_latent_actions, coinrun.patch, coinrun.d_model) == (6, 16, 512)


def test_encoder_latent_of_transition_j_sees_frames_up_to_j_plus_1_only() -> None:
    model = tiny()
    frames = torch.rand(2, 6, 1, 16, 16)
    z = model.encode(frames)
    for j in range(5):
        later = frames.clone()
        later[:, j + 2 :] = torch.rand_like(later[:, j + 2 :])  # frames > j+1 change
        torch.testing.assert_close(model.encode(later)[:, : j + 1], z[:, : j + 1])
        target = frames.clone()
        target[:, j + 1] = torch.rand_like(target[:, j + 1])  # frame j+1 changes
        assert (model.encode(target)[:, j] - z[:, j]).abs().max() > 1e-4
        torch.testing.assert_close(model.encode(target)[:, :j], z[:, :j])


def test_decoder_prediction_of_frame_j_plus_1_does_not_see_it() -> None:
    model = tiny()
    frames = torch.rand(2, 6, 1, 16, 16)
    codes = torch.randint(0, 4, (2, 5))
    pred = model.decode_next(frames[:, :5], codes)
    for j in range(5):
        changed = frames.clone()
        changed[:, j + 1 :] = torch.rand_like(changed[:, j + 1 :])  # the target and later
        torch.testing.assert_close(model.decode_next(changed[:, :5], codes)[:, j], pred[:, j])


def test_alignment_prediction_of_frame_j_plus_1_uses_action_j_not_j_plus_1() -> None:
    """Fails if action j were added to frame j+1 (the prediction of frame j+1 would ignore its
    own action, the open ports' bug) or to frame j-1 (it would see action j+1)."""
    model = tiny()
    frames = torch.rand(1, 5, 1, 16, 16)
    latents = model.vq.lookup(torch.randint(0, 4, (1, 4))).clone().requires_grad_(True)
    pred = model._decode(frames[:, :4], latents)  # (1, 4, c, h, w): frames 1..4
    for j in range(4):
        (grad,) = torch.autograd.grad(pred[:, j].sum(), latents, retain_graph=True)
        per_action = grad.abs().sum(-1)[0]  # (T,)
        assert per_action[j] > 1e-6, f"prediction of frame {j + 1} ignores action {j}"
        assert torch.all(per_action[j + 1 :] == 0), f"frame {j + 1} sees a later action"
    # the first prediction depends on action 0 alone (no padding action in front of it)
    (grad,) = torch.autograd.grad(pred[:, 0].sum(), latents)
    assert grad[0, 0].abs().sum() > 0 and grad[0, 1:].abs().sum() == 0
    # and through the codes: a different code for transition j changes frame j+1 only from j on
    codes = torch.zeros(1, 4, dtype=torch.long)
    model.vq.codebook.data = torch.randn_like(model.vq.codebook)  # distinct codes
    base = model.decode_next(frames[:, :4], codes)
    for j in range(4):
        other = codes.clone()
        other[0, j] = 1
        diff = (model.decode_next(frames[:, :4], other) - base).flatten(2).abs().amax(-1)[0]
        assert diff[j] > 1e-5 and torch.all(diff[:j] == 0)


def test_latent_action_agreement_hand_made() -> None:
    actions = np.array([0, 1, 2, 3] * 25)
    perfect = latent_action_agreement(np.array([5, 2, 7, 0] * 25), actions)  # relabelled
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["majority_accuracy"] == 1.0
    assert perfect["chance_accuracy"] == 0.25 and perfect["codes_used"] == 4
    rng = np.random.default_rng(0)
    a, c = rng.integers(0, 4, 20000), rng.integers(0, 6, 20000)
    independent = latent_action_agreement(torch.as_tensor(c), torch.as_tensor(a))
    assert independent["nmi"] < 0.01
    assert independent["majority_accuracy"] == pytest.approx(
        independent["chance_accuracy"], abs=0.02
    )
    constant = latent_action_agreement(np.zeros(100, dtype=int), actions)
    assert constant["nmi"] == 0.0 and constant["majority_accuracy"] == 0.25
    assert constant["codes_used"] == 1
    # two codes, half informative: NMI strictly between 0 and 1, accuracy 0.5 (= 2 of 4 actions)
    half = latent_action_agreement(actions // 2, actions)
    assert 0 < half["nmi"] < 1 and half["majority_accuracy"] == 0.5
    # sklearn's arithmetic NMI for this case: I = ln 2, H(c) = ln 2, H(a) = ln 4 -> 2/3
    assert half["nmi"] == pytest.approx(2 / 3)


def dot_clips(n: int, t: int, gen: torch.Generator, size: int = 16, dot: int = 4, step: int = 2):
    """A bright dot x dot square on black moved `step` pixels by one of 4 actions per step;
    random starts far enough from the border that it never leaves the frame (no wrap-around, so
    the action is the sign of the dot's displacement)."""
    lo, hi = t * step, size - dot - t * step
    pos = torch.randint(lo, hi + 1, (n, 2), generator=gen)
    actions = torch.randint(0, 4, (n, t), generator=gen)
    frames = torch.zeros(n, t + 1, 1, size, size)
    rows = torch.arange(n)
    for k in range(t + 1):
        if k:
            pos = pos + step * MOVES[actions[:, k - 1]]
        for dy in range(dot):
            for dx in range(dot):
                frames[rows, k, 0, pos[:, 0] + dy, pos[:, 1] + dx] = 1.0
    return frames, actions


def test_smoke_training_latent_actions_track_true_actions() -> None:
    """A few hundred AdamW steps: held-out codes carry information about the true action (NMI
    well above a shuffled-action control, majority-mapped accuracy above chance)."""
    torch.manual_seed(0)
    cfg = LAMConfig(image_channels=1, image_size=16, patch=8, d_model=64, n_layer=2, n_head=4)
    cfg.num_latent_actions, cfg.latent_dim, cfg.max_frames = 8, 16, 4
    model = LatentActionModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        frames, _ = dot_clips(32, 3, gen)
        loss, metrics = model.compute_loss({"frames": frames})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["codebook_usage"] >= 0.25 and metrics["perplexity"] > 1.5
    model.eval()
    frames, actions = dot_clips(256, 3, torch.Generator().manual_seed(123))
    codes = model.infer_actions(frames)
    got = latent_action_agreement(codes, actions)
    shuffled = actions.flatten()[torch.randperm(actions.numel(), generator=gen)]
    control = latent_action_agreement(codes.flatten(), shuffled)
    print(got, control)
    assert got["nmi"] > 0.1 and control["nmi"] < 0.05
    assert got["majority_accuracy"] > got["chance_accuracy"] + 0.1
