"""World models side by side: the same held-out episodes through every trained agent's world model.

    python -m agents.world_model_compare --runs runs/minigrid__delta_iris__0 runs/minigrid__diamond__0

Why: each agent's own `heldout.csv` measures its pieces against trivial baselines, with metrics
that only make sense for that model (Δ-token cross-entropy, denoising loss). Here every world
model is used only through its `ImaginedEnv` face (`reset(frames, actions)`, `step(actions)`;
`rl_core.imagination_eval`), so the figures are comparable:

* one step from `burn_in` real transitions, over every window of the held-out episodes: next
  frame PSNR and mean absolute error vs copying the last frame; the predicted reward sign's recall
  on non-zero rewards and balanced accuracy, and the termination recall, vs chance;
* open loop with the real actions from the same starting windows: mean absolute pixel error per
  imagined step up to `--horizon` (or the model's context limit, e.g. Δ-IRIS' `max_blocks`), vs
  copying the start frame (`rollout_error.csv`, plotted in `rollout_error.png`), and a strip of
  the real frames over each model's imagined ones (`strip.png`);
* cost, measured now in this one process on the same data: training steps/s of every component
  (`--cost-steps` timed steps after one untimed step, the agents' own batch samplers and
  schedules) and imagined env-steps/s of the open-loop rollouts.

The held-out episodes are collected once (random policy, the seeds of `heldout_store` of the
first run's config) into `--out-run-dir`; every run must be on the same env. Outputs go to
`--out` (results/world_models/): `side_by_side.csv` (columns `env,metric,agent,value,baseline,
value_baseline`), `rollout_error.csv` (`env,agent,k,mae,copy_last_mae`) and the two PNGs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents.world_model_common import env_label, heldout_store, to_torch
from rl_core.data.segments import SegmentSampler
from rl_core.imagination_eval import (
    open_loop,
    psnr,
    rollout_error_curve,
    write_strip_png,
)
from rl_core.model_based import train_component
from rl_core.tables import upsert_rows

SIDE_COLUMNS = ("env", "metric", "agent", "value", "baseline", "value_baseline")
CURVE_COLUMNS = ("env", "agent", "k", "mae", "copy_last_mae")


def load_run(run_dir: Path) -> tuple[DictConfig, Any, Any, Any]:
    """(config, agent module, loop, models) of a finished run, weights from its checkpoint."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a world-model run directory?")
    cfg = OmegaConf.load(path)
    name = str(cfg.agent.name)
    try:
        module = importlib.import_module(f"agents.{name}.agent")
    except ModuleNotFoundError:
        raise ValueError(f"{run_dir}: agent '{name}' has no agents.{name}.agent module") from None
    if not hasattr(module, "make_loop"):
        raise ValueError(f"{run_dir}: agent '{name}' is not a world-model agent (no make_loop)")
    loop, models = module.make_loop(cfg, run_dir, None)
    if not loop.load():
        raise FileNotFoundError(f"no checkpoint at {loop.ckpt_path}: train that run first")
    loop.close()
    for comp in loop.components:
        comp.module.eval()
    return cfg, module, loop, models


def horizon_limit(env: Any, burn_in: int, wanted: int) -> int:
    """Imagined steps the model can take after `burn_in` (a transformer's `max_blocks`)."""
    max_blocks = getattr(env, "max_blocks", None)
    return wanted if max_blocks is None else max(1, min(wanted, int(max_blocks) - burn_in))


def _chunks(batch: dict[str, torch.Tensor], size: int):
    n = len(batch["action"])
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in batch.items()}


