"""Smoke test of benchmarks/dt_train_vs_hf.py: tiny sizes, JSON structure only (no timing checks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmark_module import load_benchmark

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def _load():
    return load_benchmark("dt_train_vs_hf")


def test_tiny_run_writes_rows(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "dt.json"
    tiny = ["--threads", "1", "--steps", "2", "--rounds", "2", "--warmup", "1", "--batch", "4",
            "--d-model", "16", "--n-layer", "1", "--n-head", "2", "--context", "4", "--out", str(out)]  # fmt: skip
    row = bench.main(tiny)
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 1
    for key in ("ours", "baseline", "ratio", "command"):
        assert key in data[0]
    for key in ("ours", "baseline", "ratio"):
        assert math.isfinite(data[0][key]) and data[0][key] > 0
    assert "dt_train_vs_hf.py" in data[0]["command"]
    assert data[0]["bf16"] == "n/a" and data[0]["machine"]["device"] == "cpu"
    for losses in row["loss_first_last"].values():
        assert all(math.isfinite(x) for x in losses)
    assert all(n > 0 for n in row["params"].values())

    bench.main(tiny)  # same key: replaced, not appended
    assert len(json.loads(out.read_text())) == 1


def test_reference_matches_our_sizes() -> None:
    bench = _load()
    ref = bench.HFDecisionTransformer(16, 2, 2, 4, 0.1, "sdpa")
    gpt2 = ref.transformer
    assert gpt2.config.n_inner == 64 and gpt2.config.activation_function == "relu"
    assert isinstance(gpt2.wpe, bench._NoPosition)  # no position embeddings, as the official DT
    batch = bench.make_batch(3, 4, seed=0, device=bench.torch.device("cpu"))
    logits = ref(batch["rtg"], batch["obs"], batch["action"], batch["timestep"], batch["mask"])
    assert logits.shape == (3, 4, bench.N_ACTIONS)
