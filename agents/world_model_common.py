"""What every world-model agent (Δ-IRIS, DIAMOND) shares around the loop: pixel envs from the
config, replay batches as tensors, held-out data, and the result tables with their plot.

The loop itself (collect, train components, imagine, evaluate, checkpoint) is
`rl_core.model_based`; this module holds the agent-side conventions that must be identical across
world-model agents so their tables can sit side by side: the env label, the Atari evaluation
protocol (no life-loss terminal), the random baseline and the held-out episodes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import envs
from envs.vector import vectorization
from rl_core.actor_critic import ActorCritic, ImaginationConfig, frames_to_tensor
from rl_core.cli import setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore
from rl_core.data.segments import SegmentSampler
from rl_core.imagination_eval import open_loop, write_strip_gif, write_strip_png
from rl_core.logging import Logger, LoggerConfig
from rl_core.model_based import Component, ComponentSchedule, LoopConfig, ModelBasedLoop
from rl_core.model_free import RealEnvLearner, matched_updates
from rl_core.rollout import RandomPolicy, StepCollector, rollout
from rl_core.tables import read_rows, upsert_rows
from rl_core.utils import resolve_device

HELDOUT_COLUMNS = ("env", "metric", "model", "baseline", "value_model", "value_baseline")
RL_COLUMNS = ("env", "agent", "seed", "env_steps", "return")


def metric_row(metric: str, model: str, baseline: str, value_model, value_baseline) -> dict:
    """One held-out comparison (a `heldout.csv` row without its env): model vs baseline."""
    return {
        "metric": metric,
        "model": model,
        "baseline": baseline,
        "value_model": float(value_model),
        "value_baseline": float(value_baseline),
    }


def env_kwargs(env_cfg: DictConfig | dict, *, evaluation: bool = False) -> dict[str, Any]:
    kwargs = {k: v for k, v in dict(env_cfg).items() if k not in ("name", "run_tag")}
    if evaluation and "life_loss_terminal" in kwargs:
        kwargs["life_loss_terminal"] = False  # Atari 100k: life loss ends episodes in training only
    return kwargs


def env_fns(env_cfg: DictConfig | dict, n: int, *, evaluation: bool = False) -> list[Callable]:
    return [
        functools.partial(envs.make, env_cfg["name"], **env_kwargs(env_cfg, evaluation=evaluation))
    ] * n


def env_label(env_cfg: DictConfig | dict) -> str:
    """Row label in the result tables: `atari/Pong`, `MiniGrid-Empty-5x5-v0@32px_pixels`,
    `crafter`; Atari and Crafter frames other than the paper's 64x64 add `@<size>px`."""
    name = env_cfg["name"]
    if name in ("atari", "crafter"):
        label = f"atari/{env_cfg['game']}" if name == "atari" else "crafter"
        size = int(env_cfg.get("image_size" if name == "atari" else "size", 64))
        return label if size == 64 else f"{label}@{size}px"
    if name == "minigrid":
        return f"{env_cfg['env_id']}@{env_cfg['image_size']}px_{env_cfg['obs_type']}"
    if name == "procgen":
        return f"procgen/{env_cfg.get('env_name', '?')}"
    return str(name)


def env_spaces(env_cfg: DictConfig | dict) -> tuple[int, tuple[int, int, int]]:
    """(number of actions, frame shape (c, h, w)); pixel envs with discrete actions only."""
    if env_cfg.get("obs_type", "pixels") != "pixels":
        raise ConfigError(
            f"env '{env_cfg['name']}' has env.obs_type={env_cfg['obs_type']}: Δ-IRIS models "
            "pixels, use env.obs_type=pixels"
        )
    env = envs.make(env_cfg["name"], **env_kwargs(env_cfg))
    try:
        space, obs = env.action_space, env.observation_space
    finally:
        env.close()
    if not isinstance(space, gym.spaces.Discrete):
        raise ConfigError(f"env '{env_cfg['name']}': Δ-IRIS needs discrete actions, got {space}")
    if len(obs.shape) != 3 or obs.dtype != np.uint8 or obs.shape[0] != obs.shape[1]:
        raise ConfigError(
            f"env '{env_cfg['name']}': Δ-IRIS needs square uint8 RGB frames (h, w, c), got "
            f"{obs.shape} {obs.dtype} (MiniGrid: env.obs_type=pixels)"
        )
    h, w, c = obs.shape
    return int(space.n), (c, h, w)


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """A SegmentSampler batch as tensors: frames float (b, t+1, c, h, w) in [0, 1]."""
    out = {"frames": frames_to_tensor(batch["frames"], device)}
    for key, dtype in (("action", torch.long), ("reward", torch.float32), ("end", torch.bool),
                       ("mask", torch.bool), ("frame_mask", torch.bool)):  # fmt: skip
        if key in batch:
            out[key] = torch.as_tensor(batch[key]).to(device=device, dtype=dtype)
    return out


