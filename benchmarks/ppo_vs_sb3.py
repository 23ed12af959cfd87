"""Learning-history generation: our batched multi-goal PPO vs stable-baselines3 PPO on Dark-Room.

RA-DT (Schmied et al. 2024) builds its source data by training one sb3 PPO agent per Dark-Room
training goal (lr 3e-4, n_steps 2048, batch 64, 10 epochs, entropy 0.01; 2x64 tanh MLPs) and
keeping every transition. `agents.ppo` trains all goals at once (stacked per-goal networks, one
batched forward per time step, numpy env step). Both run here with the same hyper-parameters
(sb3's: constant lr, so ours with `anneal_lr=False`), the same 10x10 goals, the same number of
transitions per goal and the same torch thread count, in one process, one after the other.

- ours: `agents.ppo.train_ppo_histories` on the first `--goals` RA-DT training goals;
- baseline: `stable_baselines3.PPO("MlpPolicy")` on `envs.darkroom.DarkRoomEnv`, one goal after
  another (as the paper's per-task runs), on `--sb3-goals` of those goals spread evenly over the
  list (near and far goals), in `--procs` worker processes (1 torch thread each).

An sb3 run's speed does not depend on which goal it trains, so its env-steps/s over a subset of
the goals is its rate for all of them (8M transitions of the paper's 80 goals take 80x one
goal's time); ours is measured on the whole batch. Data quality: the mean return of the last
`--last` episodes of each goal's history, ours vs sb3 on the goals both trained.

    OMP_NUM_THREADS=1 python benchmarks/ppo_vs_sb3.py --threads 1       # -> results/bench/ppo_vs_sb3.json

Rows are merged into `--out` (a list): a row with the same (threads, procs, goals) is replaced.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.ppo import PPOConfig, train_ppo_histories  # noqa: E402
from envs.darkroom import DarkRoomEnv, DarkRoomTasks  # noqa: E402
from rl_core.tables import upsert_json_rows  # noqa: E402

HORIZON = 100  # Dark-Room 10x10 episode length


def sb3_hyperparameters(cfg: PPOConfig) -> dict[str, Any]:
    """The sb3 `PPO` keyword arguments equal to `cfg` (RA-DT's settings)."""
    return dict(
        learning_rate=cfg.lr,
        n_steps=cfg.rollout_len,
        batch_size=cfg.rollout_len // cfg.num_minibatches,
        n_epochs=cfg.update_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_coef,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        normalize_advantage=cfg.norm_adv,
        policy_kwargs=dict(net_arch=dict(pi=[cfg.hidden] * 2, vf=[cfg.hidden] * 2)),
    )


def run_sb3_goal(job: tuple[tuple[int, int], int, int, dict[str, Any]]) -> dict[str, Any]:
    """Train one sb3 PPO learner on one goal; its episode returns and wall time."""
    goal, steps, seed, kwargs = job
    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(DarkRoomEnv(10, 10, goal=goal))
    t0 = time.perf_counter()
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - t0
    return {
        "goal": list(goal),
        "seconds": seconds,
        "env_steps": int(env.get_total_steps()),
        "returns": [float(r) for r in env.get_episode_rewards()],
    }


def run_sb3(
    goals: list[tuple[int, int]], steps: int, seed: int, cfg: PPOConfig, procs: int
) -> tuple[list[dict[str, Any]], float]:
    jobs = [(g, steps, seed + i, sb3_hyperparameters(cfg)) for i, g in enumerate(goals)]
    t0 = time.perf_counter()
    if procs == 1:
        results = [run_sb3_goal(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(procs) as pool:
            results = pool.map(run_sb3_goal, jobs)
    return results, time.perf_counter() - t0


def run_ours(
    goals: list[tuple[int, int]], steps: int, seed: int, cfg: PPOConfig
) -> tuple[np.ndarray, float]:
    """Episode returns [goals, episodes] of our batched learners and the wall time."""
    t0 = time.perf_counter()
    hist = train_ppo_histories(goals, 10, 10, HORIZON, cfg, seed)
    seconds = time.perf_counter() - t0
    g, e, s = hist.reward.shape
    returns = hist.reward.reshape(g, e, s // HORIZON, HORIZON).sum(-1).reshape(g, -1)
    return returns, seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--goals", type=int, default=80, help="goals ours trains at once (paper: 80)")
    p.add_argument("--sb3-goals", type=int, default=4, help="goals sb3 trains (its rate per goal)")
    p.add_argument("--steps", type=int, default=100_000, help="transitions per goal (paper: 100K)")
    p.add_argument(
        "--last", type=int, default=10, help="final return = mean of the last N episodes"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of ours")
    p.add_argument("--procs", type=int, default=1, help="sb3 worker processes (1 thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "results/bench/ppo_vs_sb3.json")
    args = p.parse_args(argv)
    if not 1 <= args.sb3_goals <= args.goals <= 80:
        p.error("need 1 <= --sb3-goals <= --goals <= 80")
    if args.steps % HORIZON:
        p.error(f"--steps must be a multiple of the episode length {HORIZON}")
    torch.set_num_threads(args.threads)
    goals = DarkRoomTasks().train[: args.goals]
    cfg = PPOConfig(steps_per_goal=args.steps, anneal_lr=False)  # sb3 keeps the lr constant

    picked = np.linspace(0, args.goals - 1, args.sb3_goals).round().astype(int)  # near and far
    sb3, sb3_s = run_sb3([goals[i] for i in picked], args.steps, args.seed, cfg, args.procs)
    ours_ret, ours_s = run_ours(goals, args.steps, args.seed, cfg)

    ours_rate = args.goals * args.steps / ours_s
    sb3_rate = sum(r["env_steps"] for r in sb3) / sb3_s
    n = args.sb3_goals
    ours_final = ours_ret[picked, -args.last :].mean(axis=1)
    tasks = DarkRoomTasks()
    optimal = [tasks.optimal_return(goals[i]) for i in picked]
    sb3_final = np.array([np.mean(r["returns"][-args.last :]) for r in sb3])
    row = {
        "ours": round(ours_rate, 1),
        "baseline": round(sb3_rate, 1),
        "ratio": round(ours_rate / sb3_rate, 2),
        "unit": "env_steps/s",
        "command": "python " + shlex.join(["benchmarks/ppo_vs_sb3.py", *sys.argv[1:]]),
        "what": (
            f"PPO learning histories on Dark-Room 10x10 (RA-DT's sb3 hyper-parameters, constant "
            f"lr): ours = agents.ppo, {args.goals} goals batched in one process; baseline = "
            f"stable-baselines3 PPO one goal per run, {n} goals in {args.procs} process(es)"
        ),
        "goals": args.goals,
        "sb3_goals": n,
        "steps_per_goal": args.steps,
        "seconds": {"ours": round(ours_s, 2), "baseline": round(sb3_s, 2)},
        "hours_for_80_goals": {
            "ours": round(80 * args.steps / ours_rate / 3600, 3),
            "baseline": round(80 * args.steps / sb3_rate / 3600, 3),
        },
        "sb3_goal_indices": picked.tolist(),
        "final_return_last_episodes": args.last,
        "final_return": {
            "ours": round(float(ours_final.mean()), 2),
            "baseline": round(float(sb3_final.mean()), 2),
            "ours_per_goal": [round(float(v), 1) for v in ours_final],
            "baseline_per_goal": [round(float(v), 1) for v in sb3_final],
            "optimal_per_goal": optimal,
            "ours_all_goals": round(float(ours_ret[:, -args.last :].mean()), 2),
            "optimal_all_goals": round(float(np.mean([tasks.optimal_return(g) for g in goals])), 2),
        },
        "final_return_ratio": round(float(ours_final.mean() / max(sb3_final.mean(), 1e-9)), 3),
        "threads": args.threads,
        "procs": args.procs,
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    import stable_baselines3

    row["stable_baselines3"] = stable_baselines3.__version__
    upsert_json_rows(
        args.out, [row], key=lambda r: tuple(r.get(k) for k in ("threads", "procs", "goals"))
    )
    print(
        f"ours {ours_rate:,.0f} env-steps/s ({args.goals} goals, {ours_s:.1f} s) | sb3 "
        f"{sb3_rate:,.0f} env-steps/s ({n} goals, {sb3_s:.1f} s) | ratio {row['ratio']}x\n"
        f"final return (last {args.last} episodes, goals {picked.tolist()}): ours "
        f"{ours_final.mean():.1f} vs sb3 {sb3_final.mean():.1f} "
        f"(ratio {row['final_return_ratio']}); ours over all {args.goals} goals "
        f"{row['final_return']['ours_all_goals']}"
    )
    return row


if __name__ == "__main__":
    main()