def one_step_rows(env: Any, windows: dict[str, torch.Tensor], chunk: int) -> list[dict]:
    """Next frame, reward and termination one step after every window, vs trivial baselines."""
    real, imagined, copy, rew, real_rew, end, real_end = [], [], [], [], [], [], []
    for part in _chunks(windows, chunk):
        roll = open_loop(env, part, 1)
        real.append(roll["real"][:, 1])
        copy.append(roll["real"][:, 0])
        imagined.append(roll["imagined"][:, 1])
        rew.append(roll["reward"][:, 0].sign().long())
        real_rew.append(roll["real_reward"][:, 0].sign().long())
        end.append(roll["end"][:, 0])
        real_end.append(roll["real_end"][:, 0].bool())
    real_t, imag_t, copy_t = torch.cat(real), torch.cat(imagined), torch.cat(copy)
    rew_t, real_rew_t = torch.cat(rew), torch.cat(real_rew)
    end_t, real_end_t = torch.cat(end), torch.cat(real_end)
    rows = [
        ("next_frame_psnr_db", psnr(imag_t, real_t), "copy_last", psnr(copy_t, real_t)),
        ("next_frame_mae", (imag_t - real_t).abs().mean().item(), "copy_last",
         (copy_t - real_t).abs().mean().item()),
    ]  # fmt: skip
    nonzero = real_rew_t != 0
    if bool(nonzero.any()):
        rows.append(("reward_nonzero_recall", (rew_t[nonzero] == real_rew_t[nonzero]).float()
                     .mean().item(), "chance", 1 / 3))  # fmt: skip
    present = real_rew_t.unique()
    recalls = [(rew_t[real_rew_t == c] == c).float().mean().item() for c in present]
    rows.append(("reward_balanced_accuracy", float(np.mean(recalls)), "chance", 1 / len(present)))
    if bool(real_end_t.any()):
        rows.append(("end_recall", end_t[real_end_t].float().mean().item(), "chance", 0.5))
    rows.append(("end_false_positive_rate", end_t[~real_end_t].float().mean().item(), "never", 0.0))
    rows.append(("heldout_windows", float(len(real_t)), "none", float("nan")))
    return [{"metric": m, "value": v, "baseline": b, "value_baseline": vb} for m, v, b, vb in rows]


def cost_rows(
    module: Any, cfg: DictConfig, loop: Any, models: Any, sampler: SegmentSampler, steps: int
) -> list[dict]:
    """Training steps/s of each component on the held-out data (after one untimed step)."""
    rows = []
    rng = np.random.default_rng(0)
    for comp in module.components(cfg, models, sampler, loop.device):
        train_component(comp, 1, rng, loop.device)  # optimiser state, first-call overheads
        start = time.perf_counter()
        train_component(comp, steps, rng, loop.device)
        rate = steps / (time.perf_counter() - start)
        rows.append({"metric": f"train_steps_per_s_{comp.name}", "value": rate,
                     "baseline": "none", "value_baseline": float("nan")})  # fmt: skip
    return rows


