"""Δ-IRIS model pieces: tokenizer, world model, imagination, held-out metrics.

The learning checks use a synthetic sprite task whose next frame is partly determined by the
action (a red square the action moves) and partly random (a green square that jumps to a random
cell a quarter of the time). A tiny tokenizer (300 steps, ~25 s on one core) must beat, on
held-out episodes, copying the last frame (its decoder uses x_t and a_t) and the same decoder fed
shuffled tokens (the tokens carry the random part). The slow test then trains a tiny world model
on its tokens: Δ-token CE below the unigram entropy, accuracy above the majority code, reward
balanced accuracy above 0.8, and 1..4-step imagined frames closer to reality than copy-last.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from agents.delta_iris.evaluation import (
    imagination_metrics,
    tokenizer_metrics,
    world_model_metrics,
)
from agents.delta_iris.imagination import DeltaIrisImagination
from agents.delta_iris.tokenizer import Tokenizer, TokenizerConfig
from agents.delta_iris.world_model import WorldModel, WorldModelConfig

# ---- helpers ---------------------------------------------------------------------------------


def sprite_episodes(n: int, length: int, seed: int, jump_prob: float = 0.25) -> dict:
    """A segment batch of n episodes of `length` transitions, frames (n, length+1, 3, 32, 32).

    Two 8x8 squares on a 4x4 grid of cells. Red agent: action 0 left, 1 right (both stop at
    the wall), 2 down (wrapping to the top row). Green square: jumps to a uniformly random cell
    with probability `jump_prob` each step. Reward +1 for stepping right into the last column,
    -1 for wrapping around: both follow from (x_t, a_t), so the world model must read the
    agent's cell from the I-token.
    """
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, length + 1, 3, 32, 32), np.float32)
    actions = rng.integers(0, 3, (n, length))
    reward = np.zeros((n, length), np.float32)
    for e in range(n):
        r, c, gr, gc = rng.integers(0, 4, 4)
        for t in range(length + 1):
            if t > 0:
                a = actions[e, t - 1]
                if a == 0:
                    c = max(c - 1, 0)
                elif a == 1:
                    reward[e, t - 1] = float(c == 2)
                    c = min(c + 1, 3)
                else:
                    reward[e, t - 1] = -float(r == 3)
                    r = (r + 1) % 4
                if rng.random() < jump_prob:
                    gr, gc = rng.integers(0, 4, 2)
            frames[e, t, 1, 8 * gr : 8 * gr + 8, 8 * gc : 8 * gc + 8] = 1.0
            frames[e, t, 0, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] = 1.0
    return {
        "frames": torch.from_numpy(frames),
        "action": torch.from_numpy(actions).long(),
        "reward": torch.from_numpy(reward),
        "end": torch.zeros(n, length, dtype=torch.bool),
        "mask": torch.ones(n, length, dtype=torch.bool),
    }


def sample_segments(data: dict, b: int, t: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """b random windows of t transitions from the episodes in `data`."""
    n, length = data["action"].shape
    ep = torch.randint(0, n, (b, 1), generator=g)
    idx = torch.randint(0, length - t + 1, (b, 1), generator=g) + torch.arange(t + 1)
    out = {k: v[ep, idx[:, :t]] for k, v in data.items() if k != "frames"}
    return {"frames": data["frames"][ep, idx], **out}


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
    """Random frames/actions/rewards in the segment layout, all transitions valid."""
    g = torch.Generator().manual_seed(seed)
    return {
        "frames": torch.rand(b, t + 1, 3, size, size, generator=g),
        "action": torch.randint(0, 3, (b, t), generator=g),
        "reward": torch.randint(-1, 2, (b, t), generator=g).float(),
        "end": torch.rand(b, t, generator=g) < 0.2,
        "mask": torch.ones(b, t, dtype=torch.bool),
    }


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


def tiny_world_model_config(**kw) -> WorldModelConfig:
    base = dict(
        codebook_size=64,
        d_model=64,
        n_layer=2,
        n_head=4,
        max_blocks=8,
        frame_cnn_channels=8,
        frame_cnn_latent=1,  # 8 * 8 * 1 = d_model: no projection
        residual=False,
    )
    return WorldModelConfig(**{**base, **kw})


def with_tokens(batch: dict, tokenizer: Tokenizer) -> dict:
    return {**batch, "tokens": tokenizer.tokenize(batch)}


# ---- world model -----------------------------------------------------------------------------


def test_world_model_shapes_and_finite_loss():
    torch.manual_seed(0)
    tok, wm = Tokenizer(), WorldModel()
    batch = with_tokens(random_batch(b=2, t=5), tok)
    out = wm(batch["frames"][:, :-1], batch["action"], batch["tokens"])
    assert out["latents"].shape == (2, 5, 4, 256)
    assert out["rewards"].shape == (2, 5, 3) and out["ends"].shape == (2, 5, 2)
    loss, metrics = wm.compute_loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss_latents", "loss_rewards", "loss_ends", "latent_accuracy"} <= set(metrics)
    assert abs(metrics["loss_latents"] - np.log(256)) < 0.5  # near-uniform at initialisation
    with pytest.raises(ValueError, match="max_blocks"):  # 17 steps > 16 blocks
        wm(
            torch.rand(1, 17, 3, 32, 32),
            torch.zeros(1, 17, dtype=torch.long),
            torch.zeros(1, 17, 4, dtype=torch.long),
        )


def test_world_model_paper_sizes():
    cfg = WorldModelConfig(
        num_actions=6,
        codebook_size=1024,
        image_size=64,
        d_model=256,
        n_layer=3,
        n_head=4,
        max_blocks=26,
        frame_cnn_channels=32,
        frame_cnn_latent=4,
        mult=[1, 1, 2, 2, 4],
        down=[1, 0, 1, 1, 0],
    )
    wm = WorldModel(cfg)
    assert isinstance(wm.frame_proj, torch.nn.Identity)  # 8 * 8 * 4 = 256 as official
    assert abs(sum(p.numel() for p in wm.parameters()) - 3.58e6) < 0.01e6  # official: 3.58 M


def test_world_model_masked_transitions_do_not_change_the_loss():
    torch.manual_seed(0)
    tok, wm = Tokenizer(tiny_tokenizer_config()), WorldModel(tiny_world_model_config())
    batch = with_tokens(random_batch(b=3, t=5), tok)
    batch["mask"][0, 3:] = False
    batch["mask"][1, 1:] = False
    other = {k: v.clone() for k, v in batch.items()}
    other["frames"][0, 4:] = 0.3  # frames x_4, x_5: only masked steps (or nothing) see them
    other["action"][1, 1:] = (other["action"][1, 1:] + 1) % 3
    other["tokens"][0, 3:] = 7
    other["reward"][1, 1:] = 5.0
    other["end"][0, 3:] = True
    loss_a, metrics_a = wm.compute_loss(batch)
    loss_b, metrics_b = wm.compute_loss(other)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert metrics_a["latent_accuracy"] == metrics_b["latent_accuracy"]


def test_world_model_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config())
    wm = WorldModel(tiny_world_model_config(d_model=32, residual=True))  # 64 -> 32 projection
    assert isinstance(wm.frame_proj, torch.nn.Linear)
    loss, _ = wm.compute_loss(with_tokens(random_batch(b=2, t=4), tok))
    loss.backward()
    for name, p in wm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- imagination -----------------------------------------------------------------------------


def make_imagination(max_blocks: int = 6, seed: int = 0) -> DeltaIrisImagination:
    torch.manual_seed(seed)
    tok = Tokenizer(tiny_tokenizer_config())
    wm = WorldModel(tiny_world_model_config(max_blocks=max_blocks))
    with torch.no_grad():  # sharper heads than at initialisation, so sampling matters
        for p in wm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DeltaIrisImagination(tok, wm)


def test_imagination_reset_and_step_shapes():
    im = make_imagination()
    batch = random_batch(b=3, t=2)
    frame = im.reset(batch["frames"], batch["action"])
    assert torch.equal(frame, batch["frames"][:, -1])
    for _ in range(3):
        frame, reward, end = im.step(torch.randint(0, 3, (3,)))
        assert frame.shape == (3, 3, 32, 32) and frame.min() >= 0 and frame.max() <= 1
        assert reward.shape == (3,) and reward.dtype == torch.float32
        assert set(reward.tolist()) <= {-1.0, 0.0, 1.0}
        assert end.shape == (3,) and end.dtype == torch.bool
    # no burn-in at all: start from a single frame
    frame = im.reset(batch["frames"][:, :1], batch["action"][:, :0])
    assert im.step(torch.zeros(3, dtype=torch.long))[0].shape == (3, 3, 32, 32)


def test_imagination_matches_the_teacher_forced_world_model():
    """With argmax sampling, each cached step must pick what a full forward over the whole
    imagined sequence predicts, and decode its tokens from the previous imagined frame."""
    im = make_imagination()
    im.temperature = 0.0
    tok, wm = im.tokenizer, im.world_model
    batch = random_batch(b=3, t=2)
    frames = [batch["frames"][:, :-1], im.reset(batch["frames"], batch["action"])[:, None]]
    actions, tokens = [batch["action"]], [tok.tokenize(batch)]
    for _ in range(3):
        a = torch.randint(0, 3, (3,))
        nxt, reward, end = im.step(a)
        actions.append(a[:, None])
        tokens.append(im.last_tokens[:, None])
        with torch.no_grad():
            out = wm(torch.cat(frames, 1), torch.cat(actions, 1), torch.cat(tokens, 1))
            decoded = tok.decode(frames[-1][:, 0], a, tok.embed(im.last_tokens))
        assert torch.equal(out["latents"][:, -1].argmax(-1), im.last_tokens)
        assert torch.equal(out["rewards"][:, -1].argmax(-1).float() - 1, reward)
        assert torch.equal(out["ends"][:, -1].argmax(-1).bool(), end)
        assert torch.allclose(decoded.clamp(0, 1), nxt, atol=1 / 255)
        frames.append(nxt[:, None])


def test_imagination_is_deterministic_under_a_fixed_seed():
    im = make_imagination()
    batch = random_batch(b=4, t=2)
    actions = torch.randint(0, 3, (4, 4))

    def run():
        torch.manual_seed(123)
        im.reset(batch["frames"], batch["action"])
        return [im.step(a) for a in actions.t()]

    first, second = run(), run()
    for (f1, r1, e1), (f2, r2, e2) in zip(first, second):
        assert torch.equal(f1, f2) and torch.equal(r1, r2) and torch.equal(e1, e2)
    torch.manual_seed(7)
    im.reset(batch["frames"], batch["action"])
    other = [im.step(a) for a in actions.t()]
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_imagination_refuses_to_exceed_max_blocks():
    im = make_imagination(max_blocks=4)
    batch = random_batch(b=2, t=5)
    with pytest.raises(ValueError, match="max_blocks"):
        im.reset(batch["frames"], batch["action"])  # 5 burn-in transitions > 4 blocks
    im.reset(batch["frames"][:, :3], batch["action"][:, :2])
    im.step(torch.zeros(2, dtype=torch.long))
    im.step(torch.zeros(2, dtype=torch.long))  # 2 + 2 = 4 blocks: fine
    with pytest.raises(ValueError, match="max_blocks"):
        im.step(torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="reset"):
        make_imagination().step(torch.zeros(2, dtype=torch.long))


# ---- evaluation rows -------------------------------------------------------------------------


def test_metric_rows_have_the_csv_layout():
    im = make_imagination(max_blocks=8)
    batch = random_batch(b=3, t=5)
    rows = (
        tokenizer_metrics(im.tokenizer, batch)
        + world_model_metrics(im.world_model, im.tokenizer, batch)
        + imagination_metrics(im, batch, k_max=4)
    )
    keys = {"metric", "model", "baseline", "value_model", "value_baseline"}
    assert all(set(r) == keys for r in rows)
    assert all(isinstance(r["value_model"], float) for r in rows)
    assert [r["metric"] for r in rows[-4:]] == [f"imagined_frame_mse_k{k}" for k in range(1, 5)]
    with pytest.raises(ValueError, match="k_max"):
        imagination_metrics(im, batch, k_max=6)


# ---- learning on the sprite task -------------------------------------------------------------


@pytest.fixture(scope="module")
def sprite_data() -> tuple[dict, dict]:
    return sprite_episodes(64, 16, seed=0), sprite_episodes(32, 8, seed=1)


@pytest.fixture(scope="module")
def trained_tokenizer(sprite_data) -> Tokenizer:
    """300 Adam steps, batch 8 x 4 transitions (~25 s on one core)."""
    train, _ = sprite_data
    torch.manual_seed(0)
    tok = Tokenizer(tiny_tokenizer_config())
    opt = torch.optim.Adam(tok.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss, _ = tok.compute_loss(sample_segments(train, 8, 4, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok.eval()


def test_tokenizer_smoke_training_beats_copy_last_and_shuffled_tokens(
    sprite_data, trained_tokenizer
):
    _, test = sprite_data
    rows = tokenizer_metrics(trained_tokenizer, test)
    mse = {r["baseline"]: r for r in rows if r["metric"] == "next_frame_mse"}
    assert mse["copy_last"]["value_model"] < 0.25 * mse["copy_last"]["value_baseline"]
    assert mse["shuffled_tokens"]["value_model"] < 0.25 * mse["shuffled_tokens"]["value_baseline"]
    entropy = next(r for r in rows if r["metric"] == "code_usage_entropy_bits")
    assert entropy["value_model"] > 2.0


@pytest.mark.slow
def test_world_model_and_imagination_smoke_training_beat_baselines(sprite_data, trained_tokenizer):
    """1,500 world-model steps (~70 s on one core) on the frozen tokenizer's tokens."""
    train, test = sprite_data
    torch.manual_seed(0)
    wm = WorldModel(tiny_world_model_config())
    opt = torch.optim.Adam(wm.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):
        loss, _ = wm.compute_loss(with_tokens(sample_segments(train, 8, 8, g), trained_tokenizer))
        opt.zero_grad()
        loss.backward()
        opt.step()
    wm.eval()
    rows = {r["metric"]: r for r in world_model_metrics(wm, trained_tokenizer, test)}
    assert rows["latent_ce_nats"]["value_model"] < rows["latent_ce_nats"]["value_baseline"] - 0.5
    assert rows["latent_accuracy"]["value_model"] > rows["latent_accuracy"]["value_baseline"] + 0.2
    assert rows["reward_balanced_accuracy"]["value_model"] > 0.8
    torch.manual_seed(0)
    for row in imagination_metrics(DeltaIrisImagination(trained_tokenizer, wm), test, k_max=4):
        assert row["value_model"] < row["value_baseline"], row
