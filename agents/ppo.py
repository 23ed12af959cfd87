"""PPO learning histories for Dark-Room: one independent PPO learner per goal, all goals batched.

Paper: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347).
Reference code: CleanRL `ppo.py` (structure and loss), stable-baselines3 `PPO` (what RA-DT used).
Why it exists: RA-DT (Schmied et al. 2024, github.com/ml-jku/RA-DT) builds the AD/DT source data by
training one PPO agent per Dark-Room training goal (sb3; lr 3e-4, n_steps 2048, batch 64, 10 epochs,
entropy 0.01) for 100K steps and keeping *every* transition, so each goal yields one learning history.

    python -m agents.ppo collect env=darkroom [agent.steps_per_goal=...]

How: the G per-goal actor-critics are stacked tensors (`StackedLinear`, weights [G, in, out]), so
one batched matmul acts for all envs of all goals, and the envs are stepped together with numpy
(`envs.darkroom.darkroom_step`). Inputs are one-hot x and y (what sb3 does with a MultiDiscrete
observation). Advantage normalisation, loss, gradient clipping and Adam all act per goal, so no
learner's data depends on another goal (tested: a goal's history is bit-identical whichever goal
trains beside it). 80 goals x 100K steps take ~7 min on one CPU core.

Envs: Dark-Room of any size (`env=darkroom`, `darkroom_20x20`, `darkroom_40x20`; the paper uses 200K
steps per goal on 40x20). Not Key-Door: its learner would need the has-key state as an input, so
`env=keydoor` raises a `ConfigError` (use the Q-learning source there).

Deviations from sb3/CleanRL:
- learning-rate annealing (CleanRL) instead of sb3's constant lr; no value clipping (sb3 default);
- time-limit truncation bootstraps with V(final obs) (as sb3), since Dark-Room never terminates;
- no update after the last rollout: it could not change any recorded transition;
- minibatch permutations are shared by all goals (each goal still sees its own data).

Shape letters: g goals, e envs per goal, t time, n samples per goal (t*e), b minibatch, a actions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from envs.darkroom import NUM_ACTIONS, DarkRoomTasks, darkroom_reward, darkroom_step
from rl_core.cli import run_cli, setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.data import EpisodeStore, cache_root, open_or_build
from rl_core.logging import Logger

DATA_VERSION = 1  # bump when the recorded data would change for the same attrs


# ----------------------------------------------------------------------------- config
@dataclass
class PPOConfig:
    """PPO hyper-parameters; defaults follow RA-DT's sb3 settings (configs/agent/ppo.yaml)."""

    name: str = "ppo"
    steps_per_goal: int = 100_000  # transitions recorded per goal (= one learning history)
    num_envs: int = 1  # parallel envs per goal; 1 keeps a history one sequential learner
    rollout_len: int = 2048  # steps per env between updates (sb3 n_steps)
    num_minibatches: int = 32  # 2048 / 32 = 64 samples per minibatch (sb3 batch_size)
    update_epochs: int = 10
    lr: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    norm_adv: bool = True
    hidden: int = 64
    device: str = "cpu"  # tiny nets: CPU is usually fastest; part of the cache key


