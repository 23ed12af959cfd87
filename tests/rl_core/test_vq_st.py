"""VectorQuantizer (VQ-VAE): nearest code by L2, the codebook + commitment losses, the
straight-through gradient, dead-code reset after `reset_after` idle training calls."""

from __future__ import annotations

import math

import pytest
import torch

from rl_core.nn.vq_st import VectorQuantizer


def _hand_made(reset_after: int | None = 50, beta: float = 0.25) -> VectorQuantizer:
    vq = VectorQuantizer(3, 2, beta=beta, reset_after=reset_after)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    return vq


def test_nearest_code_by_l2_on_a_hand_made_codebook():
    vq = _hand_made().eval()
    z = torch.tensor([[[1.0, -1.0], [9.0, 8.0]], [[-6.0, 4.0], [4.0, 4.0]]])
    z_q, codes, _, metrics = vq(z)
    assert codes.tolist() == [[0, 1], [2, 0]] and codes.dtype == torch.long
    assert torch.equal(z_q, vq.codebook.detach()[codes])
    assert metrics["usage"] == 1.0
    # batch distribution (2/4, 1/4, 1/4): perplexity exp(H)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert metrics["perplexity"] == pytest.approx(math.exp(h), rel=1e-6)


def test_losses_follow_the_formula_and_their_gradients_split():
    vq = _hand_made(beta=0.5).eval()
    z = torch.tensor([[1.0, -1.0], [9.0, 8.0]], requires_grad=True)
    _, _, loss, metrics = vq(z)
    # squared errors: (1, 1) to code 0, (1, 4) to code 1 -> mean over 4 elements = 7/4
    assert metrics["codebook_loss"] == pytest.approx(1.75)
    assert metrics["commitment_loss"] == pytest.approx(1.75)
    assert float(loss.detach()) == pytest.approx(1.75 + 0.5 * 1.75)
    loss.backward()
    # encoder gradient only from beta * commitment: beta * 2 (z - e) / 4
    assert torch.allclose(z.grad, 0.5 * 2 * torch.tensor([[1.0, -1.0], [-1.0, -2.0]]) / 4)
    # codebook gradient only from the codebook loss: 2 (e - z) / 4 on the used codes
    expected = torch.tensor([[-0.5, 0.5], [0.5, 1.0], [0.0, 0.0]])
    assert torch.allclose(vq.codebook.grad, expected)


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8)
    z = torch.randn(4, 5, 8, requires_grad=True)
    z_q, codes, _, _ = vq(z)
    assert z_q.shape == z.shape and codes.shape == (4, 5)
    (grad,) = torch.autograd.grad(z_q.sum(), z)
    assert torch.equal(grad, torch.ones_like(z))


def test_l2_normalize_quantises_unit_vectors():
    torch.manual_seed(1)
    vq = VectorQuantizer(8, 4, l2_normalize=True).eval()
    z = torch.randn(10, 4) * 7
    z_q, codes, _, _ = vq(z)
    assert torch.allclose(z_q.norm(dim=-1), torch.ones(10), atol=1e-5)
    cos = torch.nn.functional.normalize(z, dim=-1) @ vq.lookup(torch.arange(8)).t()
    assert torch.equal(codes, cos.argmax(dim=-1))


def test_an_idle_code_is_reset_after_reset_after_calls_and_a_used_one_is_not():
    torch.manual_seed(2)
    vq = _hand_made(reset_after=3).train()
    z = torch.tensor([[0.5, 0.5], [9.0, 9.5], [0.2, -0.1]])  # codes 0, 1 used; code 2 idle
    before = vq.codebook.detach().clone()
    for _ in range(2):
        *_, metrics = vq(z)
        assert metrics["resets"] == 0.0
    assert vq.idle_calls.tolist() == [0, 0, 2]
    *_, metrics = vq(z)
    assert metrics["resets"] == 1.0 and int(vq.n_resets) == 1
    assert torch.equal(vq.codebook.detach()[:2], before[:2])  # used codes untouched
    new = vq.codebook.detach()[2]
    assert any(torch.equal(new, row) for row in z)  # re-initialised to a batch vector
    assert vq.idle_calls.tolist() == [0, 0, 0]


def test_eval_mode_neither_counts_nor_resets():
    vq = _hand_made(reset_after=1).eval()
    before = vq.codebook.detach().clone()
    z = torch.tensor([[0.5, 0.5]])
    for _ in range(5):
        *_, metrics = vq(z)
        assert metrics["resets"] == 0.0
    assert torch.equal(vq.codebook.detach(), before)
    assert vq.idle_calls.tolist() == [0, 0, 0] and int(vq.n_resets) == 0
    *_, metrics = vq(z, update=True)  # explicit update works in eval mode
    assert metrics["resets"] == 1.0  # only one batch vector: one of the two idle codes


def test_state_dict_round_trip_keeps_the_counters():
    vq = _hand_made(reset_after=10).train()
    for _ in range(4):
        vq(torch.tensor([[0.5, 0.5]]))
    state = vq.state_dict()
    assert {"codebook", "idle_calls", "n_resets"} <= set(state)
    other = VectorQuantizer(3, 2, reset_after=10)
    other.load_state_dict(state)
    assert other.idle_calls.tolist() == [0, 4, 4]
    assert torch.equal(other.codebook, vq.codebook)
