"""`render` of both world-model agents and `agents.world_model_compare` on tiny trained runs."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from agents.world_model_compare import main as compare
from tests.agents import test_delta_iris as iris
from tests.agents import test_diamond as diamond


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_render_and_side_by_side(tmp_path: Path) -> None:
    iris_dir, diamond_dir = tmp_path / "iris", tmp_path / "diamond"
    iris_dir.mkdir()
    diamond_dir.mkdir()
    iris.run_agent("train", iris_dir, *iris.TINY, "agent.loop.epochs=1")
    diamond.run_agent("train", diamond_dir, *diamond.TINY, "agent.loop.epochs=1")

    # render: real over imagined, every step of the GIF
    proc = iris.run_agent("render", iris_dir, *iris.TINY, "agent.heldout.strip_steps=5")
    assert "mean abs pixel error per imagined step" in proc.stdout
    gif = next((iris_dir / "results" / "delta_iris").glob("imagination_strip_*.gif"))
    assert Image.open(gif).n_frames == 6  # the start frame + 5 imagined
    diamond.run_agent("render", diamond_dir, *diamond.TINY, "agent.heldout.strip_steps=8",
                      "agent.heldout.strip_every=2")  # fmt: skip
    png = next((diamond_dir / "results" / "diamond").glob("imagination_strip_*.png"))
    assert Image.open(png).size[0] > 2 * Image.open(png).size[1]

    out = tmp_path / "cmp"
    result = compare([
        "--runs", str(iris_dir / "run"), str(diamond_dir / "run"), "--out", str(out),
        "--out-run-dir", str(tmp_path / "cmp_run"), "--heldout-steps", "150", "--burn-in", "2",
        "--horizon", "20", "--rollouts", "2", "--strip-steps", "4", "--cost-steps", "1",
    ])  # fmt: skip
    side = read_csv(out / "side_by_side.csv")
    by = {(r["metric"], r["agent"]): r for r in side}
    for agent, components in (("delta_iris", ("tokenizer", "world_model", "actor_critic")),
                              ("diamond", ("denoiser", "reward_end", "actor_critic"))):  # fmt: skip
        for m in ("next_frame_psnr_db", "next_frame_mae", "reward_balanced_accuracy",
                  "imagined_env_steps_per_s"):  # fmt: skip
            assert (m, agent) in by, (m, agent)
        for c in components:
            assert float(by[(f"train_steps_per_s_{c}", agent)]["value"]) > 0
    # the same held-out windows for both: identical copy-last baselines
    assert (by[("next_frame_psnr_db", "delta_iris")]["value_baseline"]
            == by[("next_frame_psnr_db", "diamond")]["value_baseline"])  # fmt: skip
    curve = read_csv(out / "rollout_error.csv")
    ks = {a: max(int(r["k"]) for r in curve if r["agent"] == a) for a in ("delta_iris", "diamond")}
    assert ks == {"diamond": 20, "delta_iris": 14}  # Δ-IRIS stops at max_blocks 16 - burn-in 2
    assert len(result["curves"]["diamond"]["model"]) == 20
    assert (out / "rollout_error.png").exists() and (out / "strip.png").exists()