# ----------------------------------------------------------------------------- model
class StackedLinear(nn.Module):
    """G independent linear layers in one [G, in, out] weight: y[g] = x[g] @ W[g] + b[g]."""

    def __init__(
        self,
        num_goals: int,
        d_in: int,
        d_out: int,
        gain: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_goals, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(num_goals, 1, d_out))
        with torch.no_grad():
            for w in self.weight:  # init only: CleanRL's orthogonal init, one matrix per goal
                w.copy_(nn.init.orthogonal_(torch.empty(d_out, d_in), gain, generator).T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [g, b, in] -> [g, b, out]
        return torch.baddbmm(self.bias, x, self.weight)


def stacked_mlp(
    num_goals: int,
    d_in: int,
    hidden: int,
    d_out: int,
    out_gain: float,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    return nn.Sequential(
        StackedLinear(num_goals, d_in, hidden, math.sqrt(2), generator),
        nn.Tanh(),
        StackedLinear(num_goals, hidden, hidden, math.sqrt(2), generator),
        nn.Tanh(),
        StackedLinear(num_goals, hidden, d_out, out_gain, generator),
    )


class StackedActorCritic(nn.Module):
    """G separate actor and critic MLPs (sb3/CleanRL: 2x64 tanh, orthogonal init), run batched."""

    def __init__(
        self,
        num_goals: int,
        width: int,
        height: int,
        hidden: int = 64,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.width, self.height = width, height
        d_in = width + height
        self.actor = stacked_mlp(num_goals, d_in, hidden, NUM_ACTIONS, 0.01, generator)
        self.critic = stacked_mlp(num_goals, d_in, hidden, 1, 1.0, generator)

    def encode(self, pos: torch.Tensor) -> torch.Tensor:
        """(x, y) int positions [g, b, 2] -> one-hot x concatenated with one-hot y [g, b, w+h]."""
        x = F.one_hot(pos[..., 0], self.width)
        y = F.one_hot(pos[..., 1], self.height)
        return torch.cat([x, y], dim=-1).float()

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [g, b, 2] -> action logits [g, b, a], values [g, b]."""
        h = self.encode(pos)
        return self.actor(h), self.critic(h).squeeze(-1)


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverse-CDF sampling with one uniform per env, so an env's action depends on its logits only."""
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[:-1], device=logits.device, generator=generator).unsqueeze(-1)
    return (cdf < u).sum(-1).clamp_(max=logits.shape[-1] - 1)


# ----------------------------------------------------------------------------- loss / update
def ppo_loss(
    net: StackedActorCritic,
    pos: torch.Tensor,
    actions: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO objective per goal; inputs are [g, b(, 2)]. Returns loss [g] and stats [g]."""
    logits, values = net(pos)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean(1)
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    if cfg.norm_adv:  # per goal: one learner's advantages must not rescale another's
        adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
    pg_loss = pg_loss.mean(1)
    v_loss = 0.5 * (values - returns).pow(2).mean(1)
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    with torch.no_grad():
        stats = {
            "pg_loss": pg_loss.detach(),
            "v_loss": v_loss.detach(),
            "entropy": entropy.detach(),
            "approx_kl": ((ratio - 1) - log_ratio).mean(1),
            "clipfrac": ((ratio - 1).abs() > cfg.clip_coef).float().mean(1),
        }
    return loss, stats


@torch.no_grad()
def clip_grad_norm_per_goal_(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each goal's slice separately; returns norms [g]."""
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))))
    return norm


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalised advantage estimates over [t, ...]; dones[t] means the episode ended after step t."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):
        next_value = values[t + 1] if t + 1 < rewards.shape[0] else last_value
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        adv[t] = last
    return adv


# ----------------------------------------------------------------------------- training loop
@dataclass
class PPOHistories:
    """Every transition of G learners, per goal in time order; episodes are consecutive T-blocks."""

    obs: np.ndarray  # [g, e, s, 2] int16 positions before each action
    action: np.ndarray  # [g, e, s] int8
    reward: np.ndarray  # [g, e, s] float32
    episode_len: int


