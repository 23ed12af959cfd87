"""Action sampling: nucleus vs the official RA-DT quantile cut, argmax at temperature 0."""

from __future__ import annotations

import pytest
import torch

from rl_core.nn.sampling import quantile_cut, sample_logits


def draws(logits: torch.Tensor, n: int = 2000, **kw) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return sample_logits(logits.expand(n, -1), generator=gen, **kw)


def test_quantile_cut_keeps_the_two_best_of_five_actions():
    logits = torch.tensor([[3.0, 0.0, 2.0, 1.0, -1.0]])  # median 1.0: keep 3.0 and 2.0
    assert torch.isfinite(quantile_cut(logits, 0.5)).tolist() == [[True, False, True, False, False]]
    got = draws(logits, top_p=0.5, top_p_mode="quantile")
    counts = torch.bincount(got, minlength=5)
    assert counts[[1, 3, 4]].sum() == 0 and counts[0] > 0 and counts[2] > 0
    # renormalised softmax over the two kept: p(0) = 1 / (1 + e^-1) = 0.73
    assert counts[0] / len(got) == pytest.approx(0.731, abs=0.03)


def test_nucleus_is_greedy_where_quantile_still_samples():
    logits = torch.tensor([[4.0, 0.0, 1.0, 0.5, -1.0]])  # p(0) = 0.90 > 0.5
    assert (draws(logits, top_p=0.5) == 0).all()  # nucleus keeps only the best action
    assert (draws(logits, top_p=0.5, top_p_mode="quantile") == 2).any()


def test_quantile_cut_keeps_a_row_whose_quantile_is_its_maximum():
    tied = torch.zeros(1, 5)
    assert torch.isfinite(quantile_cut(tied, 0.5)).all()
    assert set(draws(tied, top_p=0.5, top_p_mode="quantile").tolist()) == {0, 1, 2, 3, 4}


def test_temperature_zero_is_argmax_and_bad_mode_is_named():
    logits = torch.tensor([[0.1, 0.3, 0.2]])
    assert sample_logits(logits, 0.0, top_p=0.5, top_p_mode="quantile").item() == 1
    with pytest.raises(ValueError, match="top_p_mode='top2'"):
        sample_logits(logits, top_p_mode="top2")


def test_agent_config_rejects_an_unknown_top_p_mode_before_training():
    from agents.dt import DTConfig
    from agents.radt import RADTConfig
    from rl_core.config import ConfigError

    assert RADTConfig(top_p_mode="quantile").top_p_mode == "quantile"
    with pytest.raises(ConfigError, match="agent.top_p_mode='top2'"):
        DTConfig(top_p_mode="top2")
