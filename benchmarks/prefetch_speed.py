"""RA-DT training throughput: the next batch sampled in a background thread vs inline.

Same model (default `configs/radt.yaml` sizes), same sampler (`agents.radt.RetrievalSampler`:
a DT window per row, its query embedded by the frozen DT embedder, retrieval from the training
memory of the 80 training goals), same seed, same number of optimizer steps; only
`train.prefetch` differs:

- ours: `train.prefetch=true` (`rl_core.prefetch.BatchPrefetcher`), batch i+1 is sampled while
  batch i trains; the model runs one intra-op thread fewer, leaving a core to the worker
  (`rl_core.prefetch.worker_core`);
- baseline: `train.prefetch=false`, sample then train, one after the other, on all `--threads`.

Prefetching draws the same batches in the same order: `same_weights` checks that a 30-step
prefetched run and an inline one end with identical weights at one thread (float sums depend on
the thread count, so the timed runs above one thread differ in the last bits). The embedder has random weights (the cost does not depend on them). Runs
alternate (inline, prefetch, inline, prefetch) and the best of each is kept.

    python benchmarks/prefetch_speed.py --threads 2     # writes (its row of) results/bench/prefetch_speed.json
    python benchmarks/prefetch_speed.py --threads 1     # one row per thread count
    python benchmarks/prefetch_speed.py --steps 20 --repeats 1 --out /tmp/p.json data_dir=/tmp/d source.episodes=4
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from agents import radt  # noqa: E402
from agents.dt import DTModel  # noqa: E402
from agents.sources import learning_histories  # noqa: E402
from rl_core.config import to_dataclass  # noqa: E402
from rl_core.train import TrainConfig, Trainer  # noqa: E402
from rl_core.utils import atomic_write_text  # noqa: E402


def build_sampler(cfg, a, e, model) -> radt.RetrievalSampler:
    store = learning_histories(cfg)
    dt = DTModel((cfg.env.width, cfg.env.height), 5, model.horizon, radt._dt_config(a))
    embedder = radt.make_embedder(cfg, a, e, dt)
    memory, episode_task = radt.build_training_memory(cfg, store, a, embedder)
    return radt.RetrievalSampler(
        store, a.context_len, embedder, memory, episode_task, seed=0,
        pre_reward_frac=a.pre_reward_frac,
    )  # fmt: skip


def timed_fit(model, sampler, tcfg: TrainConfig, prefetch: bool) -> tuple[float, torch.nn.Module]:
    sampler.generator.manual_seed(0)  # the same query-dropout masks in every run
    trainer = Trainer(
        copy.deepcopy(model), TrainConfig(**{**tcfg.__dict__, "prefetch": prefetch}),
        run_dir=Path(tempfile.mkdtemp()), loss_fn=radt.radt_loss, sample_batch=sampler.sample,
        seed=0, device="cpu",
    )  # fmt: skip
    t = time.perf_counter()
    trained = trainer.fit()
    return tcfg.steps / (time.perf_counter() - t), trained


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/prefetch_speed.json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/radt.yaml")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(
        ["python benchmarks/prefetch_speed.py", *(sys.argv[1:] if argv is None else argv)]
    )
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("radt", overrides=["logger.mode=disabled", *args.overrides])
    model, a, e = radt.build(cfg)
    sampler = build_sampler(cfg, a, e, model)
    tcfg = to_dataclass(cfg.train, TrainConfig, "train")
    tcfg = TrainConfig(**{
        **tcfg.__dict__, "steps": args.steps, "log_every": 0, "ckpt_every": 0, "progress": False,
    })  # fmt: skip

    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for prefetch in (False, True):
            rate, _ = timed_fit(model, sampler, tcfg, prefetch)
            rates[prefetch].append(rate)
            print(f"prefetch={prefetch!s:5}: {rate:6.1f} steps/s")
    torch.set_num_threads(1)
    short = TrainConfig(**{**tcfg.__dict__, "steps": 30})
    pair = [timed_fit(model, sampler, short, prefetch)[1] for prefetch in (False, True)]
    same = all(
        torch.equal(x, y) for x, y in zip(pair[0].parameters(), pair[1].parameters(), strict=True)
    )
    ours, base = max(rates[True]), max(rates[False])
    row = {
        "workload": (
            f"RA-DT training on Dark-Room {cfg.env.width}x{cfg.env.height} learning histories, "
            f"batch {tcfg.batch_size}, {args.steps} steps, default model sizes, CPU"
        ),
        "ours": round(ours, 2),
        "baseline": round(base, 2),
        "ratio": round(ours / base, 3),
        "unit": "optimizer steps/s",
        "same_weights": same,
        "runs": {
            "prefetch": [round(r, 2) for r in rates[True]],
            "inline": [round(r, 2) for r in rates[False]],
        },  # fmt: skip
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "command": command,
    }
    print(f"prefetch / inline: {row['ratio']:.2f}x (same weights: {same})")
    # one row per thread count: runs at other counts stay in the file
    old = json.loads(args.out.read_text()) if args.out.exists() else []
    old = old if isinstance(old, list) else [old]
    rows = sorted(
        [r for r in old if r.get("threads") != args.threads] + [row], key=lambda r: r["threads"]
    )
    atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
