"""benchmarks/genie_speed.py at the tiny setting: JSON structure, positive finite figures, rows
merged by (kind, setting, device, bf16), a skipped model recorded (no timing assertions)."""

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


def test_tiny_run_writes_rows(bench, tmp_path, capsys):
    out = tmp_path / "genie_speed.json"
    threads = torch.get_num_threads()
    try:
        rows = bench.main(
            ["--settings", "tiny", "--steps", "2", "--threads", "1", "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
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
    bench.main(["--settings", "tiny", "--steps", "1", "--threads", "1", "--out", str(out)])
    torch.set_num_threads(threads)
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