def train_ppo_histories(
    goals: Sequence[tuple[int, int]],
    width: int,
    height: int,
    episode_len: int,
    cfg: PPOConfig,
    seed: int,
    reward_on_last_step: bool = False,
    progress: bool = False,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> PPOHistories:
    """Train one PPO learner per goal for cfg.steps_per_goal steps and return everything they did."""
    G, E, T = len(goals), cfg.num_envs, episode_len
    if cfg.steps_per_goal % (E * T):
        raise ValueError(
            f"steps_per_goal={cfg.steps_per_goal} must be a multiple of num_envs * episode length "
            f"= {E} * {T} so that every history ends on an episode boundary"
        )
    if cfg.rollout_len * E < 2 * cfg.num_minibatches:
        raise ValueError(
            f"a rollout of {cfg.rollout_len} x {E} steps cannot fill {cfg.num_minibatches} "
            "minibatches of >= 2 samples (advantages are normalised per minibatch)"
        )
    steps_per_env = cfg.steps_per_goal // E
    device = torch.device(cfg.device)
    init_gen = torch.Generator().manual_seed(seed)  # own RNGs: the data depends on `seed` only
    gen = torch.Generator(device).manual_seed(seed)
    net = StackedActorCritic(G, width, height, cfg.hidden, init_gen).to(device)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)
    goal_xy = np.asarray(goals, dtype=np.int64).reshape(G, 1, 2)

    hist = PPOHistories(
        obs=np.zeros((G, E, steps_per_env, 2), np.int16),
        action=np.zeros((G, E, steps_per_env), np.int8),
        reward=np.zeros((G, E, steps_per_env), np.float32),
        episode_len=T,
    )
    num_iters = math.ceil(steps_per_env / cfg.rollout_len)
    pos = np.zeros((G, E, 2), np.int64)  # every episode starts at (0, 0)
    ep_return = np.zeros((G, E), np.float32)
    step = 0  # steps taken by each env so far
    bar = tqdm(total=cfg.steps_per_goal, disable=not progress, desc=f"ppo x{G} goals", unit="step")
    for it in range(num_iters):
        t0 = time.perf_counter()
        n_roll = min(cfg.rollout_len, steps_per_env - step)
        if cfg.anneal_lr:
            opt.param_groups[0]["lr"] = cfg.lr * (1.0 - it / num_iters)
        buf_pos = torch.zeros((n_roll, G, E, 2), dtype=torch.long)
        buf_act = torch.zeros((n_roll, G, E), dtype=torch.long)
        buf_logp = torch.zeros((n_roll, G, E))
        buf_val = torch.zeros((n_roll, G, E))
        buf_rew = torch.zeros((n_roll, G, E))
        buf_done = torch.zeros((n_roll, G, E))
        finished: list[np.ndarray] = []  # returns [g, e] of the episodes that ended this rollout

        # -- rollout: one batched forward and one numpy step for all G*E envs per time step
        for t in range(n_roll):
            obs = torch.from_numpy(pos)
            with torch.no_grad():
                logits, value = net(obs.to(device))
                action = sample_actions(logits, gen)
                logp = logits.log_softmax(-1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
            act_np = action.cpu().numpy()
            new_pos = darkroom_step(pos.reshape(-1, 2), act_np.reshape(-1), width, height)
            new_pos = np.asarray(new_pos, dtype=np.int64).reshape(G, E, 2)
            s = step + t
            t_after = s % T + 1  # 1-based step number within the episode
            reward = darkroom_reward(new_pos, goal_xy, t_after, T, reward_on_last_step)
            hist.obs[:, :, s] = pos
            hist.action[:, :, s] = act_np
            hist.reward[:, :, s] = reward
            buf_pos[t], buf_act[t] = obs, action.cpu()
            buf_logp[t], buf_val[t] = logp.cpu(), value.cpu()
            buf_rew[t] = torch.from_numpy(reward)
            ep_return += reward

            if t_after == T:  # all envs share the clock, so they are truncated together
                with torch.no_grad():  # time-limit truncation: bootstrap from the final state
                    _, final_value = net(torch.from_numpy(new_pos).to(device))
                buf_rew[t] += cfg.gamma * final_value.cpu()
                buf_done[t] = 1.0
                finished.append(ep_return.copy())
                ep_return[:] = 0.0
                pos = np.zeros_like(pos)
            else:
                pos = new_pos
        step += n_roll
        bar.update(n_roll * E)
        rollout_s = time.perf_counter() - t0

        # -- update (skipped after the last rollout: it would not change any recorded step)
        stats: dict[str, float] = {}
        if step < steps_per_env:
            with torch.no_grad():
                _, last_value = net(torch.from_numpy(pos).to(device))
            adv = gae(buf_rew, buf_val, buf_done, last_value.cpu(), cfg.gamma, cfg.gae_lambda)
            ret = adv + buf_val
            # [t, g, e, ...] -> [g, n, ...]: each goal's samples on its own row
            n = n_roll * E
            b_pos = buf_pos.permute(1, 0, 2, 3).reshape(G, n, 2).to(device)
            b_act, b_logp, b_adv, b_ret = (
                x.permute(1, 0, 2).reshape(G, n).to(device) for x in (buf_act, buf_logp, adv, ret)
            )
            totals: dict[str, torch.Tensor] = {}
            for _ in range(cfg.update_epochs):
                perm = torch.randperm(n, generator=gen, device=device)
                for idx in perm.tensor_split(cfg.num_minibatches):  # sizes differ by <= 1
                    loss, st = ppo_loss(
                        net, b_pos[:, idx], b_act[:, idx], b_logp[:, idx], b_adv[:, idx],
                        b_ret[:, idx], cfg,
                    )  # fmt: skip
                    opt.zero_grad(set_to_none=False)
                    loss.sum().backward()  # goals share no parameters: grad of g is d loss_g
                    st["grad_norm"] = clip_grad_norm_per_goal_(params, cfg.max_grad_norm)
                    opt.step()
                    for k, v in st.items():
                        totals[k] = totals.get(k, 0.0) + v.mean()
            num_mb = cfg.update_epochs * cfg.num_minibatches
            stats = {f"train/{k}": float(v) / num_mb for k, v in totals.items()}

        if log is not None:
            row: dict[str, Any] = {"train/step": step * E, "train/iteration": it + 1}
            if finished:
                rets = np.stack(finished)  # [k, g, e]
                row["train/return"] = float(rets.mean())
                row["train/return_min_goal"] = float(rets.mean(axis=(0, 2)).min())
            row["train/lr"] = opt.param_groups[0]["lr"]
            row["perf/steps_per_s"] = n_roll * E * G / (time.perf_counter() - t0)
            row["perf/rollout_frac"] = rollout_s / (time.perf_counter() - t0)
            log(row | stats)
    bar.close()
    return hist


# ----------------------------------------------------------------------------- dataset (public API)
def _env_attrs(env_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The env settings that change the recorded transitions (the rest is bookkeeping)."""
    name = env_cfg.get("name", "darkroom")
    if name != "darkroom":
        raise ConfigError(
            f"PPO histories (agents/ppo.py, source=ppo) support env=darkroom (any grid size) only, "
            f"got env={name}; use the Q-learning source (source=qlearning) for env=keydoor"
        )
    width, height = int(env_cfg.get("width", 10)), int(env_cfg.get("height", 10))
    max_steps = env_cfg.get("max_steps")
    return {
        "name": name,
        "width": width,
        "height": height,
        "max_steps": int(max_steps) if max_steps is not None else width * height,
        "reward_on_last_step": bool(env_cfg.get("reward_on_last_step", False)),
    }


def ppo_attrs(
    env_cfg: Mapping[str, Any], ppo_cfg: PPOConfig, goals: Sequence[tuple[int, int]], seed: int
) -> dict[str, Any]:
    """Everything the data depends on: the cache key of a PPO-history store."""
    return {
        "kind": "ppo_histories",
        "version": DATA_VERSION,
        "env": _env_attrs(env_cfg),
        "goals": [[int(x), int(y)] for x, y in goals],
        "ppo": asdict(ppo_cfg),
        "seed": int(seed),
    }


def ppo_data_path(
    data_dir: str | Path,
    env_cfg: Mapping[str, Any],
    ppo_cfg: PPOConfig,
    goals: Sequence[tuple[int, int]],
    seed: int,
) -> Path:
    """``data_dir/darkroom_WxH/ppo_<hash of attrs>``: one directory per distinct dataset."""
    attrs = ppo_attrs(env_cfg, ppo_cfg, goals, seed)
    env = attrs["env"]
    return cache_root(data_dir, f"{env['name']}_{env['width']}x{env['height']}", "ppo", attrs)


def write_histories(
    store: EpisodeStore,
    hist: PPOHistories,
    goals: Sequence[tuple[int, int]],
    seed: int,
    env_name: str = "darkroom",
    max_steps_per_shard: int = 1_000_000,
) -> None:
    """Append every recorded transition as episodes: goal by goal, each history in time order."""
    G, E, S = hist.action.shape
    T = hist.episode_len
    terminated = np.zeros(T, dtype=bool)
    truncated = np.zeros(T, dtype=bool)
    truncated[-1] = True  # Dark-Room never terminates; the clock ends every episode
    with store.writer(max_steps_per_shard) as writer:
        for g, goal in enumerate(goals):
            for k in range(S // T):  # episode round; with E envs, round k holds E episodes
                sl = slice(k * T, (k + 1) * T)
                for e in range(E):
                    episode = {
                        "obs": hist.obs[g, e, sl].astype(np.int64),
                        "action": hist.action[g, e, sl].astype(np.int64),
                        "reward": hist.reward[g, e, sl],
                        "terminated": terminated,
                        "truncated": truncated,
                    }
                    meta = {
                        "env": env_name,
                        "task": [int(goal[0]), int(goal[1])],
                        "seed": int(seed),
                        "source": "ppo",
                        "history": g,
                        "index": k * E + e,
                    }
                    writer.add(episode, meta)


def collect_ppo_histories(
    env_cfg: Mapping[str, Any],
    ppo_cfg: PPOConfig,
    goals: Sequence[tuple[int, int]],
    root: str | Path,
    seed: int,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> EpisodeStore:
    """The store of PPO learning histories (one per goal) at ``root``, trained only if not cached.

    ``history`` metadata is the goal's position in ``goals``; ``index`` the episode's
    position in that history. ``log`` receives one ``train/*`` row per PPO iteration.
    """
    env = _env_attrs(env_cfg)
    goals = [(int(x), int(y)) for x, y in goals]

    def build(store: EpisodeStore) -> None:
        hist = train_ppo_histories(
            goals, env["width"], env["height"], env["max_steps"], ppo_cfg, seed,
            reward_on_last_step=env["reward_on_last_step"], progress=progress, log=log,
        )  # fmt: skip
        write_histories(store, hist, goals, seed, env["name"])

    return open_or_build(root, ppo_attrs(env_cfg, ppo_cfg, goals, seed), build)


def history_returns(store: EpisodeStore) -> dict[Any, np.ndarray]:
    """Episode returns of every history in ``store``, in history order (``index``)."""
    starts = store.episode_starts
    if len(starts) == 0:
        return {}
    returns = np.add.reduceat(np.asarray(store.column("reward"), dtype=np.float64), starts)
    groups: dict[Any, list[tuple[int, float]]] = {}
    for meta, ret in zip(store.metadata, returns):
        groups.setdefault(meta["history"], []).append((meta["index"], ret))
    return {h: np.array([r for _, r in sorted(v)]) for h, v in sorted(groups.items())}


def summarize_histories(
    store: EpisodeStore, optimal: Sequence[float], window: int = 10, learned_frac: float = 0.5
) -> dict[str, float]:
    """First vs last ``window`` episode returns per history; a goal is learned above
    ``learned_frac`` of its optimal return (``optimal[history]``)."""
    rets = history_returns(store)
    first = np.array([r[:window].mean() for r in rets.values()])
    last = np.array([r[-window:].mean() for r in rets.values()])
    best = np.array([optimal[h] for h in rets])
    return {
        "collect/goals": len(rets),
        "collect/episodes": len(store),
        "collect/steps": store.num_steps,
        f"collect/return_first{window}": float(first.mean()),
        f"collect/return_last{window}": float(last.mean()),
        "collect/optimal_return": float(best.mean()),
        "collect/goals_learned": int((last > learned_frac * best).sum()),
        "collect/goals_above_50": int((last > 50).sum()),
    }


# ----------------------------------------------------------------------------- CLI
def collect(cfg: DictConfig) -> Path:
    """``python -m agents.ppo collect env=darkroom``: PPO histories for the env's train goals."""
    run_dir = setup_run(cfg)
    ppo_cfg = to_dataclass(cfg.agent, PPOConfig, "agent")
    env_cfg = OmegaConf.to_container(cfg.env, resolve=True)
    env = _env_attrs(env_cfg)
    tasks = DarkRoomTasks(
        width=env["width"],
        height=env["height"],
        seed=int(env_cfg.get("task_seed", 43)),
        num_train=int(env_cfg.get("num_train_tasks", 80)),
        num_eval=int(env_cfg.get("num_eval_tasks", 20)),
        max_steps=env["max_steps"],
        reward_on_last_step=env["reward_on_last_step"],
    )
    goals = tasks.train
    root = ppo_data_path(cfg.data_dir, env_cfg, ppo_cfg, goals, int(cfg.seed))
    config = OmegaConf.to_container(cfg, resolve=True)
    with Logger(cfg.logger, run_dir, cfg.run_name, config) as logger:
        t0 = time.perf_counter()
        store = collect_ppo_histories(
            env_cfg, ppo_cfg, goals, root, int(cfg.seed), progress=bool(cfg.train.progress),
            log=logger.log,
        )  # fmt: skip
        summary = summarize_histories(store, [tasks.optimal_return(g) for g in goals])
        summary["collect/seconds"] = time.perf_counter() - t0
        logger.summary(summary)
    print(
        f"PPO histories: {summary['collect/goals']} goals x {cfg.agent.steps_per_goal} steps "
        f"at {root}\n  mean return first 10 episodes {summary['collect/return_first10']:.1f}, "
        f"last 10 {summary['collect/return_last10']:.1f} (optimal "
        f"{summary['collect/optimal_return']:.1f}); goals learned (> half optimal): "
        f"{summary['collect/goals_learned']}/{summary['collect/goals']}"
    )
    return root


if __name__ == "__main__":
    run_cli({"collect": collect}, config_name="ppo")
