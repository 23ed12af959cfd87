"""Genie speed: the ST-transformer vs full spatio-temporal attention, and the agent's parts.

What it measures. Row kind `st_vs_full`: training steps/s (forward + backward of
`out.square().mean()`, gradients cleared each step; no optimiser) of
`rl_core.nn.st_transformer.STTransformer` and of `FullAttentionTransformer` built from the same
`STConfig` (same width, heads, depth, FFN, positions; the baseline has one block-causal joint
attention over all t*n tokens per block where the ST block has a spatial and a causal temporal
one) on the same random input (b, t, n, d), measured side by side in one run, and their ratio
`st_over_full` = ST steps/s / full steps/s (> 1: the ST-transformer is faster). Next to it the
attention score entries per block and head (`attention_score_entries`: b*t*n^2 + b*n*t^2 vs
b*(t*n)^2), the parameter counts, and on CUDA the peak allocated memory of one step of each.

How. Per model one untimed warm-up step (its time is stored; if it exceeds `--max-step-s`, 60 s
by default, that model's timed steps are skipped and the row says so), then the timed steps
alternate between the two models (ST step, full step, ST step, ...) so that load from other
processes hits both alike; steps/s = timed steps / summed step seconds (CUDA synchronised around
each step). Settings (`SETTINGS`):
- `small`: a CPU smoke size (Genie smoke config of world_models.md §6.5): T 8 frames of 8x8 = 64
  tokens, d 128, 2 layers, 4 heads, batch 8;
- `coinrun`: the paper's CoinRun case study (App. F) tokenizer size: T 16 frames of 64x64 pixels
  in patches of 4 -> 16x16 = 256 tokens, d 512, 8 layers, 8 heads, batch 1 (2 timed steps on CPU);
- `tiny`: seconds, for tests/test_genie_speed_bench.py.

    OMP_NUM_THREADS=1 python benchmarks/genie_speed.py --threads 1   # every kind, its default settings
    python benchmarks/genie_speed.py --device cuda --bf16 both --steps 20

`--bf16 on` wraps each step in `torch.autocast("cuda", torch.bfloat16)` (CUDA only; "n/a" on
CPU). Rows are merged into `--out` (results/bench/genie_speed.json): a row with the same
(kind, setting, device, bf16) is replaced, others are kept. `--settings` names settings of any
kind; each kind in `--rows` runs those it has.

Row kind `components`: the Genie agent's own parts at a composed `genie` config. Settings
(`COMPONENT_SETTINGS`): `default` = `configs/genie.yaml` as it is (the default CPU config of
`configs/agent/genie.yaml`), `tiny` = a few-second size for the tests. The models are built by
`agents.genie.agent.build` (random weights); the input is one fixed batch of random uint8 frames
(b = the part's `agent.training.<part>.batch_size`, t = `agent.clip_frames`, RGB at
`agent.image_size`) turned into floats as training batches are. Figures:
- `tokenizer_steps_per_s`, `lam_steps_per_s`, `dynamics_steps_per_s`: one training step each
  through `rl_core.model_based.train_component` (the part's own `compute_loss`, backward, grad
  clip, AdamW step; the schedule of `agents.genie.agent.schedule`). The dynamics batch holds the
  tokens and latent actions of the frames, encoded once beforehand by the frozen tokenizer and LAM
  (in `train` that encoding runs inside every dynamics step: it is not timed here);
- `generated_frames_per_s`: frames generated per second by `play`'s path on one prompt frame:
  tokenizer encode -> `DynamicsModel.rollout` (MaskGIT, `agent.dynamics.maskgit_steps` per frame)
  over the config's `actions` (8 by default) -> `agents.genie.agent.decode_tokens`.
One untimed warm-up of each (its seconds in `warmup_s`; over `--max-step-s` skips that part),
then timed rounds, each one step of every part and one generation, so that outside load hits all
alike. No baseline: these rows are absolute figures.

Adding rows. A row kind is a function `(setting, ctx) -> dict` registered in `ROW_KINDS`
(selected with `--rows`) with its settings in `KIND_SETTINGS` (run by default:
`DEFAULT_SETTINGS`); it returns its figures, `base_row` adds the shared fields and
`print_table` prints each kind's `TABLE_COLUMNS`.

    OMP_NUM_THREADS=1 python benchmarks/genie_speed.py --rows components --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rl_core.nn.st_transformer import (  # noqa: E402
    FullAttentionTransformer,
    STConfig,
    STTransformer,
    attention_score_entries,
)
from rl_core.utils import atomic_write_text  # noqa: E402

OUT = ROOT / "results/bench/genie_speed.json"


@dataclass(frozen=True)
class Setting:
    b: int  # clips per batch
    t: int  # frames per clip
    n: int  # tokens per frame
    d: int  # width
    n_layer: int
    n_head: int
    cpu_steps: int = 10  # default timed steps on CPU (CUDA: 20)

    def st_config(self) -> STConfig:
        return STConfig(d_model=self.d, n_layer=self.n_layer, n_head=self.n_head,
                        max_frames=self.t, max_tokens_per_frame=self.n)  # fmt: skip


SETTINGS = {
    "tiny": Setting(b=2, t=3, n=4, d=16, n_layer=1, n_head=2, cpu_steps=2),
    "small": Setting(b=8, t=8, n=64, d=128, n_layer=2, n_head=4, cpu_steps=10),
    "coinrun": Setting(b=1, t=16, n=256, d=512, n_layer=8, n_head=8, cpu_steps=2),
}


@dataclass(frozen=True)
class ComponentSetting:
    """A `genie` config for the `components` rows: hydra overrides of `configs/genie.yaml`."""

    overrides: tuple[str, ...] = ()
    cpu_steps: int = 10  # default timed rounds on CPU (CUDA: 20)


TINY_GENIE = (
    "agent.image_size=16", "agent.clip_frames=5", "agent.tokenizer.d_model=16",
    "agent.tokenizer.n_layer=1", "agent.tokenizer.codebook_size=16", "agent.lam.d_model=16",
    "agent.lam.n_layer=1", "agent.dynamics.d_model=16", "agent.dynamics.n_layer=1",
    "agent.dynamics.maskgit_steps=2", "agent.training.tokenizer.batch_size=2",
    "agent.training.lam.batch_size=2", "agent.training.dynamics.batch_size=2", "actions=[0,1,2]",
)  # fmt: skip
COMPONENT_SETTINGS = {
    "tiny": ComponentSetting(overrides=TINY_GENIE, cpu_steps=2),
    "default": ComponentSetting(cpu_steps=10),
}


@dataclass
class Context:
    device: torch.device
    bf16: bool
    steps: int | None  # None: the setting's default
    max_step_s: float

    def timed_steps(self, setting: Setting) -> int:
        if self.steps is not None:
            return self.steps
        return setting.cpu_steps if self.device.type == "cpu" else 20


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(ctx: Context) -> contextlib.AbstractContextManager:
    if ctx.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model: nn.Module, x: torch.Tensor, ctx: Context) -> float:
    """One forward + backward; returns its seconds."""
    sync(ctx.device)
    t0 = time.perf_counter()
    with autocast(ctx):
        loss = model(x).float().square().mean()
    loss.backward()
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return seconds


def warm_up(step: Callable[[], float], ctx: Context) -> dict[str, Any]:
    """One untimed call of `step` (which returns its own seconds): its seconds and, on CUDA, the
    peak memory of a call."""
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    out: dict[str, Any] = {"warmup_s": step()}
    if ctx.device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    else:
        out["peak_mem_mib"] = "n/a"
    return out


def time_side_by_side(
    models: dict[str, nn.Module], x: torch.Tensor, ctx: Context, steps: int
) -> dict[str, dict[str, Any]]:
    """Warm each model up once, then alternate timed steps between them."""
    step_fns = {name: functools.partial(train_step, m, x, ctx) for name, m in models.items()}
    return time_rounds(step_fns, ctx, steps)


def time_rounds(
    step_fns: dict[str, Callable[[], float]], ctx: Context, steps: int
) -> dict[str, dict[str, Any]]:
    """Warm each step function (returning its own seconds) up once, then `steps` timed rounds of
    one call of each; per name: warmup_s, peak_mem_mib, skipped, steps_per_s, timed_steps."""
    res = {name: warm_up(fn, ctx) for name, fn in step_fns.items()}
    active = []
    for name, r in res.items():
        if r["warmup_s"] > ctx.max_step_s:
            r["skipped"] = f"one step took {r['warmup_s']:.1f} s > --max-step-s {ctx.max_step_s:g}"
        else:
            r["skipped"] = None
            active.append(name)
    totals = dict.fromkeys(active, 0.0)
    for _ in range(steps):
        for name in active:
            totals[name] += step_fns[name]()
    for name, r in res.items():
        r["steps_per_s"] = steps / totals[name] if name in totals and steps > 0 else None
        r["timed_steps"] = steps if name in totals else 0
    return res


# ----------------------------------------------------------------------------- row kinds


def st_vs_full(setting: Setting, ctx: Context) -> dict[str, Any]:
    cfg = setting.st_config()
    torch.manual_seed(0)
    models = {"st": STTransformer(cfg), "full": FullAttentionTransformer(cfg)}
    for m in models.values():
        m.to(ctx.device).train()
    x = torch.randn(setting.b, setting.t, setting.n, setting.d, device=ctx.device)
    res = time_side_by_side(models, x, ctx, ctx.timed_steps(setting))
    st_rate, full_rate = res["st"]["steps_per_s"], res["full"]["steps_per_s"]
    b, t, n = setting.b, setting.t, setting.n
    st_entries = attention_score_entries(b, t, n, "st", setting.n_head)
    full_entries = attention_score_entries(b, t, n, "full", setting.n_head)
    return {
        "st_steps_per_s": st_rate,
        "full_steps_per_s": full_rate,
        "st_over_full": st_rate / full_rate if st_rate and full_rate else None,
        "attention_entries_per_block": {"st": st_entries, "full": full_entries},
        "full_over_st_attention_entries": full_entries / st_entries,
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "timed_steps": {name: r["timed_steps"] for name, r in res.items()},
        "warmup_s": {name: r["warmup_s"] for name, r in res.items()},
        "peak_mem_mib": {name: r["peak_mem_mib"] for name, r in res.items()},
        "skipped": {name: r["skipped"] for name, r in res.items() if r["skipped"]},
    }


def compose_genie(overrides: tuple[str, ...] | list[str]) -> Any:
    """The composed `configs/genie.yaml` (a DictConfig) with `overrides`, as the CLI sees it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("configs", version_base="1.3"):
        return compose("genie", overrides=list(overrides))


