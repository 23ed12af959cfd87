"""Smoke tests of benchmarks/ppo_vs_sb3.py, ddp.py (index part), icl_eval_speed.py,
prefetch_speed.py and summary.py: tiny sizes, JSON structure and the checks each benchmark
makes, no timing assertions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_module import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def test_ppo_vs_sb3_tiny_run(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    bench = load_benchmark("ppo_vs_sb3")
    out = tmp_path / "ppo.json"
    args = ["--goals", "2", "--sb3-goals", "1", "--steps", "2100", "--last", "3", "--out", str(out)]
    row = bench.main(args)
    data = json.loads(out.read_text())
    assert len(data) == 1 and data[0] == row
    for key in ("ours", "baseline", "ratio"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert "ppo_vs_sb3.py" in row["command"]
    assert (
        len(row["final_return"]["ours_per_goal"])
        == len(row["final_return"]["baseline_per_goal"])
        == 1
    )
    bench.main(args)  # same (threads, procs, goals): replaced, not appended
    assert len(json.loads(out.read_text())) == 1


def test_sb3_gets_our_hyperparameters() -> None:
    bench = load_benchmark("ppo_vs_sb3")
    kw = bench.sb3_hyperparameters(bench.PPOConfig())
    # RA-DT's sb3 settings: lr 3e-4, n_steps 2048, batch 64, 10 epochs, entropy 0.01
    assert (kw["learning_rate"], kw["n_steps"], kw["batch_size"], kw["n_epochs"], kw["ent_coef"]) == (
        3e-4, 2048, 64, 10, 0.01,
    )  # fmt: skip
    assert kw["policy_kwargs"]["net_arch"] == {"pi": [64, 64], "vf": [64, 64]}


def test_sharded_index_row_returns_same_ids(tmp_path: Path) -> None:
    bench = load_benchmark("ddp")
    out = tmp_path / "ddp.json"
    rows = bench.main(["--skip", "ddp", "--keys", "5000", "--queries", "32", "--out", str(out)])
    (row,) = rows
    assert row["same_ids"] == 1.0 and row["shards"] == 2 and row["keys"] == 5000
    assert row["ours"] > 0 and row["baseline"] > 0 and "ddp.py" in row["command"]
    keys = bench.clustered_keys(100, 8, 0)
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-5)


def test_icl_eval_speed_rows_for_ad_and_radt(tmp_path: Path) -> None:
    bench = load_benchmark("icl_eval_speed")
    out = tmp_path / "icl.json"
    rows = bench.main(["--context-episodes", "1", "--trials", "2", "--radt-trials", "2",
                       "--threads", "1", "--out", str(out)])  # fmt: skip
    assert (
        [r["agent"] for r in rows]
        == ["ad", "radt"]
        == [r["agent"] for r in json.loads(out.read_text())]
    )
    ad, radt = rows
    assert ad["same_greedy_action_within_window"] == 1.0  # the cache computes what re-encoding does
    assert radt["env_steps"] == 20 * 2 * 100  # 20 held-out goals x 2 trials x horizon 100
    assert 0 < radt["retrieval_share"]["ours"] < 1  # the second trial retrieves from trial 1
    for r in rows:
        assert r["ours"] > 0 and r["baseline"] > 0 and "icl_eval_speed.py" in r["command"]


def test_prefetch_speed_trains_the_same_weights(tmp_path: Path) -> None:
    bench = load_benchmark("prefetch_speed")
    out = tmp_path / "prefetch.json"
    out.write_text(json.dumps({"threads": 2, "ours": 1.0}))  # a row of another thread count
    row = bench.main(["--steps", "6", "--repeats", "1", "--threads", "1", "--out", str(out),
                      f"data_dir={tmp_path / 'data'}", "source.episodes=2"])  # fmt: skip
    assert json.loads(out.read_text()) == [row, {"threads": 2, "ours": 1.0}]  # one row per count
    assert row["same_weights"] is True  # prefetching draws the same batches in the same order
    assert row["ours"] > 0 and row["baseline"] > 0 and "prefetch_speed.py" in row["command"]


def test_summary_has_a_row_per_measurement(tmp_path: Path) -> None:
    bench = load_benchmark("summary")
    for f in (ROOT / "results/bench").glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    text = bench.main(["--bench-dir", str(tmp_path)]).read_text()
    for title, name, _ in bench.SECTIONS:
        assert f"## {title} (`{name}`)" in text
    dt_rows = json.loads((tmp_path / "dt_train_vs_hf.json").read_text())
    assert text.count("| DT training") == len(dt_rows)
    # a CPU DT row below 1.5x says it is not met and by how much
    cpu = [r for r in dt_rows if r["machine"]["device"] == "cpu"]
    if any(r["ratio"] < 1.5 for r in cpu):
        assert "**no** (needs" in text
