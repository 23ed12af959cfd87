"""DT window sampling: EpisodeStore + DTWindowSampler vs the naive way through Minari.

Both sides read the same Dark-Room-like data (obs int64[2], action int64,
reward float32). The baseline is what a user of Minari alone writes: per batch
``sample_episodes(B)``, then slice a K-window out of each episode, compute its
returns-to-go, and left-pad in a Python loop. A second baseline first loads
every Minari episode into RAM once and does the same per-batch Python loop, to
separate "HDF5 decode on every batch" from "Python loop per batch element".

    python benchmarks/sampler_speed.py                  # writes results/bench/sampler_speed.json
    python benchmarks/sampler_speed.py --episodes 200 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

from rl_core.data import DTWindowSampler, EpisodeStore, export_minari  # noqa: E402
from rl_core.utils import atomic_write_text  # noqa: E402


def build_store(root: Path, episodes: int, steps: int, seed: int) -> EpisodeStore:
    """Random walks on a 9x9 grid with a goal reward, written as one shard."""
    rng = np.random.default_rng(seed)
    store = EpisodeStore(root)
    moves = np.array([[0, 0], [0, 1], [0, -1], [1, 0], [-1, 0]])
    with store.writer(max_steps_per_shard=steps * episodes) as w:
        for i in range(episodes):
            goal = rng.integers(0, 9, 2)
            action = rng.integers(0, 5, steps).astype(np.int64)
            pos = np.clip(np.cumsum(moves[action], axis=0) + 4, 0, 8).astype(np.int64)
            obs = np.concatenate([[[4, 4]], pos[:-1]]).astype(np.int64)
            reward = (pos == goal).all(1).astype(np.float32)
            done = np.arange(steps) == steps - 1
            w.add(
                {
                    "obs": obs,
                    "action": action,
                    "reward": reward,
                    "terminated": np.zeros(steps, bool),
                    "truncated": done,
                },
                {"env": "darkroom-like", "history": i // 100, "index": i % 100},
            )
    return store


def naive_batch(episodes, batch: int, k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-element Python slicing of K-windows out of episode objects, left-padded."""
    obs = np.zeros((batch, k, 2), np.int64)
    act = np.zeros((batch, k), np.int64)
    rew = np.zeros((batch, k), np.float32)
    rtg = np.zeros((batch, k), np.float32)
    ts = np.zeros((batch, k), np.int64)
    mask = np.zeros((batch, k), bool)
    for b, ep in enumerate(episodes):
        t = len(ep.rewards)
        end = int(rng.integers(0, t))
        start = max(0, end - k + 1)
        n = end - start + 1
        r = np.asarray(ep.rewards, np.float32)
        obs[b, k - n :] = ep.observations[start : end + 1]
        act[b, k - n :] = ep.actions[start : end + 1]
        rew[b, k - n :] = r[start : end + 1]
        rtg[b, k - n :] = np.cumsum(r[::-1])[::-1][start : end + 1]
        ts[b, k - n :] = np.arange(start, end + 1)
        mask[b, k - n :] = True
    return {"obs": obs, "action": act, "reward": rew, "rtg": rtg, "timestep": ts, "mask": mask}


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "sampler_speed.json")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ours-batches", type=int, default=2000)
    p.add_argument("--baseline-batches", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import minari

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(tmp) / "minari")
        t0 = time.perf_counter()
        store = build_store(Path(tmp) / "store", args.episodes, args.steps, args.seed)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler = DTWindowSampler(store, args.context)
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_minari(
            store,
            "bench/darkroom-v0",
            observation_space=gym.spaces.Box(0, 8, (2,), np.int64),
            action_space=gym.spaces.Discrete(5),
        )
        t_export = time.perf_counter() - t0
        ds = minari.load_dataset("bench/darkroom-v0")
        ds.set_seed(args.seed)
        t0 = time.perf_counter()
        in_ram = list(ds.iterate_episodes())
        t_preload = time.perf_counter() - t0

        rng = np.random.default_rng(args.seed)
        b, k = args.batch, args.context
        ours, base, base_ram = [], [], []
        for _ in range(args.reps):  # interleaved, so drift hits all sides alike
            ours.append(rate(lambda: sampler.sample(b, rng), args.ours_batches))
            base.append(
                rate(lambda: naive_batch(ds.sample_episodes(b), b, k, rng), args.baseline_batches)
            )
            base_ram.append(
                rate(
                    lambda: naive_batch(
                        [in_ram[i] for i in rng.integers(0, len(in_ram), b)], b, k, rng
                    ),
                    args.ours_batches // 4,
                )
            )

    med = {
        name: float(np.median(v)) for name, v in [("ours", ours), ("base", base), ("ram", base_ram)]
    }
    result = {
        "ours": round(med["ours"], 1),
        "baseline": round(med["base"], 2),
        "ratio": round(med["ours"] / med["base"], 1),
        "unit": "batches/s",
        "command": "python benchmarks/sampler_speed.py",
        "what": (
            f"DT windows, batch {b}, K={k}, {args.episodes} episodes x {args.steps} steps "
            "(obs int64[2], action int64, reward float32); median of reps. ours = "
            "EpisodeStore + DTWindowSampler.sample; baseline = Minari HDF5 "
            "sample_episodes + per-element slicing/rtg/padding"
        ),
        "baseline_preloaded": round(med["ram"], 1),
        "ratio_vs_preloaded": round(med["ours"] / med["ram"], 1),
        "reps": {"ours": ours, "baseline": base, "baseline_preloaded": base_ram},
        "setup_s": {
            "build_store": round(t_build, 3),
            "dt_sampler_init": round(t_init, 3),
            "export_minari": round(t_export, 3),
            "minari_preload_all_episodes": round(t_preload, 3),
        },
        "config": vars(args) | {"out": os.path.relpath(args.out, ROOT)},
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "minari": minari.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    rows = [
        ("EpisodeStore + DTWindowSampler", med["ours"]),
        ("Minari preloaded + Python loop", med["ram"]),
        ("Minari sample_episodes + slicing", med["base"]),
    ]
    print(f"{'method':<34} {'batches/s':>12} {'x baseline':>11}")
    for name, r in rows:
        print(f"{name:<34} {r:>12.1f} {r / med['base']:>11.1f}")
    print(f"ratio ours/baseline = {result['ratio']}  (setup: {result['setup_s']})")
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
