"""Scale-out on one machine: DDP training under torchrun vs one process, and a sharded FAISS index.

1. **DDP.** The real CLI of the main in-context agent (`python -m agents.ad train env=darkroom`,
   the Trainer's DDP path with gloo on CPU) trained for `--steps` updates at the same global batch:
   one process with `--nproc` threads (and, for reference, with 1 thread) vs
   `torchrun --standalone --nproc_per_node=N` with 1 thread per process and batch / N per process.
   samples/s = the Trainer's `perf/samples_per_s` (global batch x steps / s, without the first
   logged window, which holds start-up). The loss curves (`train/loss` every `log_every` steps;
   rank 0's local batch under DDP) are compared point by point: same global batch, same schedule,
   so they should agree up to sampling noise.
2. **Sharded index.** `retrieval.index.TrajectoryIndex` with `shards=N` (faiss `IndexShards`,
   shards searched in parallel threads) vs one index over the same `--keys` clustered unit keys,
   `Flat` (exact): queries/s and whether both return the same ids.

    python benchmarks/ddp.py                         # -> results/bench/ddp.json (a list of 2 rows)

Each run goes to a temporary run/results directory; nothing under runs/ or results/darkroom is
touched. The AD data cache (`data/`) is reused (collected once if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

from rl_core.tables import upsert_json_rows  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="ad", help="agents.<agent> train is the job")
    p.add_argument("--nproc", type=int, default=2, help="DDP processes (= threads of the baseline)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="global batch (per process: batch/nproc)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--keys", type=int, default=1_000_000, help="keys of the sharded-index row")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--skip", choices=["none", "ddp", "index"], default="none")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/ddp.json")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    import torch

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------- DDP
def train_run(args: argparse.Namespace, tmp: Path, name: str, nproc: int, threads: int) -> dict:
    """One training run of the real CLI; its loss curve, samples/s and wall time."""
    per_proc = args.batch // nproc
    overrides = [
        "env=darkroom",
        f"train.steps={args.steps}",
        f"train.batch_size={per_proc}",
        f"train.log_every={args.log_every}",
        f"train.ckpt_every={args.steps}",
        "train.progress=false",
        "agent.eval_trials=1",  # the benchmark times training; keep the final evaluation short
        "logger.mode=disabled",
        f"run_dir={tmp / name}",
        f"results_dir={tmp / 'results'}",
    ]
    launcher = [sys.executable, "-m"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m"]  # fmt: skip
    cmd = [*launcher, f"agents.{args.agent}", "train", *overrides]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    rows = [json.loads(line) for line in (tmp / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    rates = [r["perf/samples_per_s"] for r in train[1:]]  # the first window holds start-up
    return {
        "samples_per_s": sum(rates) / len(rates),
        "loss": [round(r["train/loss"], 4) for r in train],
        "steps": [r["train/step"] for r in train],
        "wall_s": round(wall, 1),
        "command": shlex.join(["OMP_NUM_THREADS=" + str(threads), *cmd[1:]]),
    }


def ddp_row(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ddp_bench_") as d:
        tmp = Path(d)
        single = train_run(args, tmp, "single", 1, args.nproc)
        single1 = train_run(args, tmp, "single_1thread", 1, 1)
        ddp = train_run(args, tmp, "ddp", args.nproc, 1)
    diffs = [abs(a - b) for a, b in zip(ddp["loss"][1:], single["loss"][1:])]
    tail = max(1, len(ddp["loss"]) // 4)
    last_ddp = sum(ddp["loss"][-tail:]) / tail
    last_single = sum(single["loss"][-tail:]) / tail
    return {
        "what": (
            f"DDP training of agents.{args.agent} (Dark-Room, real CLI, gloo on CPU), global batch "
            f"{args.batch}, {args.steps} steps: torchrun {args.nproc} processes x 1 thread vs one "
            f"process x {args.nproc} threads"
        ),
        "ours": round(ddp["samples_per_s"], 1),
        "baseline": round(single["samples_per_s"], 1),
        "ratio": round(ddp["samples_per_s"] / single["samples_per_s"], 2),
        "unit": "samples/s",
        "baseline_1thread": round(single1["samples_per_s"], 1),
        "ratio_vs_1thread": round(ddp["samples_per_s"] / single1["samples_per_s"], 2),
        "loss_curve": {
            "steps": single["steps"],
            "ddp": ddp["loss"],
            "single": single["loss"],
            "single_1thread": single1["loss"],
        },  # fmt: skip
        "loss_max_abs_diff": round(max(diffs), 4),
        "loss_mean_abs_diff": round(sum(diffs) / len(diffs), 4),
        "loss_last_quarter": {"ddp": round(last_ddp, 4), "single": round(last_single, 4)},
        "wall_s": {
            "ddp": ddp["wall_s"],
            "single": single["wall_s"],
            "single_1thread": single1["wall_s"],
        },
        "runs": {"ddp": ddp["command"], "single": single["command"]},
    }


# ----------------------------------------------------------------------------- sharded index
def clustered_keys(n: int, dim: int, seed: int, centres: int = 1024):
    """Unit keys scattered around random centres (closer to learned embeddings than noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_row(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from retrieval.index import IndexConfig, TrajectoryIndex

    keys = clustered_keys(args.keys, args.dim, 0)
    queries = clustered_keys(args.queries, args.dim, 1)
    n = len(keys)
    meta = dict(episode=np.arange(n) // 4, step=np.arange(n) % 4 * 25, task=np.arange(n) % 80,
                trajectory=np.arange(n) // 4, ret=np.zeros(n))  # fmt: skip
    out: dict[str, Any] = {}
    for shards in (1, args.nproc):
        index = TrajectoryIndex(args.dim, IndexConfig(shards=shards, device="cpu"))
        t0 = time.perf_counter()
        index.add(keys, **meta)
        build = time.perf_counter() - t0
        index.search(queries[:8], 100)  # warm-up
        t0 = time.perf_counter()
        res = index.search(queries, 100)
        out[shards] = (len(queries) / (time.perf_counter() - t0), build, res.ids)
    single, sharded = out[1], out[args.nproc]
    return {
        "what": (
            f"faiss Flat index over {n:,} clustered unit keys (dim {args.dim}), {args.queries} "
            f"queries, k=100: {args.nproc} shards (IndexShards, threaded) vs one index"
        ),
        "ours": round(sharded[0], 1),
        "baseline": round(single[0], 1),
        "ratio": round(sharded[0] / single[0], 2),
        "unit": "queries/s",
        "keys": n,
        "shards": args.nproc,
        "same_ids": float(np.mean(sharded[2] == single[2])),
        "build_s": {"sharded": round(sharded[1], 2), "single": round(single[1], 2)},
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    command = "python " + shlex.join(["benchmarks/ddp.py", *(argv or sys.argv[1:])])
    new = []
    if args.skip != "ddp":
        new.append(ddp_row(args))
    if args.skip != "index":
        new.append(index_row(args))
    for row in new:
        row.update(command=command, load_avg_1min_after=round(os.getloadavg()[0], 2), **machine())
        print(f"{row['what']}\n  ours {row['ours']} vs baseline {row['baseline']} {row['unit']}: "
              f"{row['ratio']}x")  # fmt: skip
    return upsert_json_rows(args.out, new, key=lambda r: r["what"].split()[0])


if __name__ == "__main__":
    main()
