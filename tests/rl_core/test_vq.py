"""EMACosineCodebook: nearest code by cosine, EMA pull toward assigned vectors, revival of dead
codes when usage collapses, straight-through gradients."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rl_core.nn import EMACosineCodebook


def test_nearest_code_is_largest_cosine_similarity_whatever_the_norm():
    torch.manual_seed(0)
    vq = EMACosineCodebook(16, 8).eval()
    z = torch.randn(5, 7, 8) * torch.rand(5, 7, 1) * 10  # norms must not matter
    q, codes, metrics = vq(z)
    assert q.shape == (5, 7, 8) and codes.shape == (5, 7) and codes.dtype == torch.long
    brute = torch.stack(
        [
            torch.stack([F.cosine_similarity(v, vq.codebook, dim=-1).argmax() for v in row])
            for row in z
        ]
    )
    assert torch.equal(codes, brute)
    assert torch.allclose(q, vq.lookup(codes), atol=1e-6)
    assert torch.allclose(q.norm(dim=-1), torch.ones(5, 7), atol=1e-5)
    assert metrics["revived"] == 0.0 and "usage_entropy_bits" in metrics


def test_eval_mode_and_update_false_leave_the_codebook_alone():
    torch.manual_seed(0)
    vq = EMACosineCodebook(16, 8)
    before = vq.codebook.clone(), vq.usage.clone()
    vq(torch.randn(32, 8), update=False)
    vq.eval()(torch.randn(32, 8))
    assert torch.equal(vq.codebook, before[0]) and torch.equal(vq.usage, before[1])


def test_ema_moves_a_code_toward_its_assigned_vectors():
    torch.manual_seed(0)
    vq = EMACosineCodebook(8, 4, decay=0.9).train()
    target = F.normalize(torch.tensor([1.0, 1.0, 0.0, 0.0]), dim=0)
    code = vq(target[None])[1].item()
    z = target + 0.05 * torch.randn(64, 4)  # a cluster around `target`, all nearest to `code`
    sims = []
    for _ in range(20):
        _, codes, _ = vq(z)
        assert (codes == code).all()
        sims.append(float(vq.codebook[code] @ target))
    assert sims[-1] > sims[0] and sims[-1] > 0.99
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(8), atol=1e-5)  # re-normalised
    # usage frequencies: the EMA mass moves to the used code
    assert vq.usage.argmax() == code and vq.usage[code] > 0.4
    assert math.isclose(float(vq.usage.sum()), 1.0, rel_tol=1e-4)


def test_collapsed_codebook_is_revived_from_the_batch():
    torch.manual_seed(0)
    n_codes, dim = 64, 8
    vq = EMACosineCodebook(n_codes, dim).train()
    # collapse: every code near one direction, code 0 exactly on it, all usage on code 0
    base = F.normalize(torch.ones(dim), dim=0)
    vq.codebook.copy_(F.normalize(base + 1e-3 * torch.randn(n_codes, dim), dim=-1))
    vq.codebook[0] = base
    vq.usage.zero_()
    vq.usage[0] = 1.0
    z = base + 1e-4 * torch.randn(256, dim)  # collapsed inputs ...
    z[:128] = torch.randn(128, dim)  # ... and diverse ones
    used_before = vq.eval()(z)[1].unique().numel()
    entropy_before = vq.usage_entropy_bits()
    assert entropy_before < math.log2(n_codes) - 2

    _, _, metrics = vq.train()(z)
    assert metrics["revived"] == n_codes - 1  # every dead code replaced by a batch vector
    assert metrics["usage_entropy_bits"] > entropy_before + 3
    flat = F.normalize(z, dim=-1)
    revived = vq.codebook[1:]
    nearest = (revived @ flat.t()).max(dim=-1).values
    assert (nearest > 0.999).all()  # revived codes are (normalised) batch vectors
    used_after = vq.eval()(z)[1].unique().numel()
    assert used_after > used_before + 20


def test_no_revival_while_usage_is_spread():
    torch.manual_seed(0)
    vq = EMACosineCodebook(16, 8).train()
    _, _, metrics = vq(torch.randn(256, 8))
    assert metrics["revived"] == 0.0


def test_straight_through_gradient_reaches_the_input():
    torch.manual_seed(0)
    vq = EMACosineCodebook(16, 8).train()
    z = torch.randn(10, 8, requires_grad=True)
    q, _, _ = vq(z)
    (q * torch.randn_like(q)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    z.grad = None
    loss = EMACosineCodebook.commitment_loss(z, q)
    loss.backward()
    assert loss.item() > 0 and z.grad.abs().sum() > 0
