"""benchmarks/world_model_speed.py at a tiny size: one row per setting, cached == naive logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "world_model_speed", ROOT / "benchmarks/world_model_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_row_keys_speeds_and_logit_agreement(tmp_path):
    bench = load_bench()
    torch.set_num_threads(1)
    row = bench.measure("tiny", torch.device("cpu"), False, False, steps=2, threads=1)
    assert row["errors"] == {}
    expected = {"size", "device", "compile", "bf16", "threads", "timed_steps", "warmup_steps",
                "shapes", "cached_vs_naive", "logits_max_abs_diff_first_step",
                "logits_max_abs_diff_all_steps", "warmup_s", "errors", *bench.METRICS}  # fmt: skip
    assert expected <= set(row)
    assert (row["size"], row["device"], row["compile"], row["bf16"]) == (
        "tiny",
        "cpu",
        False,
        "n/a",
    )
    for key in bench.METRICS:
        assert row[key] > 0, key
    assert row["cached_vs_naive"] > 0
    assert row["logits_max_abs_diff_first_step"] < 1e-5
    assert row["logits_max_abs_diff_all_steps"] < 1e-5

    # merging into the JSON keeps other rows and replaces the same setting
    out = tmp_path / "speed.json"
    other = {**row, "device": "cuda", "bf16": True}
    info = bench.machine_info(torch.device("cpu"), 1)
    bench.write(out, [other], {**info, "device": "cuda"}, "cmd gpu")
    bench.write(out, [row], info, "cmd cpu")
    bench.write(out, [row], info, "cmd cpu")
    data = json.loads(out.read_text())
    assert sorted(r["device"] for r in data["rows"]) == ["cpu", "cuda"]
    assert set(data["machines"]) == {"cpu", "cuda"}
