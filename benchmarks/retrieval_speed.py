"""Retrieval speed: `TrajectoryIndex` (FAISS) vs an exact numpy top-k on the same keys.

RA-DT (Schmied et al. 2024) retrieves m = 100 candidates for every sequence of a training
batch (128) by cosine similarity. This script measures queries/s of that search at 10^4, 10^5
and 10^6 keys (dim 128, batches of 128 queries, k = 100): our index with `Flat` (exact) and
with `IVF{nlist},Flat` (approximate, where it helps), against a blocked numpy
`q @ keys.T` + `argpartition` top-k, and checks the results (recall@k of the numpy top-k).

Keys are clustered (unit-norm points around 1024 random centres), closer to learned
embeddings than uniform noise, on which IVF is at its worst. Both sides use the same number of
threads (`--threads`, set before numpy/faiss are imported).

It also measures the per-step overhead that retrieval adds to RA-DT's in-context evaluation
(`agents.radt.RADTPolicy`, default config, the 20 held-out 10x10 goals batched, retrieval
every step from each task's growing memory) against the same policy and rollout loop with
retrieval switched off (no query, no search, no cross-attention): env-steps/s of both and the
milliseconds per batched step that retrieval adds (`--overhead-episodes 0` skips it).

    python benchmarks/retrieval_speed.py                 # writes results/bench/retrieval_speed.json
    python benchmarks/retrieval_speed.py --sizes 10000 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=128, help="queries per search call")
    p.add_argument("--k", type=int, default=100, help="neighbours per query (RA-DT's m = 2l)")
    p.add_argument("--batches", type=int, default=4, help="timed query batches per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--ivf-min-keys", type=int, default=100_000, help="IVF from this size up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overhead-episodes", type=int, default=4, help="RA-DT eval episodes per run")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/retrieval_speed.json")
    return p.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before numpy/faiss load their thread pools

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing
from retrieval.index import IndexConfig, TrajectoryIndex  # noqa: E402
from rl_core.utils import atomic_write_text  # noqa: E402


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors scattered around random centres (built in blocks to bound memory)."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 262_144):
        m = min(n, s + 262_144) - s
        c = centres[rng.integers(0, len(centres), m)]
        x = c + 0.35 * rng.standard_normal((m, dim), dtype=np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(keys: np.ndarray, q: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Exact top-k by inner product: per key block a BLAS matmul + argpartition, then merge."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(keys), block):
        scores = q @ keys[s : s + block].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], 1)
        best_i = np.concatenate([best_i, part + s], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def rate(fn, batches: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Queries/s over the batches (after one warm-up call) and the per-batch outputs."""
    fn(batches[0])
    start = time.perf_counter()
    outs = [fn(b) for b in batches]
    return sum(len(b) for b in batches) / (time.perf_counter() - start), outs


def recall(ours: list[np.ndarray], exact: list[np.ndarray]) -> float:
    hits = [
        len(np.intersect1d(a, b, assume_unique=True)) / len(b)
        for oa, ob in zip(ours, exact)
        for a, b in zip(oa, ob)
    ]
    return float(np.mean(hits))


