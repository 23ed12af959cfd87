"""Metrics to W&B and to a local ``metrics.jsonl`` that tests and plots can read.

The JSONL file is the source of truth: it is written whatever the W&B mode, so a
run can be inspected, plotted and tested without W&B or a network. Each metric
family has its own x axis (``train/step``, ``eval/step``, ``icl/trial``) logged in
the same row, which W&B learns through ``define_metric``.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from rl_core.config import ConfigError, redact_secrets

__all__ = [
    "MODES",
    "STEP_AXES",
    "LoggerConfig",
    "Logger",
    "axis_for",
    "resolve_mode",
    "wandb_logged_in",
    "wandb_run_id",
    "read_metrics",
]

MODES = ("offline", "online", "auto", "disabled")

# Metric family (the part before the first '/') -> the key of its x axis.
STEP_AXES: dict[str, str] = {
    "train": "train/step",
    "perf": "train/step",
    "eval": "eval/step",
    "icl": "icl/trial",
}

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class LoggerConfig:
    """``cfg.logger``: where metrics go. ``auto`` is online only if W&B credentials exist."""

    mode: str = "offline"
    project: str = "icrl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(
                f"Bad value for 'logger.mode': {self.mode!r}. Valid values: {', '.join(MODES)}"
            )


def axis_for(key: str) -> str | None:
    """The step-axis key of a metric key (``eval/return`` -> ``eval/step``), or None."""
    return STEP_AXES.get(key.split("/", 1)[0]) if "/" in key else None


def wandb_logged_in() -> bool:
    """True if W&B credentials exist locally (env or netrc); never touches the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return bool(host) and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """Turn ``auto`` into ``online`` or ``offline``; other modes pass through."""
    if mode not in MODES:
        raise ConfigError(
            f"Bad value for 'logger.mode': {mode!r}. Valid values: {', '.join(MODES)}"
        )
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    return mode


def wandb_run_id(run_name: str) -> str:
    """A W&B run id that is the same for the same run name, so a resumed run appends."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run_name).strip("-")[:48] or "run"
    return f"{slug}-{hashlib.sha1(run_name.encode()).hexdigest()[:8]}"


def _check_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Plain-number copy of a row; every family in it must carry its own step axis."""
    row: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if not isinstance(value, (int, float)):
            raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}")
        row[str(key)] = value
    for key in row:
        axis = axis_for(key)
        if axis is not None and axis not in row:
            raise ValueError(f"metric row with {key!r} must also hold its step axis {axis!r}")
    return row


class Logger:
    """Writes rows to ``run_dir/metrics.jsonl`` and to W&B; only rank 0 writes anything.

    Use as a context manager so the W&B run is finished (with a failing exit code
    if the block raised).
    """

    def __init__(
        self,
        cfg: LoggerConfig | Mapping[str, Any],
        run_dir: Path | str,
        run_name: str,
        config: Mapping[str, Any],
        *,
        rank: int | None = None,
    ) -> None:
        if not isinstance(cfg, LoggerConfig):
            from rl_core.config import to_dataclass

            cfg = to_dataclass(cfg, LoggerConfig, "logger")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.mode = resolve_mode(cfg.mode)
        self.run: Any = None
        self._file: Any = None
        self._summary: dict[str, Any] = {}
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        summary_path = self.run_dir / SUMMARY_FILE
        if summary_path.exists():  # a resumed run keeps its earlier summary
            self._summary = json.loads(summary_path.read_text())
        self._file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        if self.mode != "disabled":
            self.run = self._init_wandb(redact_secrets(config))

    @property
    def active(self) -> bool:
        """Whether this process writes (rank 0 and not closed)."""
        return self._file is not None

    def _init_wandb(self, config: dict[str, Any]) -> Any:
        import wandb

        run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.cfg.group,
            tags=list(self.cfg.tags) or None,
            name=self.run_name,
            id=wandb_run_id(self.run_name),
            resume="allow",
            dir=str(self.run_dir),
            config=config,
            mode=self.mode,
        )
        for axis in sorted(set(STEP_AXES.values())):
            run.define_metric(axis)
        for family, axis in STEP_AXES.items():
            run.define_metric(f"{family}/*", step_metric=axis)
        return run

    def log(self, metrics: Mapping[str, float | int]) -> None:
        """Append one row (plus wall-clock ``time``) to metrics.jsonl and send it to W&B."""
        row = _check_row(metrics)
        if not self.active:
            return
        self._file.write(json.dumps({**row, "time": time.time()}) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log(row)

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Record final numbers: W&B summary and ``run_dir/summary.json`` (merged)."""
        if not self.active:
            return
        values = {str(k): (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        self._summary.update(values)
        tmp = self.run_dir / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(self._summary, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.run_dir / SUMMARY_FILE)
        if self.run is not None:
            self.run.summary.update(values)

    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run and close the file; safe to call twice."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Logger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """All rows of ``run_dir/metrics.jsonl``; a torn last line (crash mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({e})") from None
    return rows