def plot_curves(curves: dict[str, dict[str, torch.Tensor]], path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (agent, curve) in enumerate(curves.items()):
        k = np.arange(1, len(curve["model"]) + 1)
        line = ax.plot(k, curve["model"].numpy(), marker=".", label=f"{agent} (imagined)")[0]
        if i == 0 or len(curve["copy_last"]) > len(next(iter(curves.values()))["copy_last"]):
            ax.plot(k, curve["copy_last"].numpy(), ls="--", color="grey",
                    label="copy start frame" if i == 0 else None)  # fmt: skip
        line.set_zorder(3)
    ax.set_xlabel("imagined step k (real actions)")
    ax.set_ylabel("mean |pixel error| (0-1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", type=Path,
                    default=[Path("runs/minigrid__delta_iris__0"), Path("runs/minigrid__diamond__0")])  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("results/world_models"))
    ap.add_argument("--out-run-dir", type=Path, default=Path("runs/world_model_compare"))
    ap.add_argument("--heldout-steps", type=int, default=3000)
    ap.add_argument("--burn-in", type=int, default=3, help="real transitions before imagining")
    ap.add_argument("--horizon", type=int, default=50, help="open-loop imagined steps")
    ap.add_argument("--rollouts", type=int, default=16, help="open-loop windows")
    ap.add_argument("--strip-steps", type=int, default=12)
    ap.add_argument("--cost-steps", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=256, help="windows per one-step batch")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [load_run(r) for r in args.runs]
    labels = {env_label(cfg.env) for cfg, *_ in runs}
    if len(labels) != 1:
        raise ValueError(f"the runs are on different envs: {sorted(labels)}")
    env = labels.pop()
    first_cfg, _, first_loop, _ = runs[0]
    data_cfg = OmegaConf.merge(first_cfg, {"run_dir": str(args.out_run_dir),
                                           "agent": {"heldout": {"steps": args.heldout_steps}}})  # fmt: skip
    sampler = SegmentSampler(heldout_store(data_cfg, first_loop.action_space))
    device = first_loop.device
    windows = to_torch(sampler.windows(args.burn_in + 1), device)
    rng = np.random.default_rng(0)
    long = to_torch(sampler.sample_context(args.rollouts, args.burn_in + args.horizon, rng), device)

    side, curve_rows, curves, strip = [], [], {}, {}
    for cfg, module, loop, models in runs:
        agent = str(cfg.agent.name)
        imagination = models.imagination
        print(f"{agent}: one-step metrics over {len(windows['action'])} held-out windows")
        rows = one_step_rows(imagination, windows, args.chunk)
        h = horizon_limit(imagination, args.burn_in, args.horizon)
        t = args.burn_in + h
        part = {k: v[:, : t + 1] if k in ("frames", "frame_mask") else v[:, :t]
                for k, v in long.items()}  # fmt: skip
        start = time.perf_counter()
        curve = rollout_error_curve(imagination, part, h)
        rate = len(part["action"]) * h / (time.perf_counter() - start)
        curves[agent] = curve
        rows.append({"metric": f"rollout_mae_k{h}", "value": curve["model"][-1].item(),
                     "baseline": "copy_last", "value_baseline": curve["copy_last"][-1].item()})  # fmt: skip
        rows.append({"metric": "imagined_env_steps_per_s", "value": rate, "baseline": "none",
                     "value_baseline": float("nan")})  # fmt: skip
        for k, (m, c) in enumerate(zip(curve["model"], curve["copy_last"], strict=True), 1):
            curve_rows.append({"env": env, "agent": agent, "k": k, "mae": f"{m.item():.6g}",
                               "copy_last_mae": f"{c.item():.6g}"})  # fmt: skip
        one = {k: v[:1, : args.burn_in + args.strip_steps + (1 if k in ("frames", "frame_mask") else 0)]
               for k, v in long.items()}  # fmt: skip
        roll = open_loop(imagination, one, min(args.strip_steps, h))
        strip.setdefault("real", roll["real"][0])
        strip[agent] = roll["imagined"][0]
        print(f"{agent}: training cost, {args.cost_steps} steps per component")
        rows += cost_rows(module, cfg, loop, models, sampler, args.cost_steps)
        side += [{"env": env, "agent": agent, **r} for r in rows]

    out = args.out
    fmt = [{**r, "value": f"{r['value']:.6g}", "value_baseline": f"{r['value_baseline']:.6g}"}
           for r in side]  # fmt: skip
    upsert_rows(out / "side_by_side.csv", SIDE_COLUMNS, fmt, key=("env", "metric", "agent"),
                sort_key=lambda r: (r["env"], r["metric"], r["agent"]))  # fmt: skip
    upsert_rows(out / "rollout_error.csv", CURVE_COLUMNS, curve_rows, key=("env", "agent", "k"),
                sort_key=lambda r: (r["env"], r["agent"], int(r["k"])))  # fmt: skip
    plot_curves(curves, out / "rollout_error.png",
                f"{env}: open-loop error, {args.rollouts} held-out starts, burn-in {args.burn_in}")  # fmt: skip
    write_strip_png(strip, out / "strip.png",
                    title=f"{env}: real (top) and each world model's imagination, real actions")  # fmt: skip
    print_table(side)
    return {"rows": side, "curves": curves}


def print_table(rows: list[dict]) -> None:
    agents = list(dict.fromkeys(r["agent"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    by = {(r["metric"], r["agent"]): r for r in rows}
    print(f"| metric | {' | '.join(agents)} | baseline |")
    print("|---" * (len(agents) + 2) + "|")
    for m in metrics:
        cells = [f"{by[(m, a)]['value']:.4g}" if (m, a) in by else "" for a in agents]
        base = next(by[(m, a)] for a in agents if (m, a) in by)
        b = "" if base["baseline"] == "none" else f"{base['baseline']} {base['value_baseline']:.4g}"
        print(f"| {m} | {' | '.join(cells)} | {b} |")


if __name__ == "__main__":
    main(sys.argv[1:])
