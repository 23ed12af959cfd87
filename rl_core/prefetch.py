"""Sample the next training batch in a background thread while the current one trains.

Why: an agent's sampler can be a real share of a CPU step (RA-DT embeds every query window with
its frozen DT and searches the FAISS memory: about a quarter of the step on one core). Torch
and FAISS release the GIL, so on a 2-core machine the sampling of batch i+1 overlaps the
forward/backward of batch i.

Batches stay identical to inline sampling: one worker draws them in order from the same numpy
generator. Checkpoints must not read that generator while the worker uses it, so the state
taken just before the pending draw is kept (`pending_rng_state`): restoring it replays the
batch that was prefetched but not trained on. A sampler that draws from torch's global RNG
would race with dropout in the main thread; such samplers must not be prefetched.

On CPU the worker needs a core of its own: with torch's intra-op pool on every core, the model
step and the worker's embedder fight over them (RA-DT, 2 cores: 11.4 steps/s prefetched vs 14.2
inline). `worker_core` gives the model one thread fewer while prefetching (14.9 steps/s).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

SampleFn = Callable[[int, np.random.Generator], Mapping[str, Any]]


@contextmanager
def worker_core(device: torch.device) -> Iterator[None]:
    """On CPU, run the block with one intra-op thread fewer (at least one), leaving a core to
    the prefetch worker; restore the thread count after."""
    threads = torch.get_num_threads()
    reserve = device.type == "cpu" and threads > 1
    if reserve:
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        if reserve:
            torch.set_num_threads(threads)


class BatchPrefetcher:
    """`next()` returns the batch drawn ahead and starts drawing the one after it."""

    def __init__(self, sample: SampleFn, batch_size: int, rng: np.random.Generator) -> None:
        self.sample, self.batch_size, self.rng = sample, batch_size, rng
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: Future | None = None
        self.pending_rng_state: dict[str, Any] = {}
        self._submit()

    def _submit(self) -> None:
        self.pending_rng_state = copy.deepcopy(self.rng.bit_generator.state)
        self._pending = self._pool.submit(self.sample, self.batch_size, self.rng)

    def next(self) -> Mapping[str, Any]:
        assert self._pending is not None, "prefetcher is closed"
        batch = self._pending.result()  # a sampler's exception surfaces here, in the loop
        self._submit()
        return batch

    def close(self) -> None:
        """Wait for the pending draw (it holds the generator) and stop the worker."""
        if self._pending is not None:
            self._pending.cancel() or self._pending.exception()
            self._pending = None
        self._pool.shutdown(wait=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
