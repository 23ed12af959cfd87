"""Return-Aligned DT: zero-initialised conditioning, step causality, the alignment protocol."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agents.alignment import COLUMNS, return_targets, summary_table, write_rows
from agents.return_aligned_dt import RADTConfig, ReturnAlignedDT


def batch(b: int = 3, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 10, (b, n, 2), generator=g)
    action = torch.randint(0, 5, (b, n), generator=g)
    rtg = torch.randint(0, 90, (b, n), generator=g).float()
    timestep = torch.arange(n).expand(b, n)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, :2] = False  # a left-padded window
    return rtg, obs, action, timestep, mask


def model(seqra: bool, stepra: bool) -> ReturnAlignedDT:
    torch.manual_seed(0)
    cfg = RADTConfig(seqra=seqra, stepra=stepra, d_model=32, n_head=4, dropout=0.0)
    return ReturnAlignedDT((10, 10), 5, 100, cfg).eval()


class PlainNorm(nn.Module):
    """An adaptive norm with its modulation removed: the base model StepRA starts from."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def test_zero_initialised_stepra_makes_the_first_forward_equal_to_the_base_model() -> None:
    with_stepra = model(seqra=True, stepra=True)
    base = copy.deepcopy(with_stepra)
    for block in base.blocks:
        block.norms = nn.ModuleList([PlainNorm(n.norm) for n in block.norms])
    x = batch()
    torch.testing.assert_close(with_stepra(*x), base(*x))
    for block in with_stepra.blocks:  # once the modulation learns, the returns steer the norms
        for norm in block.norms:
            nn.init.normal_(norm.modulation[1].weight, std=0.1)
    assert not torch.allclose(with_stepra(*x), base(*x))


def test_seqra_gate_starts_as_identity() -> None:
    m = model(seqra=True, stepra=False)
    block = m.blocks[0]
    x, ctx = torch.randn(2, 4, 32), torch.randn(2, 3, 32)
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    ca = block.cross(x, ctx, mask, value_context=ctx)
    torch.testing.assert_close(block._seqra(x, ctx, ctx, mask), ca)


@pytest.mark.parametrize("seqra,stepra", [(True, True), (True, False), (False, True)])
def test_future_returns_do_not_change_earlier_predictions(seqra: bool, stepra: bool) -> None:
    m = model(seqra, stepra)
    if stepra:  # give the modulation weights so that returns matter through StepRA too
        for block in m.blocks:
            for norm in block.norms:
                nn.init.normal_(norm.modulation[1].weight, std=0.1)
    rtg, obs, action, timestep, mask = batch()
    out = m(rtg, obs, action, timestep, mask)
    changed = rtg.clone()
    changed[:, 4:] += 50.0
    out2 = m(changed, obs, action, timestep, mask)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:]), "returns must condition the policy"


def test_targets_span_the_5th_to_95th_percentile_of_dataset_returns() -> None:
    returns = np.arange(101, dtype=float)
    assert np.allclose(return_targets(returns, 7), np.linspace(5, 95, 7))


def test_alignment_rows_replace_the_same_run_and_keep_others(tmp_path: Path) -> None:
    path = tmp_path / "alignment.csv"
    write_rows(path, "darkroom_10x10", "dt", 0, [10.0, 50.0], [12.0, 40.0])
    write_rows(path, "darkroom_10x10", "return_aligned_dt", 0, [10.0, 50.0], [10.5, 49.0])
    write_rows(path, "darkroom_10x10", "dt", 0, [10.0, 50.0], [11.0, 45.0])
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    got = {(r["agent"], r["target"]): (r["achieved"], r["abs_error"]) for r in rows}
    assert got == {
        ("dt", "10.00"): ("11.00", "1.00"),
        ("dt", "50.00"): ("45.00", "5.00"),
        ("return_aligned_dt", "10.00"): ("10.50", "0.50"),
        ("return_aligned_dt", "50.00"): ("49.00", "1.00"),
    }


def test_summary_table_averages_errors_per_run_then_over_seeds(tmp_path: Path) -> None:
    path = tmp_path / "alignment.csv"
    write_rows(path, "darkroom_10x10", "dt", 0, [10.0, 50.0], [12.0, 40.0])  # errors 2, 10 -> 6
    write_rows(path, "darkroom_10x10", "dt", 1, [10.0, 50.0], [10.0, 46.0])  # errors 0, 4 -> 2
    table = summary_table(path)
    assert "| darkroom_10x10 | dt | 2 | 4.00 ± 2.00 |" in table


def test_train_then_align_cli_writes_the_alignment_table(tmp_path: Path) -> None:
    from tests.agents.test_ad_dt import run_agent

    tiny = ["experiment=alignment", "source.episodes=20", "source.histories_per_task=2"]
    run_agent(
        "agents.return_aligned_dt", "train", tmp_path, *tiny, "train.steps=10",
        "train.batch_size=4", "agent.num_targets=3",
    )  # fmt: skip
    run_agent("agents.dt", "train", tmp_path, *tiny, "train.steps=10", "train.batch_size=4",
              "agent.eval_trials=1", "run_dir=" + str(tmp_path / "dt_run"))  # fmt: skip
    run_agent("agents.dt", "align", tmp_path, *tiny, "agent.num_targets=3",
              "run_dir=" + str(tmp_path / "dt_run"))  # fmt: skip
    with (tmp_path / "results" / "return_alignment" / "alignment.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["agent"] for r in rows}) == ["dt", "return_aligned_dt"]
    assert len(rows) == 6
