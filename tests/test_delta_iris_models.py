"""Δ-IRIS model pieces: tokenizer, world model, imagination, held-out metrics.

The learning check trains a tiny tokenizer on a synthetic sprite task whose next frame is partly
determined by the action (a red square the action moves) and partly random (a green square that
jumps to a random cell half the time): held-out reconstructions must beat copying the last frame
(the decoder uses x_t and a_t) and the same decoder fed shuffled tokens (the tokens carry the
random part).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from agents.delta_iris.tokenizer import Tokenizer, TokenizerConfig

# ---- helpers ---------------------------------------------------------------------------------


def sprite_episodes(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames (n, length+1, 3, 32, 32) float in {0, 1}, actions (n, length) long).

    Red 4x4 agent on an 8x8 grid: 0 left, 1 right, 2 down (wrapping to the top row). Green 8x8
    square on a 4x4 grid: jumps to a uniformly random cell with probability 1/2 each step.
    """
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, length + 1, 3, 32, 32), np.float32)
    actions = rng.integers(0, 3, (n, length))
    for e in range(n):
        r, c = rng.integers(0, 8, 2)
        gr, gc = rng.integers(0, 4, 2)
        for t in range(length + 1):
            if t > 0:
                a = actions[e, t - 1]
                if a == 0:
                    c = max(c - 1, 0)
                elif a == 1:
                    c = min(c + 1, 7)
                else:
                    r = (r + 1) % 8
                if rng.random() < 0.5:
                    gr, gc = rng.integers(0, 4, 2)
            frames[e, t, 1, 8 * gr : 8 * gr + 8, 8 * gc : 8 * gc + 8] = 1.0
            frames[e, t, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 1.0
    return torch.from_numpy(frames), torch.from_numpy(actions).long()


def segment_batch(frames: torch.Tensor, actions: torch.Tensor, seed: int = 0) -> dict:
    """A batch in the segment layout, with a reward/end and all transitions valid."""
    b, t = actions.shape
    g = torch.Generator().manual_seed(seed)
    reward = torch.randint(-1, 2, (b, t), generator=g).float()
    return {
        "frames": frames,
        "action": actions,
        "reward": reward,
        "end": torch.zeros(b, t, dtype=torch.bool),
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


def tiny_tokenizer_config(**kw) -> TokenizerConfig:
    base = dict(
        channels=16,
        residual=False,
        latent_dim=16,
        token_dim=16,
        codebook_size=64,
        frame_channels=8,
        frame_cnn_channels=8,
        action_channels=2,
    )
    return TokenizerConfig(**{**base, **kw})


def random_batch(b: int = 2, t: int = 3, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(b, t + 1, 3, size, size, generator=g)
    actions = torch.randint(0, 3, (b, t), generator=g)
    return segment_batch(frames, actions, seed)


# ---- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_shapes_and_finite_loss():
    torch.manual_seed(0)
    cfg = TokenizerConfig()
    tok = Tokenizer(cfg).eval()  # eval: `encode` must not move the codes it returns
    assert (cfg.latent_size, cfg.tokens_per_side, cfg.patch_size) == (8, 2, 4)
    batch = random_batch(b=2, t=3)
    prev, nxt = batch["frames"][:, 0], batch["frames"][:, 1]
    q, tokens, metrics = tok.encode(prev, batch["action"][:, 0], nxt)
    assert q.shape == (2, 4, 32) and tokens.shape == (2, 4) and tokens.dtype == torch.long
    assert "usage_entropy_bits" in metrics
    assert tok.decode(prev, batch["action"][:, 0], q).shape == (2, 3, 32, 32)
    assert torch.allclose(tok.embed(tokens), q, atol=1e-6)
    tok.train()
    loss, metrics = tok.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"mse", "l1", "worst_pixel", "commitment", "revived"} <= set(metrics)
    assert tok.tokenize(batch).shape == (2, 3, 4)


def test_tokenizer_paper_sizes_build_an_8x8_latent():
    cfg = TokenizerConfig(
        num_actions=6,
        image_size=64,
        channels=64,
        mult=[1, 1, 2, 2, 4],
        down=[1, 0, 1, 1, 0],
        latent_dim=64,
        token_dim=64,
        codebook_size=1024,
        frame_channels=16,
        frame_cnn_channels=32,
    )
    assert (cfg.latent_size, cfg.patch_size) == (8, 4)
    tok = Tokenizer(cfg).eval()
    assert 3.5e6 < sum(p.numel() for p in tok.parameters()) < 5e6  # official: 4.13 M
    x = torch.rand(1, 3, 64, 64)
    q, tokens, _ = tok.encode(x, torch.tensor([5]), x)
    assert tok.decode(x, torch.tensor([5]), q).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="perfect square"):
        TokenizerConfig(num_tokens=3)
    with pytest.raises(ValueError, match="latent"):
        TokenizerConfig(image_size=36)


def test_tokenizer_masked_transitions_do_not_change_the_loss():
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config())
    batch = random_batch(b=3, t=4)
    batch["mask"][0, 2:] = False  # right-padded like the segment sampler
    batch["mask"][2, 1:] = False
    other = {k: v.clone() for k, v in batch.items()}
    other["frames"][0, 3:] = torch.rand(2, 3, 32, 32)  # frames only masked transitions touch
    other["frames"][2, 2:] = 0.5
    other["action"][0, 2:] = (other["action"][0, 2:] + 1) % 3
    tok.eval()
    assert tok.compute_loss(batch)[0].item() == tok.compute_loss(other)[0].item()
    tok.train()  # also with the codebook update (same RNG state for both)
    a, b = copy.deepcopy(tok), copy.deepcopy(tok)
    torch.manual_seed(1)
    loss_a = a.compute_loss(batch)[0]
    torch.manual_seed(1)
    loss_b = b.compute_loss(other)[0]
    assert loss_a.item() == loss_b.item()
    assert torch.equal(a.codebook.codebook, b.codebook.codebook)
    with pytest.raises(ValueError, match="no valid transition"):
        tok.compute_loss({**batch, "mask": torch.zeros_like(batch["mask"])})


