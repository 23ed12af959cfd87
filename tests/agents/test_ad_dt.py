"""End-to-end tests of the in-context agents through their real CLIs (subprocesses, tiny sizes)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.darkroom import DarkRoomTasks
from rl_core.rollout import RandomPolicy, rollout

REPO = Path(__file__).resolve().parents[2]
TINY_SOURCE = ["source.episodes=30", "source.histories_per_task=1"]


def run_agent(module: str, cmd: str, tmp: Path, *overrides: str, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    args = [
        sys.executable, "-m", module, cmd,
        f"data_dir={tmp / 'data'}", f"run_dir={tmp / 'run'}", f"results_dir={tmp / 'results'}",
        "logger.mode=disabled", "train.progress=false", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def icl_curve(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["icl/mean_reward"] for r in rows if "icl/mean_reward" in r]


@pytest.mark.parametrize("module", ["agents.ad", "agents.dt"])
def test_agent_train_eval_and_results_table(module: str, tmp_path: Path) -> None:
    agent = module.split(".")[1]
    overrides = [*TINY_SOURCE, "train.steps=20", "train.batch_size=4", "agent.eval_trials=3"]
    run_agent(module, "train", tmp_path, *overrides)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.pt").exists()
    assert (run_dir / "config.yaml").exists()
    assert len(icl_curve(run_dir)) == 3
    table = tmp_path / "results" / "darkroom" / "icl_10x10.csv"
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["agent", "seed", "trial", "mean_reward"]
    assert [(r["agent"], r["seed"], r["trial"]) for r in rows] == [
        (agent, "0", str(k)) for k in (1, 2, 3)
    ]
    assert (tmp_path / "results" / "darkroom" / "icl_10x10.png").stat().st_size > 0
    # `eval` reloads the checkpoint and evaluates again through the same path
    proc = run_agent(module, "eval", tmp_path, *overrides)
    assert "return_last_trial" in proc.stdout


def test_unknown_source_key_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "agents.ad", "train", "source.episodez=3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "episodez" in proc.stderr and "episodes" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_short_ad_training_beats_random_on_held_out_goals(tmp_path: Path) -> None:
    """AD trained for ~1000 steps on Q-learning histories acts far better than random on the
    20 held-out goals: the learning test of the foundation issue."""
    run_agent(
        "agents.ad", "train", tmp_path, "source.episodes=40", "source.histories_per_task=1",
        "agent.d_model=32", "train.steps=1000", "train.batch_size=16", "train.lr=2e-3",
        "agent.eval_trials=10", "train.log_every=250", timeout=600,
    )  # fmt: skip
    ad_mean = float(np.mean(icl_curve(tmp_path / "run")))
    tasks = DarkRoomTasks()
    random_result = rollout(
        tasks.env_fns("eval"), RandomPolicy(tasks_action_space(), seed=0), episodes=10, seed=0,
        progress=False,
    )  # fmt: skip
    random_mean = float(random_result.returns.mean())
    assert ad_mean > random_mean + 5.0, (ad_mean, random_mean)


def tasks_action_space():
    import gymnasium as gym

    return gym.spaces.Discrete(5)


def test_ad_collects_from_the_ppo_source(tmp_path: Path) -> None:
    """`source=ppo` gives AD/DT the paper's source: one PPO learner per training goal."""
    proc = run_agent(
        "agents.ad", "collect", tmp_path, "source=ppo", "source.steps_per_goal=200",
        "source.rollout_len=100", "source.num_minibatches=2", "source.update_epochs=1",
    )  # fmt: skip
    assert "160 episodes, 16000 steps" in proc.stdout  # 80 goals x 2 episodes of 100 steps
    assert "ppo_" in proc.stdout
