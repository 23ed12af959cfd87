"""benchmarks/world_model_speed.py at a tiny size: one row per agent, cached == naive logits
(Δ-IRIS), the sampler's step count honoured (DIAMOND), rows merged into the JSON per agent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    return load_benchmark("world_model_speed")


@pytest.fixture(scope="module")
def bench():
    torch.set_num_threads(1)
    return load_bench()


@pytest.fixture(scope="module")
def diamond_row(bench):
    return bench.measure("tiny", torch.device("cpu"), False, False, steps=2, threads=1,
                         agent="diamond")  # fmt: skip


def positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_tiny_row_keys_speeds_and_logit_agreement(bench, tmp_path):
    row = bench.measure("tiny", torch.device("cpu"), False, False, steps=2, threads=1)
    assert row["errors"] == {}
    expected = {"agent", "size", "device", "compile", "bf16", "threads", "timed_steps",
                "warmup_steps", "shapes", "cached_vs_naive", "logits_max_abs_diff_first_step",
                "logits_max_abs_diff_all_steps", "warmup_s", "errors", *bench.METRICS}  # fmt: skip
    assert expected <= set(row)
    assert (row["agent"], row["size"], row["device"], row["compile"], row["bf16"]) == (
        "delta_iris",
        "tiny",
        "cpu",
        False,
        "n/a",
    )
    for key in bench.METRICS:
        assert positive(row[key]), key
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


def test_diamond_tiny_row(bench, diamond_row):
    row = diamond_row
    assert row["errors"] == {}
    assert (row["agent"], row["size"], row["device"], row["compile"], row["bf16"]) == (
        "diamond",
        "tiny",
        "cpu",
        False,
        "n/a",
    )
    assert set(bench.DIAMOND_METRICS) == {
        "denoiser_steps_per_s",
        "reward_end_steps_per_s",
        "actor_critic_steps_per_s",
        "imagined_env_steps_per_s_sampler_1",
        "imagined_env_steps_per_s_sampler_3",
    }
    for key in bench.DIAMOND_METRICS:  # every component and both sampler settings measured
        assert positive(row[key]), key
    assert positive(row["sampler_3_vs_1_cost"])
    assert row["sampler_3_vs_1_cost"] == pytest.approx(
        row["imagined_env_steps_per_s_sampler_1"] / row["imagined_env_steps_per_s_sampler_3"]
    )
    # the sampler setting reaches the denoiser: n network calls per imagined step
    assert row["denoiser_calls_per_step"] == {"1": 1, "3": 3}
    # shapes from the tiny overlay: denoiser segments L + 1 = 5, reward/end 4, burn-in 3, H 2
    assert row["shapes"]["denoiser"] == [4, 5]
    assert row["shapes"]["reward_end"] == [4, 4]
    assert row["shapes"]["imagination"] == [4, 3, 2]
    assert set(row["warmup_s"]) == {"denoiser", "reward_end", "actor_critic",
                                    "imagined_env_sampler_1", "imagined_env_sampler_3"}  # fmt: skip


def test_diamond_parts_subset(bench):
    row = bench.measure("tiny", torch.device("cpu"), False, False, steps=1, threads=1,
                        parts=("reward_end", "tokenizer"), agent="diamond")  # fmt: skip
    assert row["parts"] == ["reward_end"]
    assert positive(row["reward_end_steps_per_s"])
    for key in bench.DIAMOND_METRICS:
        if key != "reward_end_steps_per_s":
            assert row[key] is None, key
    assert row["sampler_3_vs_1_cost"] is None
    with pytest.raises(SystemExit, match="nothing of diamond"):
        bench.main(["--agent", "diamond", "--parts", "tokenizer"])


def test_merge_keeps_old_delta_iris_rows_and_ratios_per_agent(bench, diamond_row, tmp_path,
                                                              capsys):  # fmt: skip
    out = tmp_path / "speed.json"
    info = bench.machine_info(torch.device("cpu"), 1)
    # a row as written before the agent field existed (Δ-IRIS)
    old = {"size": "small", "device": "cpu", "compile": False, "bf16": "n/a", "errors": {},
           **{k: 1.0 for k in bench.METRICS}}  # fmt: skip
    out.write_text(json.dumps({"rows": [old], "machines": {"cpu": info}}))
    compiled = {**diamond_row, "compile": True, "errors": {},
                **{k: 2.0 * diamond_row[k] for k in bench.DIAMOND_METRICS}}  # fmt: skip
    bench.write(out, [diamond_row], info, "cmd off")
    bench.write(out, [compiled], info, "cmd on")
    bench.write(out, [diamond_row], info, "cmd off again")  # replaces, does not duplicate
    data = json.loads(out.read_text())
    keys = [(r["agent"], r["size"], r["compile"], r["command"] if "command" in r else None)
            for r in data["rows"]]  # fmt: skip
    assert keys == [
        ("delta_iris", "small", False, None),
        ("diamond", "tiny", False, "cmd off again"),
        ("diamond", "tiny", True, "cmd on"),
    ]
    (ratio,) = data["ratios"]  # compile on/off of the DIAMOND rows only
    assert (ratio["agent"], ratio["ratio"]) == ("diamond", "compile on/off")
    for key in bench.DIAMOND_METRICS:
        assert ratio[key] == pytest.approx(2.0), key

    bench.print_table(data["rows"])
    text = capsys.readouterr().out
    assert "Δ-IRIS" in text and "DIAMOND" in text and "imag 3-step" in text
