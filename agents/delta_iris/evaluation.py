"""Held-out metrics of the Δ-IRIS pieces, each against a trivial baseline (reference §6.3).

Every function returns rows `{metric, model, baseline, value_model, value_baseline}` of plain
floats, the layout of `results/delta_iris/heldout.csv` (the caller adds the `env` column):

* tokenizer: next-frame MSE of the reconstruction vs copying x_t, and vs the same decoder fed
  the Δ-tokens of other transitions (tokens must carry what (x_t, a_t) cannot predict); the
  batch's code-usage entropy vs its maximum log2(codebook size);
* world model: Δ-token cross-entropy (nats) vs the unigram entropy of the batch's tokens,
  latent accuracy vs the majority-code rate, reward balanced accuracy vs chance;
* imagination: k-step imagined frames (true actions) vs copying the starting frame.

Shape legend: b batch, t time, k tokens, c h w a frame.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from agents.delta_iris.tokenizer import Tokenizer, as_float_frames


def _row(metric: str, model: str, baseline: str, value_model, value_baseline) -> dict:
    return {
        "metric": metric,
        "model": model,
        "baseline": baseline,
        "value_model": float(value_model),
        "value_baseline": float(value_baseline),
    }


def _entropy(counts: Tensor, base: float = math.e) -> float:
    p = counts[counts > 0].float() / counts.sum()
    return float(-(p * p.log()).sum() / math.log(base))


def _valid_transitions(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    frames = as_float_frames(batch["frames"])
    mask = batch["mask"].bool()
    if not bool(mask.any()):
        raise ValueError("the batch has no valid transition (mask is all False)")
    return frames[:, :-1][mask], batch["action"][mask].long(), frames[:, 1:][mask]


def _derangement(n: int, generator: torch.Generator) -> Tensor:
    """A permutation without fixed points (n >= 2): a random cycle."""
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


@torch.no_grad()
def tokenizer_metrics(tokenizer: Tokenizer, batch: dict[str, Tensor], seed: int = 0) -> list[dict]:
    """Next-frame MSE vs copy-last and vs shuffled tokens; code-usage entropy (bits)."""
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    prev, action, nxt = (x.to(device) for x in _valid_transitions(batch))
    if prev.shape[0] < 2:
        raise ValueError("tokenizer_metrics needs at least 2 valid transitions (to shuffle)")
    q, tokens, _ = tokenizer.encode(prev, action, nxt)
    recon = tokenizer.decode(prev, action, q).clamp(0.0, 1.0)
    perm = _derangement(q.shape[0], torch.Generator().manual_seed(seed)).to(device)
    shuffled = tokenizer.decode(prev, action, q[perm]).clamp(0.0, 1.0)
    tokenizer.train(was_training)
    mse = (recon - nxt).pow(2).mean()
    counts = torch.bincount(tokens.flatten(), minlength=tokenizer.cfg.codebook_size)
    return [
        _row("next_frame_mse", "tokenizer", "copy_last", mse, (prev - nxt).pow(2).mean()),
        _row("next_frame_mse", "tokenizer", "shuffled_tokens", mse, (shuffled - nxt).pow(2).mean()),
        _row(
            "code_usage_entropy_bits",
            "tokenizer",
            "log2_codebook_size",
            _entropy(counts, base=2),
            math.log2(tokenizer.cfg.codebook_size),
        ),
    ]
