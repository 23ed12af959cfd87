"""In-context result files: the shared CSV table and its plot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from agents.icl import goal_discovery, plot_curves, read_curves, summary_table, write_curve
from agents.icl_table import main


def rows(path) -> list[tuple[str, str, str, str]]:
    with path.open(newline="") as f:
        return [tuple(r) for r in csv.reader(f)]


def test_write_curve_replaces_rows_of_the_same_agent_and_seed(tmp_path):
    path = tmp_path / "darkroom" / "icl_10x10.csv"
    write_curve(path, "dt", 0, np.array([1.0, 2.0, 3.0]))
    write_curve(path, "ad", 0, np.array([4.0, 5.0, 6.0]))
    write_curve(path, "ad", 1, np.array([7.0, 8.0, 9.0]))
    write_curve(path, "ad", 0, np.array([10.0, 11.0]))  # a rerun with fewer trials
    assert rows(path) == [
        ("agent", "seed", "trial", "mean_reward"),
        ("ad", "0", "1", "10.0000"),
        ("ad", "0", "2", "11.0000"),
        ("ad", "1", "1", "7.0000"),
        ("ad", "1", "2", "8.0000"),
        ("ad", "1", "3", "9.0000"),
        ("dt", "0", "1", "1.0000"),
        ("dt", "0", "2", "2.0000"),
        ("dt", "0", "3", "3.0000"),
    ]
    assert not list(tmp_path.rglob("*.tmp"))


def test_write_curve_refuses_a_table_with_other_columns(tmp_path):
    path = tmp_path / "icl.csv"
    path.write_text("agent,seed,episode,reward\nad,0,1,3.0\n")
    with pytest.raises(ValueError, match=str(path)):
        write_curve(path, "ad", 0, np.array([1.0]))
    assert path.read_text() == "agent,seed,episode,reward\nad,0,1,3.0\n"


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / "icl.csv"
    write_curve(path, "ad", 0, np.linspace(10, 60, 5))
    write_curve(path, "ad", 1, np.linspace(12, 58, 5))
    write_curve(path, "dt", 0, np.full(5, 6.0))
    curves = read_curves(path)
    assert curves["ad"].shape == (2, 5) and curves["dt"].shape == (1, 5)
    png = plot_curves(path, tmp_path / "plots" / "icl.png", optimum=90.05)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_summary_table_gives_mean_and_ci_per_agent(tmp_path, capsys):
    path = tmp_path / "icl.csv"
    write_curve(path, "ad", 0, np.array([10.0, 40.0, 60.0]))
    write_curve(path, "ad", 1, np.array([20.0, 50.0, 80.0]))
    write_curve(path, "dt", 0, np.array([5.0, 5.0, 6.0]))
    table = summary_table(path, trials=(1, 3)).splitlines()
    assert table[0] == "| agent | seeds | trial 1 | trial 3 |"
    ad_first, ad_last = (cell.strip() for cell in table[2].split("|")[3:5])
    assert ad_first.startswith("15.0 [10.0, ") and ad_last.startswith("70.0 [60.0, ")
    assert table[3] == "| dt | 1 | 5.0 [5.0, 5.0] | 6.0 [6.0, 6.0] |"
    with pytest.raises(ValueError, match="trials 1..3, not \\[40\\]"):
        summary_table(path, trials=(1, 40))
    main([str(path), "--trials", "3"])
    assert "| ad | 2 | 70.0 [60.0, 80.0] |" in capsys.readouterr().out


def test_goal_discovery_splits_exploration_from_exploitation():
    returns = np.array(
        [
            [0, 90, 0, 90, 80],  # found in trial 2; trials 4-5: known, reached twice
            [50, 0, 0, 0, 0],  # found in trial 1, then never reached again
            [0, 0, 0, 0, 70],  # never found before trial 4: reached late, not "known"
        ],
        float,
    )
    g = goal_discovery(returns, late_from=4)
    assert g["goals_found_before_late"] == 2  # tasks 0 and 1 by trial 3
    assert g["late_known_share"] == 4 / 6  # trials 4-5 of tasks 0 and 1
    assert g["late_reached_given_known"] == 2 / 4
    assert g["late_return_when_reached"] == (90 + 80 + 70) / 3
    assert g["late_mean_return"] == (90 + 80 + 70) / 6
    with pytest.raises(ValueError, match="late_from=9"):
        goal_discovery(returns, late_from=9)
