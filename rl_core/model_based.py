"""One training loop for every world-model agent: collect, train each component, imagine, evaluate.

Why one loop: Δ-IRIS, DIAMOND and IRIS differ in their models, not in their schedule. Each epoch
(as in vmicheli/delta-iris and eloialonso/diamond `trainer.py`):
  1. collect `collect.steps_per_epoch` real steps with the current policy (epoch 1: a uniformly
     random policy for `collect.first_steps`) through :class:`rl_core.rollout.StepCollector` into
     the run's EpisodeStore, the replay buffer, which survives restarts;
  2. train every component in order (representation -> dynamics -> actor-critic) for its number
     of steps, each with its own AdamW optimiser, starting at its own epoch; a component is any
     module with ``compute_loss(batch) -> (loss, metrics)`` plus a sampler of its batches;
  3. every `eval.every` epochs, run the policy in fresh envs through the rollout loop;
  4. checkpoint atomically (every module, optimiser, the epoch, env steps and RNG states), so an
     interrupted run resumes from its last finished epoch (`resume=true`).
Metrics: ``train/<component>/<metric>`` (means over the epoch's steps) and ``perf/<component>_
steps_per_s`` on the ``train/step`` axis (= epoch), ``eval/return`` on ``eval/step``, both rows
carrying ``env_steps``; the evaluation history is kept for plots/tables.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rl_core.actor_critic import ActorCritic, ActorCriticPolicy
from rl_core.data.segments import SegmentSampler
from rl_core.data.store import EpisodeStore
from rl_core.rollout import RandomPolicy, StepCollector, rollout
from rl_core.train import param_groups
from rl_core.utils import atomic_torch_save

__all__ = [
    "CollectConfig",
    "Component",
    "ComponentSchedule",
    "EvalConfig",
    "LoopConfig",
    "ModelBasedLoop",
    "train_component",
]

CHECKPOINT_VERSION = 1
BatchFn = Callable[[int, np.random.Generator], dict[str, Tensor]]


class Trainable(Protocol):
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]: ...


@dataclass
class ComponentSchedule:
    """When and how one component trains (Δ-IRIS `config/params/*.yaml` `training.*`)."""

    start_epoch: int = 1  # first epoch (1-based) it trains in
    steps_first: int = 100  # gradient steps in that first epoch
    steps_per_epoch: int = 50  # gradient steps in every later epoch
    batch_size: int = 16
    seq_len: int = 8  # transitions per segment (ignored by the actor-critic: it uses burn_in)
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 10.0  # <= 0: no clipping
    amp: bool = True  # bf16 autocast on CUDA (Δ-IRIS: tokenizer and world model; not the AC)

    def steps_at(self, epoch: int) -> int:
        if epoch < self.start_epoch:
            return 0
        return self.steps_first if epoch == self.start_epoch else self.steps_per_epoch


@dataclass
class CollectConfig:
    envs: int = 1
    first_steps: int = 2000  # epoch 1, uniformly random actions
    steps_per_epoch: int = 200
    last_epoch: int | None = None  # no collection after this epoch (Δ-IRIS Atari: 100K steps)
    epsilon: float = 0.01  # random-action probability while collecting
    temperature: float = 1.0

    def steps_at(self, epoch: int) -> int:
        """Real steps collected in `epoch` (1-based)."""
        if epoch == 1:
            return self.first_steps
        if self.last_epoch is not None and epoch > self.last_epoch:
            return 0
        return self.steps_per_epoch

    def budget_through(self, epoch: int) -> int:
        """Real steps collected in epochs 1..`epoch`."""
        return sum(self.steps_at(e) for e in range(1, epoch + 1))


@dataclass
class EvalConfig:
    every: int = 5  # epochs; the last epoch always evaluates; 0: only the last
    episodes: int = 8  # per env
    envs: int = 4
    temperature: float = 1.0  # sample from the policy; greedy: argmax
    greedy: bool = False


@dataclass
class LoopConfig:
    epochs: int = 20
    ckpt_every: int = 1  # epochs
    progress: bool = True
    collect: CollectConfig = field(default_factory=CollectConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class Component:
    """A trainable piece: `module.compute_loss(sample(batch_size, rng))`, its own optimiser."""

    name: str
    module: nn.Module
    schedule: ComponentSchedule
    sample: BatchFn
    after_step: Callable[[], None] | None = None  # e.g. the actor-critic's EMA target update
    optimizer: torch.optim.Optimizer | None = None
    # gradient steps in an epoch, instead of `schedule.steps_at` (e.g. matched to an env budget)
    steps_at: Callable[[int], int] | None = None
    needs_data: bool = True  # False: trains without replay data (a model-free learner)

    def steps_in(self, epoch: int) -> int:
        return self.steps_at(epoch) if self.steps_at is not None else self.schedule.steps_at(epoch)

    def build_optimizer(self) -> torch.optim.Optimizer:
        s = self.schedule
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, s.weight_decay), lr=s.lr, betas=(0.9, 0.999), eps=1e-8
        )
        return self.optimizer


def train_component(
    component: Component, steps: int, rng: np.random.Generator, device: torch.device
) -> dict[str, float]:
    """`steps` gradient steps of one component; returns the means of its metrics."""
    module, s = component.module, component.schedule
    optimizer = component.optimizer or component.build_optimizer()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if s.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
        else contextlib.nullcontext()
    )
    module.train()
    sums: dict[str, float] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for _ in range(steps):
        batch = component.sample(s.batch_size, rng)
        with autocast:
            loss, metrics = module.compute_loss(batch)  # type: ignore[operator]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            params, s.grad_clip if s.grad_clip > 0 else float("inf")
        )
        optimizer.step()
        if component.after_step is not None:
            component.after_step()
        for key, value in {"loss": loss.item(), "grad_norm": norm.item(), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {k: v / max(steps, 1) for k, v in sums.items()}


class ModelBasedLoop:
    """Runs the epochs of a world-model agent (see the module docstring).

    `components` train in the given order; `actor_critic` is the policy used for collection and
    evaluation (its training is one of the components, usually the last). `store` is the replay
    buffer (episodes recorded with `next_obs`); `sampler` mirrors it in RAM for the samplers of
    the components.
    """

    def __init__(
        self,
        cfg: LoopConfig,
        *,
        components: Sequence[Component],
        actor_critic: ActorCritic,
        env_fns: Sequence[Callable[[], gym.Env]],
        eval_env_fns: Sequence[Callable[[], gym.Env]],
        store: EpisodeStore,
        sampler: SegmentSampler,
        run_dir: Path | str,
        device: torch.device,
        logger: Any | None = None,
        seed: int = 0,
        vectorization: str = "sync",
        extra_state: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.cfg = cfg
        self.components = list(components)
        self.actor_critic = actor_critic
        self.eval_env_fns = list(eval_env_fns)
        self.store = store
        self.sampler = sampler
        self.run_dir = Path(run_dir)
        self.device = device
        self.logger = logger
        self.seed = seed
        self.vectorization = vectorization
        self.extra_state = dict(extra_state or {})  # modules outside components (targets, ...)
        self.rng = np.random.default_rng(seed)
        self.collector = StepCollector(
            env_fns,
            record_to=store,
            metadata={"source": "model_based_loop", "seed": seed},
            seed=seed,
            vectorization=vectorization,
        )
        self.action_space = self.collector.envs.single_action_space
        self.epoch = 0
        self.history: list[dict[str, float]] = []  # one row per evaluation
        self._policy: ActorCriticPolicy | None = None
        for c in self.components:
            c.build_optimizer()

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def env_steps(self) -> int:
        """Real env steps: collected, plus those components took themselves (model-free)."""
        own = sum(int(getattr(c.module, "env_steps", 0)) for c in self.components)
        return self.collector.total_steps + own

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> None:
        state = {
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "env_steps": self.collector.total_steps,
            "episodes_done": self.collector.episodes_done,
            "history": self.history,
            "modules": {c.name: c.module.state_dict() for c in self.components},
            "optimizers": {c.name: c.optimizer.state_dict() for c in self.components},  # type: ignore[union-attr]
            "extra": {k: m.state_dict() for k, m in self.extra_state.items()},
            "actor_critic": self.actor_critic.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        }
        atomic_torch_save(state, self.ckpt_path)

    def load(self) -> bool:
        """Restore the last checkpoint if there is one; True if it did."""
        if not self.ckpt_path.exists():
            return False
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{self.ckpt_path}: checkpoint version {state.get('version')!r}, "
                f"expected {CHECKPOINT_VERSION}"
            )
        names = {c.name for c in self.components}
        if set(state["modules"]) != names:
            raise ValueError(
                f"{self.ckpt_path} holds components {sorted(state['modules'])}, "
                f"this agent has {sorted(names)}"
            )
        for c in self.components:
            c.module.load_state_dict(state["modules"][c.name])
            c.optimizer.load_state_dict(state["optimizers"][c.name])  # type: ignore[union-attr]
        for k, m in self.extra_state.items():
            m.load_state_dict(state["extra"][k])
        self.actor_critic.load_state_dict(state["actor_critic"])
        self.epoch = int(state["epoch"])
        self.collector.total_steps = int(state["env_steps"])
        self.collector.episodes_done = int(state["episodes_done"])
        self.history = list(state["history"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        return True

    # ------------------------------------------------------------------ epochs

    def _collect(self, epoch: int) -> dict[str, float]:
        steps = self.cfg.collect.steps_at(epoch)
        if steps <= 0:
            return {}
        c = self.cfg.collect
        if epoch == 1:
            policy: Any = RandomPolicy(self.action_space, seed=self.seed)
        else:
            policy = self._policy or ActorCriticPolicy(
                self.actor_critic, epsilon=c.epsilon, temperature=c.temperature, seed=self.seed
            )
            self._policy = policy
        self.actor_critic.eval()
        returns = self.collector.collect(policy, steps)
        self.sampler.update(self.store)
        row = {"collect/episodes": float(len(returns))}
        if returns:
            row["collect/return"] = float(np.mean(returns))
        return row

    def evaluate(self, epoch: int) -> dict[str, float]:
        e = self.cfg.eval
        self.actor_critic.eval()
        policy = ActorCriticPolicy(
            self.actor_critic, temperature=e.temperature, greedy=e.greedy, seed=self.seed + epoch
        )
        result = rollout(
            self.eval_env_fns[: e.envs],
            policy,
            episodes=e.episodes,
            seed=self.seed + 10_000 + epoch,
            vectorization=self.vectorization,
            progress=False,
        )
        row = {
            "epoch": float(epoch),
            "env_steps": float(self.env_steps),
            "return": float(result.returns.mean()),
            "return_std": float(result.returns.std()),
            "length": float(result.lengths.mean()),
        }
        self.history.append(row)
        return row

    def run(self, resume: bool = False) -> list[dict[str, float]]:
        """Train for `cfg.epochs` epochs (continuing after the checkpoint if `resume`)."""
        if resume and self.load():
            print(f"resumed from {self.ckpt_path} at epoch {self.epoch}")
        self.sampler.update(self.store)
        cfg = self.cfg
        bar = tqdm(
            range(self.epoch + 1, cfg.epochs + 1),
            desc="epochs",
            disable=not cfg.progress,
            initial=self.epoch,
            total=cfg.epochs,
        )
        try:
            for epoch in bar:
                self.epoch = epoch
                row: dict[str, float] = {"train/step": epoch}
                collect = self._collect(epoch)
                row.update({f"train/{k}": v for k, v in collect.items()})
                for comp in self.components:
                    steps = comp.steps_in(epoch)
                    if steps == 0 or (comp.needs_data and len(self.sampler) == 0):
                        continue
                    start = time.perf_counter()
                    metrics = train_component(comp, steps, self.rng, self.device)
                    row[f"perf/{comp.name}_steps_per_s"] = steps / (time.perf_counter() - start)
                    row.update({f"train/{comp.name}/{k}": v for k, v in metrics.items()})
                row["train/env_steps"] = self.env_steps
                self._log(row)
                if (cfg.eval.every and epoch % cfg.eval.every == 0) or epoch == cfg.epochs:
                    ev = self.evaluate(epoch)
                    self._log({"eval/step": epoch, **{f"eval/{k}": v for k, v in ev.items()}})
                    bar.set_postfix(ret=f"{ev['return']:.3f}", steps=self.env_steps)
                if epoch % max(cfg.ckpt_every, 1) == 0 or epoch == cfg.epochs:
                    self.save()
        finally:
            bar.close()
            self.close()
        return self.history

    def close(self) -> None:
        """Close the collection envs and any envs a component holds (a model-free learner's)."""
        self.collector.close()
        for comp in self.components:
            close = getattr(comp.module, "close", None)
            if callable(close):
                close()

    def _log(self, row: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(row)
