"""The shared CLI, run for real: ``python -m tests.rl_core.cli_app ...`` in a subprocess.

Each call runs in a fresh temporary directory (the repo on PYTHONPATH), so run
dirs and Hydra's multirun folders land there and tests cannot see each other.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl_core.cli import _split_args, git_revision, setup_run

REPO = Path(__file__).resolve().parents[2]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "tests.rl_core.cli_app", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def received(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob("runs/*/received.json"))]


def test_train_is_the_default_and_gets_overrides_and_a_run_dir(tmp_path: Path) -> None:
    res = cli(tmp_path, "env=keydoor", "agent.d_model=32", "seed=3")
    assert res.returncode == 0, res.stderr
    [got] = received(tmp_path)
    assert got == {
        "cmd": "train",
        "seed": 3,
        "env": "keydoor",
        "d_model": 32,
        "run_dir": "runs/keydoor__ad__3",
    }
    run_dir = tmp_path / "runs/keydoor__ad__3"
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.agent.d_model == 32 and saved.run_name == "keydoor__ad__3"  # resolved
    rev = (run_dir / "git_rev.txt").read_text().strip()
    assert rev == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", rev)


@pytest.mark.parametrize(
    ("args", "cmd"), [(["eval", "seed=1"], "eval"), (["seed=1", "collect"], "collect")]
)
def test_dispatch_to_the_named_command(tmp_path: Path, args: list[str], cmd: str) -> None:
    res = cli(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    [got] = received(tmp_path)
    assert got["cmd"] == cmd and got["seed"] == 1


def test_cfg_job_prints_resolved_config_without_running(tmp_path: Path) -> None:
    res = cli(tmp_path, "eval", "--cfg", "job", "agent.d_model=32")
    assert res.returncode == 0, res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.cmd == "eval" and cfg.agent.d_model == 32 and cfg.env.name == "darkroom"
    assert received(tmp_path) == []


def test_multirun_runs_one_job_per_choice_with_flags_between_overrides(tmp_path: Path) -> None:
    # 'env=keydoor --multirun seed=0,1' is rejected by plain Hydra's argparse; run_cli accepts it.
    res = cli(tmp_path, "eval", "env=keydoor", "--multirun", "seed=0,1")
    assert res.returncode == 0, res.stderr
    got = received(tmp_path)
    assert [(g["cmd"], g["env"], g["seed"]) for g in got] == [
        ("eval", "keydoor", 0),
        ("eval", "keydoor", 1),
    ]
    assert len(list(tmp_path.glob("multirun/*/*/.hydra/config.yaml"))) == 2


def test_sweep_over_a_non_seed_key_gives_each_job_its_own_run_dir(tmp_path: Path) -> None:
    res = cli(tmp_path, "--multirun", "agent.d_model=8,16", "logger.mode=disabled")
    assert res.returncode == 0, res.stderr
    got = {g["d_model"]: g["run_dir"] for g in received(tmp_path)}
    assert got == {
        8: "runs/darkroom__ad__0__agent.d_model=8",
        16: "runs/darkroom__ad__0__agent.d_model=16",
    }


def test_help_lists_commands_and_info_shows_defaults_tree(tmp_path: Path) -> None:
    res = cli(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    assert "Commands: train, eval, collect" in res.stdout
    env_line = next(line for line in res.stdout.splitlines() if line.startswith("env: "))
    assert "darkroom, darkroom_20x20, darkroom_40x20, keydoor" in env_line  # Hydra's group list
    res = cli(tmp_path, "--hydra-help")  # composes Hydra's config alone: no 'cmd' key there
    assert res.returncode == 0 and "Hydra" in res.stdout, res.stderr
    res = cli(tmp_path, "--info", "defaults-tree")
    assert res.returncode == 0, res.stderr
    assert "env: darkroom" in res.stdout and "agent: ad" in res.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trian"], ["unknown command 'trian'", "train, eval, collect", "Did you mean 'train'"]),
        (
            ["agent.lrr=1"],
            ["'agent.lrr'", "Valid keys under 'agent':", "context_episodes, d_model"],
        ),
        (["trian.steps=3"], ["'trian'", "Valid keys at the top level", "Did you mean 'train'"]),
        (["env=darkrom"], ["'darkrom'", "config group 'env'", "darkroom, darkroom_20x20"]),
        (["--multirun", "env=keydoor,darkrom"], ["'darkrom'", "keydoor, keydoor_20x20"]),
        (["seed=abc"], ["'seed'", "expected int", "'abc'"]),
        (["--multirun", "train.steps=10,1.5"], ["'train.steps'", "expected int", "1.5"]),
        (["run_dir=${run_nam}"], ["run_nam", "not found"]),
        (["-m", "seed=interval(0,1)"], ["interval(0,1)", "basic sweeper"]),
        (["collect", "logger.mode=bogus"], ["'logger.mode'", "offline, online, auto, disabled"]),
        (["collect", "+logger.extra=1"], ["'logger.extra'", "entity, group, mode, project, tags"]),
    ],
)
def test_bad_command_line_fails_cleanly_with_valid_options(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    res = cli(tmp_path, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for text in expected:
        assert text in res.stderr, res.stderr
    assert received(tmp_path) == []


def test_split_args_keeps_flag_values_with_their_flags() -> None:
    pos, flags = _split_args(["--cfg", "job", "train", "a=1", "-m", "b=2", "--info"])
    assert pos == ["train", "a=1", "b=2"]
    assert flags == ["--cfg", "job", "-m", "--info"]
    pos, flags = _split_args(["--info", "defaults-tree", "eval", "--config-name=ad"])
    assert pos == ["eval"] and flags == ["--info", "defaults-tree", "--config-name=ad"]


def _run_cfg(tmp_path: Path, seed: int) -> OmegaConf:
    return OmegaConf.create(
        {
            "seed": seed,
            "run_dir": str(tmp_path / "run"),
            "logger": {"api_key": "s3cr3t", "mode": "x"},
        }
    )


def test_setup_run_seeds_and_writes_config_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANK", raising=False)
    run_dir = setup_run(_run_cfg(tmp_path, 7))
    first = random.random()
    setup_run(_run_cfg(tmp_path, 7))
    assert random.random() == first
    saved = (run_dir / "config.yaml").read_text()
    assert "seed: 7" in saved and "s3cr3t" not in saved and "api_key" not in saved
    assert (run_dir / "git_rev.txt").read_text().strip() == git_revision()


def test_setup_run_writes_nothing_on_other_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    run_dir = setup_run(_run_cfg(tmp_path, 0))
    assert not run_dir.exists()
