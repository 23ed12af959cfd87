"""Action selection from logits, shared by every sequence policy."""

from __future__ import annotations

import torch
from torch import Tensor

TOP_P_MODES = ("nucleus", "quantile")


def quantile_cut(logits: Tensor, q: float) -> Tensor:
    """Keep the logits strictly above their q-quantile (-inf elsewhere); keep all of a row whose
    quantile equals its maximum. This is what `top_p` means in the Multi-Game DT sampler that the
    official RA-DT code uses (`src/algos/models/model_utils.py::sample_from_logits`): with 5
    Dark-Room actions and q = 0.5 it keeps the 2 best actions whatever their probabilities.
    """
    x = logits.double()
    cut = torch.quantile(x, q, dim=-1, keepdim=True)
    keep = (x > cut) | (cut >= x.max(dim=-1, keepdim=True).values)
    return logits.masked_fill(~keep, float("-inf"))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
    top_p_mode: str = "nucleus",
) -> Tensor:
    """Sample one index per row of `logits (b, A)`.

    temperature 0 means argmax. top_p < 1 restricts the candidates first: `top_p_mode="nucleus"`
    (Holtzman et al. 2020) keeps the smallest set of most likely actions whose probability
    reaches top_p; `"quantile"` keeps the actions whose logit is above the top_p-quantile of the
    logits (`quantile_cut`, the official RA-DT / Multi-Game DT sampler). Renormalise, sample.
    Nucleus 0.5 is greedy whenever one action has p > 0.5; the quantile cut never is (top-2 of 5).
    """
    if top_p_mode not in TOP_P_MODES:
        raise ValueError(f"top_p_mode={top_p_mode!r}: expected one of {TOP_P_MODES}")
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if top_p < 1.0 and top_p_mode == "quantile":
        logits = quantile_cut(logits, top_p)
        top_p = 1.0
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly likelier actions
        sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
