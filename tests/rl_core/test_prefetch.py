"""Background batch prefetching: the same batches as inline sampling, exact resume, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rl_core.prefetch import BatchPrefetcher, worker_core
from rl_core.train import TrainConfig, Trainer
from tests.rl_core import train_script as ts

STEPS, CKPT = 30, 10


@pytest.fixture(autouse=True)
def one_thread():
    """Prefetching gives the model one intra-op thread fewer (`worker_core`), and float sums
    depend on the thread count: equality with inline training holds at one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_worker_core_leaves_one_cpu_thread_to_the_prefetch_worker_and_restores_the_count():
    torch.set_num_threads(2)
    with worker_core(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with worker_core(torch.device("cpu")):
        assert torch.get_num_threads() == 1  # never below one
    torch.set_num_threads(3)
    with worker_core(torch.device("cuda")):
        assert torch.get_num_threads() == 3  # the GPU does the model step


def fit(run_dir: Path, *, prefetch: bool, sample=ts.sample_batch, resume: bool = False):
    cfg = TrainConfig(
        steps=STEPS, batch_size=16, lr=3e-3, warmup_steps=5, log_every=0, ckpt_every=CKPT,
        progress=False, prefetch=prefetch,
    )  # fmt: skip
    trainer = Trainer(
        ts.make_model(seed=0), cfg, run_dir=run_dir, loss_fn=ts.loss_fn, sample_batch=sample,
        seed=0, device="cpu",
    )  # fmt: skip
    return trainer.fit(resume=resume)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_prefetcher_yields_inline_batches_and_keeps_the_pending_state():
    inline_rng, rng = np.random.default_rng(5), np.random.default_rng(5)
    expected = [ts.sample_batch(4, inline_rng) for _ in range(3)]
    with BatchPrefetcher(ts.sample_batch, 4, rng) as prefetcher:
        for want in expected:
            got = prefetcher.next()
            np.testing.assert_array_equal(got["x"], want["x"])
        # the generator state before the batch drawn ahead is the inline state now
        assert prefetcher.pending_rng_state == inline_rng.bit_generator.state


def test_training_with_prefetch_equals_inline_sampling(tmp_path):
    inline = weights(fit(tmp_path / "inline", prefetch=False))
    ahead = weights(fit(tmp_path / "ahead", prefetch=True))
    for a, b in zip(inline, ahead, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_of_a_prefetching_run_that_crashed_matches_an_uninterrupted_run(tmp_path):
    calls = {"n": 0}

    def crashing_sample(batch_size: int, rng: np.random.Generator):
        calls["n"] += 1
        if calls["n"] == CKPT + 4:  # after the step-10 checkpoint, before the next one
            raise RuntimeError("sampler crashed")
        return ts.sample_batch(batch_size, rng)

    run_dir = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="sampler crashed"):
        fit(run_dir, prefetch=True, sample=crashing_sample)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == CKPT
    resumed = weights(fit(run_dir, prefetch=True, resume=True))
    full = weights(fit(tmp_path / "full", prefetch=False))
    for a, b in zip(resumed, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
