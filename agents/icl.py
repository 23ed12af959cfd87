"""What the in-context sequence agents (AD, DT, RA-DT) share: commands, trials, curves, result files.

A trial is `trials` consecutive episodes on each held-out task, all tasks batched in one rollout
(`rl_core.rollout`), the policy's context kept across episodes. The curve (mean return of episode
k over tasks) is logged as `icl/*` rows and written to `results/<env>/icl_<w>x<h>.csv` with the
columns `agent,seed,trial,mean_reward` (rows of the same agent and seed are replaced), next to a
PNG of every agent's curve.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from agents.qlearning import darkroom_tasks
from agents.sources import learning_histories, source_attrs
from rl_core.cli import setup_run
from rl_core.config import to_dataclass
from rl_core.data import EpisodeStore
from rl_core.logging import Logger, LoggerConfig
from rl_core.rollout import Policy, RolloutResult, rollout
from rl_core.stats import bootstrap_ci
from rl_core.tables import upsert_rows
from rl_core.train import TrainConfig, Trainer
from rl_core.utils import resolve_device

CSV_COLUMNS = ("agent", "seed", "trial", "mean_reward")


def evaluate_in_context(
    env_cfg: DictConfig | dict,
    policy: Policy,
    *,
    trials: int,
    split: str = "eval",
    seed: int = 0,
    progress: bool = True,
) -> RolloutResult:
    """Run `trials` consecutive episodes on every task of `split`, all tasks batched."""
    tasks = darkroom_tasks(env_cfg)
    return rollout(
        tasks.env_fns(split),
        policy,
        episodes=trials,
        seed=seed,
        progress=progress,
        desc=f"in-context eval ({split})",
    )


def log_curve(logger: Any, curve: np.ndarray, prefix: str = "icl/mean_reward") -> None:
    """One `icl/*` row per trial, on the `icl/trial` axis."""
    for trial, value in enumerate(curve, start=1):
        logger.log({"icl/trial": trial, prefix: float(value)})


def goal_discovery(returns: np.ndarray, late_from: int = 31) -> dict[str, float]:
    """Where an in-context curve loses reward, on sparse-reward goal tasks (Dark-Room): from
    per-task returns (tasks, trials), exploration (goals found before trial `late_from`) vs
    exploitation (in trials >= `late_from`, how often a goal found in an earlier trial is reached
    again, and what such episodes earn). An episode "reaches" its goal when its return is > 0.
    """
    returns = np.asarray(returns, np.float64)
    if returns.ndim != 2 or not 1 < late_from <= returns.shape[1]:
        raise ValueError(f"returns {returns.shape} with late_from={late_from}: expected "
                         "(tasks, trials) with 1 < late_from <= trials")  # fmt: skip
    k = late_from - 1
    reached = returns > 0
    found_before = np.zeros_like(reached)
    found_before[:, 1:] = np.maximum.accumulate(reached, axis=1)[:, :-1]
    late, known = returns[:, k:], found_before[:, k:]
    hit = late > 0
    return {
        "tasks": float(len(returns)),
        "goals_found_before_late": float(found_before[:, k].sum()),
        "late_known_share": float(known.mean()),
        "late_reached_given_known": float(hit[known].mean()) if known.any() else float("nan"),
        "late_return_when_reached": float(late[hit].mean()) if hit.any() else float("nan"),
        "late_mean_return": float(late.mean()),
    }


def results_paths(cfg: DictConfig) -> tuple[Path, Path]:
    """The committed table and plot for this env size."""
    folder = Path(cfg.results_dir) / cfg.env.name
    stem = f"icl_{cfg.env.width}x{cfg.env.height}"
    return folder / f"{stem}.csv", folder / f"{stem}.png"


def write_curve(csv_path: Path, agent: str, seed: int, curve: np.ndarray) -> None:
    """Replace the rows of (agent, seed) in the table with `curve`; keep everything else."""
    rows = [
        {"agent": agent, "seed": seed, "trial": k, "mean_reward": f"{v:.4f}"}
        for k, v in enumerate(curve, start=1)
    ]
    upsert_rows(
        csv_path, CSV_COLUMNS, rows, key=("agent", "seed"),
        sort_key=lambda r: (r["agent"], int(r["seed"]), int(r["trial"])),
    )  # fmt: skip


def read_curves(csv_path: Path) -> dict[str, np.ndarray]:
    """agent -> (seeds, trials) array of mean rewards."""
    per_agent: dict[str, dict[int, dict[int, float]]] = {}
    with csv_path.open(newline="") as f:
        for r in csv.DictReader(f):
            seeds = per_agent.setdefault(r["agent"], {})
            seeds.setdefault(int(r["seed"]), {})[int(r["trial"])] = float(r["mean_reward"])
    out = {}
    for agent, seeds in per_agent.items():
        trials = sorted(next(iter(seeds.values())))
        out[agent] = np.array([[s[t] for t in trials] for s in seeds.values()])
    return out


def plot_curves(csv_path: Path, png_path: Path, optimum: float | None = None) -> Path:
    """Mean over seeds of each agent's in-context curve, with its 95% bootstrap CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for agent, curves in sorted(read_curves(csv_path).items()):
        x = np.arange(1, curves.shape[1] + 1)
        lo, hi = bootstrap_ci(curves)
        ax.plot(
            x,
            curves.mean(0),
            label=f"{agent} ({curves.shape[0]} seed{'s' * (curves.shape[0] > 1)})",
        )
        ax.fill_between(x, lo, hi, alpha=0.2)
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=1, label=f"optimal ({optimum:.1f})")
    ax.set_xlabel("trial (episode in context)")
    ax.set_ylabel("mean reward, held-out tasks")
    ax.set_title(f"{csv_path.stem} (mean, 95% bootstrap CI over seeds)")
    ax.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def summary_table(csv_path: Path, trials: Sequence[int] = (1, 5, 10, 20, 40)) -> str:
    """Markdown table: per agent, mean [95% bootstrap CI] over seeds at the given trials."""
    curves = read_curves(csv_path)
    head = "| agent | seeds | " + " | ".join(f"trial {t}" for t in trials) + " |"
    lines = [head, "|---|---|" + "---|" * len(trials)]
    for agent, c in sorted(curves.items()):
        bad = [t for t in trials if not 1 <= t <= c.shape[1]]
        if bad:
            raise ValueError(f"{csv_path}: agent {agent} has trials 1..{c.shape[1]}, not {bad}")
        lo, hi = bootstrap_ci(c)
        cells = [f"{c[:, t - 1].mean():.1f} [{lo[t - 1]:.1f}, {hi[t - 1]:.1f}]" for t in trials]
        lines.append(f"| {agent} | {c.shape[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(cfg: DictConfig, agent: str, curve: np.ndarray, logger: Any | None = None) -> Path:
    """Log the curve, write it to the results table and redraw the plot; return the CSV path."""
    if logger is not None:
        log_curve(logger, curve)
    csv_path, png_path = results_paths(cfg)
    write_curve(csv_path, agent, int(cfg.seed), curve)
    plot_curves(csv_path, png_path, optimum=darkroom_tasks(cfg.env).mean_optimal_return("eval"))
    return csv_path


# ----------------------------------------------------------------------------- shared commands
PolicyFactory = Callable[[nn.Module, torch.device], Policy]


def make_evaluator(
    cfg: DictConfig, agent: str, make_policy: PolicyFactory, trials: int, logger: Any
) -> Callable[[nn.Module, int], dict[str, float]]:
    """The Trainer's evaluation: the full in-context trial on the held-out tasks, reported."""

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        device = next(model.parameters()).device
        result = evaluate_in_context(
            cfg.env, make_policy(model, device), trials=trials, seed=cfg.seed, progress=False
        )
        curve = result.mean_return_per_trial
        report(cfg, agent, curve, logger)
        return {"return_first_trial": float(curve[0]), "return_last_trial": float(curve[-1])}

    return evaluate


EvaluatorFactory = Callable[[Any], Callable[[nn.Module, int], dict[str, float]]]


def icl_evaluator(cfg: DictConfig, make_policy: PolicyFactory, trials: int) -> EvaluatorFactory:
    """The default evaluation of a sequence agent: the in-context trial, given the logger."""
    return lambda logger: make_evaluator(cfg, cfg.agent.name, make_policy, trials, logger)


def train_agent(
    cfg: DictConfig,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
    make_sampler: Callable[[EpisodeStore], Any],
    evaluate: EvaluatorFactory,
) -> nn.Module:
    """`train` of a sequence agent: histories -> sampler -> Trainer, then `evaluate(logger)`."""
    run_dir = setup_run(cfg)
    store = learning_histories(cfg)
    sampler = make_sampler(store)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    with Logger(
        logger_cfg, run_dir, cfg.run_name, {**resolved, "dataset": source_attrs(store)}
    ) as logger:
        trainer = Trainer(
            model,
            to_dataclass(cfg.train, TrainConfig, "train"),
            run_dir=run_dir,
            loss_fn=loss_fn,
            sample_batch=sampler.sample,
            evaluate=evaluate(logger),
            logger=logger,
            seed=cfg.seed,
            device=cfg.device,
            config=resolved,
        )
        return trainer.fit(resume=cfg.resume)


def load_trained(cfg: DictConfig, model: nn.Module) -> tuple[int, torch.device]:
    """Load `run_dir/checkpoints/last.pt` into `model`, move it to the configured device in eval
    mode; returns the checkpoint's step and the device."""
    step = Trainer.load_weights(model, Path(cfg.run_dir))
    device = resolve_device(cfg.device)
    model.to(device).eval()
    return step, device


def evaluate_agent(
    cfg: DictConfig, model: nn.Module, evaluate: EvaluatorFactory
) -> dict[str, float]:
    """`eval` of a sequence agent: reload `run_dir/checkpoints/last.pt`, evaluate again."""
    run_dir = Path(cfg.run_dir)
    step, _ = load_trained(cfg, model)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    with Logger(logger_cfg, run_dir, cfg.run_name, {}) as logger:
        metrics = evaluate(logger)(model, step)
    print(metrics)
    return metrics


def diagnose_agent(
    cfg: DictConfig, model: nn.Module, make_policy: PolicyFactory, trials: int
) -> dict[str, float]:
    """`diagnose`: re-run a trained run's in-context evaluation and say where its reward goes
    (`goal_discovery`). Writes the per-task returns to `run_dir/icl_returns.npy`; leaves the
    results tables alone."""
    _, device = load_trained(cfg, model)
    result = evaluate_in_context(
        cfg.env, make_policy(model, device), trials=trials, seed=cfg.seed, progress=False
    )
    np.save(Path(cfg.run_dir) / "icl_returns.npy", result.returns)
    stats = {
        "first_trial": float(result.returns[:, 0].mean()),
        "last_trial": float(result.returns[:, -1].mean()),
        **goal_discovery(result.returns, late_from=max(2, trials - 9)),
    }
    print(json.dumps(stats))
    return stats


def collect(cfg: DictConfig) -> None:
    """`collect`: build (or reuse) the learning histories this config trains on."""
    store = learning_histories(cfg)
    print(f"{len(store)} episodes, {store.num_steps} steps in {store.root}")
