"""Logger: the JSONL mirror, a real offline W&B run (read back with ``wandb leet``), and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl_core.config import ConfigError
from rl_core.logging import (
    Logger,
    LoggerConfig,
    read_metrics,
    resolve_mode,
    wandb_run_id,
)
from rl_core.plot import main as plot_main
from rl_core.plot import plot_run

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    {"train/loss": 1.0, "train/step": 0},
    {"train/loss": 0.5, "train/lr": 1e-3, "perf/steps_per_s": 120.0, "train/step": 10},
    {"eval/return": 3.0, "eval/step": 10},
    {"icl/return": 1.0, "icl/trial": 0},
    {"icl/return": 4.0, "icl/trial": 1},
    {"train/loss": 0.25, "train/step": 20},
]
CONFIG = {
    "seed": 0,
    "agent": {"d_model": 8, "n_tokens": 16},
    "logger": {"mode": "offline", "api_key": "s3cr3t-key"},
    "hf_token": "s3cr3t-token",
}


@pytest.fixture
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every W&B file under tmp_path and let the mode argument alone decide."""
    home = tmp_path / "wandb_home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "RANK"):
        monkeypatch.delenv(var, raising=False)
    return home


def log_all(logger: Logger) -> None:
    for row in ROWS:
        logger.log(row)
    logger.summary({"eval/return_max": 3.0})


def without_time(rows: list[dict]) -> list[dict]:
    assert all(isinstance(r.pop("time"), float) for r in rows)
    return rows


def test_disabled_mode_writes_jsonl_and_summary_but_no_wandb_files(
    tmp_path: Path, wandb_home: Path
) -> None:
    run_dir = tmp_path / "run"
    with Logger(LoggerConfig(mode="disabled"), run_dir, "dr__ad__0", CONFIG) as logger:
        log_all(logger)
    assert without_time(read_metrics(run_dir)) == ROWS
    assert json.loads((run_dir / "summary.json").read_text()) == {"eval/return_max": 3.0}
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl", "summary.json"]
    assert not wandb_home.exists()

    # A resumed run appends to the same file and keeps its summary.
    with Logger({"mode": "disabled"}, run_dir, "dr__ad__0", CONFIG) as logger:
        logger.log({"train/loss": 0.1, "train/step": 30})
        logger.summary({"train/final": 0.1})
    assert len(read_metrics(run_dir)) == len(ROWS) + 1
    assert json.loads((run_dir / "summary.json").read_text()) == {
        "eval/return_max": 3.0,
        "train/final": 0.1,
    }


def test_rows_must_carry_their_step_axis_and_be_numbers(tmp_path: Path, wandb_home: Path) -> None:
    with Logger(LoggerConfig(mode="disabled"), tmp_path, "r", {}) as logger:
        with pytest.raises(ValueError, match="'eval/step'"):
            logger.log({"eval/return": 1.0, "train/step": 3})
        with pytest.raises(ValueError, match="'train/step'"):
            logger.log({"perf/steps_per_s": 1.0})
        with pytest.raises(TypeError, match="train/loss"):
            logger.log({"train/loss": "low", "train/step": 1})
        logger.log({"collect/episodes": 4})  # other namespaces need no axis
    assert [r["collect/episodes"] for r in read_metrics(tmp_path)] == [4]


def test_only_rank_zero_writes(tmp_path: Path, wandb_home: Path) -> None:
    with Logger(LoggerConfig(mode="offline"), tmp_path / "run", "r", CONFIG, rank=1) as logger:
        log_all(logger)
    assert not (tmp_path / "run").exists() and not wandb_home.exists()


def test_read_metrics_skips_a_torn_last_line_only(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"train/loss": 1, "train/step": 0}\n{"train/lo')
    assert read_metrics(tmp_path) == [{"train/loss": 1, "train/step": 0}]
    path.write_text('{"a/b": 1\n{"train/loss": 1, "train/step": 0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_metrics(tmp_path / "nowhere")


def test_auto_mode_follows_local_credentials_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_home: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.com login u password p\n")
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert resolve_mode("auto") == "offline"
    netrc.write_text("machine api.wandb.ai login user password " + "a" * 40 + "\n")
    assert resolve_mode("auto") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ConfigError, match="'logger.mode'.*disabled"):
        LoggerConfig(mode="of")


def wandb_records(run_dir: Path) -> list[dict]:
    [offline_dir] = (run_dir / "wandb").glob("offline-run-*")
    res = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_offline_wandb_run_holds_metrics_axes_and_a_config_without_secrets(
    tmp_path: Path, wandb_home: Path
) -> None:
    run_dir = tmp_path / "run"
    name = "darkroom__ad__0"
    with Logger(LoggerConfig(mode="offline", tags=["test"]), run_dir, name, CONFIG) as logger:
        log_all(logger)
    assert without_time(read_metrics(run_dir)) == ROWS
    assert not (wandb_home / "wandb_dir").exists()  # the run went to run_dir, not WANDB_DIR

    records = wandb_records(run_dir)
    by_type: dict[str, list[dict]] = {}
    for rec in records:
        by_type.setdefault(rec["type"], []).append(rec[rec["type"]])

    history = [
        {k: v for k, v in h["item"].items() if not k.startswith("_")} for h in by_type["history"]
    ]
    assert history == ROWS
    axes = {m.get("glob_name"): m.get("step_metric") for m in by_type["metric"]}
    assert axes["train/*"] == "train/step" and axes["perf/*"] == "train/step"
    assert axes["eval/*"] == "eval/step" and axes["icl/*"] == "icl/trial"

    [run] = by_type["run"]
    assert run["run_id"] == wandb_run_id(name) and run["display_name"] == name
    config = run["config"]["update"]
    assert config["agent"] == {"d_model": 8, "n_tokens": 16}
    text = json.dumps(records)
    assert "s3cr3t" not in text and "api_key" not in text and "hf_token" not in text
    summary = {}
    for s in by_type["summary"]:
        summary.update(s.get("update", {}))
    assert summary["eval/return_max"] == 3.0


def test_plot_writes_png_with_chosen_keys_and_reports_bad_paths(
    tmp_path: Path, wandb_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    with Logger(LoggerConfig(mode="disabled"), run_dir, "r", {}) as logger:
        log_all(logger)
    out = plot_run(run_dir)
    assert out == run_dir / "curves.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000

    assert plot_main([str(run_dir), "--out", str(tmp_path / "x.png"), "--keys", "icl/return"]) == 0
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    assert plot_main([str(run_dir), "--keys", "train/los"]) == 2
    assert "train/los" in capsys.readouterr().err

    missing = tmp_path / "no_such_run"
    res = subprocess.run(
        [sys.executable, "-m", "rl_core.plot", str(missing)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and str(missing) in res.stderr and "Traceback" not in res.stderr
