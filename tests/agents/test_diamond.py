"""agents.diamond through its real CLI (subprocess, tiny sizes) and its paper config's sizes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "agent.denoiser.channels=[8,8]", "agent.denoiser.depths=[1,1]",
    "agent.denoiser.attn_depths=[false,false]", "agent.denoiser.cond_dim=32",
    "agent.reward_end.channels=[8,8]", "agent.reward_end.depths=[1,1]",
    "agent.reward_end.attn_depths=[false,false]", "agent.reward_end.cond_dim=32",
    "agent.reward_end.lstm_dim=16", "agent.actor_critic.channels=[8,8,8,8]",
    "agent.actor_critic.lstm_dim=16", "agent.imagination.horizon=3",
    "agent.imagination_sampler_steps=1",
    "agent.training.denoiser.steps_first=3", "agent.training.denoiser.steps_per_epoch=2",
    "agent.training.denoiser.batch_size=4", "agent.training.reward_end.steps_first=3",
    "agent.training.reward_end.steps_per_epoch=2", "agent.training.reward_end.batch_size=4",
    "agent.training.reward_end.seq_len=6", "agent.training.actor_critic.steps_first=2",
    "agent.training.actor_critic.steps_per_epoch=2", "agent.training.actor_critic.batch_size=4",
    "agent.loop.collect.first_steps=150", "agent.loop.collect.steps_per_epoch=40",
    "agent.loop.eval.every=1", "agent.loop.eval.episodes=1", "agent.loop.eval.envs=2",
    "agent.loop.progress=false", "agent.heldout.steps=150", "agent.heldout.batch_size=8",
    "agent.heldout.rollout_batch=2", "agent.heldout.rollout_steps=6",
]  # fmt: skip


def run_agent(cmd: str, tmp: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    args = [
        sys.executable, "-m", "agents.diamond", cmd, f"run_dir={tmp / 'run'}",
        f"results_dir={tmp / 'results'}", "logger.mode=disabled", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_eval_and_result_tables(tmp_path: Path) -> None:
    run_agent("train", tmp_path, *TINY, "agent.loop.epochs=2")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for comp in ("denoiser", "reward_end", "actor_critic"):
        assert any(f"train/{comp}/loss" in r for r in rows), comp
    with (tmp_path / "results" / "diamond" / "imagination_rl.csv").open() as f:
        rl = list(csv.DictReader(f))
    assert {r["agent"] for r in rl} == {"diamond", "random"}
    assert sorted({int(r["env_steps"]) for r in rl}) == [150, 190]
    with (tmp_path / "results" / "diamond" / "heldout.csv").open() as f:
        metrics = {r["metric"] for r in csv.DictReader(f)}
    assert {"next_frame_psnr_db", "action_sensitivity_psnr_db", "denoising_loss"} <= metrics
    assert any(m.startswith("rollout_mae_k") for m in metrics)
    assert "epoch 2: return" in run_agent("eval", tmp_path, *TINY, "agent.loop.epochs=2").stdout


def test_paper_experiment_builds_the_official_denoiser_size() -> None:
    """experiment=atari100k: the 4.41 M-parameter denoiser (reference world_models.md §2.2)."""
    from hydra import compose, initialize_config_module

    from agents.diamond.agent import build

    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("diamond", overrides=["experiment=atari100k", "env=atari", "game=Breakout"])
    models = build(cfg, num_actions=4, image_shape=(3, 64, 64))
    millions = sum(p.numel() for p in models.denoiser.parameters()) / 1e6
    assert abs(millions - 4.41) / 4.41 < 0.03, millions
    assert models.learner.cfg.horizon == 15 and models.learner.target is None


def test_model_free_baseline_trains_on_real_steps_only(tmp_path: Path) -> None:
    """model_free=true: no world model, the actor-critic's real steps follow the collection
    budget (150 then 40 per epoch, 4 envs x 3 steps per update), rows `diamond_model_free`."""
    proc = run_agent("train", tmp_path, *TINY, "agent.loop.epochs=2", "model_free=true",
                     "run_dir=runs/${run_name}")  # fmt: skip
    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["minigrid__diamond_model_free__0"]
    rows = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert any("train/actor_critic/loss" in r for r in rows)
    assert not any("train/denoiser/loss" in r for r in rows)
    with (tmp_path / "results" / "diamond" / "imagination_rl.csv").open() as f:
        rl = list(csv.DictReader(f))
    assert {r["agent"] for r in rl} == {"diamond_model_free"}
    assert [int(r["env_steps"]) for r in rl] == [156, 192]  # 13 updates of 12, then 3
    assert not (tmp_path / "results" / "diamond" / "heldout.csv").exists()
    assert "after 192 env steps" in proc.stdout


def test_atari_breakout_runs_end_to_end(tmp_path: Path) -> None:
    """env=atari game=Breakout: async Atari envs, 4 actions, the Atari 100k preprocessing (frames
    at 32 px here to stay cheap), both tables written."""
    run_agent("train", tmp_path, *TINY, "env=atari", "game=Breakout", "env.image_size=32",
              "agent.loop.epochs=1", "agent.loop.eval.envs=1", "agent.loop.eval.every=0",
              "agent.heldout.rollout_steps=4")  # fmt: skip
    with (tmp_path / "results" / "diamond" / "heldout.csv").open() as f:
        held = list(csv.DictReader(f))
    assert {r["env"] for r in held} == {"atari/Breakout@32px"}
    assert all(r["value_model"] not in ("nan", "") for r in held)
