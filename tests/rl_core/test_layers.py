"""Cross-attention and adaptive LayerNorm: the conditioning blocks of RA-DT and Return-Aligned DT."""

from __future__ import annotations

import torch
from torch import nn

from rl_core.nn import GPT, AdaLayerNorm, CrossAttention, GPTConfig, step_causal_mask


def test_masked_context_tokens_do_not_change_the_output() -> None:
    torch.manual_seed(0)
    ca = CrossAttention(16, 4).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[:, :, 4:] = False
    noisy = ctx.clone()
    noisy[:, 4:] = torch.randn(2, 3, 16) * 100
    torch.testing.assert_close(ca(x, ctx, mask), ca(x, noisy, mask))
    torch.testing.assert_close(ca(x, ctx, mask), ca(x, ctx[:, :4]))


def test_a_query_with_nothing_to_attend_gets_zero_not_nan() -> None:
    ca = CrossAttention(8, 2).eval()
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 1] = True
    out = ca(torch.randn(1, 3, 8), torch.randn(1, 4, 8), mask)
    assert torch.isfinite(out).all()
    # rows 0 and 2 see nothing: their output is the projection bias only
    torch.testing.assert_close(out[0, 0], ca.proj.bias)
    torch.testing.assert_close(out[0, 2], ca.proj.bias)


def test_gpt_with_cross_attention_decodes_with_the_cache_like_the_full_forward() -> None:
    torch.manual_seed(1)
    cfg = GPTConfig(d_model=32, n_layer=2, n_head=4, dropout=0.0, cross_attn=True, d_context=24)
    model = GPT(cfg).eval()
    x, ctx = torch.randn(3, 12, 32), torch.randn(3, 6, 24)
    full = model(x, context=ctx)
    cache = model.new_cache()
    steps = [model(x[:, i : i + 1], cache=cache, context=ctx) for i in range(12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, model(x)), "the context must matter"


def test_zero_initialised_ada_layer_norm_is_a_plain_layer_norm_until_trained() -> None:
    torch.manual_seed(2)
    ada = AdaLayerNorm(16, 8)
    x, cond = torch.randn(2, 5, 16), torch.randn(2, 5, 8)
    plain = nn.LayerNorm(16, elementwise_affine=False)
    torch.testing.assert_close(ada(x, cond), plain(x))
    nn.init.normal_(ada.modulation[1].weight)
    assert not torch.allclose(ada(x, cond), plain(x))


def test_step_causal_mask_lets_a_token_see_returns_up_to_its_own_step() -> None:
    query_steps = torch.tensor([[0, 0, 1, 1, 2, 2]])  # (s, a) tokens of steps 0..2
    context_steps = torch.tensor([[0, 1, 2]])
    mask = step_causal_mask(query_steps, context_steps)[0]
    assert mask.tolist() == [
        [True, False, False],
        [True, False, False],
        [True, True, False],
        [True, True, False],
        [True, True, True],
        [True, True, True],
    ]