def components(setting: ComponentSetting, ctx: Context) -> dict[str, Any]:
    """Training steps/s of the tokenizer, LAM and dynamics model and generated frames/s of
    `play`'s path, for the Genie agent at the composed config (see the module docstring)."""
    import numpy as np
    from omegaconf import OmegaConf

    from agents.genie.agent import PARTS, build, check_actions, decode_tokens, schedule
    from agents.world_model_common import to_torch
    from rl_core.model_based import Component, train_component

    cfg = compose_genie(setting.overrides)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    models = build(cfg).to(ctx.device)
    t, size = models.clip_frames, models.image_size

    def clips(b: int) -> dict[str, torch.Tensor]:
        """b random clips as training draws them: uint8 frames stored (b, t, size, size, 3) ->
        float frames (b, t, 3, size, size) in [0, 1], all-real masks."""
        frames = rng.integers(0, 256, (b, t, size, size, 3), dtype=np.uint8)
        ones = {"mask": np.ones((b, t - 1), bool), "frame_mask": np.ones((b, t), bool)}
        return to_torch({"frames": frames, **ones}, ctx.device)

    # amp: train_component's bf16 autocast on CUDA follows --bf16
    schedules = {p: dataclasses.replace(schedule(cfg, p), amp=ctx.bf16) for p in PARTS}
    batches = {p: clips(schedules[p].batch_size) for p in ("tokenizer", "lam")}
    frames = clips(schedules["dynamics"].batch_size)
    models.tokenizer.eval()
    models.lam.eval()
    with torch.no_grad():  # the frozen parts' codes, as `train` feeds the dynamics model
        batches["dynamics"] = {"tokens": models.tokenizer.encode(frames["frames"]),
                               "actions": models.lam.infer_actions(frames["frames"]),
                               "mask": frames["mask"]}  # fmt: skip
    comps = {
        p: Component(p, models.modules()[p], schedules[p], lambda b, r, p=p: batches[p])
        for p in PARTS
    }

    def train_one(part: str) -> float:
        sync(ctx.device)
        t0 = time.perf_counter()
        train_component(comps[part], 1, rng, ctx.device)  # .item() inside: synchronised
        sync(ctx.device)
        return time.perf_counter() - t0

    plain = OmegaConf.to_container(cfg, resolve=True)
    actions = check_actions(plain["actions"], models.lam.cfg.num_latent_actions)
    acts = torch.tensor([actions], dtype=torch.long, device=ctx.device)
    prompt = clips(1)["frames"][:, :1]  # (1, 1, 3, size, size), as `play`'s prompt frame
    gen = torch.Generator(device=ctx.device).manual_seed(int(cfg.seed))

    def generate() -> float:
        """`play`'s path: encode the prompt, MaskGIT rollout of `actions`, decode; seconds."""
        for m in models.modules().values():
            m.eval()
        sync(ctx.device)
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(ctx):
            tokens = models.tokenizer.encode(prompt)
            future = models.dynamics.rollout(tokens, acts, generator=gen)
            video = decode_tokens(models.tokenizer, torch.cat([tokens, future], dim=1))
        sync(ctx.device)
        seconds = time.perf_counter() - t0
        if video.shape[1] != len(actions) + 1:
            raise RuntimeError(f"generated {video.shape[1]} frames, expected {len(actions) + 1}")
        return seconds

    step_fns = {p: functools.partial(train_one, p) for p in PARTS}
    res = time_rounds({**step_fns, "generation": generate}, ctx, ctx.timed_steps(setting))
    gen_rate = res["generation"]["steps_per_s"]
    return {
        **{f"{p}_steps_per_s": res[p]["steps_per_s"] for p in PARTS},
        "generated_frames_per_s": len(actions) * gen_rate if gen_rate else None,
        "generated_frames": len(actions),
        "generation_batch": 1,
        "batch_size": {p: schedules[p].batch_size for p in PARTS},
        "clip_frames": t,
        "image_size": size,
        "tokens_per_frame": models.tokenizer.cfg.tokens_per_frame,
        "maskgit_steps": models.dynamics.cfg.maskgit_steps,
        "params": {p: sum(q.numel() for q in m.parameters()) for p, m in models.modules().items()},
        "timed_steps": {name: r["timed_steps"] for name, r in res.items()},
        "warmup_s": {name: r["warmup_s"] for name, r in res.items()},
        "peak_mem_mib": {name: r["peak_mem_mib"] for name, r in res.items()},
        "skipped": {name: r["skipped"] for name, r in res.items() if r["skipped"]},
        "agent": plain["agent"],
    }