def bench_size(n: int, rng: np.random.Generator, centres: np.ndarray, command: str) -> list:
    """Rows for one key count: numpy baseline once, then each index kind."""
    t0 = time.perf_counter()
    keys = clustered(n, ARGS.dim, rng, centres)
    picks = rng.integers(0, n, ARGS.batch * ARGS.batches)
    noise = 0.3 * rng.standard_normal((len(picks), ARGS.dim), dtype=np.float32)
    queries = keys[picks] + noise / np.sqrt(ARGS.dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    batches = np.split(queries, ARGS.batches)
    print(f"\n{n:>9,} keys x {ARGS.dim}: data {time.perf_counter() - t0:.1f}s", flush=True)
    base_qps, exact = rate(lambda q: numpy_topk(keys, q, ARGS.k), batches)
    print(f"  numpy exact top-{ARGS.k}: {base_qps:10.0f} queries/s", flush=True)
    meta = {f: np.zeros(n, np.int64) for f in ("episode", "step", "task")}
    meta.update(trajectory=np.arange(n), ret=np.zeros(n, np.float32))
    factories = ["Flat"]
    if n >= ARGS.ivf_min_keys:
        factories.append(f"IVF{min(4096, 1 << int(np.log2(4 * np.sqrt(n)))) // 2},Flat")
    rows = []
    for factory in factories:
        t0 = time.perf_counter()
        cfg = IndexConfig(factory=factory, nprobe=ARGS.nprobe, device="cpu")
        index = TrajectoryIndex(ARGS.dim, cfg)
        index.add(keys, **meta)
        build = time.perf_counter() - t0
        ours_qps, got = rate(lambda q, index=index: index.search(q, ARGS.k).ids, batches)
        rec, ratio = recall(got, exact), ours_qps / base_qps
        print(
            f"  {factory:<14} {ours_qps:10.0f} queries/s  ratio {ratio:6.2f}x  "
            f"recall@{ARGS.k} {rec:.4f}  (build {build:.1f}s)",
            flush=True,
        )
        rows.append(
            {
                "keys": n,
                "index": factory + (f", nprobe={ARGS.nprobe}" if "IVF" in factory else ""),
                "ours": round(ours_qps, 1),
                "baseline": round(base_qps, 1),
                "ratio": round(ratio, 2),
                "recall": round(rec, 4),
                "unit": "queries/s",
                "dim": ARGS.dim,
                "k": ARGS.k,
                "batch": ARGS.batch,
                "threads": ARGS.threads,
                "build_s": round(build, 2),
                "baseline_what": "blocked numpy q @ keys.T + argpartition, exact",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                f"faiss-cpu {faiss.__version__}",
                "command": command,
            }
        )
    return rows


def bench_radt_overhead(command: str) -> dict:
    """Env-steps/s of RA-DT in-context evaluation with and without per-step retrieval."""
    import torch
    from hydra import compose, initialize_config_module

    from agents import radt
    from agents.dt import DTModel
    from agents.icl import evaluate_in_context
    from retrieval.embedders import DTEmbedder

    torch.set_num_threads(ARGS.threads)
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("radt")
    model, a, e = radt.build(cfg)  # untrained weights: the cost does not depend on them
    horizon = model.horizon
    dt = DTModel((cfg.env.width, cfg.env.height), 5, horizon, radt._dt_config(a))
    embedder = DTEmbedder(dt, max_embed_len=e.max_embed_len, context_len=a.context_len)
    model.eval()
    rates = {}
    for name, every in (("retrieval", 1), ("no_retrieval", 10**9)):
        a_run = radt.RADTConfig(**{**a.__dict__, "retrieve_every": every})
        policy = radt.RADTPolicy(model, a_run, torch.device("cpu"), 0, embedder)
        if every > 1:  # never query: the context stays empty, so cross-attention is skipped
            policy.retrieve = lambda: None  # type: ignore[method-assign]
        t0 = time.perf_counter()
        res = evaluate_in_context(
            cfg.env, policy, trials=ARGS.overhead_episodes, seed=0, progress=False
        )
        steps = int(np.asarray(res.lengths).sum())
        rates[name] = steps / (time.perf_counter() - t0)
        print(f"  RA-DT eval, {name:<12}: {rates[name]:8.0f} env-steps/s", flush=True)
    n_tasks = len(radt.icl.darkroom_tasks(cfg.env).eval)
    per_step_ms = 1e3 * n_tasks * (1 / rates["retrieval"] - 1 / rates["no_retrieval"])
    return {
        "what": "RA-DT in-context evaluation, per-step retrieval overhead",
        "ours": round(rates["retrieval"], 1),
        "baseline": round(rates["no_retrieval"], 1),
        "ratio": round(rates["retrieval"] / rates["no_retrieval"], 3),
        "unit": "env-steps/s (20 tasks batched)",
        "overhead_ms_per_batched_step": round(per_step_ms, 3),
        "episodes": ARGS.overhead_episodes,
        "baseline_what": "same policy and rollout loop without retrieval (no query, search or "
        "cross-attention)",
        "threads": ARGS.threads,
        "command": command,
    }


def main() -> None:
    faiss.omp_set_num_threads(ARGS.threads)
    rng = np.random.default_rng(ARGS.seed)
    centres = rng.standard_normal((1024, ARGS.dim), dtype=np.float32)
    command = " ".join(["python benchmarks/retrieval_speed.py", *sys.argv[1:]])
    rows = [row for n in ARGS.sizes for row in bench_size(n, rng, centres, command)]
    if ARGS.overhead_episodes:
        print("\nretrieval overhead in RA-DT evaluation", flush=True)
        rows.append(bench_radt_overhead(command))
    atomic_write_text(ARGS.out, json.dumps(rows, indent=1) + "\n")
    print(f"\nwrote {ARGS.out}")


if __name__ == "__main__":
    main()
