"""One training loop for every gradient-trained agent.

The agent supplies three functions — ``sample_batch`` (numpy RNG → batch), ``loss_fn``
(model, batch → loss, metrics) and optionally ``evaluate`` (model, step → metrics) — and the
:class:`Trainer` owns everything that should not be repeated per agent: device choice, AdamW
with a warm-up + cosine schedule, gradient clipping, bf16 autocast and ``torch.compile`` on CUDA,
logging, periodic evaluation, atomic checkpoints with exact resume, and DDP under ``torchrun``.

The loop is kept visible (``_fit`` reads top to bottom) rather than hidden behind callbacks.

Contract for ``loss_fn``: call the model through ``model(...)`` (its ``forward``). Under DDP it
receives the ``DistributedDataParallel`` wrapper, which only synchronises gradients for work
done in ``forward``; under ``torch.compile`` only ``forward`` is compiled.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rl_core.prefetch import BatchPrefetcher, worker_core
from rl_core.utils import atomic_torch_save, dist_info, resolve_device, seed_everything

_LOG = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
SampleFn = Callable[[int, np.random.Generator], Mapping[str, "np.ndarray | torch.Tensor"]]
EvalFn = Callable[[nn.Module, int], Mapping[str, float]]


@dataclass
class TrainConfig:
    """Optimisation settings; mirrors the ``train:`` section of ``configs/base.yaml``."""

    steps: int = 2000  # optimizer steps in total (not epochs: samplers draw windows forever)
    batch_size: int = 64  # per process; the global batch under DDP is batch_size * world_size
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    weight_decay: float = 0.01  # AdamW decay, applied to >=2-D non-embedding weights only
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 100  # linear warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at `steps`
    grad_clip: float = (
        1.0  # max global grad norm; <= 0 disables clipping (the norm is still logged)
    )
    log_every: int = 50  # train/* rows are means over this many steps
    eval_every: int = 0  # 0: evaluate only at the end
    ckpt_every: int = 500  # 0: checkpoint only at the end
    amp: bool = True  # bf16 autocast; only used on CUDA with bf16 support
    compile: bool = False  # torch.compile; only used on CUDA
    progress: bool = True  # tqdm bar on rank 0
    prefetch: bool = False  # draw the next batch in a background thread (rl_core.prefetch)


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Factor on the peak lr for the update with 0-based index ``step``.

    Linear warm-up ``(step + 1) / warmup_steps`` (the first update already moves the weights),
    then a half cosine from 1 down to ``min_lr_ratio``, reached at ``step == total_steps`` and
    held after it.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Rule: a parameter is decayed iff it has >= 2 dimensions (matrices, conv kernels) and no
    module owning it is an embedding. Biases, norm gains and embedding tables are not decayed:
    shrinking them toward zero regularises nothing useful and hurts rare tokens/positions.
    Tied weights (an embedding shared with an output layer) count as embeddings.
    """
    embedding_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            embedding_params.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicated by torch, so tied weights appear once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embedding_params else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class Trainer:
    """Fits ``model`` by minimising ``loss_fn`` on batches from ``sample_batch``.

    Checkpoints go to ``run_dir/checkpoints/last.pt``. ``logger`` is any object with
    ``.log(dict)``; it receives ``train/*`` + ``perf/*`` rows keyed by ``train/step`` and
    ``eval/*`` rows keyed by ``eval/step``, on rank 0 only.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        *,
        run_dir: Path,
        loss_fn: LossFn,
        sample_batch: SampleFn,
        evaluate: EvalFn | None = None,
        logger: Any | None = None,
        seed: int = 0,
        device: str = "auto",
        config: Mapping | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.loss_fn = loss_fn
        self.sample_batch = sample_batch
        self.evaluate = evaluate
        self.logger = logger
        self.seed = seed
        self.device_name = device
        self.config = config
        # Filled in by fit(); useful to callers and tests.
        self.device: torch.device | None = None
        self.amp_used = False
        self.compile_used = False
        self.start_step = 0
        self.checkpoints_written = 0

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    # ------------------------------------------------------------------ public API

    def fit(self, resume: bool = False) -> nn.Module:
        """Train for ``cfg.steps`` updates (continuing from ``last.pt`` if ``resume``).

        Returns the unwrapped model (no DDP / compile wrapper) with the trained weights.
        """
        created_group = self._init_distributed()
        try:
            return self._fit(resume)
        finally:
            if created_group and dist.is_initialized():
                dist.destroy_process_group()

    @staticmethod
    def load_weights(model: nn.Module, run_dir: Path) -> int:
        """Load the model weights of ``run_dir/checkpoints/last.pt``; return its step."""
        path = Path(run_dir) / "checkpoints" / "last.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        ckpt = _read_checkpoint(path)
        _load_model_state(model, ckpt["model"], path)
        return int(ckpt["step"])

    # ------------------------------------------------------------------ the loop

    def _fit(self, resume: bool) -> nn.Module:
        cfg = self.cfg
        rank, local_rank, world_size = dist_info()
        is_main = rank == 0
        device = self._pick_device(local_rank, world_size)
        self.device = device
        rng = seed_everything(self.seed + rank)  # per-rank batches and dropout

        model = self.model.to(device)
        model.train()
        optimizer = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=device.type == "cuda",
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda i: lr_multiplier(
                i,
                warmup_steps=cfg.warmup_steps,
                total_steps=cfg.steps,
                min_lr_ratio=cfg.min_lr_ratio,
            ),
        )

        step = 0
        if resume and self.ckpt_path.is_file():
            step = self._restore(model, optimizer, scheduler, rng, rank, world_size)
            if is_main:
                _LOG.info("resumed from %s at step %d", self.ckpt_path, step)
        elif resume and is_main:
            _LOG.info("no checkpoint at %s; starting from step 0", self.ckpt_path)
        self.start_step = step

        self.amp_used = cfg.amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.compile_used = cfg.compile and device.type == "cuda"
        train_model: nn.Module = model
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=ids)
        if self.compile_used:
            train_model = torch.compile(train_model)
        if is_main:
            _LOG.info(
                "training on %s: amp(bf16)=%s compile=%s world_size=%d steps %d->%d",
                device,
                self.amp_used,
                self.compile_used,
                world_size,
                step,
                cfg.steps,
            )

        params = [p for g in optimizer.param_groups for p in g["params"]]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        bar = tqdm(
            total=cfg.steps,
            initial=step,
            disable=not (cfg.progress and is_main),
            dynamic_ncols=True,
        )
        optimizer.zero_grad(set_to_none=True)  # no stale gradients from before fit()
        window = _Window()
        last_eval = last_ckpt = -1
        prefetcher = None
        cores = ExitStack()
        if cfg.prefetch:
            prefetcher = BatchPrefetcher(self.sample_batch, cfg.batch_size, rng)
            cores.enter_context(worker_core(device))
        try:
            while step < cfg.steps:
                batch = prefetcher.next() if prefetcher else self.sample_batch(cfg.batch_size, rng)
                batch = _to_device(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp_used):
                    loss, metrics = self.loss_fn(train_model, batch)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                bar.update(1)
                window.add(loss, grad_norm, metrics)

                if (cfg.log_every > 0 and step % cfg.log_every == 0) or step == cfg.steps:
                    row = window.flush(step, lr, cfg.batch_size * world_size)
                    if is_main:
                        bar.set_postfix(loss=f"{row['train/loss']:.4g}", refresh=False)
                        self._log(row)
                if cfg.eval_every > 0 and step % cfg.eval_every == 0:
                    with window.paused():
                        self._evaluate(model, step, is_main)
                    last_eval = step
                if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
                    with window.paused():
                        pending = prefetcher.pending_rng_state if prefetcher else None
                        self._save(
                            model, optimizer, scheduler, rng, step, is_main, world_size, pending
                        )
                    last_ckpt = step
        finally:
            cores.close()
            if prefetcher is not None:
                prefetcher.close()
                # rewind past the batch drawn ahead and never trained on, as if sampled inline
                rng.bit_generator.state = prefetcher.pending_rng_state
        bar.close()

        if last_eval != step:
            self._evaluate(model, step, is_main)
        if last_ckpt != step:
            self._save(model, optimizer, scheduler, rng, step, is_main, world_size)
        return model

    # ------------------------------------------------------------------ pieces

    def _pick_device(self, local_rank: int, world_size: int) -> torch.device:
        device = resolve_device(self.device_name)
        if device.type == "cuda" and world_size > 1:
            device = torch.device("cuda", local_rank)  # one GPU per process under torchrun
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # so NCCL collectives use this GPU
        return device

    def _init_distributed(self) -> bool:
        """Join the torchrun process group when WORLD_SIZE > 1; True if we created it."""
        _, local_rank, world_size = dist_info()
        if world_size <= 1 or dist.is_initialized():
            return False
        device = self._pick_device(local_rank, world_size)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True

    def _barrier(self) -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def _log(self, row: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(row)

    def _evaluate(self, model: nn.Module, step: int, is_main: bool) -> None:
        """Rank 0 evaluates the unwrapped model in eval mode; the others wait."""
        if self.evaluate is not None and is_main:
            model.eval()
            try:
                with torch.no_grad():
                    result = self.evaluate(model, step)
            finally:
                model.train()
            row = {f"eval/{k}": float(v) for k, v in result.items()}
            row["eval/step"] = step
            self._log(row)
        self._barrier()

    def _save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rng: np.random.Generator,
        step: int,
        is_main: bool,
        world_size: int,
        numpy_state: dict[str, Any] | None = None,
    ) -> None:
        """Every rank contributes its RNG state; rank 0 writes; the others wait for the file."""
        rng_state = _rng_state(rng, self.device)
        if numpy_state is not None:  # the generator is busy drawing the prefetched batch
            rng_state["numpy"] = numpy_state
        states = (
            _gather_to_main(rng_state, f"rng/{step}", is_main) if world_size > 1 else [rng_state]
        )
        if is_main:
            ckpt = {
                "version": CHECKPOINT_VERSION,
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": states,  # one entry per rank
                "world_size": world_size,
                "train_config": dataclasses.asdict(self.cfg),
                "config": _plain(self.config) if self.config is not None else None,
            }
            atomic_torch_save(ckpt, self.ckpt_path)
            self.checkpoints_written += 1
        self._barrier()

    def _restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rng: np.random.Generator,
        rank: int,
        world_size: int,
    ) -> int:
        path = self.ckpt_path
        ckpt = _read_checkpoint(path)
        _load_model_state(model, ckpt["model"], path)
        optimizer.load_state_dict(ckpt["optimizer"])  # moves state to the params' device
        scheduler.load_state_dict(ckpt["scheduler"])
        step = int(ckpt["step"])
        states = ckpt.get("rng") or []
        if len(states) == world_size:
            _set_rng_state(states[rank], rng, self.device)
        else:
            # A different number of processes cannot replay the same batches; keep going with
            # fresh, step-dependent streams rather than repeating the first batches.
            _LOG.warning(
                "%s was written by %d process(es), now %d: sampler RNG reseeded",
                path,
                len(states),
                world_size,
            )
            rng.bit_generator.state = np.random.default_rng(
                [self.seed, rank, step]
            ).bit_generator.state
        return step


# ---------------------------------------------------------------------- helpers


def _gather_to_main(obj: Any, key: str, is_main: bool) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (a list by rank; None elsewhere), through the rendezvous store.

    Not ``all_gather_object``: its tensors are created in Python, and gloo's worker thread frees
    the finished work (and with it those tensors, which needs the GIL) some time after the call
    returns. After the last checkpoint that can fall into interpreter shutdown, and the process
    aborts ("terminate called without an active exception"; seen in about 1 of 30 torchrun runs
    on 2 busy cores: the DDP reducer keeps the process group and its threads alive until exit).
    The store is a plain TCP key-value exchange on the calling thread, with no such work.
    Values travel as ``torch.save`` bytes and are read back with ``weights_only=True``, like the
    checkpoint they go into.
    """
    store = dist.distributed_c10d._get_default_store()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    store.set(f"icrl/{key}/{rank}", buffer.getvalue())
    if not is_main:
        return None
    names = [f"icrl/{key}/{r}" for r in range(world_size)]
    values = [  # get waits for the key
        torch.load(io.BytesIO(store.get(name)), map_location="cpu", weights_only=True)
        for name in names
    ]
    for name in names:
        store.delete_key(name)
    return values


