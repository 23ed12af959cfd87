"""Δ-IRIS: a context-aware transition tokenizer, a transformer world model over Δ-tokens, and a
CNN-LSTM actor-critic trained in imagination.

Paper: Micheli, Alonso, Fleuret, "Efficient World Models with Context-Aware Tokenization"
(ICML 2024, arXiv 2406.19320); official code github.com/vmicheli/delta-iris (`src/models/*`,
`src/trainer.py`, `config/params/{atari,crafter}.yaml`).

Pieces (each a module of this package, trained by the shared loop `rl_core.model_based`):
* `tokenizer.Tokenizer`: encodes the transition (x_t, a_t, x_{t+1}) into 4 Δ-tokens from an EMA
  cosine codebook with dead-code revival; its decoder rebuilds x_{t+1} from (x_t, a_t, tokens), so
  the tokens carry only what (x_t, a_t) does not determine;
* `world_model.WorldModel`: a causal transformer over blocks [I-token(x_t), a_t, z¹..z⁴] that
  predicts the Δ-tokens, the reward sign and termination;
* `imagination.DeltaIrisImagination`: the world model as a batched env (sample reward/end/tokens,
  decode the next frame) for `rl_core.actor_critic.ImaginationLearner` (REINFORCE with a value
  baseline, λ-returns, EMA target critic).
Each epoch: collect real steps with the current policy into the replay store, train tokenizer ->
world model -> actor-critic (own AdamW each, own start epoch and step counts), evaluate, checkpoint.

Deviations from the official code (vmicheli/delta-iris @2018f25):
* loop: collection, sampling and evaluation are the framework's (`StepCollector`, `rollout`);
  segments are uniform over stored transitions (official: episodes weighted by (1 + count)^-α);
  imagined steps after a predicted termination are masked out of the actor-critic loss; the
  actor-critic's value is a scalar regression everywhere (official Crafter: two-hot buckets);
* rewards: only the 3-class sign head (official Crafter: 255-bucket two-hot symlog, expected
  reward in imagination);
* codebook (`rl_core.nn.EMACosineCodebook`): initialised as random unit vectors (official:
  uniform(-1/C, 1/C)); the revival entropy uses the normalised EMA usage (official: the raw
  frequencies, which sum above 1 after a revival); similarities in fp32 under autocast; the
  projections around it live in the tokenizer. Kept: cosine nearest code, straight-through,
  EMA 0.99 + re-normalisation, usage EMA 0.98, revival below log2(C) - 2 bits with batch vectors,
  commitment 0.02;
* tokenizer: loss, commitment and codebook updates see valid transitions only (official: the
  codebook also sees padded ones); `tokenize` always uses the frozen codebook;
* CNNs (`rl_core.nn.convnet`): GroupNorm with gcd(32, channels) groups, `residual: false` single
  conv blocks as a CPU option (the CPU default); `agent.latent_side` picks the down-sampling
  levels for the frame size (experiments give the official lists);
* world model: the shared `rl_core.nn.GPT` (pre-LN, learned positions, no dropout, KV cache)
  instead of the official minGPT copy; the I-token gets a Linear projection only when the CNN's
  output width differs from d_model (never at the paper sizes); tokens come from the caller
  (every block of a segment has its Δ-tokens; official: a last block with dummy tokens);
* imagination: exceeding `max_blocks` is an error (official: silently empties the KV cache);
  sampling as the official Atari env (temperature 1, frames clamped and rounded to 8 bits);
* evaluation (`evaluation.py`, held-out metrics vs copy-last, shuffled tokens, unigram entropy,
  majority code, chance) is not in the official code (it logs losses and reconstructions);
* the defaults are CPU-sized (configs/agent/delta_iris.yaml); `experiment=atari100k` and
  `experiment=crafter` hold the paper's sizes and schedules.

Commands: `python -m agents.delta_iris train|eval [overrides]`. `train` runs the loop in
`run_dir` (replay store in `run_dir/replay`, `resume=true` continues after the last finished
epoch), then writes `results/delta_iris/imagination_rl.csv` (its evaluation curve and a random
policy at the same points) and `results/delta_iris/heldout.csv` (model metrics on fresh episodes
against trivial baselines). `eval` reloads the checkpoint and redoes both tables' rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents.delta_iris.evaluation import (
    imagination_metrics,
    tokenizer_metrics,
    world_model_metrics,
)
from agents.delta_iris.imagination import DeltaIrisImagination
from agents.delta_iris.tokenizer import Tokenizer, TokenizerConfig
from agents.delta_iris.world_model import WorldModel, WorldModelConfig
from agents.world_model_common import (
    env_spaces,
    eval_command,
    heldout_store,
    model_based_loop,
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
from rl_core.model_based import Component, ComponentSchedule, ModelBasedLoop

AGENT = "delta_iris"
COMPONENTS = ("tokenizer", "world_model", "actor_critic")


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass
class Models:
    tokenizer: Tokenizer
    world_model: WorldModel
    actor_critic: ActorCritic
    imagination: DeltaIrisImagination
    learner: ImaginationLearner


def fit_down(mult: list[int], image_size: int, latent_side: int, where: str) -> list[int]:
    """Which CNN levels halve the resolution so `image_size` frames give a `latent_side` grid:
    the first log2(image_size / latent_side) levels (32 -> 8: [1, 1, 0]; 64 -> 8: [1, 1, 1])."""
    halvings = math.log2(image_size / latent_side) if image_size >= latent_side else -1.0
    if halvings != int(halvings) or halvings < 0:
        raise ConfigError(
            f"agent.latent_side={latent_side} does not divide {image_size}x{image_size} frames "
            "into a power-of-two grid: set agent.latent_side or the env's image size"
        )
    if int(halvings) > len(mult):
        raise ConfigError(
            f"{where} has {len(mult)} levels, too few to go from {image_size} to {latent_side} "
            f"pixels ({int(halvings)} halvings): add levels or raise agent.latent_side"
        )
    return [1] * int(halvings) + [0] * (len(mult) - int(halvings))


def build(cfg: DictConfig, num_actions: int, image_shape: tuple[int, int, int]) -> Models:
    """Every module, sized from `cfg.agent` and the env (frame size, number of actions)."""
    a = cfg.agent
    c, h, _ = image_shape
    env_fields = {"num_actions": num_actions, "image_channels": c, "image_size": h}
    tok_plain = OmegaConf.to_container(a.tokenizer, resolve=True)
    wm_plain = OmegaConf.to_container(a.world_model, resolve=True)
    side = a.get("latent_side")
    if side is not None:  # the same 8x8 latent grid for 32x32 (MiniGrid) and 64x64 (Atari) frames
        tok_plain["down"] = fit_down(tok_plain["mult"], h, int(side), "agent.tokenizer.mult")
        wm_plain["down"] = fit_down(wm_plain["mult"], h, int(side), "agent.world_model.mult")
    tok_cfg = to_dataclass({**tok_plain, **env_fields}, TokenizerConfig, "agent.tokenizer")
    wm_fields = {
        "num_actions": num_actions, "image_channels": c, "image_size": h,
        "num_tokens": tok_cfg.num_tokens, "codebook_size": tok_cfg.codebook_size,
    }  # fmt: skip
    wm_cfg = to_dataclass({**wm_plain, **wm_fields}, WorldModelConfig, "agent.world_model")
    ac_cfg = to_dataclass(a.actor_critic, ActorCriticConfig, "agent.actor_critic")
    im_cfg = to_dataclass(a.imagination, ImaginationConfig, "agent.imagination")
    if im_cfg.burn_in + im_cfg.horizon > wm_cfg.max_blocks:
        raise ConfigError(
            f"agent.imagination.burn_in + horizon = {im_cfg.burn_in + im_cfg.horizon} exceeds "
            f"agent.world_model.max_blocks = {wm_cfg.max_blocks}"
        )
    for name in ("tokenizer", "world_model"):
        seq = int(a.training[name].seq_len)
        if seq > wm_cfg.max_blocks:
            raise ConfigError(
                f"agent.training.{name}.seq_len = {seq} exceeds agent.world_model.max_blocks = "
                f"{wm_cfg.max_blocks}"
            )
    tokenizer = Tokenizer(tok_cfg)
    world_model = WorldModel(wm_cfg)
    actor_critic = ActorCritic(num_actions, image_shape, ac_cfg)
    imagination = DeltaIrisImagination(tokenizer, world_model)
    learner = ImaginationLearner(actor_critic, imagination, im_cfg)
    return Models(tokenizer, world_model, actor_critic, imagination, learner)


def components(
    cfg: DictConfig, models: Models, sampler: SegmentSampler, device: torch.device
) -> list[Component]:
    """Tokenizer, world model, actor-critic: what each trains on and when."""
    schedules = {
        name: to_dataclass(cfg.agent.training[name], ComponentSchedule, f"agent.training.{name}")
        for name in COMPONENTS
    }
    burn_in = models.learner.cfg.burn_in

    def segments(name: str) -> Callable[[int, np.random.Generator], dict[str, torch.Tensor]]:
        seq_len = schedules[name].seq_len

        def sample(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
            batch = to_torch(sampler.sample(b, seq_len, rng), device)
            if name == "world_model":  # targets from the frozen tokenizer
                batch["tokens"] = models.tokenizer.tokenize(batch)
            return batch

        return sample

    def contexts(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return to_torch(sampler.sample_context(b, burn_in, rng), device)

    return [
        Component("tokenizer", models.tokenizer, schedules["tokenizer"], segments("tokenizer")),
        Component(
            "world_model", models.world_model, schedules["world_model"], segments("world_model")
        ),  # fmt: skip
        Component(
            "actor_critic",
            models.learner,
            schedules["actor_critic"],
            contexts,
            after_step=models.learner.after_step,
        ),  # fmt: skip
    ]


# ----------------------------------------------------------------------------- commands


def make_loop(cfg: DictConfig, run_dir: Path, logger: Any) -> tuple[ModelBasedLoop, Models]:
    models = build(cfg, *env_spaces(cfg.env))
    loop = model_based_loop(
        cfg, run_dir, logger, actor_critic=models.actor_critic, learner=models.learner,
        trained=[models.tokenizer, models.world_model, models.learner],
        components=lambda sampler, device: components(cfg, models, sampler, device),
    )  # fmt: skip
    return loop, models


def heldout_rows(cfg: DictConfig, loop: ModelBasedLoop, models: Models) -> list[dict[str, Any]]:
    """Model metrics on fresh episodes (seeds the training run never used) vs trivial baselines."""
    h = cfg.agent.heldout
    store = heldout_store(cfg, loop.action_space)
    sampler = SegmentSampler(store)
    rng = np.random.default_rng(int(cfg.seed) + 99)
    device = loop.device
    seq = int(cfg.agent.training.world_model.seq_len)
    batch = to_torch(sampler.sample(int(h.batch_size), seq, rng), device)
    models.tokenizer.eval()
    models.world_model.eval()
    rows = tokenizer_metrics(models.tokenizer, batch)
    rows += world_model_metrics(models.world_model, models.tokenizer, batch)
    burn_in = models.learner.cfg.burn_in
    k = int(h.imagined_k)
    imag = to_torch(sampler.sample_context(int(h.batch_size), burn_in + k, rng), device)
    rows += imagination_metrics(models.imagination, imag, k_max=k)
    return rows


def train(cfg: DictConfig) -> dict[str, Any]:
    return train_command(cfg, AGENT, make_loop, heldout_rows)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Reload `run_dir/checkpoints/last.pt`, evaluate the policy once more and redo the tables."""
    return eval_command(cfg, AGENT, make_loop, heldout_rows)


def render(cfg: DictConfig) -> dict[str, Any]:
    """An imagined rollout beside the real one (PNG strip + GIF in results/delta_iris/)."""
    return render_command(cfg, AGENT, make_loop)
