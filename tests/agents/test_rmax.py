"""R-max on repeated matrix games and the shared theory-of-mind evaluation (agents.tom_eval)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.rmax import HistoryStates, RMaxConfig, RMaxPolicy
from agents.tom_eval import (
    COLUMNS,
    mean_ci,
    play_games,
    read_summary,
    score_game,
    summarize,
    t_quantile_975,
    write_markdown,
    write_summary,
)
from envs.matrix_games import GAMES, SingleAgentMatrixGame

REPO = Path(__file__).resolve().parents[2]
ROCK, PAPER, SCISSORS = range(3)


def rmax_rows(game: str, partner: str, seeds=range(10), rounds: int = 100, **kw):
    g = GAMES[game]
    return play_games(
        lambda: RMaxPolicy.for_game(g, RMaxConfig(), seed=1), g, partner, seeds, rounds, "rmax",
        partner_kwargs=kw,
    )  # fmt: skip


# ----------------------------------------------------------------------------- R-max
def test_history_states_count_and_shift():
    space = HistoryStates(3, 3, history=2)
    assert len(space) == 1 + 9 + 81
    s = space.nxt[0, ROCK, PAPER]  # () -> ((R, P),)
    assert space.states[s] == (ROCK * 3 + PAPER,)
    s = space.nxt[space.nxt[s, SCISSORS, ROCK], PAPER, PAPER]  # keeps the last two pairs
    assert space.states[s] == (SCISSORS * 3 + ROCK, PAPER * 3 + PAPER)


def test_rmax_learns_against_a_constant_partner():
    rows = rmax_rows("rps", "constant", action="rock")
    s = summarize(rows)[0]
    assert s["regret_per_step"] < 0.15  # random play: regret 1 per step
    assert s["tom_accuracy"] > 0.95
    # with m = 1 the model of a constant partner is exact after exploring: the last half of
    # every game is won (paper against rock) every round
    env = SingleAgentMatrixGame("rps", "constant", rounds=100, seed=0)
    policy = RMaxPolicy.for_game(GAMES["rps"], seed=0)
    policy.reset(1)
    obs, _ = env.reset()
    actions, predictions = [], []
    for _ in range(100):
        a = policy.act(obs[None])
        predictions.append(int(policy.last_predictions()[0]))
        obs, r, _, done, _ = env.step(int(a[0]))
        policy.observe(a, np.array([r]), np.array([done]))
        actions.append(int(a[0]))
    assert actions[50:] == [PAPER] * 50
    assert predictions[50:] == [ROCK] * 50


def test_rmax_beats_random_play_against_rps_tit_for_tat():
    s = summarize(rmax_rows("rps", "tit_for_tat"))[0]
    assert s["regret_per_step"] < 0.3 and s["tom_accuracy"] > 0.85


def test_rmax_games_are_reproducible():
    batched = rmax_rows("bos", "tit_for_tat", seeds=[0, 1, 2], rounds=30)
    again = rmax_rows("bos", "tit_for_tat", seeds=[0, 1, 2], rounds=30)
    assert batched == again
    assert all(r["invalid_answers"] == 0 and r["retries"] == 0 for r in batched)


# ----------------------------------------------------------------------------- metrics
class PaperPolicy:
    """Always paper, always predicts rock; counts one invalid answer per round (scalar counters)."""

    def __init__(self) -> None:
        self.invalid_answers = 0
        self.retries = 0

    def reset(self, n_envs: int) -> None:
        self.n = n_envs

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.invalid_answers += 1
        return np.full(self.n, PAPER)

    def observe(self, actions, rewards, dones) -> None:
        self.retries += int(np.asarray(dones).sum())

    def last_predictions(self) -> np.ndarray:
        return np.full(self.n, ROCK)


def test_play_games_scores_a_known_policy_exactly():
    rows = play_games(PaperPolicy, "rps", "constant", [3, 4], 10, "paper")
    assert [r["seed"] for r in rows] == [3, 4]
    for r in rows:
        assert list(r) == list(COLUMNS)
        assert (r["mean_reward"], r["regret_per_step"], r["tom_accuracy"]) == (1.0, 0.0, 1.0)
        assert r["tom_regret_per_step"] == 0.0
        assert (r["invalid_answers"], r["retries"]) == (10, 1)  # one fresh policy per seed
    # against RPS-TFT paper loses to scissors from round 2; V* = T (see the oracle tests)
    (r,) = play_games(PaperPolicy, "rps", "tit_for_tat", [0], 10, "paper")
    assert r["mean_reward"] == pytest.approx((1 - 9) / 10) and r[
        "regret_per_step"
    ] == pytest.approx(1.8)
    assert r["tom_accuracy"] == pytest.approx(0.1)


def test_score_game_tom_regret_and_missing_predictions():
    game = GAMES["rps"]
    history = np.array([[PAPER, ROCK], [PAPER, SCISSORS], [ROCK, PAPER]])
    preds = np.array([ROCK, PAPER, -1])
    m = score_game(game, history, preds, optimal=3.0)
    assert m["mean_reward"] == pytest.approx(-1 / 3)
    assert m["regret_per_step"] == pytest.approx((3 + 1) / 3)
    assert m["tom_accuracy"] == pytest.approx(1 / 3)
    # BR(rock)=paper vs rock: +1; BR(paper)=scissors vs scissors: 0; no prediction: mean 0
    assert m["tom_regret_per_step"] == pytest.approx((3 - 1) / 3)


def test_summary_statistics():
    mean, ci, se = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / np.sqrt(3))
    assert ci == pytest.approx(4.303 * se)
    assert t_quantile_975(19) == 2.093 and 1.96 < t_quantile_975(500) < t_quantile_975(100) < 1.99


def test_write_summary_replaces_rows_of_the_same_key_atomically(tmp_path):
    path = tmp_path / "tom" / "summary.csv"
    rows = rmax_rows("rps", "constant", seeds=[0, 1], rounds=10)
    write_summary(rows, path)
    other = play_games(PaperPolicy, "rps", "constant", [0], 10, "llm:openai:x")
    write_summary(other, path)
    rerun = [{**rows[0], "mean_reward": 0.5}]
    table = write_summary(rerun, path)
    assert [(r["agent"], r["seed"]) for r in table] == [
        ("llm:openai:x", 0),
        ("rmax", 0),
        ("rmax", 1),
    ]
    assert table[1]["mean_reward"] == 0.5
    assert table[2]["regret_per_step"] == pytest.approx(rows[1]["regret_per_step"], abs=1e-4)
    with path.open() as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    assert not list(tmp_path.rglob("*.tmp"))
    bad = tmp_path / "bad.csv"
    bad.write_text("game,seed\nrps,0\n")
    with pytest.raises(ValueError, match="expected"):
        write_summary(rows, bad)
    page = write_markdown(table, tmp_path / "tom" / "page.md", title="T", reference={("rps", "constant"): {"regret_per_step": (0.083, 0.004)}})  # fmt: skip
    assert "| rps | constant | `rmax` | 2 | 10 |" in page and "0.083 ± 0.004" in page


# ----------------------------------------------------------------------------- CLI
def run_rmax(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "agents.rmax", *args, "logger.mode=disabled",
        f"results_dir={tmp / 'results'}", f"run_dir={tmp / 'run'}", "train.progress=false",
        "env.games=3", "env.rounds=12",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)


def test_cli_eval_and_sweep_write_the_table_page_and_metrics(tmp_path):
    proc = run_rmax(tmp_path, "eval", "game=pd", "partner=tit_for_tat")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = read_summary(tmp_path / "results" / "tom" / "summary.csv")
    assert [(r["game"], r["partner"], r["seed"], r["rounds"]) for r in table] == [
        ("pd", "tit_for_tat", s, 12) for s in range(3)
    ]
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["eval/step"] for m in metrics] == [0, 1, 2]
    assert all("eval/regret_per_step" in m for m in metrics)
    proc = run_rmax(tmp_path, "sweep", "sweep.games=[rps]", "sweep.partners=[constant,wsls]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = read_summary(tmp_path / "results" / "tom" / "summary.csv")
    assert sorted({(r["game"], r["partner"]) for r in table}) == [
        ("pd", "tit_for_tat"), ("rps", "constant"), ("rps", "wsls"),
    ]  # fmt: skip
    page = (tmp_path / "results" / "tom" / "rmax.md").read_text()
    assert "| rps | wsls | `rmax` | 3 | 12 |" in page and "| pd | tit_for_tat |" in page
    bad = run_rmax(tmp_path, "eval", "partner=constant", "partner.action=lizard")
    assert bad.returncode != 0 and "lizard" in bad.stderr and "Traceback" not in bad.stderr