def random_returns(cfg: DictConfig, epoch: int) -> float:
    """The random policy's mean return, evaluated like the agent (same envs and episode count)."""
    e = cfg.agent.loop.eval
    n = int(e.envs)
    draw = 1_000 * int(cfg.seed) + epoch  # distinct across runs' seeds and epochs
    result = rollout(
        env_fns(cfg.env, n, evaluation=True),
        RandomPolicy(gym.spaces.Discrete(env_spaces(cfg.env)[0]), seed=draw),
        episodes=int(e.episodes),
        seed=20_000_000 + draw,
        vectorization=vectorization(cfg.env.name),
        progress=False,
    )
    return float(result.returns.mean())


def agent_label(cfg: DictConfig, agent: str) -> str:
    """The `agent` column of the tables: `diamond`, or `diamond_model_free` for that baseline."""
    return f"{agent}_model_free" if cfg.get("model_free", False) else agent


def write_rl_rows(cfg: DictConfig, agent: str, history: list[dict[str, float]]) -> Path:
    """`results/<agent>/imagination_rl.csv` rows of this run (its eval curve and, for a
    world-model run, the random policy at the same points) and the plot next to it."""
    label = env_label(cfg.env)
    rows = []
    for h in history:
        steps = int(h["env_steps"])
        rows.append({"env": label, "agent": agent_label(cfg, agent), "seed": cfg.seed,
                     "env_steps": steps,
                     "return": f"{h['return']:.4f}"})  # fmt: skip
        if not cfg.get("model_free", False):  # the world-model run draws them at its points
            rows.append({"env": label, "agent": "random", "seed": cfg.seed, "env_steps": steps,
                         "return": f"{random_returns(cfg, int(h['epoch'])):.4f}"})  # fmt: skip
    path = Path(cfg.results_dir) / agent / "imagination_rl.csv"
    upsert_rows(path, RL_COLUMNS, rows, key=("env", "agent", "seed", "env_steps"),
                sort_key=lambda r: (r["env"], r["agent"], int(r["seed"]), int(r["env_steps"])))  # fmt: skip
    plot_rl(path, path.with_suffix(".png"))
    return path


def plot_rl(csv_path: Path, png_path: Path) -> Path:
    """Return vs env steps per env (one panel each) and agent: mean over seeds, min-max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_rows(csv_path, RL_COLUMNS)
    envs_ = sorted({r["env"] for r in rows})
    fig = Figure(figsize=(5.0 * len(envs_), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, env in zip(fig.subplots(1, len(envs_), squeeze=False)[0], envs_, strict=True):
        for agent in sorted({r["agent"] for r in rows if r["env"] == env}):
            by_step: dict[int, list[float]] = {}
            for r in rows:
                if r["env"] == env and r["agent"] == agent:
                    by_step.setdefault(int(r["env_steps"]), []).append(float(r["return"]))
            x = np.array(sorted(by_step))
            ys = [np.array(by_step[k]) for k in x]
            mean = np.array([y.mean() for y in ys])
            n = max(len(y) for y in ys)
            ax.plot(x, mean, marker="o", label=f"{agent} (n={n})")
            ax.fill_between(x, [y.min() for y in ys], [y.max() for y in ys], alpha=0.2)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("eval return")
        ax.legend()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    return png_path


def heldout_store(cfg: DictConfig, action_space: gym.Space) -> EpisodeStore:
    """`cfg.agent.heldout.steps` random-policy steps in `run_dir/heldout`, from seeds the training
    run never uses (collected once, reused by `eval`)."""
    steps = int(cfg.agent.heldout.steps)
    store = EpisodeStore(Path(cfg.run_dir) / "heldout", create=True)
    if store.num_steps < steps:
        collector = StepCollector(
            env_fns(cfg.env, 1), record_to=store, seed=int(cfg.seed) + 1_000_003,
            vectorization=vectorization(cfg.env.name),
        )  # fmt: skip
        policy = RandomPolicy(action_space, seed=int(cfg.seed) + 7)
        while store.num_steps < steps:
            collector.collect(policy, steps)
        collector.close()
    return store


def write_heldout_rows(cfg: DictConfig, agent: str, rows: list[dict[str, Any]]) -> Path:
    """`results/<agent>/heldout.csv` rows (model vs baseline per metric) of this env; an
    experiment's `agent.results_tag` (e.g. `@app_f`) keeps its rows beside the default config's."""
    label = env_label(cfg.env) + str(OmegaConf.select(cfg, "agent.results_tag", default="") or "")
    out = [{"env": label, **{k: r[k] for k in HELDOUT_COLUMNS[1:4]},
            "value_model": f"{r['value_model']:.6g}", "value_baseline": f"{r['value_baseline']:.6g}"}
           for r in rows]  # fmt: skip
    path = Path(cfg.results_dir) / agent / "heldout.csv"
    upsert_rows(path, HELDOUT_COLUMNS, out, key=("env", "metric", "model", "baseline"),
                sort_key=lambda r: (r["env"], r["metric"], r["model"], r["baseline"]))  # fmt: skip
    return path


# ----------------------------------------------------------------------------- commands


def model_based_loop(
    cfg: DictConfig,
    run_dir: Path,
    logger: Any,
    *,
    actor_critic: Any,
    learner: Any,
    trained: list[torch.nn.Module],
    components: Callable[[SegmentSampler, torch.device], list[Any]],
    loop_cfg: LoopConfig | None = None,
) -> ModelBasedLoop:
    """The shared loop for `cfg.env` with this agent's components: replay store in
    `run_dir/replay`, training and evaluation envs, the learner's target critic saved with it."""
    device = resolve_device(cfg.device)
    for module in trained:
        module.to(device)
    loop_cfg = loop_cfg or to_dataclass(cfg.agent.loop, LoopConfig, "agent.loop")
    sampler = SegmentSampler()
    return ModelBasedLoop(
        loop_cfg,
        components=components(sampler, device),
        actor_critic=actor_critic,
        env_fns=env_fns(cfg.env, loop_cfg.collect.envs),
        eval_env_fns=env_fns(cfg.env, loop_cfg.eval.envs, evaluation=True),
        store=EpisodeStore(run_dir / "replay"),
        sampler=sampler,
        run_dir=run_dir,
        device=device,
        logger=logger,
        seed=int(cfg.seed),
        vectorization=vectorization(cfg.env.name),
        extra_state={"target": learner.target} if learner.target is not None else {},
    )


