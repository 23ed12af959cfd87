"""agents.genie through its real CLI (subprocess, tiny sizes): collect, train, the held-out table,
resume, and `play` from a PNG file."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# CoinRun (the paper's setting, the default env) where procgen-mirror is installed; it needs a
# separate `--no-deps` install (setup.cfg), so a fresh `.[dev]` install runs the same pipeline on
# MiniGrid pixels instead
HAS_PROCGEN = importlib.util.find_spec("procgen") is not None
ENV = [] if HAS_PROCGEN else ["env=minigrid"]
ENV_LABEL = "procgen/coinrun" if HAS_PROCGEN else "MiniGrid-Empty-5x5-v0@32px_pixels"
TINY = [
    "agent.collect.steps=300", "agent.heldout.steps=300", "agent.heldout.clips=8",
    "agent.heldout.batch_size=8", "agent.clip_frames=5",
    "agent.tokenizer.d_model=32", "agent.tokenizer.n_layer=1", "agent.tokenizer.codebook_size=32",
    "agent.lam.d_model=32", "agent.lam.n_layer=1", "agent.dynamics.d_model=32",
    "agent.dynamics.n_layer=1", "agent.dynamics.maskgit_steps=2",
    "agent.training.tokenizer.steps=4", "agent.training.lam.steps=4",
    "agent.training.dynamics.steps=4", "agent.training.log_every=2",
    "agent.training.tokenizer.batch_size=4", "agent.training.lam.batch_size=4",
    "agent.training.dynamics.batch_size=4", "agent.training.progress=false",
]  # fmt: skip
METRICS = {
    "tokenizer_psnr", "latent_action_nmi", "latent_action_majority_accuracy",
    "lam_codebook_usage", "dynamics_masked_acc", "next_frame_psnr", "delta_t_psnr_t4",
    "rollout_psnr_t4",
}  # fmt: skip


def run_agent(cmd: str, tmp: Path, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "agents.genie", cmd, f"run_dir={tmp / 'run'}",
        f"data_dir={tmp / 'data'}", f"results_dir={tmp / 'results'}", "logger.mode=disabled",
        *TINY, *ENV, *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_collect_train_resume_play(tmp_path: Path) -> None:
    out = run_agent("collect", tmp_path).stdout
    assert "collected" in out
    assert "reusing" in run_agent("collect", tmp_path).stdout

    run_agent("train", tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for part in ("tokenizer", "lam", "dynamics"):
        assert any(f"train/{part}/loss" in r for r in rows), part
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    with (tmp_path / "results" / "genie" / "heldout.csv").open() as f:
        held = list(csv.DictReader(f))
    assert {r["metric"] for r in held} == METRICS
    assert {r["env"] for r in held} == {ENV_LABEL}
    for r in held:
        assert math.isfinite(float(r["value_model"])), r
        assert math.isfinite(float(r["value_baseline"])), r

    # a fresh train over an existing checkpoint is refused; resume continues the step counts
    stale = run_agent("train", tmp_path, ok=False)
    assert stale.returncode != 0 and "resume=true" in stale.stderr
    proc = run_agent("train", tmp_path, "resume=true", "agent.training.dynamics.steps=6")
    assert "resumed from" in proc.stdout and "tokenizer 4, lam 4, dynamics 4" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tok_steps = [r["train/tokenizer/step"] for r in rows if "train/tokenizer/step" in r]
    dyn_steps = [r["train/dynamics/step"] for r in rows if "train/dynamics/step" in r]
    assert tok_steps == [2, 4] and dyn_steps == [2, 4, 6]

    # play from a PNG of another size: exactly len(actions) + 1 frames
    from PIL import Image

    png = tmp_path / "prompt.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(png)
    gif = tmp_path / "out" / "play.gif"
    run_agent("play", tmp_path, f"image={png}", "actions=[0,1,2,7,3]", f"out={gif}")
    with Image.open(gif) as im:
        assert im.n_frames == 6
    assert gif.with_suffix(".png").exists()

    # without an image: a held-out prompt frame
    gif2 = tmp_path / "out" / "heldout.gif"
    run_agent("play", tmp_path, "actions=[1,1]", f"out={gif2}")
    with Image.open(gif2) as im:
        assert im.n_frames == 3


def test_play_rejects_a_bad_action_index(tmp_path: Path) -> None:
    proc = run_agent("play", tmp_path, "actions=[0,8]", ok=False)
    assert proc.returncode != 0
    assert "0..7" in proc.stderr and "8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_coinrun_experiment_builds_app_f_sizes_with_its_own_data_and_rows(tmp_path: Path) -> None:
    """experiment=coinrun holds Genie App. F's sizes, and neither reuses the default config's
    easy-mode frames nor overwrites its result rows."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from agents.genie.agent import build, store_path
    from agents.world_model_common import write_heldout_rows

    over = [f"data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}"]
    with initialize_config_module("configs", version_base="1.3"):
        paper = compose("genie", overrides=["experiment=coinrun", *over])
        default = compose("genie", overrides=over)
    assert (paper.env.distribution_mode, paper.env.num_levels) == ("hard", 10000)
    assert store_path(paper) != store_path(default)  # hard-mode levels in their own store
    m = build(paper)
    assert (m.image_size, m.clip_frames) == (64, 16)
    assert m.tokenizer.cfg.tokens_per_frame == 256  # 64x64 at patch 4
    assert (m.dynamics.cfg.vocab_size, m.dynamics.cfg.num_actions) == (1024, 6)
    assert (m.dynamics.cfg.n_layer, m.dynamics.cfg.d_model, m.dynamics.cfg.maskgit_steps) == (
        12, 512, 25,
    )  # fmt: skip
    assert (m.tokenizer.cfg.n_layer, m.lam.cfg.n_layer, m.lam.cfg.patch) == (8, 8, 16)
    row = {"metric": "tokenizer_psnr", "model": "tokenizer", "baseline": "mean_frame",
           "value_model": 1.0, "value_baseline": 0.0}  # fmt: skip
    write_heldout_rows(default, "genie", [row])
    path = write_heldout_rows(paper, "genie", [{**row, "value_model": 2.0}])
    with open(path) as f:
        envs = sorted(r["env"] for r in csv.DictReader(f))
    label = OmegaConf.select(default, "agent.results_tag")
    assert label == "" and envs == ["procgen/coinrun", "procgen/coinrun@app_f"]
