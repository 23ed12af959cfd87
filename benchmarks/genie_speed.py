"""Genie speed: the ST-transformer (attention per axis) vs full spatio-temporal attention.

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

    OMP_NUM_THREADS=1 python benchmarks/genie_speed.py --threads 1
    python benchmarks/genie_speed.py --device cuda --bf16 both --steps 20

`--bf16 on` wraps each step in `torch.autocast("cuda", torch.bfloat16)` (CUDA only; "n/a" on
CPU). Rows are merged into `--out` (results/bench/genie_speed.json): a row with the same
(kind, setting, device, bf16) is replaced, others are kept.

Adding rows. A row kind is a function `(setting, ctx) -> dict` registered in `ROW_KINDS`
(selected with `--rows`); it returns its figures, `base_row` adds the shared fields. Later
slices of issue 8 add kinds per Genie component (tokenizer / latent action model / dynamics
training steps/s, generated frames/s); `print_table` prints each kind's `TABLE_COLUMNS`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
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


def warm_up(model: nn.Module, x: torch.Tensor, ctx: Context) -> dict[str, Any]:
    """One untimed step: its seconds and, on CUDA, the peak memory of a step."""
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    out: dict[str, Any] = {"warmup_s": train_step(model, x, ctx)}
    if ctx.device.type == "cuda":
        out["peak_mem_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
    else:
        out["peak_mem_mib"] = "n/a"
    return out


def time_side_by_side(
    models: dict[str, nn.Module], x: torch.Tensor, ctx: Context, steps: int
) -> dict[str, dict[str, Any]]:
    """Warm each model up once, then alternate timed steps between them."""
    res = {name: warm_up(m, x, ctx) for name, m in models.items()}
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
            totals[name] += train_step(models[name], x, ctx)
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


ROW_KINDS: dict[str, Callable[[Setting, Context], dict[str, Any]]] = {"st_vs_full": st_vs_full}
TABLE_COLUMNS = {  # kind -> (header, row key) of the figures printed
    "st_vs_full": [
        ("ST steps/s", "st_steps_per_s"),
        ("full steps/s", "full_steps_per_s"),
        ("ST / full", "st_over_full"),
        ("full/ST attn entries", "full_over_st_attention_entries"),
    ],
}


def row_key(row: dict[str, Any]) -> tuple:
    return (row["kind"], row["setting"], row["device"], row["bf16"])


def base_row(kind: str, name: str, setting: Setting, ctx: Context, threads: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "setting": name,
        "config": asdict(setting),
        "shape_btnd": [setting.b, setting.t, setting.n, setting.d],
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
        cols = TABLE_COLUMNS[kind]
        header = ["setting", "b,t,n,d", "layers", "device", "bf16"] + [h for h, _ in cols]
        print(f"\n{kind}")
        print(" | ".join(header))
        for r in (r for r in rows if r["kind"] == kind):
            cells = [r["setting"], ",".join(map(str, r["shape_btnd"])), str(r["config"]["n_layer"]),
                     r["device"], str(r["bf16"])] + [fmt(r[key]) for _, key in cols]  # fmt: skip
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def finite_or_none(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=["small", "coinrun"], choices=list(SETTINGS))
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
    rows = []
    for kind in args.rows:
        for name in args.settings:
            for bf16 in bf16s:
                setting = SETTINGS[name]
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
