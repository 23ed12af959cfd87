"""Return alignment (Return-Aligned DT, Tanaka et al. 2024): does the achieved return follow the target?

Targets are evenly spaced between the 5th and 95th percentile of the dataset's episode returns
(the paper's protocol), each tried for 20 episodes on the training tasks, all batched in one
rollout. The return is only controllable when the policy can know where the goal is: Dark-Room
hides it, so a DT trained on many goals cannot find it, let alone time its arrival. The
alignment test bed is therefore a single-goal dataset (`experiment=alignment`: one training goal,
many learning histories), where reaching the goal earlier or later sets the return. The metric per target is |mean achieved −
target|; rows go to `results/return_alignment/alignment.csv` with the columns
`env,agent,seed,target,achieved,abs_error` (rows of the same env, agent and seed are replaced).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from agents.qlearning import darkroom_tasks
from agents.sources import learning_histories
from rl_core.rollout import Policy, rollout
from rl_core.tables import upsert_rows

COLUMNS = ("env", "agent", "seed", "target", "achieved", "abs_error")
EPISODES_PER_TARGET = 20


def return_targets(episode_returns: np.ndarray, n: int) -> np.ndarray:
    """`n` targets evenly spaced between the 5th and 95th percentile of the returns."""
    low, high = np.percentile(episode_returns, [5, 95])
    return np.linspace(low, high, n)


def dataset_returns(cfg: DictConfig) -> np.ndarray:
    store = learning_histories(cfg, progress=False)
    reward = np.asarray(store.column("reward"), dtype=np.float64)
    return np.add.reduceat(reward, store.episode_starts)


def evaluate_alignment(
    cfg: DictConfig,
    make_policy: Callable[[np.ndarray], Policy],
    targets: np.ndarray,
    episodes: int = EPISODES_PER_TARGET,
) -> np.ndarray:
    """Mean achieved return per target, `episodes` episodes each, cycling over the train tasks."""
    train_fns = darkroom_tasks(cfg.env).env_fns("train")
    env_fns = [train_fns[i % len(train_fns)] for i in range(episodes)]
    per_env_targets = np.repeat(targets, len(env_fns))
    result = rollout(
        env_fns * len(targets), make_policy(per_env_targets), episodes=1, seed=cfg.seed,
        progress=False, desc="alignment",
    )  # fmt: skip
    return result.returns[:, 0].reshape(len(targets), len(env_fns)).mean(axis=1)


def write_rows(path: Path, env: str, agent: str, seed: int, targets, achieved) -> None:
    """Replace the rows of (env, agent, seed) in the alignment table."""
    rows = [
        {"env": env, "agent": agent, "seed": seed, "target": f"{target:.2f}",
         "achieved": f"{value:.2f}", "abs_error": f"{abs(value - target):.2f}"}
        for target, value in zip(targets, achieved, strict=True)
    ]  # fmt: skip
    upsert_rows(
        path, COLUMNS, rows, key=("env", "agent", "seed"),
        sort_key=lambda r: (r["env"], r["agent"], int(r["seed"]), float(r["target"])),
    )  # fmt: skip


def make_evaluator(
    cfg: DictConfig,
    agent: str,
    policy_factory: Callable[[nn.Module, torch.device, np.ndarray], Policy],
    num_targets: int,
):
    """An evaluator factory (logger -> evaluate(model, step)) for `agents.icl.train_agent`."""

    def with_logger(logger: Any) -> Callable[[nn.Module, int], dict[str, float]]:
        def evaluate(model: nn.Module, step: int) -> dict[str, float]:
            device = next(model.parameters()).device
            targets = return_targets(dataset_returns(cfg), num_targets)
            achieved = evaluate_alignment(
                cfg, lambda per_env: policy_factory(model, device, per_env), targets
            )
            env = f"{cfg.env.name}_{cfg.env.width}x{cfg.env.height}"
            if cfg.source.name != "qlearning":  # a second dataset of the same env
                env = f"{env}_{cfg.source.name}"
            path = Path(cfg.results_dir) / "return_alignment" / "alignment.csv"
            write_rows(path, env, agent, int(cfg.seed), targets, achieved)
            error = float(np.mean(np.abs(achieved - targets)))
            if logger is not None:
                for target, value in zip(targets, achieved, strict=True):
                    logger.log({"eval/step": step, f"eval/achieved@{target:.0f}": float(value)})
            return {"alignment_error": error}

        return evaluate

    return with_logger


def summary_table(path: Path) -> str:
    """Markdown: mean |achieved − target| per (env, agent), mean ± std over seeds."""
    per_run: dict[tuple[str, str], dict[int, list[float]]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            seeds = per_run.setdefault((r["env"], r["agent"]), {})
            seeds.setdefault(int(r["seed"]), []).append(float(r["abs_error"]))
    lines = ["| env | agent | seeds | mean abs error |", "|---|---|---|---|"]
    for (env, agent), seeds in sorted(per_run.items()):
        errors = np.array([np.mean(v) for v in seeds.values()])
        lines.append(
            f"| {env} | {agent} | {len(errors)} | {errors.mean():.2f} ± {errors.std():.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(
        summary_table(
            Path(sys.argv[1] if len(sys.argv) > 1 else "results/return_alignment/alignment.csv")
        )
    )
