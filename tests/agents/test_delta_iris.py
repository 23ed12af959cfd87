"""agents.delta_iris through its real CLI (subprocesses, tiny sizes): train, resume, eval, tables."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "agent.tokenizer.channels=8", "agent.tokenizer.frame_cnn_channels=8",
    "agent.tokenizer.codebook_size=32", "agent.world_model.d_model=32",
    "agent.world_model.n_layer=1", "agent.world_model.frame_cnn_channels=8",
    "agent.actor_critic.channels=[8,8,8,8]", "agent.actor_critic.lstm_dim=16",
    "agent.imagination.horizon=4", "agent.imagination.burn_in=1",
    "agent.training.tokenizer.steps_first=3", "agent.training.tokenizer.steps_per_epoch=2",
    "agent.training.tokenizer.batch_size=4", "agent.training.tokenizer.seq_len=4",
    "agent.training.world_model.steps_first=3", "agent.training.world_model.steps_per_epoch=2",
    "agent.training.world_model.batch_size=4", "agent.training.world_model.seq_len=4",
    "agent.training.actor_critic.steps_first=2", "agent.training.actor_critic.steps_per_epoch=2",
    "agent.training.actor_critic.batch_size=4",
    "agent.loop.collect.first_steps=150", "agent.loop.collect.steps_per_epoch=40",
    "agent.loop.eval.every=1", "agent.loop.eval.episodes=1", "agent.loop.eval.envs=2",
    "agent.heldout.steps=120", "agent.heldout.batch_size=8", "agent.heldout.imagined_k=2",
    "agent.loop.progress=false",
]  # fmt: skip


def run_agent(cmd: str, tmp: Path, *overrides: str, timeout: int = 300, ok: bool = True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    args = [
        sys.executable, "-m", "agents.delta_iris", cmd,
        f"run_dir={tmp / 'run'}", f"results_dir={tmp / 'results'}", "logger.mode=disabled",
        *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_train_resume_eval_and_result_tables(tmp_path: Path) -> None:
    run_agent("train", tmp_path, *TINY, "agent.loop.epochs=2")
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "config.yaml").exists()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/step" in r]
    for comp in ("tokenizer", "world_model", "actor_critic"):
        assert any(f"train/{comp}/loss" in r for r in train_rows), comp
    assert [r["eval/step"] for r in rows if "eval/step" in r] == [1, 2]

    rl = read_csv(tmp_path / "results" / "delta_iris" / "imagination_rl.csv")
    assert list(rl[0]) == ["env", "agent", "seed", "env_steps", "return"]
    assert {r["agent"] for r in rl} == {"delta_iris", "random"}
    steps = sorted({int(r["env_steps"]) for r in rl if r["agent"] == "delta_iris"})
    assert steps == [150, 190]
    assert (tmp_path / "results" / "delta_iris" / "imagination_rl.png").stat().st_size > 0
    held = read_csv(tmp_path / "results" / "delta_iris" / "heldout.csv")
    assert list(held[0]) == ["env", "metric", "model", "baseline", "value_model", "value_baseline"]
    metrics = {r["metric"] for r in held}
    assert "next_frame_mse" in metrics and any(m.startswith("imagined") for m in metrics)
    assert {r["env"] for r in held} == {"MiniGrid-Empty-5x5-v0@32px_pixels"}

    # resume: two more epochs continue from epoch 2 (the replay store is kept)
    proc = run_agent("train", tmp_path, *TINY, "agent.loop.epochs=4", "resume=true")
    assert "resumed from" in proc.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/step"] for r in rows if "eval/step" in r] == [1, 2, 3, 4]
    rl = read_csv(tmp_path / "results" / "delta_iris" / "imagination_rl.csv")
    assert sorted(int(r["env_steps"]) for r in rl if r["agent"] == "delta_iris") == [
        150,
        190,
        230,
        270,
    ]

    proc = run_agent("eval", tmp_path, *TINY, "agent.loop.epochs=4")
    assert "epoch 4: return" in proc.stdout


def test_bad_configs_fail_with_the_key_named(tmp_path: Path) -> None:
    proc = run_agent("train", tmp_path, *TINY, "agent.imagination.horizon=40", ok=False)
    assert proc.returncode != 0 and "agent.world_model.max_blocks" in proc.stderr
    proc = run_agent("train", tmp_path, "env.obs_type=symbolic", ok=False)
    assert proc.returncode != 0 and "env.obs_type=pixels" in proc.stderr
    proc = run_agent("train", tmp_path, "game=Pongg", ok=False)
    assert proc.returncode == 2 and "Did you mean 'Pong'" in proc.stderr


@pytest.mark.parametrize(
    "env_overrides",
    [
        ["env=atari", "game=Pong", "env.image_size=32"],
        ["env=crafter", "env.size=32", "env.area=[32,32]"],
    ],
    ids=["atari_pong", "crafter"],
)
def test_pixel_envs_run_end_to_end(tmp_path: Path, env_overrides: list[str]) -> None:
    run_agent("train", tmp_path, *TINY, *env_overrides, "agent.loop.epochs=1",
              "agent.loop.eval.envs=1", "agent.loop.eval.every=0", timeout=600)  # fmt: skip
    held = read_csv(tmp_path / "results" / "delta_iris" / "heldout.csv")
    assert held and all(r["value_model"] not in ("nan", "") for r in held)


@pytest.mark.parametrize("experiment", ["atari100k", "crafter"])
def test_paper_experiments_build_the_official_sizes(experiment: str) -> None:
    """experiment=atari100k|crafter compose and build models of the official parameter counts
    (vmicheli/delta-iris, measured in reference world_models.md §1.1: WM 3.58 M Atari, 11.8 M
    Crafter; tokenizer 4.13 M Atari with the full 18-action set)."""
    from hydra import compose, initialize_config_module

    from agents.delta_iris.agent import build

    overrides = [f"experiment={experiment}"]
    overrides += ["env=atari", "game=Breakout"] if experiment == "atari100k" else []
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("delta_iris", overrides=overrides)
    assert cfg.env.name == ("atari" if experiment == "atari100k" else "crafter")
    models = build(
        cfg, num_actions=18 if experiment == "atari100k" else 17, image_shape=(3, 64, 64)
    )
    millions = {
        name: sum(p.numel() for p in getattr(models, name).parameters()) / 1e6
        for name in ("tokenizer", "world_model")
    }
    expected_wm = 3.58 if experiment == "atari100k" else 11.8
    assert abs(millions["world_model"] - expected_wm) / expected_wm < 0.03, millions
    if experiment == "atari100k":
        assert abs(millions["tokenizer"] - 4.13) / 4.13 < 0.03, millions
    assert models.learner.cfg.horizon == (20 if experiment == "atari100k" else 15)


@pytest.mark.parametrize("agent", ["delta_iris", "diamond"])
def test_cpu_profile_follows_the_env_and_yields_to_experiments(agent: str) -> None:
    """64x64-frame envs get 32x32 frames by default (cpu_profile/<env>.yaml); the paper
    experiments and an explicit override get 64x64; the result label says which."""
    from hydra import compose, initialize_config_module

    from agents.world_model_common import env_label

    def env_of(*overrides: str):
        with initialize_config_module("configs", version_base="1.3"):
            return compose(agent, overrides=list(overrides))

    cfg = env_of("env=atari", "game=Pong")
    assert cfg.env.image_size == 32 and cfg.agent.loop.eval.episodes == 2
    assert env_label(cfg.env) == "atari/Pong@32px"
    assert env_of("env=atari", "game=Pong", "env.image_size=64").env.image_size == 64
    paper = env_of("env=atari", "game=Pong", "experiment=atari100k")
    assert paper.env.image_size == 64 and env_label(paper.env) == "atari/Pong"
    assert env_of("env=crafter").env.size == 32
    assert env_of().env.image_size == 32 and env_of().agent.loop.eval.episodes == 8  # MiniGrid
    if agent == "delta_iris":
        assert env_of("experiment=crafter").env.size == 64


def test_fresh_train_refuses_an_earlier_runs_replay(tmp_path: Path) -> None:
    (tmp_path / "run" / "replay").mkdir(parents=True)
    proc = run_agent("train", tmp_path, *TINY, ok=False)
    assert proc.returncode == 2 and "pass resume=true" in proc.stderr
    assert "run" in proc.stderr and "replay" in proc.stderr