ROW_KINDS: dict[str, Callable[[Any, Context], dict[str, Any]]] = {
    "st_vs_full": st_vs_full,
    "components": components,
}
KIND_SETTINGS: dict[str, dict[str, Any]] = {  # kind -> its settings by name
    "st_vs_full": SETTINGS,
    "components": COMPONENT_SETTINGS,
}
DEFAULT_SETTINGS = {"st_vs_full": ["small", "coinrun"], "components": ["default"]}
TABLE_COLUMNS = {  # kind -> (header, row key) of the figures printed
    "st_vs_full": [
        ("ST steps/s", "st_steps_per_s"),
        ("full steps/s", "full_steps_per_s"),
        ("ST / full", "st_over_full"),
        ("full/ST attn entries", "full_over_st_attention_entries"),
    ],
    "components": [
        ("tokenizer steps/s", "tokenizer_steps_per_s"),
        ("LAM steps/s", "lam_steps_per_s"),
        ("dynamics steps/s", "dynamics_steps_per_s"),
        ("generated frames/s", "generated_frames_per_s"),
    ],
}
LEAD_COLUMNS: dict[str, list[tuple[str, Callable[[dict[str, Any]], str]]]] = {  # size cells
    "st_vs_full": [
        ("b,t,n,d", lambda r: ",".join(map(str, r["shape_btnd"]))),
        ("layers", lambda r: str(r["config"]["n_layer"])),
    ],
    "components": [
        ("image", lambda r: str(r["image_size"])),
        ("clip", lambda r: str(r["clip_frames"])),
        ("batch", lambda r: str(r["batch_size"]["tokenizer"])),
    ],
}