def model_free_loop(
    cfg: DictConfig, run_dir: Path, logger: Any, *, actor_critic: ActorCritic,
    im_cfg: ImaginationConfig,
) -> ModelBasedLoop:  # fmt: skip
    """`model_free=true`: no world model; the same actor-critic and loss on real env steps
    (`rl_core.model_free`), on `training.actor_critic.batch_size` envs (official). Nothing is
    collected into the replay store; instead each epoch takes as many gradient steps as bring the
    learner's real steps closest to what the world-model run has collected by then, so the two
    curves share their x axis (environment steps)."""
    loop_cfg = to_dataclass(cfg.agent.loop, LoopConfig, "agent.loop")
    schedule = to_dataclass(
        cfg.agent.training.actor_critic, ComponentSchedule, "agent.training.actor_critic"
    )
    learner = RealEnvLearner(
        actor_critic, env_fns(cfg.env, schedule.batch_size), im_cfg, seed=int(cfg.seed),
        vectorization=vectorization(cfg.env.name),
    )  # fmt: skip
    budget = loop_cfg.collect

    def updates(epoch: int) -> int:
        done = int(learner.env_steps)
        return matched_updates(budget.budget_through(epoch), done, learner.steps_per_update)

    def component(sampler: SegmentSampler, device: torch.device) -> list[Component]:
        return [Component("actor_critic", learner, schedule, lambda b, rng: {},
                          after_step=learner.after_step, steps_at=updates, needs_data=False)]  # fmt: skip

    no_collection = dataclasses.replace(budget, first_steps=0, steps_per_epoch=0)
    return model_based_loop(
        cfg, run_dir, logger, actor_critic=actor_critic, learner=learner, trained=[learner],
        components=component, loop_cfg=dataclasses.replace(loop_cfg, collect=no_collection),
    )  # fmt: skip


MakeLoop = Callable[[DictConfig, Path, Any], tuple[Any, Any]]
HeldoutRows = Callable[[DictConfig, Any, Any], list[dict[str, Any]]]


def report(
    cfg: DictConfig, agent: str, loop: Any, models: Any, heldout_rows: HeldoutRows, logger: Any
) -> dict[str, Any]:
    """Write this run's rows of both tables, print the held-out metrics, log a summary."""
    rl_path = write_rl_rows(cfg, agent, loop.history)
    rows = [] if cfg.get("model_free", False) else heldout_rows(cfg, loop, models)
    held_path = write_heldout_rows(cfg, agent, rows) if rows else None
    for r in rows:
        print(f"{r['metric']:>28s} {r['model']:>12s} {r['value_model']:10.5f}   "
              f"{r['baseline']:>16s} {r['value_baseline']:10.5f}")  # fmt: skip
    final = loop.history[-1] if loop.history else {}
    summary = {"final_return": final.get("return"), "env_steps": loop.env_steps,
               "results": [str(p) for p in (rl_path, held_path) if p is not None]}  # fmt: skip
    if logger is not None:
        logger.summary(summary)
    return summary


