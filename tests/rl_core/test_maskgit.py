"""MaskGIT: U(0.5, 1) training masks, the cosine schedule, iterative decoding that fills every
token on schedule without touching known ones, and the masked-only loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rl_core.nn.maskgit import (
    mask_schedule,
    masked_count,
    masked_token_loss,
    maskgit_decode,
    sample_training_mask,
)


def test_training_mask_rates_lie_in_half_to_one_and_every_row_is_masked():
    g = torch.Generator().manual_seed(0)
    mask = sample_training_mask((256, 4, 64), generator=g)
    assert mask.dtype == torch.bool and mask.shape == (256, 4, 64)
    rates = mask.float().flatten(1).mean(dim=1)
    assert bool((rates >= 0.5 - 0.1).all()) and bool((rates <= 1.0).all())  # binomial slack
    assert abs(float(rates.mean()) - 0.75) < 0.02  # mean of U(0.5, 1)
    assert float(rates.std()) > 0.1  # rates differ per row (U(0.5,1) std 0.144)
    assert bool(mask.flatten(1).any(dim=1).all())


def test_training_mask_forces_one_masked_token_in_tiny_rows():
    g = torch.Generator().manual_seed(1)
    mask = sample_training_mask((500, 1), generator=g, low=0.0, high=0.0)  # rate 0
    assert bool(mask.all())  # every row got its one forced token
    mask = sample_training_mask((500, 3), generator=g, low=0.0, high=0.0)
    assert torch.equal(mask.sum(dim=1), torch.ones(500, dtype=torch.long))


def test_cosine_and_linear_schedules_by_hand():
    got = [mask_schedule(s, 4) for s in range(5)]
    assert got == pytest.approx([1.0, 0.9239, 0.7071, 0.3827, 0.0], abs=1e-4)
    assert mask_schedule(4, 4) == 0.0
    assert [mask_schedule(s, 4, "linear") for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        mask_schedule(1, 4, "exp")
    # floor rounding: 64 masked tokens in 4 cosine steps -> 59, 45, 24, 0
    counts = [int(masked_count(torch.tensor([64]), s, 4)[0]) for s in range(1, 5)]
    assert counts == [59, 45, 24, 0]
    assert int(masked_count(torch.tensor([8]), 2, 4, "linear")[0]) == 4  # no float slip to 3


def _oracle(target: torch.Tensor, vocab: int):
    """logits_fn that knows the answer: huge one-hot logits on `target`."""

    def fn(tokens, mask):
        return F.one_hot(target, vocab).float() * 100.0

    return fn


def _random_logits(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def fn(tokens, mask):
        # depends on the current tokens, so each step sees a new distribution
        base = torch.randn(tokens.shape[1], vocab, generator=g)
        return base[None] + 0.1 * tokens[..., None].float()

    return fn


def test_decode_fills_every_token_on_schedule_and_keeps_known_tokens():
    b, n, vocab, steps = 3, 40, 11, 6
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) < torch.tensor([[0.3], [0.8], [1.0]])
    out, masks = maskgit_decode(
        _random_logits(vocab), tokens, mask, steps, temperature=1.0, generator=g, return_masks=True
    )
    assert out.shape == (b, n) and len(masks) == steps
    assert torch.equal(out[~mask], tokens[~mask])  # known tokens never change
    assert not bool(masks[-1].any())
    n0 = mask.sum(dim=1)
    prev = mask
    for s, m in enumerate(masks, start=1):
        assert torch.equal(m.sum(dim=1), torch.floor(n0 * mask_schedule(s, steps)).long())
        assert not bool((m & ~prev).any())  # revealed tokens are never re-masked
        prev = m
    assert bool(((out >= 0) & (out < vocab)).all())


def test_decode_reveals_the_most_confident_tokens_first():
    n, vocab = 8, 4
    target = torch.arange(n)[None] % vocab
    conf = torch.linspace(1.0, 8.0, n)  # position i has confidence growing with i

    def fn(tokens, mask):
        return F.one_hot(target, vocab).float() * conf[None, :, None]

    mask = torch.ones(1, n, dtype=torch.bool)
    _, masks = maskgit_decode(fn, target.clone(), mask, 4, temperature=0, return_masks=True)
    # after step 1, floor(8 * 0.924) = 7 stay masked: the least confident, i.e. 0..6
    assert masks[0][0].tolist() == [True] * 7 + [False]
    assert masks[1][0].tolist() == [True] * 5 + [False] * 3


def test_gumbel_choice_noise_randomises_which_tokens_are_revealed():
    n, vocab = 16, 4
    target = torch.arange(n)[None] % vocab
    conf = torch.linspace(1.0, 2.0, n)

    def fn(tokens, mask):
        return F.one_hot(target, vocab).float() * conf[None, :, None]

    mask = torch.ones(1, n, dtype=torch.bool)
    firsts = set()
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        out, masks = maskgit_decode(
            fn, target.clone(), mask, 4, 0, g, choice_temperature=5.0, return_masks=True
        )
        assert int(masks[0].sum()) == 14 and torch.equal(out, target)
        firsts.add(tuple(masks[0][0].tolist()))
    assert len(firsts) > 1  # without noise (previous test) the order is fixed


def test_decode_with_an_oracle_reproduces_the_target():
    b, n, vocab = 4, 64, 32
    g = torch.Generator().manual_seed(2)
    target = torch.randint(vocab, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, :5] = False
    start = torch.where(mask, torch.zeros_like(target), target)
    for temperature in (0.0, 1.0, 2.0):
        out = maskgit_decode(_oracle(target, vocab), start, mask, 8, temperature, generator=g)
        assert torch.equal(out, target)


def test_temperature_zero_is_deterministic_and_sampling_uses_the_generator():
    b, n, vocab = 2, 30, 9
    tokens = torch.zeros(b, n, dtype=torch.long)
    mask = torch.ones(b, n, dtype=torch.bool)
    a = maskgit_decode(_random_logits(vocab, 5), tokens, mask, 5, temperature=0)
    c = maskgit_decode(_random_logits(vocab, 5), tokens, mask, 5, temperature=None)
    assert torch.equal(a, c)
    s1 = maskgit_decode(
        _random_logits(vocab, 5), tokens, mask, 5, 1.0, torch.Generator().manual_seed(3)
    )
    s2 = maskgit_decode(
        _random_logits(vocab, 5), tokens, mask, 5, 1.0, torch.Generator().manual_seed(3)
    )
    assert torch.equal(s1, s2)


def test_decode_with_nothing_masked_is_the_identity_and_one_step_fills_all():
    tokens = torch.randint(5, (2, 7))
    mask = torch.zeros(2, 7, dtype=torch.bool)
    assert torch.equal(maskgit_decode(_random_logits(5), tokens, mask, 3), tokens)
    target = torch.randint(5, (2, 7))
    out = maskgit_decode(_oracle(target, 5), tokens, ~mask, 1, temperature=1.0)
    assert torch.equal(out, target)


def test_masked_token_loss_ignores_unmasked_positions():
    # position 0: masked, logits favour the target; position 1: unmasked, wildly wrong
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 50.0]]], requires_grad=True)
    targets = torch.tensor([[0, 0]])
    mask = torch.tensor([[True, False]])
    loss, metrics = masked_token_loss(logits, targets, mask)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert metrics["masked_acc"] == 1.0 and metrics["masked_frac"] == 0.5
    loss.backward()
    assert torch.equal(logits.grad[0, 1], torch.zeros(3))  # no gradient from unmasked tokens
    none, m = masked_token_loss(logits, targets, torch.zeros_like(mask))
    assert float(none.detach()) == 0.0 and none.requires_grad and m["masked_acc"] == 0.0
