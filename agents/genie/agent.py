"""Genie end to end: `collect` random-policy frames, `train` the three parts, `play` a prompt frame.

Paper: Bruce et al. 2024, "Genie: Generative Interactive Environments", arXiv 2402.15391 (no
official code; FLAIROx/jafar and p-doom/jasmine were read). The model pieces and their own
deviations are documented in `tokenizer.py`, `lam.py` and `dynamics.py`; this module wires them:

* `collect`: a uniformly random policy (the paper's CoinRun case study, App. F) runs
  `agent.collect.steps` env steps through `rl_core.rollout.StepCollector` into an EpisodeStore at
  `${data_dir}/genie/<env>__random__seed<seed>_<hash of the env config>` (reused when it already holds enough steps;
  `train` collects it itself when missing). Frames are stored at the env's size (CoinRun 64x64)
  and resized to `agent.image_size` (32 by default, area averaging) when batches are drawn, so
  the tokenizer at patch 4 sees 64 tokens per frame (reference world_models.md §6.5).
* `train`: tokenizer, then LAM, then dynamics, each with its own AdamW
  (`rl_core.model_based.train_component`) for `agent.training.<part>.steps` steps on clips of
  `agent.clip_frames` frames (`SegmentSampler.sample`; clips that run past an episode's end keep
  their `frame_mask`/`mask`, which every loss honours). The dynamics model trains on the frozen
  tokenizer's codes and the frozen LAM's codes (both under no_grad). Deviation: the paper
  co-trains the LAM and the dynamics model after the tokenizer; here they train one after the
  other (as jafar does), which gives the dynamics model fixed action labels. Checkpoint
  `run_dir/checkpoints/last.pt` (atomic) every `agent.training.ckpt_every` steps and at the end
  of each part: modules, optimisers, steps done per part, RNG states; `resume=true` continues.
  Metrics go to `run_dir/metrics.jsonl` (and W&B, offline by default) as `train/<part>/<key>`.
  Then `results/genie/heldout.csv` is written from held-out random-policy episodes (other seeds),
  see `agents/genie/evaluation.py`.
* `eval`: the held-out table again from the checkpoint.
* `play image=PATH.png actions=[...] out=PATH.gif`: the prompt frame (a PNG resized to the model's
  frame size, or a held-out frame without `image`) is tokenised, the dynamics model rolls out the
  given latent actions (MaskGIT, `agent.dynamics.maskgit_steps`), the tokenizer decodes, and a GIF
  plus a PNG strip (same stem) of exactly len(actions) + 1 frames are written.

Sizes: `configs/agent/genie.yaml` is the small CPU config (about 15 CPU minutes for `train`). The
paper's CoinRun case-study sizes (`TokenizerConfig.paper_coinrun`, `LAMConfig.coinrun`, the
dynamics numbers in `dynamics.py`) as an `experiment=coinrun` file are a later slice.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from agents.genie.dynamics import DynamicsConfig, DynamicsModel
from agents.genie.lam import LAMConfig, LatentActionModel
from agents.genie.tokenizer import TokenizerConfig, VideoTokenizer
from agents.world_model_common import (
    env_fns,
    env_label,
    env_spaces,
    heldout_store,
    to_torch,
    write_heldout_rows,
)
from envs.vector import vectorization
from rl_core.cli import setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore
from rl_core.data.segments import SegmentSampler
from rl_core.data.store import cache_root
from rl_core.imagination_eval import write_strip_gif, write_strip_png
from rl_core.logging import Logger, LoggerConfig
from rl_core.model_based import Component, ComponentSchedule, train_component
from rl_core.rollout import RandomPolicy, StepCollector
from rl_core.utils import atomic_torch_save, resolve_device

AGENT = "genie"
PARTS = ("tokenizer", "lam", "dynamics")
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class Models:
    tokenizer: VideoTokenizer
    lam: LatentActionModel
    dynamics: DynamicsModel
    image_size: int
    clip_frames: int

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"tokenizer": self.tokenizer, "lam": self.lam, "dynamics": self.dynamics}

    def to(self, device: torch.device) -> Models:
        for m in self.modules().values():
            m.to(device)
        return self


def _section(cfg: DictConfig, key: str) -> dict[str, Any]:
    return dict(OmegaConf.to_container(cfg.agent[key], resolve=True))


def _make(cls: type, values: dict[str, Any], where: str) -> Any:
    """A model config dataclass from a config section, unknown keys named in the error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def build(cfg: DictConfig, image_channels: int = 3) -> Models:
    """The three parts sized from `cfg.agent` (frame size `agent.image_size`, clips of
    `agent.clip_frames`; every part holds at least 5 frames so ΔtPSNR at t = 4 fits)."""
    a = cfg.agent
    size, t = int(a.image_size), int(a.clip_frames)
    if t < 2:
        raise ConfigError(f"agent.clip_frames={t}: a clip needs at least 2 frames")
    frames = max(t, 5)
    common = {"image_channels": image_channels, "image_size": size, "max_frames": frames}
    try:
        tok_cfg = _make(TokenizerConfig, {**_section(cfg, "tokenizer"), **common},
                        "agent.tokenizer")  # fmt: skip
        lam_cfg = _make(LAMConfig, {**_section(cfg, "lam"), **common}, "agent.lam")
        dyn_cfg = _make(DynamicsConfig,
            {**_section(cfg, "dynamics"), "vocab_size": tok_cfg.codebook_size,
             "tokens_per_frame": tok_cfg.tokens_per_frame,
             "num_actions": lam_cfg.num_latent_actions, "max_frames": frames},
            "agent.dynamics",
        )  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return Models(VideoTokenizer(tok_cfg), LatentActionModel(lam_cfg), DynamicsModel(dyn_cfg),
                  size, t)  # fmt: skip


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """float frames (..., c, h, w) -> (..., c, size, size) (area averaging down, bilinear up)."""
    h, w = frames.shape[-2:]
    if (h, w) == (size, size):
        return frames
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    mode = "area" if h >= size and w >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(flat, size=(size, size), mode=mode, **kwargs).clamp(0.0, 1.0)
    return out.reshape(*lead, *out.shape[-3:])


