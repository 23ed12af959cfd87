"""A tiny app on ``run_cli`` for the CLI tests: each command records what it received.

Run from a directory of your choice with the repository on ``PYTHONPATH``:
``python -m tests.rl_core.cli_app train env=keydoor seed=3``. Commands write
``<run_dir>/received.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from rl_core.cli import run_cli, setup_run
from rl_core.config import to_dataclass
from rl_core.logging import LoggerConfig


def _record(cfg: DictConfig, run_dir: Path) -> None:
    received = {
        "cmd": cfg.cmd,
        "seed": cfg.seed,
        "env": cfg.env.name,
        "d_model": cfg.agent.d_model,
        "run_dir": str(run_dir),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "received.json").write_text(json.dumps(received))


def train(cfg: DictConfig) -> None:
    """Goes through ``setup_run`` like a real command (seeds, config.yaml, git_rev.txt)."""
    _record(cfg, setup_run(cfg))


def evaluate(cfg: DictConfig) -> None:
    _record(cfg, Path(cfg.run_dir))


def collect(cfg: DictConfig) -> None:
    """Builds a typed config, so a bad value surfaces as a ``ConfigError`` inside a command."""
    to_dataclass(cfg.logger, LoggerConfig, "logger")
    _record(cfg, Path(cfg.run_dir))


if __name__ == "__main__":
    run_cli({"train": train, "eval": evaluate, "collect": collect}, config_name="ad")
