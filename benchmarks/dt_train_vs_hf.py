"""DT training speed: our `agents.dt.DTModel` vs a reference DT on Hugging Face `transformers` GPT-2.

Both models see the same synthetic Dark-Room-like batch (our DT's Dark-Room inputs: (x, y) grid
states as two embedding tables, 5 discrete actions, returns-to-go scaled by the horizon, a learned
timestep embedding, left-padded windows of K steps) and train with the same loss (cross-entropy on
the action logits at the state tokens of the real steps), the same optimiser (AdamW lr 1e-4,
weight decay 1e-4, gradient clipping at 0.25 as in the official DT code) and the same sizes.

- ours: `agents.dt.DTModel` (`rl_core.nn.gpt.GPT`: pre-norm blocks, fused qkv Linear,
  `F.scaled_dot_product_attention` with a bool mask, GELU MLP, no position embeddings);
- baseline: the official DT (kzl/decision-transformer `gym/decision_transformer/models/
  decision_transformer.py` + `trajectory_gpt2.py`) rebuilt on `transformers.GPT2Model`
  (randomly initialised, nothing downloaded): `n_inner = 4 * hidden`, ReLU, dropout 0.1 on
  residual/attention/embedding, GPT-2's position embedding switched off (official removes the
  `wpe` addition), timestep embedding added to the return/state/action embeddings, an embedding
  LayerNorm, interleaved (R_t, s_t, a_t) tokens, the padding `attention_mask` of the official
  code, and the action predicted from the state token. Its inputs are our DT's inputs (the
  official gym DT embeds continuous states/actions with Linear layers; for Dark-Room both use
  embedding tables), so the two differ only in the transformer and the glue around it.

Timing: forward + backward + clip + AdamW step on the same batch, `--warmup` untimed steps each,
then `--steps` timed steps per model in `--rounds` blocks alternating ours/baseline in one process.
samples/s = batch * steps / seconds; ratio = ours / baseline (> 1: ours faster).

    OMP_NUM_THREADS=2 python benchmarks/dt_train_vs_hf.py --threads 2
    OMP_NUM_THREADS=1 python benchmarks/dt_train_vs_hf.py --threads 1
    python benchmarks/dt_train_vs_hf.py --device cuda --bf16 on --compile on   # on a GPU

Rows are merged into `--out` (results/bench/dt_train_vs_hf.json, a list of objects): a row with
the same (device, threads, bf16, compile) is replaced, others are kept.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from agents.dt import DTConfig, DTModel, dt_loss  # noqa: E402
from rl_core.nn import MultiDiscreteEmbedding  # noqa: E402
from rl_core.tables import upsert_json_rows  # noqa: E402

GRID, N_ACTIONS, HORIZON = 10, 5, 100  # Dark-Room 10x10, horizon 100


class _NoPosition(nn.Module):
    """Stands in for GPT-2's `wpe`: the official DT removes the position-embedding addition."""

    def forward(self, position_ids: Tensor) -> Tensor:
        return position_ids.new_zeros((), dtype=torch.float32)


