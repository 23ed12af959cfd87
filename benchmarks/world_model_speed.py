"""World-model speed (Δ-IRIS, DIAMOND): training steps/s of each component, imagined env-steps/s.

One row per (agent, size, device, torch.compile on/off, bf16 on/off), every figure measured on
random synthetic data (uint8 noise frames, random actions, rewards and terminations: speed does
not depend on content) with models built by the agent's own `build` from its config files:

- Δ-IRIS (`agents.delta_iris.agent.build`): `small` = configs/agent/delta_iris.yaml (the CPU
  defaults, MiniGrid 32x32 RGB, 3 actions); `paper` = configs/scoped/delta_iris/experiment/
  atari100k.yaml over it (64x64 RGB, 6 actions = Pong);
- DIAMOND (`agents.diamond.agent.build`): `small` = configs/agent/diamond.yaml (32x32, 3 actions);
  `paper` = configs/scoped/diamond/experiment/atari100k.yaml over it (64x64, 6 actions).

Δ-IRIS row:
- training steps/s of the tokenizer, the world model (its batch includes the frozen tokenizer's
  Δ-tokens, as in the agent's loop) and the actor-critic in imagination
  (`ImaginationLearner.compute_loss` + backward + AdamW), each through
  `rl_core.model_based.train_component` at the config's batch size and sequence length;
- imagined env-steps/s: `DeltaIrisImagination.reset` (burn-in) then `step()` `horizon` times
  under no_grad at the actor-critic's batch size b, (b * horizon) / seconds; next to it the same
  imagination without the KV cache (`NaiveImagination` below: the whole block sequence goes
  through the transformer again for every new token), and their ratio. Sanity check: fed the
  same actions and the cached path's sampled Δ-tokens, both give the same token logits; the max
  |difference| on the first imagined step (and over all `horizon` steps) is printed and stored.

DIAMOND row:
- training steps/s of the denoiser (left-padded segments of `denoiser.cfg.seq_len` = L + 1
  transitions: 2 targets, the second conditioned on the first's prediction), the reward/end model
  (segments of `training.reward_end.seq_len`) and the actor-critic in imagination (its
  imagination samples with the config's `imagination_sampler_steps`, 3), through
  `train_component` as above (all frames valid: every target counts, the most work per batch);
- imagined env-steps/s of `DiamondImagination` (reset with burn-in, then `step()` `horizon`
  times, no_grad, batch b of the actor-critic) with the diffusion sampler at 1 and at 3 Euler
  steps (`n_steps`), same models, measured one after the other in the same run, and their ratio
  `sampler_3_vs_1_cost` = (1-step env-steps/s) / (3-step env-steps/s): how many times longer an
  imagined step takes with 3 denoiser steps. Sanity check: the denoiser network is called
  `n_steps` times per imagined step (counted on one extra untimed step, `denoiser_calls_per_step`).

compile: `Module.compile()` (torch.compile, mode default) on the modules doing the tensor work,
in place, so the agent's own code paths call them. Δ-IRIS: the tokenizer's encoder, frame CNN and
decoder, the world model's I-token CNN and transformer, the actor-critic and its EMA target (the
VQ codebook, heads and losses stay eager); the frame CNNs with `dynamic=False` (see
`make_models`). DIAMOND: the denoiser's U-Net, the reward/end model's CNN encoder (its training
loss calls the encoder, LSTM and head directly, not the module's forward; the LSTM stays eager)
and the actor-critic, the CNNs with `dynamic=False` (see `make_diamond_models`). bf16:
`torch.autocast("cuda", bfloat16)` around every training step and imagined rollout, CUDA only
("n/a" on CPU). Warm-up steps (compilation) are timed separately and excluded. A failure (e.g.
torch.compile without a working compiler) is stored as the row's error string for that
measurement instead of stopping the run.

    python benchmarks/world_model_speed.py --agent delta_iris --threads 1   # compile off/on (~4 CPU min)
    python benchmarks/world_model_speed.py --agent diamond --size small --threads 1
    python benchmarks/world_model_speed.py --size both --device cuda --steps 50   # + bf16 off/on
    python benchmarks/world_model_speed.py --agent delta_iris --size paper --compile off --steps 1 --parts imagination

The paper sizes on CPU are slow (one 1-thread Δ-IRIS imagined rollout of 64 x 20 steps takes
~2 min, a world-model training step longer): time few steps there, or only some `--parts`
(`--parts` names the parts to measure, of either agent: tokenizer, world_model, denoiser,
reward_end, actor_critic, imagination). Default steps: 10 timed steps (or rollouts) per
measurement, 2 for paper on CPU; warm-up: 1 step, 2 compiled.

Rows are merged into `--out` (results/bench/world_model_speed.json by default): rows of the
same (agent, size, device, compile, bf16) are replaced, other rows are kept (a row without an
`agent` field is a Δ-IRIS row).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch import Tensor  # noqa: E402

from agents.delta_iris.agent import COMPONENTS, Models, build  # noqa: E402
from agents.delta_iris.tokenizer import Tokenizer, as_float_frames  # noqa: E402
from agents.delta_iris.world_model import WorldModel  # noqa: E402
from agents.diamond import agent as diamond_agent  # noqa: E402
from agents.diamond.imagination import DiamondImagination  # noqa: E402
from agents.world_model_common import to_torch  # noqa: E402
from rl_core.config import to_dataclass  # noqa: E402
from rl_core.model_based import Component, ComponentSchedule, train_component  # noqa: E402
from rl_core.nn.sampling import sample_logits  # noqa: E402
from rl_core.utils import atomic_write_text  # noqa: E402

TINY = {  # for tests/test_world_model_speed_bench.py: seconds, not minutes
    "tokenizer": {"channels": 8, "latent_dim": 8, "token_dim": 8, "codebook_size": 16,
                  "frame_channels": 4, "frame_cnn_channels": 8},
    "world_model": {"d_model": 32, "n_layer": 1, "n_head": 2, "max_blocks": 8,
                    "frame_cnn_channels": 8},
    "actor_critic": {"channels": [8, 8], "lstm_dim": 32},
    "imagination": {"horizon": 3, "burn_in": 2},
    "training": {"tokenizer": {"batch_size": 4, "seq_len": 3},
                 "world_model": {"batch_size": 4, "seq_len": 3},
                 "actor_critic": {"batch_size": 4}},
}  # fmt: skip


def size_table(agent: str, tiny: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """small / paper / tiny: an overlay on configs/agent/<agent>.yaml (None, a file whose
    `agent:` is merged, or a dict) and the env spaces."""
    return {
        "small": {"overlay": None, "num_actions": 3, "image_shape": (3, 32, 32)},
        "paper": {
            "overlay": f"configs/scoped/{agent}/experiment/atari100k.yaml",
            "num_actions": 6,
            "image_shape": (3, 64, 64),
        },
        "tiny": {"overlay": tiny, "num_actions": 3, "image_shape": (3, 16, 16)},
    }


SIZES = size_table("delta_iris", TINY)
DIAMOND_TINY = {  # for tests/test_world_model_speed_bench.py
    "denoiser": {"cond_dim": 16, "channels": [8, 8], "depths": [1, 1],
                 "attn_depths": [False, False], "mid_attention": False},
    "reward_end": {"cond_dim": 16, "channels": [8, 8], "depths": [1, 1],
                   "attn_depths": [False, False], "mid_attention": False, "lstm_dim": 16},
    "actor_critic": {"channels": [8, 8, 8, 8], "lstm_dim": 16},
    "imagination": {"horizon": 2, "burn_in": 3},
    "training": {"denoiser": {"batch_size": 4}, "reward_end": {"batch_size": 4, "seq_len": 4},
                 "actor_critic": {"batch_size": 4}},
}  # fmt: skip
DIAMOND_SIZES = size_table("diamond", DIAMOND_TINY)
AGENTS = {  # agent -> (its config file, its sizes)
    "delta_iris": ("configs/agent/delta_iris.yaml", SIZES),
    "diamond": ("configs/agent/diamond.yaml", DIAMOND_SIZES),
}
METRICS = (  # Δ-IRIS
    "tokenizer_steps_per_s",
    "world_model_steps_per_s",
    "actor_critic_steps_per_s",
    "imagined_env_steps_per_s",
    "imagined_env_steps_per_s_naive",
)
PARTS = ("tokenizer", "world_model", "actor_critic", "imagination")
SAMPLER_STEPS = (1, 3)  # DIAMOND: Euler steps of the diffusion sampler per imagined frame


def sampler_key(n_steps: int) -> str:
    return f"imagined_env_steps_per_s_sampler_{n_steps}"


DIAMOND_METRICS = (
    "denoiser_steps_per_s",
    "reward_end_steps_per_s",
    "actor_critic_steps_per_s",
    *(sampler_key(n) for n in SAMPLER_STEPS),
)
DIAMOND_PARTS = ("denoiser", "reward_end", "actor_critic", "imagination")
METRICS_OF = {"delta_iris": METRICS, "diamond": DIAMOND_METRICS}
PARTS_OF = {"delta_iris": PARTS, "diamond": DIAMOND_PARTS}
LOGIT_TOL = 1e-3  # fp32 rows: cached and re-encoded logits must agree to this


def agent_of(row: dict[str, Any]) -> str:
    """The row's agent; rows written before DIAMOND was added have none: Δ-IRIS."""
    return row.get("agent", "delta_iris")


