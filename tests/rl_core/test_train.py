"""Trainer tests: schedule, learning, checkpoints (weights_only, shape errors, resume after
SIGKILL) and DDP under torchrun on CPU/gloo. Also the small helpers in rl_core.utils."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rl_core.train import TrainConfig, Trainer, lr_multiplier, param_groups
from rl_core.utils import (
    atomic_torch_save,
    default,
    dist_info,
    exists,
    resolve_device,
    seed_everything,
)
from tests.rl_core import train_script as ts

SCRIPT = Path(ts.__file__).resolve()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class ListLogger:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))


def train_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "train/step" in r]


def eval_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "eval/step" in r]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------- schedule


def test_lr_multiplier_warmup_then_cosine_to_min() -> None:
    kw = dict(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    m = [lr_multiplier(i, **kw) for i in range(130)]
    assert m[0] == pytest.approx(0.1)  # first update already moves: 1/warmup
    assert m[9] == pytest.approx(1.0)  # peak at the end of warm-up
    assert all(a < b for a, b in zip(m[:9], m[1:10]))  # linear rise
    assert m[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[10:110], m[11:111]))  # cosine decay
    assert m[60] == pytest.approx(0.55)  # half-way through the cosine: (1 + min) / 2
    assert m[110] == pytest.approx(0.1) and m[129] == pytest.approx(0.1)  # ends, holds at min
    assert lr_multiplier(0, warmup_steps=0, total_steps=5, min_lr_ratio=0.0) == 1.0


def test_param_groups_decay_only_matrices_outside_embeddings() -> None:
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5)
    head.weight = emb.weight  # tied: counts as an embedding
    model = nn.ModuleDict(
        {"emb": emb, "lin": nn.Linear(4, 4), "norm": nn.LayerNorm(4), "head": head}
    )
    model["frozen"] = nn.Linear(4, 4)
    model["frozen"].requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model["lin"].weight)]
    expected = {id(emb.weight), id(model["lin"].bias), id(head.bias)}
    expected |= {id(p) for p in model["norm"].parameters()}
    assert {id(p) for p in no_decay["params"]} == expected
    assert len(no_decay["params"]) == len(expected)  # the tied weight is not listed twice


# ---------------------------------------------------------------------- in-process training

STEPS = 150


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short in-process run that several tests inspect."""
    run_dir = tmp_path_factory.mktemp("run")
    logger = ListLogger()
    seen: dict[str, list] = {"dtypes": [], "eval": []}

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]):
        seen["dtypes"].append({k: v.dtype for k, v in batch.items()})
        return ts.loss_fn(model, batch)

    def evaluate(model: nn.Module, step: int) -> dict[str, float]:
        seen["eval"].append((step, model.training, torch.is_grad_enabled()))
        return ts.evaluate(model, step)

    model = ts.make_model(seed=0)
    initial_mse = ts.evaluate(model.eval(), 0)["mse"]
    cfg = TrainConfig(
        steps=STEPS,
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
        log_every=1,
        eval_every=50,
        ckpt_every=40,
        progress=False,
    )
    trainer = Trainer(
        model,
        cfg,
        run_dir=run_dir,
        loss_fn=loss_fn,
        sample_batch=ts.sample_batch,
        evaluate=evaluate,
        logger=logger,
        seed=0,
        device="cpu",
        config={"agent": {"name": "mlp", "sizes": (1, 2)}, "seed": 0},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide MLP only loses from intra-op threads
    try:
        out = trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return dict(
        run_dir=run_dir,
        trainer=trainer,
        model=model,
        out=out,
        rows=logger.rows,
        seen=seen,
        initial_mse=initial_mse,
        cfg=cfg,
    )


def test_training_reduces_loss(trained: dict) -> None:
    final_mse = eval_rows(trained["rows"])[-1]["eval/mse"]
    assert final_mse < 0.2 * trained["initial_mse"]
    rows = train_rows(trained["rows"])
    first = np.mean([r["train/loss"] for r in rows[:10]])
    last = np.mean([r["train/loss"] for r in rows[-10:]])
    assert last < 0.3 * first


def test_logged_rows_and_lr_schedule(trained: dict) -> None:
    cfg = trained["cfg"]
    rows = train_rows(trained["rows"])
    assert [r["train/step"] for r in rows] == list(range(1, STEPS + 1))
    keys = {"train/loss", "train/mae", "train/lr", "train/grad_norm"}
    keys |= {"perf/steps_per_s", "perf/samples_per_s"}
    assert keys <= set(rows[0])
    for r in rows:  # row of step s reports the lr its update used: index s - 1
        mult = lr_multiplier(
            r["train/step"] - 1,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        assert r["train/lr"] == pytest.approx(cfg.lr * mult)
        assert math.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0
    assert rows[0]["perf/samples_per_s"] == pytest.approx(32 * rows[0]["perf/steps_per_s"])


def test_evaluation_schedule_and_mode(trained: dict) -> None:
    # every eval_every steps, and at the end without evaluating step 150 twice
    assert [r["eval/step"] for r in eval_rows(trained["rows"])] == [50, 100, 150]
    assert all(not training and not grad for _, training, grad in trained["seen"]["eval"])
    assert trained["out"] is trained["model"] and trained["out"].training


def test_batches_are_float32_on_device(trained: dict) -> None:
    assert trained["seen"]["dtypes"][0] == {"x": torch.float32, "y": torch.float32}
    assert trained["trainer"].device == torch.device("cpu")
    assert not trained["trainer"].amp_used and not trained["trainer"].compile_used


def test_mixed_batch_types_are_converted(tmp_path: Path) -> None:
    ro = np.arange(8, dtype=np.float64).reshape(2, 4)
    ro.flags.writeable = False  # like a slice of a read-only memmap

    def sample(batch_size: int, rng: np.random.Generator) -> dict:
        return {
            "x": torch.randn(batch_size, ts.IN_DIM, dtype=torch.float64),
            "y": rng.normal(size=(batch_size, ts.OUT_DIM)),
            "ids": np.zeros(batch_size, dtype=np.int64),
            "frames": np.zeros((batch_size, 3), dtype=np.uint8),
            "ro": ro,
        }

    got = []

    def loss_fn(model, batch):
        got.append({k: v.dtype for k, v in batch.items()})
        return ts.loss_fn(model, batch)

    cfg = TrainConfig(steps=2, batch_size=4, ckpt_every=0, progress=False)
    Trainer(
        ts.make_model(), cfg, run_dir=tmp_path, loss_fn=loss_fn, sample_batch=sample, device="cpu"
    ).fit()
    assert got[0] == {
        "x": torch.float32,
        "y": torch.float32,
        "ids": torch.int64,
        "frames": torch.uint8,
        "ro": torch.float32,
    }
    assert (tmp_path / "checkpoints" / "last.pt").is_file()  # ckpt_every=0: still saved at the end


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_loads_with_weights_only(trained: dict) -> None:
    path = trained["run_dir"] / "checkpoints" / "last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["step"] == STEPS and ckpt["world_size"] == 1
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "train_config", "config"}
    assert ckpt["train_config"]["eval_every"] == 50
    assert ckpt["config"] == {"agent": {"name": "mlp", "sizes": [1, 2]}, "seed": 0}
    assert ckpt["scheduler"]["last_epoch"] == STEPS
    assert len(ckpt["rng"]) == 1 and ckpt["rng"][0]["numpy"]["bit_generator"] == "PCG64"
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left

    fresh = ts.make_model(seed=99)
    assert Trainer.load_weights(fresh, trained["run_dir"]) == STEPS
    for (k, a), b in zip(fresh.state_dict().items(), trained["model"].state_dict().values()):
        assert torch.equal(a, b), k


def test_wrong_shape_checkpoint_names_file_and_key(trained: dict) -> None:
    path = trained["run_dir"] / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match=r"'0\.weight'") as err:
        Trainer.load_weights(ts.make_model(hidden=16), trained["run_dir"])
    assert str(path) in str(err.value)

    trainer = Trainer(
        ts.make_model(hidden=16),
        TrainConfig(steps=STEPS + 5, progress=False),
        run_dir=trained["run_dir"],
        loss_fn=ts.loss_fn,
        sample_batch=ts.sample_batch,
        device="cpu",
    )
    with pytest.raises(ValueError, match=r"'0\.weight'") as err:
        trainer.fit(resume=True)
    assert str(path) in str(err.value)

    extra = nn.Sequential(*ts.make_model(), nn.Linear(ts.OUT_DIM, 1))
    with pytest.raises(ValueError, match=r"'5\.weight' is missing"):
        Trainer.load_weights(extra, trained["run_dir"])


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "checkpoints" / "last.pt")):
        Trainer.load_weights(ts.make_model(), tmp_path)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    trainer = Trainer(
        ts.make_model(),
        TrainConfig(steps=3, progress=False),
        run_dir=tmp_path,
        loss_fn=ts.loss_fn,
        sample_batch=ts.sample_batch,
        device="cpu",
    )
    trainer.fit(resume=True)
    assert trainer.start_step == 0 and Trainer.load_weights(ts.make_model(), tmp_path) == 3


