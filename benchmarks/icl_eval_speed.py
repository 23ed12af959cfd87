"""In-context evaluation speed of AD and RA-DT: KV cache vs re-encoding the context every step.

**AD** (first row):

Same AD model (default sizes, random weights: speed does not depend on them), same rollout
loop, same 20 held-out Dark-Room 10x10 goals batched, same greedy (temperature 0) actions.
The context is 4 episodes (400 tokens); a trial of 6 episodes fills the window and rolls it.

- ours: `agents.ad.ADPolicy`, one token per env step against the rolling KV cache;
- baseline: keeps the token history and runs `ADModel.forward` over the last 400 tokens at
  every step (no cache), i.e. what an AD evaluation without a cache does.

Sanity check: both pick the same greedy actions while the context is within the window (there
the two computations are the same; once it rolls, a multi-layer cache sees further back than a
re-encoded window, see `rl_core.nn.gpt`), and the agreement after that is printed too.

**RA-DT** (second row): `agents.radt.RADTPolicy` with the default config (random weights, a
random frozen DT embedder), the 20 held-out goals batched over `--radt-trials` (40, the paper's
protocol) consecutive episodes, per paper Algorithm 1 (each task's memory starts empty and gets
every finished episode; retrieval every step, the config's sampler). ours =
`reencode: false` (rolling KV cache of the K-step window, the context retrieved at each step
cross-attended by the new token; it needs `positions: timestep`, a cache cannot hold learned
window positions that shift every step); baseline = `reencode: true`, the official way (each env's
last K steps re-run with the current context every step). Both share everything else, so the
retrieval itself (query embedding, search, gather) is in both; `retrieval_share` is the part
of an ours step spent in `RADTPolicy.retrieve`. The paper reports ~100 env-steps/s for RA-DT
with retrieval every step on an A100 (`../shared/reference/incontext_rl.md` §1.13).

    python benchmarks/icl_eval_speed.py           # writes results/bench/icl_eval_speed.json
    python benchmarks/icl_eval_speed.py --trials 3 --radt-trials 2 --threads 2 --out /tmp/icl.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import torch  # noqa: E402

from agents.ad import ADConfig, ADModel, ADPolicy  # noqa: E402
from envs.darkroom import DarkRoomTasks  # noqa: E402
from rl_core.nn.sampling import sample_logits  # noqa: E402
from rl_core.rollout import ActionRecorder, rollout  # noqa: E402
from rl_core.tables import upsert_json_rows  # noqa: E402


class ReencodePolicy:
    """AD without a cache: the whole token history is re-run through the model every step."""

    def __init__(self, model: ADModel, window: int, device: torch.device) -> None:
        self.model, self.window, self.device = model, window, device

    def reset(self, n_envs: int) -> None:
        self.obs: list[torch.Tensor] = []
        self.prev_action = [torch.full((n_envs,), -1, dtype=torch.long, device=self.device)]
        self.prev_reward = [torch.zeros(n_envs, device=self.device)]

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        self.obs.append(torch.as_tensor(obs, device=self.device).long())
        w = self.window
        logits = self.model(
            torch.stack(self.obs[-w:], dim=1),
            torch.stack(self.prev_action[-w:], dim=1),
            torch.stack(self.prev_reward[-w:], dim=1),
        )
        return sample_logits(logits[:, -1], 0.0).cpu().numpy()

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.prev_action.append(torch.as_tensor(actions, device=self.device).long())
        self.prev_reward.append(torch.as_tensor(rewards, device=self.device).float())
        # keep only what the next window needs
        del self.obs[: -self.window], self.prev_action[: -self.window]
        del self.prev_reward[: -self.window]


def timed_rollout(policy, model: ADModel, tasks: DarkRoomTasks, trials: int):
    """Seconds, env steps, actions (b, steps) and last-token logits (b, steps, A) of one trial."""
    log, logits = ActionRecorder(policy), []
    hook = model.head.register_forward_hook(lambda m, i, out: logits.append(out[:, -1]))
    t0 = time.perf_counter()
    result = rollout(tasks.env_fns("eval"), log, episodes=trials, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    hook.remove()
    return seconds, result.steps, np.stack(log.actions, axis=1), torch.stack(logits, dim=1).cpu()


def radt_rate(
    reencode: bool, trials: int, batched: bool = True, device: str = "cpu"
) -> tuple[float, float, int]:
    """Env-steps/s of RA-DT's in-context evaluation, the share of time in retrieval, steps."""
    from hydra import compose, initialize_config_module

    from agents import radt
    from agents.dt import DTModel
    from agents.icl import evaluate_in_context
    from retrieval.embedders import DTEmbedder

    # the rolling cache needs timestep positions (window positions shift every step)
    positions = ["agent.positions=timestep"] if not reencode else []
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("radt", overrides=positions)
    model, a, e = radt.build(cfg)  # untrained weights: the cost does not depend on them
    dt = DTModel((cfg.env.width, cfg.env.height), 5, model.horizon, radt._dt_config(a))
    embedder = DTEmbedder(dt, max_embed_len=e.max_embed_len, context_len=a.context_len).eval()
    a_run = radt.RADTConfig(**{**a.__dict__, "reencode": reencode})
    dev = torch.device(device)
    policy = radt.RADTPolicy(model.eval().to(dev), a_run, dev, 0, embedder.to(dev))
    if not batched:  # what the batched EvalMemory bought: one faiss search per task instead
        reset = policy.reset

        def per_slot_reset(n_envs: int) -> None:
            reset(n_envs)
            policy.memory.batched = False

        policy.reset = per_slot_reset  # type: ignore[method-assign]
    spent = [0.0]
    retrieve = policy.retrieve

    def timed_retrieve():
        t = time.perf_counter()
        out = retrieve()
        spent[0] += time.perf_counter() - t
        return out

    policy.retrieve = timed_retrieve  # type: ignore[method-assign]
    t0 = time.perf_counter()
    res = evaluate_in_context(cfg.env, policy, trials=trials, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    steps = int(np.asarray(res.lengths).sum())
    return steps / seconds, spent[0] / seconds, steps


def radt_row(
    trials: int, threads: int, command: str, batched: bool = True, device: str = "cpu"
) -> dict:
    ours, share, steps = radt_rate(False, trials, batched, device)
    print(f"RA-DT KV cache   : {ours:8.0f} env-steps/s ({share:.0%} of the time in retrieval)")
    base, base_share, _ = radt_rate(True, trials, batched, device)
    print(f"RA-DT re-encoding: {base:8.0f} env-steps/s ({base_share:.0%} in retrieval)")
    return {
        "agent": "radt",
        "ours": round(ours, 1),
        "baseline": round(base, 1),
        "ratio": round(ours / base, 2),
        "unit": "env_steps/s",
        "command": command,
        "what": (
            f"RA-DT (default config, random weights) in-context evaluation on the 20 held-out "
            f"Dark-Room 10x10 goals batched, {trials} trials, retrieval every step from each "
            "task's own growing memory: ours = RADTPolicy with a rolling KV cache "
            "(reencode=false); baseline = re-encoding the last K steps with the current context "
            "every step (reencode=true, official)"
        ),
        "eval_memory": "batched" if batched else "per_slot",
        "env_steps": steps,
        "retrieval_share": {"ours": round(share, 3), "baseline": round(base_share, 3)},
        "goal_env_steps_per_s": 1000,
        "goal_met": ours >= 1000,
        "paper_a100_env_steps_per_s": 100,
        "device": device_name(device),
        "threads": threads,
    }


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context-episodes", type=int, default=4)
    p.add_argument("--trials", type=int, default=6, help="AD: episodes per task in one trial")
    p.add_argument("--radt-trials", type=int, default=40, help="RA-DT: episodes per task (0: skip)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument(
        "--per-slot-memory", action="store_true",
        help="RA-DT: one faiss search per task (before the batched EvalMemory), for comparison",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/icl_eval_speed.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join(
        ["python benchmarks/icl_eval_speed.py", *(sys.argv[1:] if argv is None else argv)]
    )

    tasks = DarkRoomTasks()  # 10x10, horizon 100, 20 held-out goals
    window = args.context_episodes * tasks.horizon
    torch.manual_seed(0)
    cfg = ADConfig(context_episodes=args.context_episodes)  # d_model 64, 2 layers, 4 heads
    device = torch.device(args.device)
    model = ADModel((tasks.width, tasks.height), 5, cfg, max_len=window).eval().to(device)
    n_envs = len(tasks.split("eval"))

    print(f"AD d_model={cfg.d_model} n_layer={cfg.n_layer} n_head={cfg.n_head}, context {window} "
          f"tokens, {n_envs} envs x {args.trials} episodes, {args.threads} thread(s)")  # fmt: skip
    cached = ADPolicy(model, window, device, temperature=0.0, seed=0)
    ours_s, steps, ours_actions, ours_logits = timed_rollout(cached, model, tasks, args.trials)
    base_s, base_steps, base_actions, base_logits = timed_rollout(
        ReencodePolicy(model, window, device), model, tasks, args.trials
    )
    assert steps == base_steps == n_envs * args.trials * tasks.horizon

    within = min(window, ours_actions.shape[1])
    same_within = float((ours_actions[:, :within] == base_actions[:, :within]).mean())
    same_after = (
        float((ours_actions[:, within:] == base_actions[:, within:]).mean())
        if ours_actions.shape[1] > within
        else None
    )
    logit_diff = float((ours_logits[:, :within] - base_logits[:, :within]).abs().max())
    first = 20
    print(f"greedy actions, env 0, first {first} steps: cached {ours_actions[0, :first].tolist()}")
    print(f"                                        re-encoded {base_actions[0, :first].tolist()}")
    print(f"same greedy action: {same_within:.4f} of steps within the window, "
          f"{same_after if same_after is None else round(same_after, 4)} after it rolls")  # fmt: skip
    print(f"max |logit difference| within the window: {logit_diff:.2e}")
    if same_within != 1.0 or logit_diff > 1e-4:
        raise SystemExit("cached and re-encoded AD disagree within the window: the cache is wrong")

    ours, baseline = steps / ours_s, steps / base_s
    ratio = ours / baseline
    print(f"{'':28}{'env steps/s':>12}{'seconds':>10}")
    print(f"{'ours (ADPolicy, KV cache)':28}{ours:12.0f}{ours_s:10.2f}")
    print(f"{'baseline (re-encode 400)':28}{baseline:12.0f}{base_s:10.2f}")
    print(f"ratio {ratio:.1f}x")

    out = {
        "agent": "ad",
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "ratio": round(ratio, 1),
        "unit": "env_steps/s",
        "context_tokens": window,
        "command": command,
        "what": (
            f"AD (d_model {cfg.d_model}, {cfg.n_layer} layers, {cfg.n_head} heads, random weights) "
            f"greedy in-context evaluation on the {n_envs} held-out Dark-Room 10x10 goals batched, "
            f"{args.trials} episodes per goal, both through rl_core.rollout. ours = ADPolicy with a "
            f"rolling KV cache of {window} tokens; baseline = ADModel.forward over the last {window} "
            "tokens every step"
        ),
        "goal_env_steps_per_s": 1000,
        "goal_met": ours >= 1000,
        "env_steps": steps,
        "seconds": {"ours": round(ours_s, 3), "baseline": round(base_s, 3)},
        "same_greedy_action_within_window": same_within,
        "same_greedy_action_after_window_rolls": same_after,
        "max_logit_diff_within_window": logit_diff,
        "device": device_name(args.device),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    rows = [out]
    if args.radt_trials > 0:
        rows.append(
            radt_row(args.radt_trials, args.threads, command, not args.per_slot_memory, args.device)
        )
        rows[-1].update({k: out[k] for k in ("torch", "python", "machine", "cpu_count")})
    # rows of the same (agent, device) are replaced; others (e.g. GPU rows) are kept
    upsert_json_rows(args.out, rows, key=lambda r: (r.get("agent", "ad"), r.get("device", "cpu")))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
