"""MaskGIT: masked-token training and confidence-ordered iterative decoding, model-agnostic.

Papers: MaskGIT (Chang et al. 2022, arXiv 2202.04200; official code `maskgit/libml/
parallel_decode.py`) and Genie (Bruce et al. 2024, arXiv 2402.15391), whose dynamics model is a
MaskGIT transformer over frame tokens. Genie's settings: training masks each sequence's tokens
with Bernoulli(r), r ~ U(0.5, 1), cross-entropy on the masked tokens only; inference fills a frame
in 25 MaskGIT steps, sampling temperature 2 for the big model and 1.0 in the CoinRun case study.

Why iterative decoding: one parallel pass samples every token independently and yields
incoherent frames; revealing only the most confident samples and re-predicting the rest given
them lets later tokens condition on earlier choices, in far fewer passes than one per token.

The model is anything with `logits_fn(tokens (b, n), mask (b, n) bool) -> logits (b, n, vocab)`;
it must read `mask` (True = unknown; e.g. swap in a mask embedding) and ignore the token values
there. Callers flatten frames (and time) into n and decide which tokens are never masked
(Genie leaves the first frame visible).

Deviations from the official decoder, each on purpose:
- Rounding: after step s (1..steps) exactly floor(n0 * schedule(s / steps)) tokens stay masked,
  n0 = that row's initially masked count. The official code clips this to [1, still masked - 1]
  (at least one reveal per step, one mask kept for the next); we follow the schedule exactly, so
  a step may reveal nothing when n0 < steps, and the last step reveals everything.
- Confidence noise: as the official code, confidence = log p(sampled token) under the
  untempered softmax + choice_temperature * (1 - s / steps) * Gumbel noise. The official code
  has a separate `choice_temperature` (4.5 in its configs) and samples at temperature 1; Genie
  reports one temperature, so `choice_temperature=None` reuses the sampling temperature
  (temperature 0 then gives fully deterministic argmax decoding).
- Training masks: a row whose Bernoulli draw masks nothing gets one random token masked, so every
  row has a loss term (probability <= 2^-n at the default rates; only matters for tiny n).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

_KNOWN_CONFIDENCE = math.inf  # known / already revealed tokens are never re-masked


def sample_training_mask(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    low: float = 0.5,
    high: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bool mask of `shape` (True = masked): rate r ~ U(low, high) per row (first dim), then
    Bernoulli(r) per token; rows left without a masked token get one (see module docstring)."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}")
    shape = tuple(shape)
    b = shape[0]
    rate = low + (high - low) * torch.rand(b, generator=generator, device=device)
    rate = rate.view(b, *([1] * (len(shape) - 1)))
    mask = torch.rand(shape, generator=generator, device=device) < rate
    flat = mask.view(b, -1)
    empty = ~flat.any(dim=1)
    if flat.shape[1] > 0 and bool(empty.any()):
        pick = torch.randint(flat.shape[1], (b,), generator=generator, device=device)
        rows = torch.nonzero(empty).flatten()
        flat[rows, pick[rows]] = True
    return mask


def mask_schedule(step: int, total: int, kind: str = "cosine") -> float:
    """Fraction of the initially masked tokens still masked after `step` of `total` steps.

    cosine: cos(pi/2 * step/total) (MaskGIT's choice: few reveals first, while the model knows
    little, many at the end); linear: 1 - step/total. 1 at step 0, exactly 0 at step total.
    """
    if total <= 0 or not 0 <= step <= total:
        raise ValueError(f"need 0 <= step <= total and total > 0, got step={step}, total={total}")
    if step == total:
        return 0.0
    ratio = step / total
    if kind == "cosine":
        return math.cos(math.pi / 2 * ratio)
    if kind == "linear":
        return 1.0 - ratio
    raise ValueError(f"unknown mask schedule {kind!r} (cosine, linear)")


def masked_count(n0: Tensor, step: int, total: int, kind: str = "cosine") -> Tensor:
    """Tokens still masked after `step` per row: floor(n0 * schedule), n0 (b,) long."""
    frac = mask_schedule(step, total, kind)
    # the tiny epsilon keeps e.g. 8 * 0.5 from flooring to 3 through float error
    return torch.floor(n0.double() * frac + 1e-9).long().clamp(min=0)


def maskgit_decode(
    logits_fn: Callable[[Tensor, Tensor], Tensor],
    tokens: Tensor,
    mask: Tensor,
    steps: int,
    temperature: float | None = 1.0,
    generator: torch.Generator | None = None,
    schedule: str = "cosine",
    choice_temperature: float | None = None,
    return_masks: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Fill the masked positions of `tokens (b, n)` (`mask (b, n)`, True = unknown) in `steps`.

    Each step: logits = logits_fn(tokens, mask); sample every masked position (temperature 0 or
    None = argmax); keep the floor(n0 * schedule) least confident samples masked (Gumbel-perturbed
    log-probability, see module docstring) and reveal the others. Known tokens never change.
    Returns the filled tokens, and with `return_masks` the mask after each step (`steps` masks,
    the last all False).
    """
    if tokens.dim() != 2 or mask.shape != tokens.shape:
        raise ValueError(f"tokens and mask must both be (b, n), got {tokens.shape}, {mask.shape}")
    if steps < 1:
        raise ValueError(f"steps={steps}: need at least one decoding step")
    greedy = temperature is None or temperature <= 0
    if choice_temperature is None:
        noise_scale = 0.0 if greedy else float(temperature)
    else:
        noise_scale = float(choice_temperature)
    tokens, mask = tokens.clone(), mask.clone().bool()
    n0 = mask.sum(dim=1)  # (b,)
    masks: list[Tensor] = []
    for s in range(1, steps + 1):
        if not bool(mask.any()):  # nothing left to fill: later steps are no-ops
            masks.append(mask.clone())
            continue
        logits = logits_fn(tokens, mask).float()  # (b n V)
        if greedy:
            sampled = logits.argmax(dim=-1)
        else:
            probs_t = torch.softmax(logits / float(temperature), dim=-1)
            flat = probs_t.reshape(-1, probs_t.shape[-1])
            sampled = torch.multinomial(flat, 1, generator=generator).view(tokens.shape)
        log_p = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None]).squeeze(-1)
        scale = noise_scale * (1.0 - s / steps)
        if scale > 0:
            u = torch.rand(log_p.shape, generator=generator, device=log_p.device)
            gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
            log_p = log_p + scale * gumbel
        confidence = torch.where(mask, log_p, torch.full_like(log_p, _KNOWN_CONFIDENCE))
        keep_masked = masked_count(n0, s, steps, schedule).to(tokens.device)  # (b,)
        # rank of each position by ascending confidence; the keep_masked lowest stay masked
        order = confidence.argsort(dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        new_mask = rank < keep_masked[:, None]
        reveal = mask & ~new_mask
        tokens = torch.where(reveal, sampled.to(tokens.dtype), tokens)
        mask = new_mask & mask  # known tokens (confidence inf) are never ranked into the mask
        masks.append(mask.clone())
    return (tokens, masks) if return_masks else tokens


def masked_token_loss(
    logits: Tensor, targets: Tensor, mask: Tensor
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy and accuracy over the masked positions only.

    logits (..., V), targets (...) long, mask (...) bool. With nothing masked the loss is a zero
    that still carries the graph (so callers can always backpropagate).
    """
    mask = mask.bool()
    sel_logits, sel_targets = logits[mask], targets[mask]
    n = int(sel_targets.numel())
    if n == 0:
        return logits.sum() * 0.0, {"masked_ce": 0.0, "masked_acc": 0.0, "masked_frac": 0.0}
    loss = F.cross_entropy(sel_logits.float(), sel_targets)
    acc = (sel_logits.argmax(dim=-1) == sel_targets).float().mean()
    metrics = {
        "masked_ce": float(loss.detach()),
        "masked_acc": float(acc),
        "masked_frac": n / max(mask.numel(), 1),
    }
    return loss, metrics