# ----------------------------------------------------------------------------- the baseline


class NaiveImagination:
    """`DeltaIrisImagination` without a KV cache: every new token re-runs the transformer over
    the whole block sequence (burn-in + imagined so far). Same embeddings, heads, sampling order
    and decoder as the cached path; `step(action, tokens=...)` can force the Δ-tokens (for the
    logit check). `last_logits` holds the step's Δ-token logits (b k v)."""

    def __init__(self, tokenizer: Tokenizer, world_model: WorldModel) -> None:
        self.tokenizer, self.world_model = tokenizer, world_model
        self.temperature = 1.0
        self.frame: Tensor | None = None
        self.seq: Tensor | None = None  # token embeddings so far (b n d)
        self.last_logits: Tensor | None = None

    @torch.no_grad()
    def reset(self, frames: Tensor, actions: Tensor) -> Tensor:
        wm = self.world_model
        device = next(wm.parameters()).device
        frames = as_float_frames(frames.to(device))
        actions = actions.to(device).long()
        b, t = actions.shape
        if t > 0:
            tokens = self.tokenizer.tokenize({"frames": frames, "action": actions})
            self.seq = wm.sequence(frames[:, :-1], actions, tokens)
        else:
            self.seq = frames.new_zeros(b, 0, wm.cfg.d_model)
        self.frame = frames[:, -1]
        return self.frame

    def _last(self) -> Tensor:
        """Transformer output at the last position, recomputed over the whole sequence."""
        return self.world_model.transformer(self.seq)[:, -1]

    @torch.no_grad()
    def step(self, action: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        wm, temp = self.world_model, self.temperature
        action = action.to(self.frame.device).long()
        x = wm.embed_frames(self.frame)[:, None]
        a = wm.action_emb(action)[:, None]
        self.seq = torch.cat([self.seq, x.to(self.seq.dtype), a.to(self.seq.dtype)], dim=1)
        h = self._last()
        reward = sample_logits(wm.head_rewards(h), temp).float() - 1.0
        end = sample_logits(wm.head_ends(h), temp).bool()
        logits, sampled = [], []
        for i in range(wm.cfg.num_tokens):
            if i > 0:
                z = wm.latent_emb(sampled[-1])[:, None]
                self.seq = torch.cat([self.seq, z.to(self.seq.dtype)], dim=1)
                h = self._last()
            logits.append(wm.head_latents(h))
            sampled.append(sample_logits(logits[-1], temp) if tokens is None else tokens[:, i])
        z = wm.latent_emb(sampled[-1])[:, None]  # fed with the next step's [I, a]
        self.seq = torch.cat([self.seq, z.to(self.seq.dtype)], dim=1)
        self.last_logits = torch.stack(logits, dim=1)
        q = self.tokenizer.embed(torch.stack(sampled, dim=1))
        nxt = self.tokenizer.decode(self.frame, action, q)
        self.frame = nxt.clamp(0.0, 1.0).mul(255.0).round().div(255.0)
        return self.frame, reward, end


# ----------------------------------------------------------------------------- setup


def load_config(size: str, agent: str = "delta_iris") -> DictConfig:
    """{"agent": ..., "seed": 0} as Hydra would compose it for this agent and size (agent
    defaults + experiment)."""
    path, sizes = AGENTS[agent]
    conf = OmegaConf.load(ROOT / path)
    overlay = sizes[size]["overlay"]
    if isinstance(overlay, str):
        conf = OmegaConf.merge(conf, OmegaConf.load(ROOT / overlay).agent)
    elif overlay is not None:
        conf = OmegaConf.merge(conf, overlay)
    return OmegaConf.create({"agent": conf, "seed": 0})


def schedules(
    cfg: DictConfig, bf16: bool, names: tuple[str, ...] = COMPONENTS
) -> dict[str, ComponentSchedule]:
    out = {}
    for name in names:
        s = to_dataclass(cfg.agent.training[name], ComponentSchedule, f"agent.training.{name}")
        out[name] = dataclasses.replace(s, amp=bf16)  # train_component: bf16 autocast on CUDA
    return out


def setup_compile(compile: bool) -> None:
    if compile:
        torch._dynamo.reset()  # this row's compilation is its own warm-up
        # one module serves several callers, with and without grad, at several batch sizes:
        # more than dynamo's default 8 compiled versions (past them it runs eagerly)
        torch._dynamo.config.recompile_limit = 64


def make_models(
    cfg: DictConfig,
    size: str,
    device: torch.device,
    compile: bool,
    dynamic_cnn: bool | None = False,
) -> Models:
    torch.manual_seed(0)
    m = build(cfg, SIZES[size]["num_actions"], SIZES[size]["image_shape"])
    for module in (m.tokenizer, m.world_model, m.learner):
        module.to(device)
    if compile:
        # The frame CNNs see a few fixed batch shapes (each compiled once); with dynamo's
        # automatic dynamic shapes the world model's training step fails in Inductor (torch 2.13
        # CPU: "cannot determine truth value of Relational" in its I-token CNN). The transformer's KV cache grows by a token at
        # a time: dynamic shapes there, the default.
        cnns = (m.tokenizer.encoder, m.tokenizer.frame_cnn, m.tokenizer.decoder,
                m.world_model.frame_cnn)  # fmt: skip
        for module in cnns:
            module.compile(dynamic=dynamic_cnn)
        for module in (m.world_model.transformer, m.actor_critic, m.learner.target):
            if module is not None:
                module.compile()
    return m


def make_diamond_models(
    cfg: DictConfig, size: str, device: torch.device, compile: bool
) -> diamond_agent.Models:
    torch.manual_seed(0)
    spec = DIAMOND_SIZES[size]
    m = diamond_agent.build(cfg, spec["num_actions"], spec["image_shape"])
    for module in (m.denoiser, m.reward_end, m.learner):
        module.to(device)
    if m.imagination.generator.device != device:
        # `build` makes the imagination's generator on the device the models were built on
        # (CPU); its sampler draws noise on the generator's device, so give it one on `device`
        m.imagination.generator = torch.Generator(device=device)
        m.imagination.manual_seed(int(cfg.seed))
    if compile:
        # U-Net and reward/end CNN: a few fixed batch shapes each, compiled once per shape
        m.denoiser.unet.compile(dynamic=False)
        m.reward_end.encoder.compile(dynamic=False)
        for module in (m.actor_critic, m.learner.target):  # no target in DIAMOND (tau 0)
            if module is not None:
                module.compile()
    return m


def synthetic(
    size: str, b: int, t: int, rng: np.random.Generator, agent: str = "delta_iris"
) -> dict[str, np.ndarray]:
    """A SegmentSampler-like batch: uint8 frames (b, t+1, h, w, c), actions, rewards, ends, and
    (DIAMOND: its segments are left-padded) a frame mask, everything valid."""
    spec = AGENTS[agent][1][size]
    c, h, w = spec["image_shape"]
    batch = {
        "frames": rng.integers(0, 256, size=(b, t + 1, h, w, c), dtype=np.uint8),
        "action": rng.integers(0, spec["num_actions"], size=(b, t)),
        "reward": rng.integers(-1, 2, size=(b, t)).astype(np.float32),
        "end": rng.random((b, t)) < 0.01,
        "mask": np.ones((b, t), dtype=bool),
    }
    if agent == "diamond":
        batch["frame_mask"] = np.ones((b, t + 1), dtype=bool)
    return batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_string(e: BaseException) -> str:
    """The error, short, for the row (WORLD_MODEL_SPEED_TRACEBACK=1 prints the traceback)."""
    if os.environ.get("WORLD_MODEL_SPEED_TRACEBACK"):
        traceback.print_exception(e)
    msg = f"{type(e).__name__}: {e}".strip().splitlines()
    return " | ".join(msg[:3])[:500]


# ----------------------------------------------------------------------------- measurements


def train_speed(
    component: Component, steps: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """(steps/s over `steps` timed steps, seconds of the `warmup` steps before them)."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if warmup:
        train_component(component, warmup, rng, device)
    sync(device)
    t1 = time.perf_counter()
    train_component(component, steps, rng, device)  # .item() every step: synchronised
    sync(device)
    return steps / (time.perf_counter() - t1), t1 - t0


@torch.no_grad()
def imagine(env: Any, frames: Tensor, actions: Tensor, step_actions: Tensor) -> None:
    env.reset(frames, actions)
    for a in step_actions:
        env.step(a)


def imagination_speed(
    env: Any, context: dict[str, Tensor], step_actions: Tensor, repeats: int, warmup: int,
    device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[float, float]:  # fmt: skip
    """(imagined env-steps/s over `repeats` rollouts of reset + horizon steps, warm-up seconds)."""
    b, horizon = step_actions.shape[1], step_actions.shape[0]
    t0 = time.perf_counter()
    with autocast():
        for _ in range(warmup):
            imagine(env, context["frames"], context["action"], step_actions)
        sync(device)
        t1 = time.perf_counter()
        for _ in range(repeats):
            imagine(env, context["frames"], context["action"], step_actions)
        sync(device)
    return repeats * b * horizon / (time.perf_counter() - t1), t1 - t0


@torch.no_grad()
def logit_agreement(
    models: Models, context: dict[str, Tensor], step_actions: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[float, float]:  # fmt: skip
    """Max |cached - naive| Δ-token logits on the first imagined step and over all steps, the
    naive path fed the cached path's actions and sampled Δ-tokens (so both see the same frames)."""
    wm = models.world_model
    captured: list[Tensor] = []
    hook = wm.head_latents.register_forward_hook(lambda m, i, out: captured.append(out.float()))
    cached_logits, cached_tokens = [], []
    try:
        with autocast():
            models.imagination.reset(context["frames"], context["action"])
            for a in step_actions:
                captured.clear()
                models.imagination.step(a)
                cached_logits.append(torch.stack(captured, dim=1))  # (b k v)
                cached_tokens.append(models.imagination.last_tokens)
    finally:
        hook.remove()
    naive = NaiveImagination(models.tokenizer, wm)
    diffs = []
    with autocast():
        naive.reset(context["frames"], context["action"])
        for a, tokens, logits in zip(step_actions, cached_tokens, cached_logits, strict=True):
            naive.step(a, tokens=tokens)
            diffs.append(float((naive.last_logits.float() - logits).abs().max()))
    return diffs[0], max(diffs)


def bf16_autocast(bf16: bool) -> Callable[[], contextlib.AbstractContextManager]:
    if bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def base_row(
    agent: str, size: str, device: torch.device, compile: bool, bf16: bool, threads: int,
    parts: tuple[str, ...], steps: int, warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """The fields every row has, its agent's metrics None until measured."""
    return {
        "agent": agent,
        "size": size,
        "device": device.type,
        "compile": compile,
        "bf16": bf16 if device.type == "cuda" else "n/a",
        "threads": threads,
        "parts": list(parts),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "shapes": {"image": list(AGENTS[agent][1][size]["image_shape"])},
        **{k: None for k in METRICS_OF[agent]},
    }


def measure(
    size: str,
    device: torch.device,
    compile: bool,
    bf16: bool,
    steps: int,
    threads: int,
    parts: tuple[str, ...] | None = None,
    agent: str = "delta_iris",
) -> dict[str, Any]:
    """One row of `agent` (`parts`: a subset of its PARTS_OF to measure, default all; the
    others stay None)."""
    parts = PARTS_OF[agent] if parts is None else tuple(p for p in parts if p in PARTS_OF[agent])
    fn = measure_diamond if agent == "diamond" else measure_delta_iris
    return fn(size, device, compile, bf16, steps, threads, parts)


class RowSetup(NamedTuple):
    """What every agent's row starts from: its config, schedules, warm-up steps, autocast,
    imagination shape (horizon, burn-in, actor-critic batch) and the row itself."""

    agent: str
    size: str
    device: torch.device
    cfg: DictConfig
    sched: dict[str, ComponentSchedule]
    warmup: int
    autocast: Callable[[], contextlib.AbstractContextManager]
    horizon: int
    burn_in: int
    b_ac: int
    row: dict[str, Any]

    def inputs(self, rng: np.random.Generator) -> tuple[dict[str, Tensor], Tensor]:
        """The imagination's burn-in context (frames, action) and its (horizon, b) actions."""
        context_np = synthetic(self.size, self.b_ac, self.burn_in, rng, self.agent)
        context = {k: v for k, v in to_torch(context_np, self.device).items()
                   if k in ("frames", "action")}  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        num_actions = AGENTS[self.agent][1][self.size]["num_actions"]
        shape = (self.horizon, self.b_ac)
        step_actions = torch.randint(0, num_actions, shape, generator=gen).to(self.device)
        return context, step_actions


def prepare_row(
    agent: str, size: str, device: torch.device, compile: bool, bf16: bool, steps: int,
    threads: int, parts: tuple[str, ...], names: tuple[str, ...], extra: dict[str, Any],
) -> RowSetup:  # fmt: skip
    """Config, schedules of `names`, compile set-up and the row (`extra` fields, then empty
    warmup_s and errors) for one row of `agent`."""
    cfg = load_config(size, agent)
    a = cfg.agent
    sched = schedules(cfg, bf16, names)
    warmup = 2 if compile else 1
    setup_compile(compile)
    row = base_row(agent, size, device, compile, bf16, threads, parts, steps, warmup)
    row.update({**extra, "warmup_s": {}, "errors": {}})
    return RowSetup(
        agent, size, device, cfg, sched, warmup, bf16_autocast(bf16),
        int(a.imagination.horizon), int(a.imagination.burn_in),
        sched["actor_critic"].batch_size, row,
    )  # fmt: skip


def build_models(s: RowSetup, make: Callable[..., Any], compile: bool) -> Any:
    """`make(cfg, size, device, compile)`, or None with the error under errors["build"]."""
    try:
        return make(s.cfg, s.size, s.device, compile)
    except Exception as e:  # noqa: BLE001
        s.row["errors"]["build"] = error_string(e)
        return None


def time_training(s: RowSetup, component: Component, steps: int) -> None:
    """The component's training steps/s and warm-up seconds into the row (or its error), then
    its optimiser state freed."""
    name = component.name
    try:
        speed, warm = train_speed(component, steps, s.warmup, s.device)
        s.row[f"{name}_steps_per_s"], s.row["warmup_s"][name] = speed, warm
    except Exception as e:  # noqa: BLE001
        s.row["errors"][name] = error_string(e)
    component.optimizer = None  # free the optimiser state


def time_imagination(
    s: RowSetup, key: str, env: Any, context: dict[str, Tensor], step_actions: Tensor,
    steps: int, before: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """`env`'s imagined env-steps/s and warm-up seconds into the row under `key` (or its
    error); `before` runs first, inside the same error guard."""
    try:
        if before is not None:
            before()
        speed, warm = imagination_speed(
            env, context, step_actions, steps, s.warmup, s.device, s.autocast
        )
        s.row[key], s.row["warmup_s"][key.replace("_steps_per_s", "")] = speed, warm
    except Exception as e:  # noqa: BLE001
        s.row["errors"][key] = error_string(e)


def measure_delta_iris(
    size: str, device: torch.device, compile: bool, bf16: bool, steps: int, threads: int,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:  # fmt: skip
    """One Δ-IRIS row: every component's training speed and the imagination speeds, same
    models."""
    extra = {"cached_vs_naive": None, "logits_max_abs_diff_first_step": None,
             "logits_max_abs_diff_all_steps": None}  # fmt: skip
    s = prepare_row("delta_iris", size, device, compile, bf16, steps, threads, parts,
                    COMPONENTS, extra)  # fmt: skip
    sched, row, b_ac = s.sched, s.row, s.b_ac
    row["shapes"].update({
        "tokenizer": [sched["tokenizer"].batch_size, sched["tokenizer"].seq_len],
        "world_model": [sched["world_model"].batch_size, sched["world_model"].seq_len],
        "actor_critic": [b_ac, s.burn_in, s.horizon],
        "imagination": [b_ac, s.burn_in, s.horizon],
    })  # fmt: skip
    models = build_models(s, make_models, compile)
    if models is None:
        return row
    rng = np.random.default_rng(0)

    def fixed(name: str, t: int) -> Callable[[int, np.random.Generator], dict[str, Tensor]]:
        data = synthetic(size, sched[name].batch_size, t, rng)  # generated once

        def sample(batch_size: int, _: np.random.Generator) -> dict[str, Tensor]:
            batch = to_torch(data, device)  # host -> device every step, as in the loop
            if name == "world_model":  # targets from the frozen tokenizer, as in the loop
                batch["tokens"] = models.tokenizer.tokenize(batch)
            return batch

        return sample

    context, step_actions = s.inputs(rng)

    # the check first: it also warms the imagination paths up (compilation)
    try:
        first, every = logit_agreement(models, context, step_actions, s.autocast)
        row["logits_max_abs_diff_first_step"] = first
        row["logits_max_abs_diff_all_steps"] = every
    except Exception as e:  # noqa: BLE001
        row["errors"]["logit_check"] = error_string(e)

    components = {
        "tokenizer": Component(
            "tokenizer",
            models.tokenizer,
            sched["tokenizer"],
            fixed("tokenizer", sched["tokenizer"].seq_len),
        ),  # fmt: skip
        "world_model": Component(
            "world_model",
            models.world_model,
            sched["world_model"],
            fixed("world_model", sched["world_model"].seq_len),
        ),  # fmt: skip
        "actor_critic": Component(
            "actor_critic",
            models.learner,
            sched["actor_critic"],
            fixed("actor_critic", s.burn_in),
            after_step=models.learner.after_step,
        ),  # fmt: skip
    }
    for name, component in components.items():
        if name in parts:
            time_training(s, component, steps)

    if "imagination" in parts:
        naive = NaiveImagination(models.tokenizer, models.world_model)
        time_imagination(s, "imagined_env_steps_per_s", models.imagination, context,
                         step_actions, steps)  # fmt: skip
        time_imagination(s, "imagined_env_steps_per_s_naive", naive, context, step_actions,
                         steps)  # fmt: skip
    if row["imagined_env_steps_per_s"] and row["imagined_env_steps_per_s_naive"]:
        row["cached_vs_naive"] = (
            row["imagined_env_steps_per_s"] / row["imagined_env_steps_per_s_naive"]
        )
    return row


def denoiser_calls_per_step(
    models: diamond_agent.Models, env: DiamondImagination, context: dict[str, Tensor],
    action: Tensor, autocast: Callable[[], contextlib.AbstractContextManager],
) -> int:  # fmt: skip
    """Denoiser network calls in one imagined step of `env` (reset + 1 step, untimed)."""
    den = models.denoiser
    inner, calls = den.network, 0

    def counting(*args: Any, **kwargs: Any) -> Tensor:
        nonlocal calls
        calls += 1
        return inner(*args, **kwargs)

    den.network = counting  # an instance attribute shadows the method
    try:
        with torch.no_grad(), autocast():
            env.reset(context["frames"], context["action"])
            calls = 0  # the burn-in does not sample
            env.step(action)
    finally:
        del den.network
    return calls


def measure_diamond(
    size: str, device: torch.device, compile: bool, bf16: bool, steps: int, threads: int,
    parts: tuple[str, ...] = DIAMOND_PARTS,
) -> dict[str, Any]:  # fmt: skip
    """One DIAMOND row: denoiser, reward/end and actor-critic training speeds, and imagined
    env-steps/s with the sampler at each of SAMPLER_STEPS, same models."""
    names = diamond_agent.COMPONENTS
    extra = {"sampler_3_vs_1_cost": None, "sampler_steps": list(SAMPLER_STEPS),
             "actor_critic_sampler_steps": None, "denoiser_calls_per_step": {}}  # fmt: skip
    s = prepare_row("diamond", size, device, compile, bf16, steps, threads, parts, names, extra)
    sched, row, b_ac = s.sched, s.row, s.b_ac
    row["actor_critic_sampler_steps"] = int(s.cfg.agent.imagination_sampler_steps)
    models = build_models(s, make_diamond_models, compile)
    if models is None:
        return row
    seq_len = {"denoiser": models.denoiser.cfg.seq_len,
               "reward_end": sched["reward_end"].seq_len, "actor_critic": s.burn_in}  # fmt: skip
    row["shapes"].update({
        "denoiser": [sched["denoiser"].batch_size, seq_len["denoiser"]],
        "reward_end": [sched["reward_end"].batch_size, seq_len["reward_end"]],
        "actor_critic": [b_ac, s.burn_in, s.horizon],
        "imagination": [b_ac, s.burn_in, s.horizon],
    })  # fmt: skip
    rng = np.random.default_rng(0)

    def fixed(name: str) -> Callable[[int, np.random.Generator], dict[str, Tensor]]:
        data = synthetic(size, sched[name].batch_size, seq_len[name], rng, "diamond")
        if name == "actor_critic":  # a `sample_context` batch
            data = {k: data[k] for k in ("frames", "action", "mask")}
        return lambda batch_size, _: to_torch(data, device)  # host -> device, as in the loop

    context, step_actions = s.inputs(rng)

    modules = {"denoiser": models.denoiser, "reward_end": models.reward_end,
               "actor_critic": models.learner}  # fmt: skip
    for name in names:
        if name in parts:
            after = models.learner.after_step if name == "actor_critic" else None
            time_training(
                s, Component(name, modules[name], sched[name], fixed(name), after_step=after),
                steps,
            )  # fmt: skip

    for n in SAMPLER_STEPS if "imagination" in parts else ():
        env = DiamondImagination(models.denoiser, models.reward_end, n_steps=n, seed=0)

        def count(n: int = n, env: DiamondImagination = env) -> None:
            row["denoiser_calls_per_step"][str(n)] = denoiser_calls_per_step(
                models, env, context, step_actions[0], s.autocast
            )

        time_imagination(s, sampler_key(n), env, context, step_actions, steps, before=count)
    one, three = row[sampler_key(1)], row[sampler_key(3)]
    if one and three:
        row["sampler_3_vs_1_cost"] = one / three
    return row


# ----------------------------------------------------------------------------- report


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """compile on / off (same agent, size, device, bf16) and bf16 on / off (same agent, size,
    device, compile), over the agent's metrics."""
    out = []
    index = {(agent_of(r), r["size"], r["device"], r["compile"], r["bf16"]): r for r in rows}
    for (agent, size, device, comp, bf16), r in index.items():
        pairs = []
        if comp:
            pairs.append(("compile on/off", index.get((agent, size, device, False, bf16))))
        if bf16 is True:
            pairs.append(("bf16 on/off", index.get((agent, size, device, comp, False))))
        for what, base in pairs:
            if base is None:
                continue
            vals = {
                k: (r.get(k) / base[k] if r.get(k) and base.get(k) else None)
                for k in METRICS_OF[agent]
            }  # fmt: skip
            out.append({"agent": agent, "size": size, "device": device, "ratio": what,
                        "compile": comp, "bf16": bf16, **vals})  # fmt: skip
    return out


def fmt(x: Any, width: int, digits: int = 2) -> str:
    if x is None:  # not measured (--parts) or failed (listed under the table)
        return f"{'-':>{width}}"
    if isinstance(x, bool) or isinstance(x, str):
        return f"{str(x):>{width}}"
    return f"{x:>{width}.{digits}f}" if abs(x) < 100 else f"{x:>{width}.0f}"


TABLES = {  # agent -> (column header, width, row key) after size, device, compile, bf16
    "delta_iris": [("tok st/s", 10, "tokenizer_steps_per_s"),
                   ("wm st/s", 10, "world_model_steps_per_s"),
                   ("ac st/s", 10, "actor_critic_steps_per_s"),
                   ("imag cached", 12, "imagined_env_steps_per_s"),
                   ("imag naive", 12, "imagined_env_steps_per_s_naive"),
                   ("cached/naive", 13, "cached_vs_naive")],
    "diamond": [("den st/s", 10, "denoiser_steps_per_s"),
                ("rew st/s", 10, "reward_end_steps_per_s"),
                ("ac st/s", 10, "actor_critic_steps_per_s"),
                *((f"imag {n}-step", 12, sampler_key(n)) for n in SAMPLER_STEPS),
                ("3-step cost", 12, "sampler_3_vs_1_cost")],
}  # fmt: skip
LEGENDS = {
    "delta_iris": "st/s: training steps/s; imag: imagined env-steps/s (b * horizon / s); logit "
    "diff: max |cached - naive| Δ-token logits on the first imagined step",
    "diamond": "st/s: training steps/s (ac: its imagination with "
    "`imagination_sampler_steps` denoiser steps); imag n-step: imagined env-steps/s (b * horizon"
    " / s) with n Euler steps per frame; 3-step cost: imag 1-step / imag 3-step",
}
SHORT = {"tokenizer_steps_per_s": "tok", "world_model_steps_per_s": "wm",
         "denoiser_steps_per_s": "den", "reward_end_steps_per_s": "rew",
         "actor_critic_steps_per_s": "ac", "imagined_env_steps_per_s": "imag",
         "imagined_env_steps_per_s_naive": "naive",
         **{sampler_key(n): f"imag{n}" for n in SAMPLER_STEPS}}  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    """One table per agent, then the errors and the compile / bf16 ratios."""
    for agent, title in (("delta_iris", "Δ-IRIS"), ("diamond", "DIAMOND")):
        mine = [r for r in rows if agent_of(r) == agent]
        if not mine:
            continue
        cols = TABLES[agent]
        print(title)
        head = [("size", 6), ("device", 7), ("compile", 8), ("bf16", 6)]
        head += [(h, w) for h, w, _ in cols]
        if agent == "delta_iris":
            head.append(("logit diff", 11))
        print("".join(f"{h:>{w}}" for h, w in head))
        for r in mine:
            cells = [(r["size"], 6), (r["device"], 7), (r["compile"], 8), (r["bf16"], 6)]
            cells += [(r.get(key), w) for _, w, key in cols]
            line = "".join(fmt(c, w) for c, w in cells)
            if agent == "delta_iris":
                diff = r.get("logits_max_abs_diff_first_step")
                line += f"{'-':>11}" if diff is None else f"{diff:>11.1e}"
            print(line)
        for r in mine:
            for what, err in r["errors"].items():
                print(f"  {agent}/{r['size']}/{r['device']}/compile={r['compile']}/"
                      f"bf16={r['bf16']} {what}: {err}")  # fmt: skip
        print(LEGENDS[agent])
        rat = ratios(mine)
        if rat:
            metrics = METRICS_OF[agent]
            print(f"{'ratios':40}" + "".join(f"{SHORT[k]:>8}" for k in metrics))
            for q in rat:
                label = f"{q['size']}/{q['device']} {q['ratio']}"
                label += f" (bf16 {q['bf16']})" if q["ratio"].startswith("compile") else ""
                print(f"{label:40}" + "".join(fmt(q[k], 8) for k in metrics))


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    return info


def write(out: Path, rows: list[dict[str, Any]], info: dict[str, Any], command: str) -> None:
    """Merge `rows` into `out`: same (agent, size, device, compile, bf16) replaced, others kept
    (old rows without an `agent` field get `"agent": "delta_iris"`)."""
    key = lambda r: (agent_of(r), r["size"], r["device"], r["compile"], str(r["bf16"]))  # noqa: E731
    old = json.loads(out.read_text()) if out.exists() else {}
    new_keys = {key(r) for r in rows}
    kept = [{"agent": agent_of(r), **r} for r in old.get("rows", []) if key(r) not in new_keys]
    machines = dict(old.get("machines", {}))
    machines[info["device"]] = info
    for r in rows:
        r["command"] = command
    order = lambda r: (list(AGENTS).index(agent_of(r)), r["size"] != "small", r["device"],  # noqa: E731
                       r["compile"], str(r["bf16"]))  # fmt: skip
    merged = sorted(kept + rows, key=order)
    data = {
        "what": __doc__.split("\n")[0],
        "units": {
            "*_steps_per_s": "training steps/s (one AdamW step on one batch)",
            "imagined_env_steps_per_s*": "batch * horizon / s of reset + horizon imagined steps",
            "imagined_env_steps_per_s_sampler_<n>": "DIAMOND, n Euler steps per imagined frame",
            "sampler_3_vs_1_cost": "DIAMOND: sampler_1 / sampler_3 env-steps/s (time of a "
            "3-step imagined step in 1-step ones)",
        },
        "machines": machines,
        "rows": merged,
        "ratios": ratios(merged),
    }
    atomic_write_text(out, json.dumps(data, indent=2, default=float) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agent", choices=("delta_iris", "diamond", "both"), default="both")
    p.add_argument("--size", choices=("small", "paper", "both"), default="small")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per measurement (default: 10; paper on CPU: 2)")  # fmt: skip
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", choices=("both", "on", "off"), default="both")
    p.add_argument("--bf16", choices=("both", "on", "off"), default="both", help="CUDA only")
    all_parts = list(dict.fromkeys(PARTS + DIAMOND_PARTS))
    p.add_argument("--parts", default=None,
                   help=f"comma-separated subset of {','.join(all_parts)} (default: all of each "
                   "agent's; paper on CPU is slow)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/world_model_speed.json")
    args = p.parse_args(argv)
    agents = list(AGENTS) if args.agent == "both" else [args.agent]
    parts = None
    if args.parts is not None:
        parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
        if not parts or set(parts) - set(all_parts):
            raise SystemExit(f"--parts {args.parts!r}: choose from {','.join(all_parts)}")
        for agent in agents:
            if not set(parts) & set(PARTS_OF[agent]):
                raise SystemExit(f"--parts {args.parts!r}: nothing of {agent} "
                                 f"({','.join(PARTS_OF[agent])})")  # fmt: skip
    torch.set_num_threads(args.threads)
    with contextlib.suppress(Exception):
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = args.threads

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available")
    cuda = device.type == "cuda"
    sizes = ["small", "paper"] if args.size == "both" else [args.size]
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    bf16s = {"both": [False, True], "on": [True], "off": [False]}[args.bf16] if cuda else [False]
    if cuda and torch.backends.cuda.matmul.allow_tf32:
        print("note: TF32 matmuls are on")
    info = machine_info(device, args.threads)
    print(f"world-model speed ({', '.join(agents)}) on {info['device_name']} "
          f"({info['cpu_count']} CPUs, {args.threads} thread(s)), torch {info['torch']}")  # fmt: skip

    rows = []
    for agent in agents:
        for size in sizes:
            steps = args.steps or (2 if size == "paper" and not cuda else 10)
            for comp in compiles:
                for bf16 in bf16s:
                    t0 = time.perf_counter()
                    load_start = os.getloadavg()[0]
                    row = measure(size, device, comp, bf16, steps, args.threads, parts, agent)
                    row["load_avg_1min"] = [load_start, os.getloadavg()[0]]
                    row["wall_s"] = time.perf_counter() - t0
                    rows.append(row)
                    print(f"  {agent} {size} compile={comp} bf16={row['bf16']}: "
                          f"{row['wall_s']:.0f} s", flush=True)  # fmt: skip
    print_table(rows)
    command = "python benchmarks/world_model_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )  # fmt: skip
    write(args.out, rows, info, command.strip())
    print(f"wrote {args.out}")
    bad = [r for r in rows if agent_of(r) == "delta_iris" and r["bf16"] is not True
           and (r["logits_max_abs_diff_all_steps"] or 0.0) > LOGIT_TOL]  # fmt: skip
    if bad:
        raise SystemExit(
            f"cached and naive imagination disagree (max |logit diff| > {LOGIT_TOL}): the KV-cache "
            "path is wrong"
        )
    wrong = [r for r in rows if agent_of(r) == "diamond" and any(
        r["denoiser_calls_per_step"].get(str(n), n) != n for n in SAMPLER_STEPS)]  # fmt: skip
    if wrong:
        raise SystemExit("DIAMOND imagination: the denoiser ran a number of times per imagined "
                         "step other than the sampler's n_steps (denoiser_calls_per_step)")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