class HFDecisionTransformer(nn.Module):
    """The official DT's `DecisionTransformer` on `transformers.GPT2Model`, Dark-Room inputs."""

    def __init__(
        self, d: int, n_layer: int, n_head: int, context_len: int, dropout: float, attn: str
    ) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        config = GPT2Config(
            vocab_size=1,  # inputs_embeds only (official: vocab_size=1)
            bos_token_id=None,
            eos_token_id=None,
            n_embd=d,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=4 * d,
            activation_function="relu",
            n_positions=3 * context_len,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            attn_implementation=attn,
        )
        self.horizon = HORIZON
        self.embed_timestep = nn.Embedding(HORIZON, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = MultiDiscreteEmbedding((GRID, GRID), d)
        self.embed_action = nn.Embedding(N_ACTIONS, d)
        self.embed_ln = nn.LayerNorm(d)
        self.transformer = GPT2Model(config)
        self.transformer.wpe = _NoPosition()
        self.predict_action = nn.Linear(d, N_ACTIONS)

    def forward(self, rtg, obs, action, timestep, mask, reward=None) -> Tensor:
        b, n = obs.shape[:2]
        t = self.embed_timestep(timestep.long())
        r = self.embed_return((rtg.float() / self.horizon).unsqueeze(-1)) + t
        s = self.embed_state(obs) + t
        a = self.embed_action(action.long()) + t
        x = torch.stack((r, s, a), dim=1).permute(0, 2, 1, 3).reshape(b, 3 * n, -1)
        x = self.embed_ln(x)
        attn = torch.stack((mask, mask, mask), dim=1).permute(0, 2, 1).reshape(b, 3 * n)
        h = self.transformer(inputs_embeds=x, attention_mask=attn.long()).last_hidden_state
        h = h.reshape(b, n, 3, -1).permute(0, 2, 1, 3)
        return self.predict_action(h[:, 1])  # action from the state token


def make_batch(batch: int, k: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    """A DTWindowSampler-like batch: windows ending at a uniform step, left-padded."""
    g = torch.Generator().manual_seed(seed)
    last = torch.randint(0, HORIZON, (batch,), generator=g)
    back = torch.arange(-k + 1, 1)
    t = last[:, None] + back[None, :]
    mask = t >= 0
    out = {
        "obs": torch.randint(0, GRID, (batch, k, 2), generator=g),
        "action": torch.randint(0, N_ACTIONS, (batch, k), generator=g),
        "reward": (torch.rand(batch, k, generator=g) < 0.1).float(),
        "rtg": torch.randint(0, 90, (batch, k), generator=g).float(),
        "timestep": t.clamp(min=0),
        "mask": mask,
    }
    for key in ("obs", "action", "reward", "rtg"):
        out[key] = out[key] * mask.reshape(batch, k, *([1] * (out[key].dim() - 2)))
    return {key: v.to(device) for key, v in out.items()}


class Runner:
    """One model, its AdamW and a timed training step."""

    def __init__(self, model: nn.Module, device: torch.device, bf16: bool, compile_: bool):
        self.model = model.to(device).train()
        self.device, self.bf16 = device, bf16
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda"
        )
        self.fn: nn.Module = torch.compile(self.model) if compile_ else self.model
        self.losses: list[float] = []
        self.seconds = 0.0
        self.steps = 0

    def step(self, batch: dict[str, Tensor]) -> Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, _ = dt_loss(self.fn, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def timed(self, batch: dict[str, Tensor], steps: int) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        losses = [self.step(batch) for _ in range(steps)]
        sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.steps += steps
        self.losses += [float(x) for x in losses]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def write(out: Path, row: dict[str, Any]) -> None:
    """Merge `row` into the list in `out`: same (device, threads, bf16, compile) replaced."""
    upsert_json_rows(
        out, [row],
        key=lambda r: (r["machine"]["device"], r["machine"]["threads"], r["bf16"], r["compile"]),
        sort_key=lambda r: (r["machine"]["device"], -r["machine"]["threads"], r["bf16"],
                            r["compile"]),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", default="off", choices=["off", "on"])
    p.add_argument("--compile", default="off", choices=["off", "on"])
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--steps", type=int, default=150, help="timed steps per model")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed blocks")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--n-head", type=int, default=1)
    p.add_argument("--context", type=int, default=20, help="K steps (3K tokens)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/dt_train_vs_hf.json")
    args = p.parse_args(argv)
    command = " ".join(
        ["python benchmarks/dt_train_vs_hf.py", *map(shlex.quote, argv or sys.argv[1:])]
    )
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = args.bf16 == "on"
    if bf16 and device.type != "cuda":
        raise SystemExit("--bf16 on is for --device cuda")

    torch.manual_seed(0)
    cfg = DTConfig(context_len=args.context, d_model=args.d_model, n_layer=args.n_layer,
                   n_head=args.n_head, dropout=args.dropout)  # fmt: skip
    ours_model = DTModel((GRID, GRID), N_ACTIONS, HORIZON, cfg)
    torch.manual_seed(0)
    base_model = HFDecisionTransformer(args.d_model, args.n_layer, args.n_head, args.context,
                                       args.dropout, args.hf_attn)  # fmt: skip
    batch = make_batch(args.batch, args.context, seed=0, device=device)

    compile_error: str | None = None
    runners = {}
    for name, model in (("ours", ours_model), ("baseline", base_model)):
        runners[name] = Runner(model, device, bf16, args.compile == "on")
    try:
        for r in runners.values():
            for _ in range(args.warmup):
                r.step(batch)
    except Exception as e:  # noqa: BLE001 - compile failures are recorded, not fatal
        if args.compile != "on":
            raise
        compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
        print(f"torch.compile failed: {compile_error}")
        runners = {"ours": Runner(ours_model, device, bf16, False),
                   "baseline": Runner(base_model, device, bf16, False)}  # fmt: skip
        for r in runners.values():
            for _ in range(args.warmup):
                r.step(batch)

    per_round = [
        args.steps // args.rounds + (i < args.steps % args.rounds) for i in range(args.rounds)
    ]
    for n in per_round:
        if n:
            runners["ours"].timed(batch, n)
            runners["baseline"].timed(batch, n)

    rate = {k: args.batch * r.steps / r.seconds for k, r in runners.items()}
    ratio = rate["ours"] / rate["baseline"]
    params = {"ours": n_params(ours_model), "baseline": n_params(base_model)}
    print(f"DT d_model={args.d_model} n_layer={args.n_layer} n_head={args.n_head} K={args.context} "
          f"({3 * args.context} tokens), batch {args.batch}, {device}, {args.threads} thread(s), "
          f"bf16 {args.bf16}, compile {args.compile}{' (failed)' if compile_error else ''}")  # fmt: skip
    print(f"{'':30}{'samples/s':>10}{'seconds':>9}{'params':>9}{'first/last loss':>18}")
    for k, label in (("ours", "ours (agents.dt.DTModel)"), ("baseline", "baseline (HF GPT2Model)")):
        r = runners[k]
        print(f"{label:30}{rate[k]:10.1f}{r.seconds:9.2f}{params[k]:9d}"
              f"{r.losses[0]:9.3f}{r.losses[-1]:9.3f}")  # fmt: skip
    print(
        f"ratio ours/baseline {ratio:.2f}x (goal >= 1.5x: {'met' if ratio >= 1.5 else 'not met'})"
    )

    row = {
        "ours": round(rate["ours"], 1),
        "baseline": round(rate["baseline"], 1),
        "ratio": round(ratio, 3),
        "unit": "samples/s (batch * timed steps / s of forward+backward+clip+AdamW step)",
        "command": command,
        "goal_ratio": 1.5,
        "goal_met": ratio >= 1.5,
        "bf16": args.bf16 if device.type == "cuda" else "n/a",
        "compile": args.compile,
        "compile_error": compile_error,
        "config": {
            "d_model": args.d_model,
            "n_layer": args.n_layer,
            "n_head": args.n_head,
            "context_steps": args.context,
            "tokens": 3 * args.context,
            "batch": args.batch,
            "dropout": args.dropout,
            "timed_steps": args.steps,
            "rounds": args.rounds,
            "warmup_steps": args.warmup,
            "hf_attn_implementation": args.hf_attn,
            "optimizer": "AdamW(lr=1e-4, weight_decay=1e-4), clip_grad_norm 0.25",
            "inputs": "Dark-Room 10x10 (x, y) states, 5 actions, horizon 100, left-padded windows",
            "real_steps_in_batch": int(batch["mask"].sum()),
        },  # fmt: skip
        "params": params,
        "seconds": {k: round(r.seconds, 3) for k, r in runners.items()},
        "loss_first_last": {k: [r.losses[0], r.losses[-1]] for k, r in runners.items()},
        "machine": machine_info(device, args.threads),
    }
    if not all(math.isfinite(x) for r in runners.values() for x in r.losses):
        raise SystemExit("non-finite training loss")
    write(args.out, row)
    print(f"wrote {args.out}")
    return row


if __name__ == "__main__":
    main()
