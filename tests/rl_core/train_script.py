"""Tiny Trainer run on a synthetic regression task, for tests that need a real process.

The tests start it in subprocesses (to SIGKILL and resume it) and under torchrun (DDP):

    python tests/rl_core/train_script.py --run-dir R --out-dir O --steps 40
    torchrun --standalone --nproc_per_node=2 tests/rl_core/train_script.py --run-dir R --out-dir O

Each rank writes to ``--out-dir``: ``rank{r}.jsonl`` (the rows its logger received),
``rank{r}_weights.pt`` (final weights) and ``rank{r}_summary.json``. ``--step-sleep`` slows
each step (so a test can kill it mid-run); ``--crash-after N`` makes every rank exit after N
steps (a crash that torchrun sees).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from rl_core.train import TrainConfig, Trainer  # noqa: E402
from rl_core.utils import dist_info  # noqa: E402

IN_DIM, OUT_DIM = 8, 4
_TASK = np.random.default_rng(1234)  # the task is fixed; --seed only changes model and batches
_A = _TASK.normal(size=(IN_DIM, 16)) / np.sqrt(IN_DIM)
_B = _TASK.normal(size=(16, OUT_DIM)) / 4.0
_X_EVAL = _TASK.normal(size=(512, IN_DIM))


def target(x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ _A) @ _B


def make_model(hidden: int = 32, seed: int = 0) -> nn.Module:
    """MLP with a norm, dropout (so resume must restore torch's RNG) and biases."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_DIM, hidden),
        nn.LayerNorm(hidden),
        nn.GELU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, OUT_DIM),
    )


def sample_batch(batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float64 numpy on purpose: the Trainer must convert it."""
    x = rng.normal(size=(batch_size, IN_DIM))
    y = target(x) + 0.01 * rng.normal(size=(batch_size, OUT_DIM))
    return {"x": x, "y": y}


def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    pred = model(batch["x"])
    loss = nn.functional.mse_loss(pred.float(), batch["y"])
    return loss, {"mae": (pred.detach().float() - batch["y"]).abs().mean().item()}


@torch.no_grad()
def evaluate(model: nn.Module, step: int) -> dict[str, float]:
    device = next(model.parameters()).device
    x = torch.as_tensor(_X_EVAL, dtype=torch.float32, device=device)
    y = torch.as_tensor(target(_X_EVAL), dtype=torch.float32, device=device)
    return {"mse": nn.functional.mse_loss(model(x).float(), y).item()}


class JsonlLogger:
    """Minimal logger: one JSON object per row, flushed at once so a killed run keeps its rows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step (kill tests)")
    p.add_argument(
        "--crash-after", type=int, default=0, help="raise when drawing batch N+1 (0: never)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(1)  # deterministic reductions; no oversubscription under torchrun
    rank, _, _ = dist_info()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    calls = 0

    def slow_sample(batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        if args.crash_after and calls > args.crash_after:
            raise SystemExit(f"rank {rank}: simulated crash after {args.crash_after} steps")
        time.sleep(args.step_sleep)
        return sample_batch(batch_size, rng)

    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=5,
        log_every=args.log_every,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        progress=False,
    )
    trainer = Trainer(
        make_model(args.hidden, args.seed),
        cfg,
        run_dir=args.run_dir,
        loss_fn=loss_fn,
        sample_batch=slow_sample,
        evaluate=evaluate,
        logger=JsonlLogger(args.out_dir / f"rank{rank}.jsonl"),
        seed=args.seed,
        device="cpu",
        config=vars(args) | {"run_dir": str(args.run_dir), "out_dir": str(args.out_dir)},
    )
    model = trainer.fit(resume=args.resume)
    torch.save(model.state_dict(), args.out_dir / f"rank{rank}_weights.pt")
    summary = {
        "rank": rank,
        "start_step": trainer.start_step,
        "checkpoints_written": trainer.checkpoints_written,
    }
    (args.out_dir / f"rank{rank}_summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
