"""Genie ST-transformer: shapes, temporal causality, spatial attention within a frame, the
block-causal full-attention baseline, gradients, and the attention-cost formula."""

from __future__ import annotations

import pytest
import torch

from rl_core.nn.st_transformer import (
    FullAttentionTransformer,
    STBlock,
    STConfig,
    STTransformer,
    attention_score_entries,
    block_causal_mask,
)

B, T, N, D = 2, 5, 6, 32
ATOL = 1e-6


def config(**kw) -> STConfig:
    base = dict(d_model=D, n_layer=2, n_head=4, max_frames=8, max_tokens_per_frame=8)
    return STConfig(**{**base, **kw})


def make(cls, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cls(config(**kw)).eval()


@pytest.mark.parametrize("cls", [STTransformer, FullAttentionTransformer])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_shapes(cls, pos, qk_norm):
    model = make(cls, pos=pos, qk_norm=qk_norm)
    x = torch.randn(B, T, N, D)
    assert model(x).shape == (B, T, N, D)
    assert model(x[:, :1, :3]).shape == (B, 1, 3, D)  # shorter clips and smaller frames
    with pytest.raises(ValueError, match="at most"):
        model(torch.randn(1, 9, N, D))  # more frames than max_frames


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        config(n_head=5)
    with pytest.raises(ValueError, match="pos="):
        config(pos="rope")


def change_from(x: torch.Tensor, frame: int) -> torch.Tensor:
    y = x.clone()
    y[:, frame:] = torch.randn_like(y[:, frame:])
    return y


@pytest.mark.parametrize("cls", [STTransformer, FullAttentionTransformer])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_temporal_causality(cls, qk_norm):
    """Changing frames t+1..T leaves the outputs of frames <= t unchanged; with causal=False the
    change reaches them (the check can fail)."""
    torch.manual_seed(1)
    x = torch.randn(B, T, N, D)
    causal = make(cls, qk_norm=qk_norm)
    free = make(cls, qk_norm=qk_norm, causal=False)
    for t in range(T - 1):
        y = change_from(x, t + 1)
        out_x, out_y = causal(x), causal(y)
        torch.testing.assert_close(out_x[:, : t + 1], out_y[:, : t + 1], atol=ATOL, rtol=0)
        assert not torch.allclose(out_x[:, t + 1 :], out_y[:, t + 1 :], atol=1e-3)
        diff = (free(x)[:, : t + 1] - free(y)[:, : t + 1]).abs().max()
        assert diff > 1e-3, f"non-causal model ignored future frames at t={t}"


def test_spatial_attention_stays_within_a_frame():
    """An STBlock whose temporal sublayer outputs zero: changing one token of frame 2 changes
    other tokens of frame 2 (spatial attention mixes a frame) and nothing in other frames."""
    torch.manual_seed(2)
    block = STBlock(config(n_layer=1)).eval()
    with torch.no_grad():
        block.temporal.proj.weight.zero_()
        block.temporal.proj.bias.zero_()
    x = torch.randn(B, T, N, D)
    y = x.clone()
    y[:, 2, 0] = torch.randn(B, D)
    out_x, out_y = block(x), block(y)
    others = [f for f in range(T) if f != 2]
    torch.testing.assert_close(out_x[:, others], out_y[:, others], atol=ATOL, rtol=0)
    changed = (out_x[:, 2, 1:] - out_y[:, 2, 1:]).abs().amax(dim=-1)  # (b, n-1): other tokens
    assert (changed > 1e-4).all()
    # with the temporal sublayer on, the same change reaches later frames (only those)
    torch.manual_seed(2)
    full = STBlock(config(n_layer=1)).eval()
    out_x, out_y = full(x), full(y)
    torch.testing.assert_close(out_x[:, :2], out_y[:, :2], atol=ATOL, rtol=0)
    assert (out_x[:, 3:] - out_y[:, 3:]).abs().amax() > 1e-4


def test_full_attention_is_block_causal_and_mixes_a_frame():
    """The baseline: a token sees its own whole frame (a change to token 0 of frame 2 reaches
    token 1 of frame 2 in one layer) and earlier frames, never later ones."""
    torch.manual_seed(3)
    model = make(FullAttentionTransformer, n_layer=1)
    x = torch.randn(B, T, N, D)
    y = x.clone()
    y[:, 2, 0] = torch.randn(B, D)
    out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[:, :2], out_y[:, :2], atol=ATOL, rtol=0)
    assert (out_x[:, 2, 1:] - out_y[:, 2, 1:]).abs().amax(dim=-1).gt(1e-4).all()
    assert (out_x[:, 3:] - out_y[:, 3:]).abs().amax() > 1e-4


def test_block_causal_mask_by_hand():
    mask = block_causal_mask(2, 2)
    expected = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("cls", [STTransformer, FullAttentionTransformer])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_gradients_reach_every_parameter(cls, qk_norm):
    model = make(cls, qk_norm=qk_norm).train()
    model(torch.randn(B, T, N, D)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_st_block_has_no_ffn_after_the_spatial_layer():
    """Two attention sublayers and one FFN per block, as in Genie's Fig. 4."""
    block = STBlock(config())
    children = [name for name, _ in block.named_children()]
    assert children == [
        "norm_spatial", "spatial", "norm_temporal", "temporal", "norm_ffn", "ffn"
    ]  # fmt: skip


def test_attention_cost_by_hand():
    # b=2, t=3, n=4: spatial 2*3 frames of 4x4 = 96, temporal 2*4 positions of 3x3 = 72
    assert attention_score_entries(2, 3, 4, "st") == 96 + 72
    # full: 2 clips of (3*4)^2 = 144 -> 288; with 8 heads, 8 times more
    assert attention_score_entries(2, 3, 4, "full") == 288
    assert attention_score_entries(2, 3, 4, "full", n_head=8) == 8 * 288
    # CoinRun-like clip: 16 frames of 256 tokens -> full / st = t*n / (n + t) = 4096 / 272
    st, full = (
        attention_score_entries(1, 16, 256, "st"),
        attention_score_entries(1, 16, 256, "full"),
    )
    assert full / st == pytest.approx(4096 / 272)
    with pytest.raises(ValueError):
        attention_score_entries(1, 1, 1, "diagonal")
