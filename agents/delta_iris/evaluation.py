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
import torch.nn.functional as F
from torch import Tensor

from agents.delta_iris.imagination import DeltaIrisImagination
from agents.delta_iris.tokenizer import Tokenizer, as_float_frames
from agents.delta_iris.world_model import WorldModel
from agents.world_model_common import metric_row


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
        metric_row("next_frame_mse", "tokenizer", "copy_last", mse, (prev - nxt).pow(2).mean()),
        metric_row(
            "next_frame_mse", "tokenizer", "shuffled_tokens", mse, (shuffled - nxt).pow(2).mean()
        ),
        metric_row(
            "code_usage_entropy_bits",
            "tokenizer",
            "log2_codebook_size",
            _entropy(counts, base=2),
            math.log2(tokenizer.cfg.codebook_size),
        ),
    ]


@torch.no_grad()
def world_model_metrics(
    world_model: WorldModel, tokenizer: Tokenizer, batch: dict[str, Tensor]
) -> list[dict]:
    """Δ-token CE vs unigram entropy (nats), latent accuracy vs majority code, reward balanced
    accuracy vs chance, over the batch's valid transitions (teacher forcing)."""
    device = next(world_model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["mask"].bool()
    if not bool(mask.any()):
        raise ValueError("the batch has no valid transition (mask is all False)")
    tokens = batch["tokens"] if "tokens" in batch else tokenizer.tokenize(batch)
    out = world_model(as_float_frames(batch["frames"])[:, :-1], batch["action"], tokens)
    labels = tokens[mask].flatten()  # (m k,)
    logits = out["latents"][mask].flatten(0, 1).float()
    ce = F.cross_entropy(logits, labels)
    counts = torch.bincount(labels, minlength=logits.shape[-1])
    accuracy = (logits.argmax(-1) == labels).float().mean()
    reward_labels = (batch["reward"][mask].sign() + 1).long()
    reward_pred = out["rewards"][mask].argmax(-1)
    present = reward_labels.unique()
    recalls = [(reward_pred[reward_labels == c] == c).float().mean() for c in present]
    return [
        metric_row("latent_ce_nats", "world_model", "unigram_entropy", ce, _entropy(counts)),
        metric_row(
            "latent_accuracy",
            "world_model",
            "majority_code",
            accuracy,
            counts.max().float() / counts.sum(),
        ),
        metric_row(
            "reward_balanced_accuracy",
            "world_model",
            "chance",
            torch.stack(recalls).mean(),
            1.0 / len(present),
        ),
    ]


@torch.no_grad()
def imagination_metrics(
    imagination: DeltaIrisImagination, batch: dict[str, Tensor], k_max: int = 4
) -> list[dict]:
    """MSE of k-step imagined frames (true actions) vs the real frames, k = 1..k_max, against
    copying the starting frame. Segments of t transitions burn in on their first t - k_max
    (rows with a masked transition in them are dropped); the models' own frames are fed back."""
    frames = as_float_frames(batch["frames"])
    actions, mask = batch["action"].long(), batch["mask"].bool()
    t = actions.shape[1]
    if not 1 <= k_max <= t:
        raise ValueError(f"k_max={k_max} must be in [1, {t}] (the segment's transitions)")
    rows = mask.all(dim=1)
    if not bool(rows.any()):
        raise ValueError("imagination_metrics needs segments whose transitions are all valid")
    frames, actions = frames[rows], actions[rows]
    start = t - k_max
    current = imagination.reset(frames[:, : start + 1], actions[:, :start])
    real_start = frames[:, start].to(current.device)
    out = []
    for k in range(1, k_max + 1):
        current, _, _ = imagination.step(actions[:, start + k - 1])
        real = frames[:, start + k].to(current.device)
        out.append(
            metric_row(
                f"imagined_frame_mse_k{k}",
                "imagination",
                "copy_last",
                (current - real).pow(2).mean(),
                (real_start - real).pow(2).mean(),
            )
        )
    return out
