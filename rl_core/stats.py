"""Confidence intervals for results over a few seeds.

Why: the RA-DT paper (and rliable) report means with 95% bootstrap confidence intervals over 3
seeds; a ± std band says nothing about how sure the mean is. Our result tables hold one number
per (agent, seed), so the bootstrap resamples seeds (the paper's stratified bootstrap also
resamples within tasks, which needs per-task scores the tables do not keep).
"""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    samples: np.ndarray, *, level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean over axis 0 (seeds), for every column.

    samples: (n, ...) with n >= 1; a single sample gives the degenerate interval [x, x].
    Deterministic for a given `seed`, so tables and plots made twice agree.
    """
    x = np.asarray(samples, np.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"bootstrap_ci: expected (n, ...) samples with n >= 1, got shape {x.shape}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level={level}, expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    means = x[picks].mean(axis=1)  # (n_boot, ...)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail], axis=0)
    return lo, hi