class _Window:
    """Running sums between two log rows; tensors stay on device until the row is written."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.loss: torch.Tensor | float = 0.0
        self.grad_norm: torch.Tensor | float = 0.0
        self.metrics: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self.pause_s = 0.0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, metrics: Mapping[str, Any]) -> None:
        self.n += 1
        self.loss = self.loss + loss.detach().float()
        self.grad_norm = self.grad_norm + grad_norm.detach().float()
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.metrics[k] = self.metrics.get(k, 0.0) + v

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (evaluation, checkpointing) does not count as training time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.pause_s += time.perf_counter() - t

    def flush(self, step: int, lr: float, samples_per_step: int) -> dict[str, float]:
        n = max(1, self.n)
        elapsed = max(1e-9, time.perf_counter() - self.t0 - self.pause_s)
        row = {"train/step": step, "train/loss": float(self.loss) / n}
        row.update({f"train/{k}": float(v) / n for k, v in self.metrics.items()})
        row["train/lr"] = float(lr)
        row["train/grad_norm"] = float(self.grad_norm) / n
        row["perf/steps_per_s"] = self.n / elapsed
        row["perf/samples_per_s"] = self.n * samples_per_step / elapsed
        self._reset()
        return row


def _to_device(
    batch: Mapping[str, np.ndarray | torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """numpy/torch batch → tensors on ``device``; float64 becomes float32, other dtypes stay."""
    out: dict[str, torch.Tensor] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            if not v.flags.writeable:  # e.g. a slice of a read-only memmap
                v = np.array(v)
            v = torch.from_numpy(v)
        if isinstance(v, torch.Tensor):
            if v.dtype == torch.float64:
                v = v.float()
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out


def _rng_state(rng: np.random.Generator, device: torch.device | None) -> dict[str, Any]:
    """Everything random the loop draws from, as weights_only-loadable plain data."""
    version, internal, gauss = random.getstate()
    state = {
        "numpy": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "cuda": None,
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(
    state: Mapping[str, Any], rng: np.random.Generator, device: torch.device
) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"could not read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"{path} is not an icrl Trainer checkpoint (no 'model'/'step' entries)")
    return ckpt


def _load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict`` with an error that names the file and the first offending key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise ValueError(
            f"checkpoint {path} does not fit the model: key '{missing[0]}' is missing "
            f"({len(missing)} missing in all)"
        )
    if unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit the model: unexpected key '{unexpected[0]}' "
            f"({len(unexpected)} unexpected in all)"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"checkpoint {path} does not fit the model: key '{k}' has shape "
                f"{tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} in the model"
            )
    model.load_state_dict(state)


def _plain(obj: Any) -> Any:
    """Mappings/sequences (incl. OmegaConf containers) → dicts/lists of weights_only-safe leaves."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, (Sequence, set, frozenset)) and not isinstance(obj, bytes):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    return str(obj)
