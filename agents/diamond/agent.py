"""DIAMOND: a diffusion world model (EDM U-Net over the next frame), a separate reward/termination
model, and the shared CNN-LSTM actor-critic trained in imagination.

Paper: Alonso, Jelley, Micheli, Kanervisto, Storkey, Pearce, Fleuret, "Diffusion for World
Modeling: Visual Details Matter in Atari" (NeurIPS 2024, arXiv 2405.12399); official code
github.com/eloialonso/diamond (`src/models/diffusion/*`, `src/models/rew_end_model.py`,
`src/trainer.py`, `config/*.yaml`).

Pieces (modules of this package, trained by the shared loop `rl_core.model_based`):
* `denoiser.DiamondDenoiser`: D(x_σ, σ | L = 4 past frames, L past actions) with EDM
  preconditioning (`rl_core.nn.edm`), the action embeddings added to the noise embedding and
  injected through adaptive GroupNorm; sampled with 3 Euler steps on the Karras grid;
* `reward_end.RewardEndModel`: (x_t, x_{t+1}) through AdaGN conv blocks on the action, an LSTM,
  sign-of-reward and termination classifiers;
* `imagination.DiamondImagination`: both as a batched env for `rl_core.actor_critic`
  (REINFORCE with a value baseline, λ-returns; DIAMOND uses no target critic: `target_tau: 0`).
Each epoch: collect real steps into the replay store, train denoiser -> reward/end ->
actor-critic, evaluate, checkpoint.

Deviations from the official code:
* loop: the framework's collection/sampling/evaluation (`StepCollector`, `SegmentSampler`:
  uniform over stored transitions, official: recent episodes favoured by quarter weights
  [0.1, 0.1, 0.1, 0.7]); the first epoch collects a fixed number of random steps (official: until
  10 rare rewards were seen); no LR warm-up; imagined steps after a predicted end are masked out
  of the actor-critic loss; imagination starts from windows of L real transitions inside an
  episode (official: also from the first frames, behind grey padding);
* the defaults are CPU-sized (configs/agent/diamond.yaml); `experiment=atari100k` holds the
  paper's sizes and schedule; model-level deviations are in the docstrings of `denoiser.py`,
  `reward_end.py`, `imagination.py`, `evaluation.py` and `rl_core/nn/edm.py`;
* `model_free=true` (official `training.model_free`): `rl_core.model_free.RealEnvLearner`, whose
  real steps follow this run's collection budget epoch by epoch (official: its own count).

Official code: `eloialonso/diamond` (main branch; `src/models/diffusion/{denoiser,inner_model,
diffusion_sampler}.py`, `src/models/{blocks,rew_end_model}.py`, `src/envs/world_model_env.py`,
`src/data/{batch_sampler,utils}.py`, `config/{trainer,agent/default}.yaml`). Everything here is
re-written, not copied. Kept as the official code: EDM preconditioning with σ_data 0.5 and the
offset-noise effective σ (√(σ² + 0.3²)) in every conditioner at training and sampling time,
c_noise = ¼ ln σ_eff, log-normal training σ (−0.4, 1.2) clipped to [2e-3, 20], per-image-and-
channel offset noise 0.3, L = 4 frames stacked with the noisy frame, past frames divided by
σ_data, action embeddings (cond/L per step, flattened) added to the Fourier noise embedding and
a Linear-SiLU-Linear cond MLP, AdaGroupNorm (x (1 + scale) + shift, max(1, c // 32) groups),
the U-Net layout (skip concatenations, stride-2 orthogonal-init downsampling, nearest+conv
upsampling, 2 mid self-attention ResBlocks with the residual added to the normalised input,
zero-init second convs, attention output and output conv weight), frames in [−1, 1] inside and
grey (0) padding, the autoregressive training step (the next target conditioned on the model's
clamped 8-bit one-shot prediction), Karras σ grid (σ_max 5, σ_min 2e-3, ρ 7, then 0), Euler with
3 steps, no churn, unit-variance start noise, every denoised estimate clamped and quantised;
the reward/end model's encoder, LSTM initialisation, head and unweighted CE losses; sampled
reward/end classes in imagination.

Commands: `python -m agents.diamond train|eval [overrides]` with the same run directory,
resume and result-table conventions as `agents.delta_iris` (`results/diamond/`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents.diamond.denoiser import DenoiserConfig, DiamondDenoiser
from agents.diamond.evaluation import (
    denoiser_metrics,
    reward_end_metrics,
    rollout_rows,
)
from agents.diamond.imagination import DiamondImagination
from agents.diamond.reward_end import RewardEndConfig, RewardEndModel
from agents.world_model_common import (
    env_spaces,
    eval_command,
    heldout_store,
    model_based_loop,
    model_free_loop,
    render_command,
    to_torch,
    train_command,
)
from rl_core.actor_critic import (
    ActorCritic,
    ActorCriticConfig,
    ImaginationConfig,
    ImaginationLearner,
)
from rl_core.config import ConfigError, to_dataclass
from rl_core.data.segments import SegmentSampler
from rl_core.imagination_eval import rollout_error_curve
from rl_core.model_based import Component, ComponentSchedule, ModelBasedLoop

AGENT = "diamond"
COMPONENTS = ("denoiser", "reward_end", "actor_critic")


@dataclasses.dataclass
class Models:
    denoiser: DiamondDenoiser
    reward_end: RewardEndModel
    actor_critic: ActorCritic
    imagination: DiamondImagination
    learner: ImaginationLearner


def build(cfg: DictConfig, num_actions: int, image_shape: tuple[int, int, int]) -> Models:
    """Every module, sized from `cfg.agent` and the env (frame size, number of actions)."""
    a = cfg.agent
    c, h, _ = image_shape
    env_fields = {"num_actions": num_actions, "image_channels": c, "image_size": h}
    den_cfg = to_dataclass(
        {**OmegaConf.to_container(a.denoiser, resolve=True), **env_fields},
        DenoiserConfig, "agent.denoiser",
    )  # fmt: skip
    rew_cfg = to_dataclass(
        {**OmegaConf.to_container(a.reward_end, resolve=True), **env_fields},
        RewardEndConfig, "agent.reward_end",
    )  # fmt: skip
    ac_cfg = to_dataclass(a.actor_critic, ActorCriticConfig, "agent.actor_critic")
    im_cfg = to_dataclass(a.imagination, ImaginationConfig, "agent.imagination")
    if im_cfg.burn_in < 1:
        raise ConfigError("agent.imagination.burn_in must be >= 1 (DIAMOND: L = 4 frames)")
    denoiser = DiamondDenoiser(den_cfg)
    reward_end = RewardEndModel(rew_cfg)
    actor_critic = ActorCritic(num_actions, image_shape, ac_cfg)
    imagination = DiamondImagination(
        denoiser, reward_end, n_steps=int(a.imagination_sampler_steps), seed=int(cfg.seed)
    )
    learner = ImaginationLearner(actor_critic, imagination, im_cfg)
    return Models(denoiser, reward_end, actor_critic, imagination, learner)


def components(
    cfg: DictConfig, models: Models, sampler: SegmentSampler, device: torch.device
) -> list[Component]:
    """Denoiser, reward/end model, actor-critic: what each trains on and when."""
    schedules = {
        name: to_dataclass(cfg.agent.training[name], ComponentSchedule, f"agent.training.{name}")
        for name in COMPONENTS
    }
    den_len = models.denoiser.cfg.seq_len
    rew_len = schedules["reward_end"].seq_len
    burn_in = models.learner.cfg.burn_in

    def denoiser_batch(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return to_torch(sampler.sample_left_padded(b, den_len, rng), device)

    def reward_end_batch(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return to_torch(sampler.sample_left_padded(b, rew_len, rng), device)

    def contexts(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return to_torch(sampler.sample_context(b, burn_in, rng), device)

    batches: dict[str, Callable] = {
        "denoiser": denoiser_batch, "reward_end": reward_end_batch, "actor_critic": contexts,
    }  # fmt: skip
    modules = {"denoiser": models.denoiser, "reward_end": models.reward_end,
               "actor_critic": models.learner}  # fmt: skip
    return [
        Component(
            name,
            modules[name],
            schedules[name],
            batches[name],
            after_step=models.learner.after_step if name == "actor_critic" else None,
        )  # fmt: skip
        for name in COMPONENTS
    ]


def make_loop(cfg: DictConfig, run_dir: Path, logger: Any) -> tuple[ModelBasedLoop, Models]:
    models = build(cfg, *env_spaces(cfg.env))
    if cfg.get(
        "model_free", False
    ):  # the in-code baseline: the same actor-critic on real steps only
        loop = model_free_loop(cfg, run_dir, logger, actor_critic=models.actor_critic,
                               im_cfg=models.learner.cfg)  # fmt: skip
        return loop, models
    loop = model_based_loop(
        cfg, run_dir, logger, actor_critic=models.actor_critic, learner=models.learner,
        trained=[models.denoiser, models.reward_end, models.learner],
        components=lambda sampler, device: components(cfg, models, sampler, device),
    )  # fmt: skip
    return loop, models


def heldout_rows(cfg: DictConfig, loop: ModelBasedLoop, models: Models) -> list[dict[str, Any]]:
    """Model metrics on fresh episodes (seeds the training run never used) vs trivial baselines."""
    h = cfg.agent.heldout
    sampler = SegmentSampler(heldout_store(cfg, loop.action_space))
    rng = np.random.default_rng(int(cfg.seed) + 99)
    device = loop.device
    models.denoiser.eval()
    models.reward_end.eval()
    den = to_torch(sampler.sample_left_padded(int(h.batch_size), models.denoiser.cfg.seq_len,
                                      rng), device)  # fmt: skip
    rows = denoiser_metrics(models.denoiser, den, seed=int(cfg.seed))
    rew = to_torch(sampler.sample(int(h.batch_size), int(cfg.agent.training.reward_end.seq_len),
                                  rng), device)  # fmt: skip
    rows += reward_end_metrics(models.reward_end, rew)
    burn_in = models.learner.cfg.burn_in
    windows = to_torch(sampler.sample_context(int(h.rollout_batch), burn_in + int(h.rollout_steps),
                                              rng), device)  # fmt: skip
    curve = rollout_error_curve(models.imagination, windows, horizon=int(h.rollout_steps))
    rows += rollout_rows(curve)
    return rows


def train(cfg: DictConfig) -> dict[str, Any]:
    return train_command(cfg, AGENT, make_loop, heldout_rows)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Reload `run_dir/checkpoints/last.pt`, evaluate the policy once more and redo the tables."""
    return eval_command(cfg, AGENT, make_loop, heldout_rows)


def render(cfg: DictConfig) -> dict[str, Any]:
    """An imagined rollout beside the real one (PNG strip + GIF in results/diamond/)."""
    return render_command(cfg, AGENT, make_loop)
