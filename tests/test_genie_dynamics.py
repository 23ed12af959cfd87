"""Genie dynamics model (agents/genie/dynamics.py): shapes, temporal causality, the latent
action alignment (a_j conditions frame j+1, never frame j), MaskGIT training masks, decoding and
rollouts, and a smoke training on synthetic token videos that must be controllable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agents.genie.dynamics import DynamicsConfig, DynamicsModel

MODES = ["additive", "token"]


def tiny(mode: str = "additive", **kw) -> DynamicsModel:
    base = dict(vocab_size=8, tokens_per_frame=6, num_actions=4, d_model=32, n_layer=2)
    base.update(n_head=4, max_frames=6, maskgit_steps=4, action_mode=mode)
    base.update(kw)
    torch.manual_seed(0)
    model = DynamicsModel(DynamicsConfig(**base)).eval()
    # large action embeddings so "does change" checks are far above float noise
    nn.init.normal_(model.action_emb.weight, std=1.0)
    return model


def clip(b: int = 2, t: int = 5, n: int = 6, v: int = 8, a: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(v, (b, t, n), generator=g), torch.randint(a, (b, t - 1), generator=g)


@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_loss(mode: str) -> None:
    model = tiny(mode)
    tokens, actions = clip()
    assert model(tokens, actions).shape == (2, 5, 6, 8)
    loss, metrics = model.compute_loss({"tokens": tokens, "actions": actions})
    assert torch.isfinite(loss)
    assert {"masked_ce", "masked_acc", "masked_frac", "copy_acc"} <= set(metrics)
    with pytest.raises(ValueError):
        model(tokens, actions[:, 1:])  # actions must be (b, t-1)
    with pytest.raises(ValueError):
        DynamicsConfig(action_mode="concat")


@pytest.mark.parametrize("mode", MODES)
def test_temporal_causality(mode: str) -> None:
    """Frames <= j ignore later frames and the actions of transitions j, j+1, ..."""
    model = tiny(mode)
    tokens, actions = clip()
    with torch.no_grad():
        ref = model(tokens, actions)
        for j in range(4):
            tok2, act2 = tokens.clone(), actions.clone()
            tok2[:, j + 1 :] = (tok2[:, j + 1 :] + 3) % 8
            act2[:, j:] = (act2[:, j:] + 1) % 4
            out = model(tok2, act2)
            torch.testing.assert_close(out[:, : j + 1], ref[:, : j + 1], rtol=0, atol=1e-5)
            assert (out[:, j + 1 :] - ref[:, j + 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_action_alignment(mode: str) -> None:
    """a_j (transition j -> j+1) reaches frame j+1 and not frame j; a_{j+1} does not reach frame
    j+1. A model whose actions were shifted by one step, either way, fails one of these."""
    model = tiny(mode)
    tokens, actions = clip()
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, 1:] = True  # as in decoding: the predicted frames are unknown
    with torch.no_grad():
        ref = model(tokens, actions, mask)
        for j in range(3):
            changed = actions.clone()
            changed[:, j] = (changed[:, j] + 1) % 4
            out = model(tokens, changed, mask)
            assert (out[:, j + 1] - ref[:, j + 1]).abs().max() > 1e-3  # a_j -> frame j+1
            torch.testing.assert_close(out[:, j], ref[:, j], rtol=0, atol=1e-5)  # not frame j
            later = actions.clone()
            later[:, j + 1] = (later[:, j + 1] + 1) % 4
            out = model(tokens, later, mask)
            torch.testing.assert_close(out[:, j + 1], ref[:, j + 1], rtol=0, atol=1e-5)


def test_training_mask_and_masked_only_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frame 0 is never masked; only masked tokens of real frames are scored (the network is
    swapped for fixed logits so the check isolates the loss selection)."""
    model = tiny()
    tokens, actions = clip(b=4, t=5)
    logits = torch.randn(4, 5, 6, 8)
    seen: list[torch.Tensor] = []

    def fake_forward(tok, act, mask=None):
        seen.append(mask.clone())
        return logits

    monkeypatch.setattr(model, "forward", fake_forward)
    real = torch.ones(4, 4, dtype=torch.bool)
    real[0, 2:] = False  # row 0: frames 3, 4 are padding

    def loss_of(tok: torch.Tensor) -> float:
        batch = {"tokens": tok, "actions": actions, "mask": real}
        return float(model.compute_loss(batch, torch.Generator().manual_seed(5))[0])

    ref = loss_of(tokens)
    mask = seen[-1]
    assert not mask[:, 0].any() and mask[:, 1:].float().mean() >= 0.4
    scored = mask.clone()
    scored[0, 3:] = False
    for b, t, i in [tuple(ix.tolist()) for ix in torch.nonzero(~scored)[:6]]:
        tok2 = tokens.clone()
        tok2[b, t, i] = (tok2[b, t, i] + 1) % 8
        assert loss_of(tok2) == pytest.approx(ref, abs=1e-7)
    b, t, i = torch.nonzero(scored)[0].tolist()
    tok2 = tokens.clone()
    tok2[b, t, i] = (tok2[b, t, i] + 1) % 8
    assert loss_of(tok2) != pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_predict_next_and_rollout(mode: str) -> None:
    model = tiny(mode)
    tokens, actions = clip(b=3, t=4)
    g = torch.Generator().manual_seed(0)
    nxt = model.predict_next(tokens[:, :1], actions[:, 0], generator=g)
    assert nxt.shape == (3, 6) and nxt.dtype == torch.long
    assert int(nxt.min()) >= 0 and int(nxt.max()) < 8  # no mask id (8) left
    nxt = model.predict_next(tokens, actions[:, 0], past_actions=actions, temperature=2.0)
    assert int(nxt.max()) < 8
    with pytest.raises(ValueError):
        model.predict_next(tokens, actions[:, 0])  # a 4-frame context needs its actions
    # k = 9 > max_frames exercises the sliding context window
    k_actions = torch.randint(4, (3, 9), generator=g)
    roll = model.rollout(tokens, k_actions, context_actions=actions[:, :3], generator=g)
    assert roll.shape == (3, 9, 6) and int(roll.max()) < 8 and int(roll.min()) >= 0
    a = model.rollout(tokens[:, :1], k_actions[:, :3], temperature=0.0)
    b = model.rollout(tokens[:, :1], k_actions[:, :3], temperature=0.0)
    assert a.shape == (3, 3, 6) and torch.equal(a, b)