def run_script(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    steps = 40
    base = ["--steps", str(steps), "--ckpt-every", "4", "--log-every", "1", "--seed", "3"]
    run_script([*base, "--run-dir", str(tmp_path / "full"), "--out-dir", str(tmp_path / "o_full")])

    run_dir = tmp_path / "killed"
    ckpt = run_dir / "checkpoints" / "last.pt"
    slow = [*base, "--run-dir", str(run_dir), "--step-sleep", "0.25"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *slow, "--out-dir", str(tmp_path / "o_killed")],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the slowed run ended before it could be killed"
        assert ckpt.exists(), "no checkpoint appeared within 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
    assert 0 < saved < steps

    run_script([*base, "--run-dir", str(run_dir), "--out-dir", str(tmp_path / "o_res"), "--resume"])
    summary = json.loads((tmp_path / "o_res" / "rank0_summary.json").read_text())
    assert summary["start_step"] == saved
    resumed = train_rows(read_jsonl(tmp_path / "o_res" / "rank0.jsonl"))
    assert resumed[0]["train/step"] == saved + 1 and resumed[-1]["train/step"] == steps

    # same batches and dropout masks after the restart: identical losses, identical weights
    full = train_rows(read_jsonl(tmp_path / "o_full" / "rank0.jsonl"))[saved:]
    np.testing.assert_allclose(
        [r["train/loss"] for r in resumed], [r["train/loss"] for r in full], rtol=1e-5
    )
    a = load_weights_file(tmp_path / "o_full" / "rank0_weights.pt")
    b = load_weights_file(tmp_path / "o_res" / "rank0_weights.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- DDP (torchrun, gloo)

DDP_ARGS = ["--steps", "20", "--ckpt-every", "10", "--log-every", "5", "--eval-every", "10"]
DDP_ARGS += ["--seed", "1"]


def torchrun(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    proc = torchrun([*DDP_ARGS, "--run-dir", str(root / "run"), "--out-dir", str(root / "out")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_ddp_torchrun_gloo(ddp_run: Path) -> None:
    out = ddp_run / "out"
    s0 = json.loads((out / "rank0_summary.json").read_text())
    s1 = json.loads((out / "rank1_summary.json").read_text())
    assert s0["checkpoints_written"] == 2 and s1["checkpoints_written"] == 0
    assert not (out / "rank1.jsonl").exists()  # only rank 0 logs
    rows = read_jsonl(out / "rank0.jsonl")
    assert [r["train/step"] for r in train_rows(rows)] == [5, 10, 15, 20]
    assert [r["eval/step"] for r in eval_rows(rows)] == [10, 20]
    assert train_rows(rows)[0]["perf/samples_per_s"] == pytest.approx(
        2 * 32 * train_rows(rows)[0]["perf/steps_per_s"]
    )

    ckpt_dir = ddp_run / "run" / "checkpoints"
    assert [p.name for p in ckpt_dir.iterdir()] == ["last.pt"]
    ckpt = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["rng"][0]["numpy"] != ckpt["rng"][1]["numpy"]  # per-rank sampler seeds

    w0 = load_weights_file(out / "rank0_weights.pt")
    w1 = load_weights_file(out / "rank1_weights.pt")
    init = ts.make_model(seed=1).state_dict()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # replicas stay in sync
        assert torch.equal(w0[k], ckpt["model"][k]), k
    assert not torch.equal(w0["0.weight"], init["0.weight"])  # and they did train


@pytest.mark.slow
def test_ddp_resume_after_crash_matches_uninterrupted(ddp_run: Path, tmp_path: Path) -> None:
    run = ["--run-dir", str(tmp_path / "run")]
    crashed = torchrun([*DDP_ARGS, *run, "--out-dir", str(tmp_path / "o1"), "--crash-after", "10"])
    assert crashed.returncode != 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 10
    proc = torchrun([*DDP_ARGS, *run, "--out-dir", str(tmp_path / "o2"), "--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        summary = json.loads((tmp_path / "o2" / f"rank{rank}_summary.json").read_text())
        assert summary["start_step"] == 10
        a = load_weights_file(ddp_run / "out" / f"rank{rank}_weights.pt")
        b = load_weights_file(tmp_path / "o2" / f"rank{rank}_weights.pt")
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- utils


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    with pytest.raises(ValueError, match="gpu0"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1'"):
            resolve_device("cuda:1")


def test_seed_everything_reproduces_all_streams() -> None:
    def draw() -> tuple:
        g = seed_everything(7)
        return g.normal(size=3).tolist(), np.random.rand(), torch.rand(2).tolist()

    assert draw() == draw()
    assert seed_everything(7).random() != seed_everything(8).random()


def test_dist_info_reads_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert dist_info() == (0, 0, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist_info() == (3, 1, 4)


def test_atomic_torch_save_replaces_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "obj.pt"
    atomic_torch_save({"a": torch.ones(2)}, path)
    atomic_torch_save({"a": torch.zeros(3), "n": 1}, path)
    got = torch.load(path, weights_only=True)
    assert torch.equal(got["a"], torch.zeros(3)) and got["n"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["obj.pt"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # same permissions as an ordinary file, not mkstemp's 0600
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("nope")

    with pytest.raises(TypeError):
        atomic_torch_save({"bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(3))  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["obj.pt"]


def test_exists_and_default() -> None:
    assert exists(0) and exists("") and not exists(None)
    assert default(None, 5) == 5 and default(0, 5) == 0