def clip_batch(
    sampler: SegmentSampler, batch_size: int, frames: int, rng: np.random.Generator,
    device: torch.device, size: int,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Clips of `frames` frames (frames float (b, t, c, s, s), action/mask (b, t-1),
    frame_mask (b, t)); clips past an episode's end keep their masks."""
    batch = to_torch(sampler.sample(batch_size, frames - 1, rng), device)
    batch["frames"] = resize_frames(batch["frames"], size)
    return batch


def valid_clips(
    sampler: SegmentSampler, n: int, frames: int, rng: np.random.Generator,
    device: torch.device, size: int,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """`n` clips of `frames` frames lying entirely inside one episode (for evaluation)."""
    parts: list[dict[str, np.ndarray]] = []
    have = 0
    for tries in range(1000):
        if have >= n:
            break
        if tries == 50 and have == 0:
            raise ConfigError(f"no clip of {frames} frames fits in a held-out episode: collect "
                              "more steps (agent.heldout.steps)")  # fmt: skip
        b = sampler.sample(max(n, 16), frames - 1, rng)
        keep = b["mask"].all(axis=1)
        parts.append({k: v[keep] for k, v in b.items()})
        have += int(keep.sum())
    merged = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
    batch = to_torch(merged, device)
    batch["frames"] = resize_frames(batch["frames"], size)
    return batch


# ----------------------------------------------------------------------------- data


def store_path(cfg: DictConfig) -> Path:
    """One store per env recipe: `experiment=coinrun`'s hard-mode levels must not reuse (or extend)
    the default easy-mode frames, so every env setting is in the folder's hash."""
    label = re.sub(r"[^A-Za-z0-9.-]+", "_", env_label(cfg.env))
    env_attrs = OmegaConf.to_container(cfg.env, resolve=True)
    return cache_root(cfg.data_dir, AGENT, f"{label}__random__seed{int(cfg.seed)}", env_attrs)


def action_space(cfg: DictConfig) -> gym.spaces.Discrete:
    return gym.spaces.Discrete(env_spaces(cfg.env)[0])


def collect_store(cfg: DictConfig) -> EpisodeStore:
    """The random-policy training frames: `agent.collect.steps` steps, collected once."""
    steps = int(cfg.agent.collect.steps)
    path = store_path(cfg)
    store = EpisodeStore(path, create=True)
    if store.num_steps >= steps:
        print(f"reusing {store.num_steps} steps in {path}")
        return store
    start = time.perf_counter()
    collector = StepCollector(
        env_fns(cfg.env, int(cfg.agent.collect.envs)), record_to=store,
        metadata={"source": "genie_random", "seed": int(cfg.seed)},
        seed=int(cfg.seed) + store.num_steps, vectorization=vectorization(cfg.env.name),
    )  # fmt: skip
    policy = RandomPolicy(action_space(cfg), seed=int(cfg.seed) + len(store))
    try:
        while store.num_steps < steps:  # only finished episodes are written
            collector.collect(policy, steps - store.num_steps)
            store.refresh()
    finally:
        collector.close()
    print(f"collected {store.num_steps} steps ({len(store)} episodes) into {path} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return store


def collect(cfg: DictConfig) -> dict[str, Any]:
    """`collect`: write (or reuse) the random-policy store."""
    store = collect_store(cfg)
    return {"store": str(store.root), "steps": store.num_steps, "episodes": len(store)}


# ----------------------------------------------------------------------------- training


def schedule(cfg: DictConfig, part: str) -> ComponentSchedule:
    t = dict(OmegaConf.to_container(cfg.agent.training[part], resolve=True))
    t.pop("steps")
    t.setdefault("seq_len", int(cfg.agent.clip_frames) - 1)
    return to_dataclass(t, ComponentSchedule, f"agent.training.{part}")


def components(
    cfg: DictConfig, models: Models, sampler: SegmentSampler, device: torch.device
) -> dict[str, Component]:
    t, size = models.clip_frames, models.image_size

    def clips(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return clip_batch(sampler, b, t, rng, device, size)

    def dynamics_batch(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        batch = clips(b, rng)
        models.tokenizer.eval()
        models.lam.eval()
        with torch.no_grad():  # frozen tokenizer and LAM
            tokens = models.tokenizer.encode(batch["frames"])
            actions = models.lam.infer_actions(batch["frames"])
        return {"tokens": tokens, "actions": actions, "mask": batch["mask"]}

    samples = {"tokenizer": clips, "lam": clips, "dynamics": dynamics_batch}
    return {p: Component(p, models.modules()[p], schedule(cfg, p), samples[p]) for p in PARTS}


def checkpoint_path(cfg: DictConfig) -> Path:
    return Path(cfg.run_dir) / "checkpoints" / "last.pt"


def save(path: Path, models: Models, comps: dict[str, Component], done: dict[str, int],
         rng: np.random.Generator, cfg: DictConfig) -> None:  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {
            "version": CHECKPOINT_VERSION,
            "models": {k: m.state_dict() for k, m in models.modules().items()},
            "optimizers": {
                k: c.optimizer.state_dict() for k, c in comps.items() if c.optimizer is not None
            },  # fmt: skip
            "done": dict(done),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "agent": OmegaConf.to_container(cfg.agent, resolve=True),
        },
        path,
    )


def load_checkpoint(cfg: DictConfig, device: torch.device) -> tuple[Models, dict[str, Any]]:
    """Rebuild the models from the checkpoint's own agent config and load their weights."""
    path = checkpoint_path(cfg)
    if not path.exists():
        raise ConfigError(f"no checkpoint at {path}: run `python -m agents.genie train` first "
                          f"(run_dir={cfg.run_dir})")  # fmt: skip
    state = torch.load(path, map_location=device, weights_only=True)
    saved = OmegaConf.merge(cfg, {"agent": state["agent"]})
    models = build(saved).to(device)
    for k, m in models.modules().items():
        m.load_state_dict(state["models"][k])
        m.eval()
    return models, state


def train(cfg: DictConfig) -> dict[str, Any]:
    """`train`: collect if needed, train tokenizer -> LAM -> dynamics, write heldout.csv."""
    from agents.genie.evaluation import heldout_rows

    ckpt = checkpoint_path(cfg)
    if ckpt.exists() and not cfg.resume:
        raise ConfigError(f"run_dir={cfg.run_dir} already holds {ckpt}: pass resume=true to "
                          "continue it, or another run_dir for a fresh run")  # fmt: skip
    run_dir = setup_run(cfg)
    device = resolve_device(cfg.device)
    store = collect_store(cfg)
    sampler = SegmentSampler(store)
    models = build(cfg).to(device)
    comps = components(cfg, models, sampler, device)
    for c in comps.values():
        c.build_optimizer()
    rng = np.random.default_rng(int(cfg.seed))
    done = dict.fromkeys(PARTS, 0)
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        for k, m in models.modules().items():
            m.load_state_dict(state["models"][k])
        for k, c in comps.items():
            if k in state["optimizers"]:
                c.optimizer.load_state_dict(state["optimizers"][k])
        done.update(state["done"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        print(f"resumed from {ckpt}: " + ", ".join(f"{k} {v}" for k, v in done.items()))
    tr = cfg.agent.training
    log_every, ckpt_every = max(int(tr.log_every), 1), max(int(tr.ckpt_every), 1)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    start = time.perf_counter()
    with Logger(to_dataclass(cfg.logger, LoggerConfig, "logger"), run_dir, cfg.run_name,
                resolved) as logger:  # fmt: skip
        for part in PARTS:
            total = int(tr[part].steps)
            since_ckpt = 0
            while done[part] < total:
                n = min(log_every, total - done[part])
                t0 = time.perf_counter()
                metrics = train_component(comps[part], n, rng, device)
                dt = time.perf_counter() - t0
                done[part] += n
                since_ckpt += n
                row = {"train/step": sum(done.values()), f"train/{part}/step": done[part],
                       **{f"train/{part}/{k}": v for k, v in metrics.items()},
                       f"perf/{part}_steps_per_s": n / max(dt, 1e-9)}  # fmt: skip
                logger.log(row)
                if cfg.agent.training.progress:
                    shown = " ".join(f"{k} {metrics[k]:.4g}" for k in
                                     ("loss", "psnr", "masked_acc", "copy_acc") if k in metrics)  # fmt: skip
                    print(f"{part} {done[part]}/{total}: {shown} ({n / max(dt, 1e-9):.1f} it/s)",
                          flush=True)  # fmt: skip
                if since_ckpt >= ckpt_every or done[part] >= total:
                    save(ckpt, models, comps, done, rng, cfg)
                    since_ckpt = 0
        save(ckpt, models, comps, done, rng, cfg)
        train_s = time.perf_counter() - start
        for m in models.modules().values():
            m.eval()
        rows = heldout_rows(cfg, models, device)
        path = write_heldout_rows(cfg, AGENT, rows)
        print_rows(rows)
        summary = {"train_wall_s": train_s, "heldout": str(path),
                   **{f"heldout/{r['metric']}": r["value_model"] for r in rows}}  # fmt: skip
        logger.summary(summary)
    print(f"trained in {train_s:.0f} s; wrote {path}")
    return summary


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"{r['metric']:>32s} {r['model']:>18s} {r['value_model']:10.4f}   "
              f"{r['baseline']:>22s} {r['value_baseline']:10.4f}")  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """`eval`: the held-out table from `run_dir/checkpoints/last.pt`."""
    from agents.genie.evaluation import heldout_rows

    device = resolve_device(cfg.device)
    models, _ = load_checkpoint(cfg, device)
    rows = heldout_rows(cfg, models, device)
    path = write_heldout_rows(cfg, AGENT, rows)
    print_rows(rows)
    return {"heldout": str(path), "rows": rows}


# ----------------------------------------------------------------------------- play


def check_actions(actions: Any, num_actions: int) -> list[int]:
    """The `actions` list as ints in 0..num_actions-1, or a ConfigError naming the range."""
    if actions is None or isinstance(actions, (str, int)):
        actions = [actions] if isinstance(actions, int) else actions
    if actions is None or isinstance(actions, str) or len(actions) == 0:
        raise ConfigError(f"actions={actions!r}: give a non-empty list of latent actions, e.g. "
                          f"actions=[0,1,2], each in 0..{num_actions - 1}")  # fmt: skip
    out = []
    for a in actions:
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < num_actions:
            raise ConfigError(
                f"actions: {a!r} is not a valid latent action; valid latent actions are the "
                f"integers 0..{num_actions - 1} (agent.lam.num_latent_actions={num_actions})"
            )
        out.append(int(a))
    return out


def prompt_frame(cfg: DictConfig, size: int, device: torch.device) -> torch.Tensor:
    """(1, 1, 3, size, size) float: the PNG at `image`, or a held-out frame."""
    if cfg.image:
        from PIL import Image

        path = Path(str(cfg.image))
        if not path.is_file():
            raise ConfigError(f"image={path}: no such file")
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
        frames = to_torch({"frames": arr[None, None]}, device)["frames"]
    else:
        sampler = SegmentSampler(heldout_store(cfg, action_space(cfg)))
        rng = np.random.default_rng(int(cfg.seed) + 321)
        frames = to_torch(sampler.sample_context(1, 0, rng), device)["frames"]
    return resize_frames(frames, size)


def decode_tokens(tokenizer: VideoTokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """codes (b, t, n) -> frames (b, t, c, h, w); longer than the tokenizer's `max_frames`: each
    later frame is decoded from the window of the last max_frames codes (the decoder is causal)."""
    m = tokenizer.cfg.max_frames
    with torch.no_grad():
        if tokens.shape[1] <= m:
            return tokenizer.decode(tokens)
        head = tokenizer.decode(tokens[:, :m])
        rest = [tokenizer.decode(tokens[:, i - m + 1 : i + 1])[:, -1]
                for i in range(m, tokens.shape[1])]  # fmt: skip
        return torch.cat([head, torch.stack(rest, dim=1)], dim=1)


def play(cfg: DictConfig) -> dict[str, Any]:
    """`play`: prompt frame + latent actions -> GIF and PNG strip of len(actions) + 1 frames."""
    check_actions(OmegaConf.to_container(cfg.actions) if OmegaConf.is_config(cfg.actions)
                  else cfg.actions, int(cfg.agent.lam.num_latent_actions))  # fmt: skip
    device = resolve_device(cfg.device)
    models, _ = load_checkpoint(cfg, device)
    num = models.lam.cfg.num_latent_actions
    actions = check_actions(
        OmegaConf.to_container(cfg.actions) if OmegaConf.is_config(cfg.actions) else cfg.actions,
        num,
    )
    frame = prompt_frame(cfg, models.image_size, device)
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    with torch.no_grad():
        tokens = models.tokenizer.encode(frame)  # (1, 1, n)
        acts = torch.tensor([actions], dtype=torch.long, device=device)
        future = models.dynamics.rollout(tokens, acts, generator=gen)  # (1, k, n)
        decoded = decode_tokens(models.tokenizer, torch.cat([tokens, future], dim=1))
    video = torch.cat([frame[0], decoded[0, 1:]], dim=0).cpu()  # prompt, then k generated
    out = Path(str(cfg.out)) if cfg.out else Path(cfg.results_dir) / AGENT / "play.gif"
    source = Path(str(cfg.image)).name if cfg.image else "a held-out frame"
    title = f"genie play from {source}: latent actions {actions}"
    gif = write_strip_gif({"genie": video}, out.with_suffix(".gif"))
    png = write_strip_png({"genie": video}, out.with_suffix(".png"), title=title)
    print(f"wrote {gif} and {png} ({len(video)} frames)")
    return {"gif": str(gif), "png": str(png), "frames": len(video)}
