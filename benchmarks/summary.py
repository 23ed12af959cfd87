"""Collect every ratio of `results/bench/*.json` into `results/bench/summary.md`.

Each benchmark script measures ours and a baseline side by side in one run and writes its JSON;
this script only reads those files (it measures nothing), puts one row per measurement in a
table with the issue's goal where there is one, and says whether the goal is met.

    python benchmarks/summary.py        # -> results/bench/summary.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

from rl_core.utils import atomic_write_text  # noqa: E402

Row = dict[str, str]


def _rows(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else [data]


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _met(ok: bool | None, short_by: float | None = None) -> str:
    """'yes' / 'no' (with the factor still missing) / '–' where the issue sets no goal."""
    if ok is None:
        return "–"
    if ok:
        return "**yes**"
    return "**no**" + (f" (needs {short_by:.2f}x more)" if short_by else "")


def _row(
    r: dict[str, Any],
    what: str,
    setting: str,
    ours: str,
    baseline: str,
    goal: str = "–",
    met: str = "–",
) -> Row:
    """One table row; the ratio and command come from the measurement `r` itself."""
    return {"what": what, "setting": setting, "ours": ours, "baseline": baseline,
            "ratio": f"{r['ratio']}x", "goal": goal, "met": met, "command": r["command"]}  # fmt: skip


def _device(r: dict[str, Any]) -> str:
    m = r.get("machine")
    if isinstance(m, dict) and m.get("device") == "cuda":
        return str(m.get("device_name", "cuda")).replace("NVIDIA ", "")
    return f"CPU {r.get('threads', m.get('threads') if isinstance(m, dict) else '?')} thr"


def ppo(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        fr = r["final_return"]
        ok = r["ratio"] >= 10 and abs(r["final_return_ratio"] - 1) <= 0.05
        yield _row(
            r,
            f"PPO learning histories, {r['goals']} goals x {r['steps_per_goal']:,} steps "
            f"(final return ours {fr['ours']} vs sb3 {fr['baseline']})",
            f"CPU {r['threads']} thr",
            f"{_num(r['ours'])} env-steps/s",
            f"{_num(r['baseline'])} (stable-baselines3)",
            ">= 10x, final return within 5%",
            _met(ok, 10 / r["ratio"] if r["ratio"] < 10 else None),
        )


def dt_train(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        cpu = r["machine"]["device"] == "cpu"
        yield _row(
            r,
            "DT training (hidden 128, 3 layers, K 20, batch 64)",
            f"{_device(r)}, bf16 {r['bf16']}, compile {r['compile']}",
            f"{_num(r['ours'])} samples/s",
            f"{_num(r['baseline'])} (transformers GPT-2 DT)",
            ">= 1.5x on CPU" if cpu else "–",
            _met(r["ratio"] >= 1.5 if cpu else None, 1.5 / r["ratio"]),
        )


def icl_eval(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        agent = r.get("agent", "ad")
        what = (
            f"AD in-context eval, {r.get('context_tokens')}-token context, 20 goals"
            if agent == "ad"
            else f"RA-DT in-context eval, 20 goals x {r['env_steps'] // 2000} trials, retrieval every step"
        )
        base = "re-encoding" if agent == "ad" else "re-encoding (official)"
        cpu = r.get("device", "cpu") == "cpu"
        if not cpu and agent == "radt":
            base += f"; paper, A100: ~{r.get('paper_a100_env_steps_per_s', 100)}"
        yield _row(
            r,
            what,
            f"CPU {r['threads']} thr" if cpu else r["device"].replace("NVIDIA ", ""),
            f"{_num(r['ours'])} env-steps/s",
            f"{_num(r['baseline'])} ({base})",
            ">= 1,000 env-steps/s on 2 cores" if cpu else "–",
            _met(r["ours"] >= 1000, 1000 / r["ours"]) if cpu else "–",
        )


def retrieval(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        if "keys" in r:
            yield _row(
                r,
                f"index search, {r['keys']:,} keys, {r['index']} (recall {r['recall']})",
                f"CPU {r['threads']} thr",
                f"{_num(r['ours'])} queries/s",
                f"{_num(r['baseline'])} (exact numpy top-k)",
                "–",
                "–",
            )
        else:
            yield _row(
                r,
                "RA-DT eval with retrieval every step vs without "
                f"(+{r['overhead_ms_per_batched_step']} ms per batched step)",
                f"CPU {r['threads']} thr",
                f"{_num(r['ours'])} env-steps/s",
                f"{_num(r['baseline'])} (no retrieval)",
                "–",
                "–",
            )


def ddp(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        extra = ""
        if "loss_last_quarter" in r:
            q = r["loss_last_quarter"]
            extra = f" (loss last quarter {q['ddp']} vs {q['single']})"
        if "same_ids" in r:
            extra = f" (same ids: {r['same_ids']:.4f})"
        yield _row(
            r,
            r["what"].split(":")[0] + extra,
            f"CPU, {r['cpu_count']} cores",
            f"{_num(r['ours'])} {r['unit']}",
            _num(r["baseline"]),
            "–",
            "–",
        )


def sampler(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        yield _row(
            r,
            "DT window sampling (batch 64, K 20)",
            "CPU",
            f"{_num(r['ours'])} batches/s",
            f"{_num(r['baseline'])} (Minari)",
            "–",
            "–",
        )


def prefetch(path: Path) -> Iterator[Row]:
    for r in _rows(path):
        yield _row(
            r,
            "RA-DT training, next batch sampled in the background",
            _device(r),
            f"{_num(r['ours'])} steps/s",
            f"{_num(r['baseline'])} (inline)",
        )


SECTIONS: list[tuple[str, str, Callable[[Path], Iterator[Row]]]] = [
    ("Learning histories", "ppo_vs_sb3.json", ppo),
    ("DT training", "dt_train_vs_hf.json", dt_train),
    ("In-context evaluation", "icl_eval_speed.json", icl_eval),
    ("Retrieval", "retrieval_speed.json", retrieval),
    ("Scale-out", "ddp.json", ddp),
    ("Data loading", "sampler_speed.json", sampler),
    ("Training input pipeline", "prefetch_speed.json", prefetch),
]
# What limits an unmet goal, from the profiles in README.md (kept here so the table says it).
LIMITS: dict[str, str] = {
    "dt_train_vs_hf.json": (
        "What limits DT training on CPU: both models run the same dense math. A torch.profiler of "
        "10 CPU steps (2 threads) puts `aten::mm` + `aten::addmm` at 55% of self time for both and "
        "dropout's `bernoulli_` at 15-16%; SDPA is ~9% for ours. No kernel-level difference is "
        "large enough to give 1.5x at hidden 128 / 60 tokens; on the H100 (launch-bound) ours is "
        "1.17-1.25x faster in eager mode (fused qkv, one SDPA call)."
    ),
    "icl_eval_speed.json": (
        "RA-DT meets the goal both ways on 2 cores: the rolling KV cache (`agent.reencode=false`, "
        "which needs `agent.positions=timestep`) and the default official re-encoding with window "
        "positions (the baseline column). What limits both: the query, which re-embeds each "
        "task's last K steps with the frozen DT every step (65% of a cached step). Retrieval "
        "itself (search, reweighting, gather) is one batched product over all 20 task memories. "
        "On the H100 both ways run at the same speed, launch- and sync-bound at 20 envs of a "
        "64-wide model (README: GPU rows)."
    ),
    "ddp.json": (
        "Sharding a faiss index buys no speed on 2 CPU cores (one Flat search already uses both "
        "through OpenMP); it is there for memory and for one shard per GPU."
    ),
}
COLUMNS = ["what", "setting", "ours", "baseline", "ratio", "goal", "met"]


def render(bench_dir: Path) -> str:
    lines = [
        "# Benchmark summary",
        "",
        "Generated by `python benchmarks/summary.py` from the JSON files beside it; every ratio",
        "is ours / baseline measured side by side in one run of the command given (see",
        "`README.md` here for the set-up, the profiles and what limits each unmet goal). CPU rows:",
        "the 2-core machine without a GPU; GPU rows name the device.",
        "",
    ]
    commands: list[str] = []
    for title, name, fn in SECTIONS:
        path = bench_dir / name
        lines += [f"## {title} (`{name}`)", ""]
        if not path.exists():
            lines += ["not measured yet", ""]
            continue
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in fn(path):
            lines.append("| " + " | ".join(row[c] for c in COLUMNS) + " |")
            if row["command"] not in commands:
                commands.append(row["command"])
        lines.append("")
        if name in LIMITS:
            lines += [LIMITS[name], ""]
    lines += ["## Commands", "", "```bash", *commands, "python benchmarks/summary.py", "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench-dir", type=Path, default=ROOT / "results/bench")
    args = p.parse_args(argv)
    out = args.bench_dir / "summary.md"
    atomic_write_text(out, render(args.bench_dir))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
