"""Action selection from logits, shared by every sequence policy."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_logits(
    logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Sample one index per row of `logits (b, A)`; temperature 0 means argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
