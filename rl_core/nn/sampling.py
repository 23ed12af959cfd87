"""Action selection from logits, shared by every sequence policy."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    top_p: float = 1.0,
) -> Tensor:
    """Sample one index per row of `logits (b, A)`.

    temperature 0 means argmax. top_p < 1 is nucleus sampling (Holtzman et al. 2020): keep the
    smallest set of most likely actions whose probability reaches top_p (RA-DT evaluates its
    Dark-Room policies with top_p = 0.5), renormalise, sample.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly likelier actions
        sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