def row_key(row: dict[str, Any]) -> tuple:
    return (row["kind"], row["setting"], row["device"], row["bf16"])


def base_row(
    kind: str, name: str, setting: Setting | ComponentSetting, ctx: Context, threads: int
) -> dict[str, Any]:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(setting).items()}
    row: dict[str, Any] = {"kind": kind, "setting": name, "config": config}  # as the JSON holds it
    if isinstance(setting, Setting):
        row["shape_btnd"] = [setting.b, setting.t, setting.n, setting.d]
    return {
        **row,
        "device": ctx.device.type,
        "threads": threads,
        "bf16": ctx.bf16 if ctx.device.type == "cuda" else "n/a",
    }


# ----------------------------------------------------------------------------- output


def fmt(x: Any) -> str:
    if x is None:
        return "skipped"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return str(x)


def print_table(rows: list[dict[str, Any]]) -> None:
    for kind in dict.fromkeys(r["kind"] for r in rows):
        cols, lead = TABLE_COLUMNS[kind], LEAD_COLUMNS[kind]
        header = ["setting", *(h for h, _ in lead), "device", "bf16"] + [h for h, _ in cols]
        print(f"\n{kind}")
        print(" | ".join(header))
        for r in (r for r in rows if r["kind"] == kind):
            cells = [r["setting"], *(cell(r) for _, cell in lead), r["device"],
                     str(r["bf16"])] + [fmt(r[key]) for _, key in cols]  # fmt: skip
            print(" | ".join(cells))
            for name, why in r.get("skipped", {}).items():
                print(f"    {name} skipped: {why}")


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def write(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """Merge rows into `out`: same (kind, setting, device, bf16) replaced, others kept."""
    data: dict[str, Any] = {"rows": [], "machines": {}}
    if out.exists():
        data = json.loads(out.read_text())
    new = {row_key(r): r for r in rows}
    kept = [r for r in data["rows"] if row_key(r) not in new]
    data["rows"] = kept + rows
    data["machines"][info["device"]] = info
    atomic_write_text(out, json.dumps(data, indent=2, allow_nan=False) + "\n")


def finite_or_none(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def kind_settings(kind: str, asked: list[str] | None) -> list[str]:
    """The settings of `kind` to run: those of `asked` it has (nothing asked: its defaults)."""
    if asked is None:
        return DEFAULT_SETTINGS[kind]
    return [n for n in asked if n in KIND_SETTINGS[kind]]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = sorted({n for settings in KIND_SETTINGS.values() for n in settings})
    p.add_argument("--settings", nargs="+", default=None, choices=names,
                   help="settings to run for each kind that has them (default: DEFAULT_SETTINGS)")  # fmt: skip
    p.add_argument("--rows", nargs="+", default=list(ROW_KINDS), choices=list(ROW_KINDS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", default="off", choices=["off", "on", "both"])
    p.add_argument("--steps", type=int, default=None, help="timed steps per model")
    p.add_argument("--max-step-s", type=float, default=60.0,
                   help="skip a model's timed steps if its warm-up step takes longer")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    cuda = device.type == "cuda"
    bf16s = {"off": [False], "on": [True], "both": [False, True]}[args.bf16] if cuda else [False]
    info = machine_info(device, threads)
    print(f"genie speed on {info['device_name']} ({info['cpu_count']} CPUs, {threads} thread(s)), "
          f"torch {info['torch']}")  # fmt: skip
    command = "python benchmarks/genie_speed.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    date = datetime.date.today().isoformat()
    plan = {kind: kind_settings(kind, args.settings) for kind in args.rows}
    if not any(plan.values()):
        p.error(f"no row: --settings {' '.join(args.settings)} are settings of none of --rows "
                + "; ".join(f"{k}: {', '.join(KIND_SETTINGS[k])}" for k in args.rows))  # fmt: skip
    rows = []
    for kind, names in plan.items():
        for name in names:
            for bf16 in bf16s:
                setting = KIND_SETTINGS[kind][name]
                ctx = Context(device, bf16, args.steps, args.max_step_s)
                row = base_row(kind, name, setting, ctx, threads)
                load_start, t0 = os.getloadavg()[0], time.perf_counter()
                row.update(ROW_KINDS[kind](setting, ctx))
                row["wall_s"] = time.perf_counter() - t0
                row["load_avg_1min"] = [load_start, os.getloadavg()[0]]
                row["command"], row["date"] = command.strip(), date
                rows.append({k: finite_or_none(v) for k, v in row.items()})
                print(f"  {kind} {name} bf16={row['bf16']}: {row['wall_s']:.0f} s", flush=True)
    print_table(rows)
    write(args.out, rows, info)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