def test_tokenizer_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config(residual=True)).train()
    loss, _ = tok.compute_loss(random_batch(b=2, t=3))
    loss.backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(name.startswith("codebook") for name, _ in tok.named_parameters())


def test_tokenize_leaves_the_codebook_alone_in_training_mode():
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config()).train()
    before = tok.codebook.codebook.clone()
    tok.tokenize(random_batch())
    assert torch.equal(tok.codebook.codebook, before)


def test_tokenizer_smoke_training_beats_copy_last_and_shuffled_tokens():
    """~300 Adam steps (~25 s on one core) on the sprite task; held-out episodes."""
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config())
    train_frames, train_actions = sprite_episodes(64, 16, seed=0)
    test_frames, test_actions = sprite_episodes(16, 8, seed=1)
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    b, t = 8, 4
    for _ in range(300):
        ep = torch.randint(0, 64, (b,), generator=g)
        idx = torch.randint(0, 16 - t + 1, (b,), generator=g)[:, None] + torch.arange(t + 1)
        batch = segment_batch(
            train_frames[ep[:, None], idx], train_actions[ep[:, None], idx[:, :t]]
        )
        loss, metrics = tok.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    from agents.delta_iris.evaluation import tokenizer_metrics

    rows = tokenizer_metrics(tok.eval(), segment_batch(test_frames, test_actions))
    by_baseline = {r["baseline"]: r for r in rows if r["metric"] == "next_frame_mse"}
    copy_last, shuffled = by_baseline["copy_last"], by_baseline["shuffled_tokens"]
    assert copy_last["value_model"] < 0.25 * copy_last["value_baseline"]
    assert shuffled["value_model"] < 0.5 * shuffled["value_baseline"]
    entropy = next(r for r in rows if r["metric"] == "code_usage_entropy_bits")
    assert entropy["value_model"] > 2.0