OFFSETS = torch.tensor([0, 1, 2, 3])  # action k adds k to every token (mod vocab); 0 = copy


def offset_videos(b: int, t: int, g: torch.Generator, vocab: int = 8):
    """Synthetic token videos: frame j+1 = (frame j + OFFSETS[a_j]) mod vocab, tokenwise."""
    frames = [torch.randint(vocab, (b, 16), generator=g)]
    actions = torch.randint(4, (b, t - 1), generator=g)
    for j in range(t - 1):
        frames.append((frames[-1] + OFFSETS[actions[:, j]][:, None]) % vocab)
    return torch.stack(frames, dim=1), actions


def test_smoke_training_beats_copy_and_is_controllable() -> None:
    """200 AdamW steps on offset videos (~10 s on one thread): held-out masked accuracy well
    above copying the previous frame, and next frames decoded with the true action far more
    accurate than with a wrong one. Seeds 0-2 all give masked_acc >= 0.99 vs copy 0.25-0.33,
    true-action 1.0 vs wrong-action 0.0."""
    torch.manual_seed(0)
    cfg = DynamicsConfig(vocab_size=8, tokens_per_frame=16, num_actions=4, d_model=32)
    cfg = DynamicsConfig(**{**vars(cfg), "n_layer": 2, "max_frames": 8, "maskgit_steps": 4})
    model = DynamicsModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens, actions = offset_videos(32, 3, g)
        loss, _ = model.compute_loss({"tokens": tokens, "actions": actions}, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    held = torch.Generator().manual_seed(1234)
    tokens, actions = offset_videos(256, 3, held)
    with torch.no_grad():
        _, metrics = model.compute_loss({"tokens": tokens, "actions": actions}, held)
    assert metrics["masked_acc"] > metrics["copy_acc"] + 0.3, metrics
    true = model.predict_next(tokens[:, :1], actions[:, 0], temperature=0.0)
    wrong = model.predict_next(tokens[:, :1], (actions[:, 0] + 1) % 4, temperature=0.0)
    acc_true = float((true == tokens[:, 1]).float().mean())
    acc_wrong = float((wrong == tokens[:, 1]).float().mean())
    assert acc_true > 0.8 and acc_true > acc_wrong + 0.5, (acc_true, acc_wrong)
