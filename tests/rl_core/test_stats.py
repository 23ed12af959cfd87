"""Bootstrap confidence intervals over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from rl_core.stats import bootstrap_ci


def test_interval_brackets_the_mean_and_stays_inside_the_samples():
    x = np.array([[10.0, 1.0], [20.0, 1.0], [30.0, 1.0]])
    lo, hi = bootstrap_ci(x)
    assert lo.shape == hi.shape == (2,)
    assert 10.0 <= lo[0] < 20.0 < hi[0] <= 30.0  # the mean of resampled seeds lies in [min, max]
    assert lo[1] == hi[1] == 1.0  # no spread, no width


def test_interval_shrinks_with_more_seeds_and_is_reproducible():
    rng = np.random.default_rng(0)
    few, many = rng.normal(50, 10, 3), rng.normal(50, 10, 300)
    width = lambda x: np.subtract(*bootstrap_ci(x)[::-1])  # noqa: E731
    assert width(many) < width(few) / 3
    assert bootstrap_ci(few) == bootstrap_ci(few)
    lo90, hi90 = bootstrap_ci(many, level=0.9)
    lo95, hi95 = bootstrap_ci(many)
    assert lo95 <= lo90 < hi90 <= hi95


def test_one_seed_gives_a_point_and_bad_input_is_named():
    lo, hi = bootstrap_ci(np.array([[3.0, 4.0]]))
    assert lo.tolist() == hi.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="n >= 1"):
        bootstrap_ci(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="level=1.5"):
        bootstrap_ci(np.ones(3), level=1.5)
