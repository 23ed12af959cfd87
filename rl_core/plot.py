"""Plot a run's curves to PNG from ``metrics.jsonl`` alone (no W&B, no network).

``python -m rl_core.plot RUN_DIR [--out PATH] [--keys k1 k2]``

Uses matplotlib's Agg canvas directly (no pyplot), so importing this module never
changes the user's interactive backend.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl_core.logging import METRICS_FILE, STEP_AXES, axis_for, read_metrics

__all__ = ["plot_run", "main"]

_SKIP = {"time", *STEP_AXES.values()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], str]:
    """x/y points of ``key``; x is the row's step axis, or the point index if it has none."""
    axis = axis_for(key)
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        if not _is_number(row.get(key)):
            continue
        x = row.get(axis) if axis else None
        xs.append(x if _is_number(x) else len(xs))
        ys.append(row[key])
    return xs, ys, axis or "index"


def plot_run(
    run_dir: Path | str, out: Path | str | None = None, keys: Sequence[str] | None = None
) -> Path:
    """Draw one subplot per metric of ``run_dir/metrics.jsonl`` and save a PNG; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    rows = read_metrics(run_dir)
    present = sorted({k for row in rows for k in row if k not in _SKIP})
    if keys:
        unknown = [k for k in keys if k not in present]
        if unknown:
            raise KeyError(
                f"metrics not in {run_dir / METRICS_FILE}: {', '.join(unknown)}. "
                f"Available: {', '.join(present) or '(none)'}"
            )
        present = list(keys)
    if not present:
        raise ValueError(f"no metrics to plot in {run_dir / METRICS_FILE}")

    ncols = min(3, len(present))
    nrows = math.ceil(len(present) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(present):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        xs, ys, xlabel = _series(rows, key)
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(run_dir.name)

    out_path = Path(out) if out is not None else run_dir / "curves.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rl_core.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path, help="run directory holding metrics.jsonl")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)"
    )
    parser.add_argument("--keys", nargs="+", default=None, help="metric keys to plot (default all)")
    args = parser.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out, args.keys)
    except (FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