def refuse_stale_run(cfg: DictConfig) -> None:
    """A fresh `train` (resume=false) in a run dir that holds an earlier run's checkpoint or
    replay buffer would mix its old episodes into the new run's data: refuse, say what to do."""
    if cfg.resume:
        return
    run_dir = Path(cfg.run_dir)
    stale = [p for p in (run_dir / "checkpoints" / "last.pt", run_dir / "replay") if p.exists()]
    if stale:
        raise ConfigError(
            f"run_dir={run_dir} already holds {' and '.join(str(p) for p in stale)} from an "
            "earlier run: pass resume=true to continue it, or another run_dir (or delete this "
            "one) for a fresh run"
        )


def train_command(
    cfg: DictConfig, agent: str, make_loop: MakeLoop, heldout_rows: HeldoutRows
) -> dict[str, Any]:
    """`train`: run the loop in `cfg.run_dir` (resuming if asked), then write the tables."""
    refuse_stale_run(cfg)
    run_dir = setup_run(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    start = time.perf_counter()
    with Logger(logger_cfg, run_dir, cfg.run_name, resolved) as logger:
        loop, models = make_loop(cfg, run_dir, logger)
        loop.run(resume=bool(cfg.resume))
        summary = report(cfg, agent, loop, models, heldout_rows, logger)
        summary["wall_s"] = time.perf_counter() - start
        logger.summary({"wall_s": summary["wall_s"]})
    print(f"final return {summary['final_return']} after {summary['env_steps']} env steps, "
          f"{summary['wall_s']:.0f} s")  # fmt: skip
    return summary


def eval_command(
    cfg: DictConfig, agent: str, make_loop: MakeLoop, heldout_rows: HeldoutRows
) -> dict[str, Any]:
    """`eval`: reload `run_dir/checkpoints/last.pt`, evaluate the policy once more, redo the
    tables (the curve rows come from the checkpoint's history; the random rows are redrawn)."""
    run_dir = Path(cfg.run_dir)
    loop, models = make_loop(cfg, run_dir, None)
    if not loop.load():
        raise ConfigError(f"no checkpoint at {loop.ckpt_path}: train first (run_dir={run_dir})")
    row = loop.evaluate(loop.epoch)
    loop.history.pop()  # the table keeps the training curve
    loop.close()
    print(f"epoch {loop.epoch}: return {row['return']:.4f} over {loop.env_steps} env steps")
    return {**report(cfg, agent, loop, models, heldout_rows, None), "return": row["return"]}


def render_command(cfg: DictConfig, agent: str, make_loop: MakeLoop) -> dict[str, Any]:
    """`render`: an imagined rollout next to the real one, as researchers judge world models.

    Reloads `run_dir/checkpoints/last.pt`, takes a held-out window (`heldout_store`: episodes the
    run never trained on) of `burn_in` real transitions then `agent.heldout.strip_steps` more,
    imagines those steps fed with the real actions, and writes `results/<agent>/
    imagination_strip_<env>.png` (real row over imagined row, every `strip_every` steps) and
    `.gif` (both side by side, step by step)."""
    run_dir = Path(cfg.run_dir)
    loop, models = make_loop(cfg, run_dir, None)
    if not loop.load():
        raise ConfigError(f"no checkpoint at {loop.ckpt_path}: train first (run_dir={run_dir})")
    loop.close()
    for comp in loop.components:
        comp.module.eval()
    h = cfg.agent.heldout
    steps, every = int(h.strip_steps), int(h.strip_every)
    burn_in = models.learner.cfg.burn_in
    sampler = SegmentSampler(heldout_store(cfg, loop.action_space))
    rng = np.random.default_rng(int(cfg.seed) + 123)
    window = to_torch(sampler.sample_context(1, burn_in + steps, rng), loop.device)
    roll = open_loop(models.imagination, window, steps)
    rows = {"real": roll["real"][0], "imagined": roll["imagined"][0]}
    label = env_label(cfg.env)
    stem = (
        Path(cfg.results_dir)
        / agent
        / f"imagination_strip_{re.sub(r'[^A-Za-z0-9.-]+', '_', label)}"
    )
    title = (f"{agent} on {label}: real (top) vs imagined from {burn_in} real transitions, "
             f"fed the real actions")  # fmt: skip
    png = write_strip_png(rows, stem.with_suffix(".png"), every=every, title=title)
    gif = write_strip_gif(rows, stem.with_suffix(".gif"))
    mae = (roll["imagined"][0, 1:] - roll["real"][0, 1:]).abs().mean(dim=(1, 2, 3))
    print(f"wrote {png} and {gif}; mean abs pixel error per imagined step: "
          + " ".join(f"{x:.3f}" for x in mae.tolist()))  # fmt: skip
    return {"png": str(png), "gif": str(gif), "mae": mae.tolist()}
