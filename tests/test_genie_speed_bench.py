"""benchmarks/genie_speed.py at the tiny settings: JSON structure, positive finite figures, rows
merged by (kind, setting, device, bf16), a skipped model recorded, and the `components` rows of the
Genie agent's parts (no timing assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("genie_speed")


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run_tiny(bench, kind: str, out, steps: int = 2) -> list[dict]:
    """`kind` rows at the tiny setting, 1 thread (the caller's thread count restored)."""
    threads = torch.get_num_threads()
    try:
        return bench.main(["--rows", kind, "--settings", "tiny", "--steps", str(steps),
                           "--threads", "1", "--out", str(out)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_tiny_run_writes_rows(bench, tmp_path, capsys):
    out = tmp_path / "genie_speed.json"
    rows = run_tiny(bench, "st_vs_full", out)
    data = json.loads(out.read_text())
    assert data["rows"] == rows and len(rows) == 1
    assert set(data["machines"]) == {"cpu"} and data["machines"]["cpu"]["threads"] == 1
    (row,) = rows
    assert (row["kind"], row["setting"], row["device"], row["bf16"]) == (
        "st_vs_full",
        "tiny",
        "cpu",
        "n/a",
    )
    assert row["shape_btnd"] == [2, 3, 4, 16] and row["threads"] == 1
    for key in ("st_steps_per_s", "full_steps_per_s", "st_over_full", "wall_s",
                "full_over_st_attention_entries"):  # fmt: skip
        assert positive(row[key]), key
    assert row["st_over_full"] == pytest.approx(row["st_steps_per_s"] / row["full_steps_per_s"])
    # b=2, t=3, n=4, 2 heads: st 2*(2*3*16 + 2*4*9) = 336, full 2*2*12^2 = 576
    assert row["attention_entries_per_block"] == {"st": 336, "full": 576}
    for name in ("st", "full"):
        assert positive(row["params"][name]) and positive(row["warmup_s"][name])
        assert row["timed_steps"][name] == 2
        assert row["peak_mem_mib"][name] == "n/a"  # CPU
    assert row["params"]["st"] > row["params"]["full"]  # two attention sublayers per block
    assert row["skipped"] == {}
    assert "st_vs_full" in capsys.readouterr().out

    # merge: a row of another device is kept, the same setting is replaced (not duplicated)
    data["rows"].append({**row, "device": "cuda", "bf16": True})
    out.write_text(json.dumps(data))
    run_tiny(bench, "st_vs_full", out, steps=1)
    keys = [(r["device"], r["bf16"]) for r in json.loads(out.read_text())["rows"]]
    assert sorted(keys, key=str) == sorted([("cuda", True), ("cpu", "n/a")], key=str)


def test_slow_model_is_skipped_and_recorded(bench):
    ctx = bench.Context(torch.device("cpu"), bf16=False, steps=1, max_step_s=0.0)
    row = bench.st_vs_full(bench.SETTINGS["tiny"], ctx)
    assert row["st_steps_per_s"] is None and row["st_over_full"] is None
    assert set(row["skipped"]) == {"st", "full"} and "max-step-s" in row["skipped"]["st"]
    assert row["timed_steps"] == {"st": 0, "full": 0}
    bench.print_table([{**bench.base_row("st_vs_full", "tiny", bench.SETTINGS["tiny"], ctx, 1),
                        **row}])  # fmt: skip


def test_components_tiny_row(bench, tmp_path, capsys):
    out = tmp_path / "genie_speed.json"
    kept = {"kind": "st_vs_full", "setting": "small", "device": "cpu", "bf16": "n/a"}
    out.write_text(json.dumps({"rows": [kept], "machines": {}}))
    rows = run_tiny(bench, "components", out)
    data = json.loads(out.read_text())
    assert data["rows"] == [kept, *rows] and len(rows) == 1  # merged, the other row kept
    (row,) = rows
    assert (row["kind"], row["setting"], row["device"], row["bf16"]) == (
        "components",
        "tiny",
        "cpu",
        "n/a",
    )
    assert "shape_btnd" not in row and row["config"]["overrides"] == list(bench.TINY_GENIE)
    for key in ("tokenizer_steps_per_s", "lam_steps_per_s", "dynamics_steps_per_s",
                "generated_frames_per_s", "wall_s"):  # fmt: skip
        assert positive(row[key]), key
    # tiny: 16x16 frames in patches of 4 -> 16 tokens, clips of 5, batch 2, actions [0, 1, 2]
    assert (row["image_size"], row["clip_frames"], row["tokens_per_frame"]) == (16, 5, 16)
    assert row["batch_size"] == {"tokenizer": 2, "lam": 2, "dynamics": 2}
    assert (row["generated_frames"], row["generation_batch"], row["maskgit_steps"]) == (3, 1, 2)
    parts = {"tokenizer", "lam", "dynamics", "generation"}
    assert row["timed_steps"] == dict.fromkeys(parts, 2)
    assert set(row["warmup_s"]) == parts and all(positive(v) for v in row["warmup_s"].values())
    assert row["peak_mem_mib"] == dict.fromkeys(parts, "n/a")  # CPU
    assert set(row["params"]) == {"tokenizer", "lam", "dynamics"}
    assert all(positive(v) for v in row["params"].values())
    assert row["skipped"] == {} and row["agent"]["dynamics"]["d_model"] == 16
    printed = capsys.readouterr().out
    assert "components" in printed and "generated frames/s" in printed


def test_components_settings_and_skips(bench):
    assert bench.kind_settings("components", None) == ["default"]
    assert bench.kind_settings("components", ["small", "tiny"]) == ["tiny"]
    assert bench.kind_settings("st_vs_full", ["default"]) == []
    with pytest.raises(SystemExit):  # a setting no asked kind has: no row, an argparse error
        bench.main(["--rows", "components", "--settings", "small", "--out", "unused.json"])
    ctx = bench.Context(torch.device("cpu"), bf16=False, steps=1, max_step_s=0.0)
    row = bench.components(bench.COMPONENT_SETTINGS["tiny"], ctx)
    assert row["generated_frames_per_s"] is None and row["tokenizer_steps_per_s"] is None
    assert set(row["skipped"]) == {"tokenizer", "lam", "dynamics", "generation"}
    setting = bench.COMPONENT_SETTINGS["tiny"]
    bench.print_table([{**bench.base_row("components", "tiny", setting, ctx, 1), **row}])
