"""PPO learning histories: batched per-goal learners, exact recording, learning, caching, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import envs
from agents.ppo import (
    PPOConfig,
    StackedActorCritic,
    clip_grad_norm_per_goal_,
    collect_ppo_histories,
    gae,
    history_returns,
    ppo_attrs,
    ppo_data_path,
    train_ppo_histories,
)
from envs.darkroom import DarkRoomTasks

ROOT = Path(__file__).resolve().parents[2]
ENV = {"name": "darkroom", "width": 10, "height": 10, "max_steps": None}
# Small but real PPO: many short rollouts so a few thousand steps hold many updates.
TINY = PPOConfig(steps_per_goal=2_000, rollout_len=200, num_minibatches=4, update_epochs=4)


def per_goal_mlp(stacked: nn.Sequential, g: int) -> nn.Sequential:
    """Goal g's slice of a stacked MLP as a plain torch MLP (the reference it must equal)."""
    layers: list[nn.Module] = []
    for m in stacked:
        if isinstance(m, nn.Tanh):
            layers.append(nn.Tanh())
            continue
        lin = nn.Linear(m.weight.shape[1], m.weight.shape[2])
        with torch.no_grad():
            lin.weight.copy_(m.weight[g].T)
            lin.bias.copy_(m.bias[g, 0])
        layers.append(lin)
    return nn.Sequential(*layers)


def test_batched_forward_equals_per_goal_forwards_and_goals_are_independent():
    torch.manual_seed(0)
    net = StackedActorCritic(num_goals=4, width=10, height=10, hidden=16)
    pos = torch.randint(0, 10, (4, 7, 2))
    logits, values = net(pos)
    assert logits.shape == (4, 7, 5) and values.shape == (4, 7)
    for g in range(4):
        h = net.encode(pos[g])
        torch.testing.assert_close(logits[g], per_goal_mlp(net.actor, g)(h))
        torch.testing.assert_close(values[g], per_goal_mlp(net.critic, g)(h).squeeze(-1))

    with torch.no_grad():  # change every parameter of goal 3 only
        for p in net.parameters():
            p[3].add_(1.0)
    logits2, values2 = net(pos)
    assert torch.equal(logits2[:3], logits[:3]) and torch.equal(values2[:3], values[:3])
    assert not torch.allclose(logits2[3], logits[3])


def test_per_goal_grad_clipping_matches_torch_per_goal():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1)]
    grads.append(torch.randn(3, 1, 5) * torch.tensor([0.01, 1.0, 10.0]).view(3, 1, 1))
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norms = clip_grad_norm_per_goal_(params, max_norm=0.5)
    for i in range(3):
        ref = [g[i].clone().requires_grad_() for g in grads]
        for r, g in zip(ref, grads):
            r.grad = g[i].clone()
        ref_norm = nn.utils.clip_grad_norm_(ref, max_norm=0.5)
        torch.testing.assert_close(norms[i], ref_norm)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.grad[i], r.grad)
    assert norms[0] < 0.5 < norms[2]  # goal 0 untouched, goal 2 scaled down


def test_gae_matches_discounted_returns_and_cuts_at_episode_ends():
    rewards = torch.tensor([1.0, 0.0, 2.0, 1.0])
    values = torch.tensor([0.5, 0.2, 0.1, 0.3])
    dones = torch.tensor([0.0, 1.0, 0.0, 0.0])
    last_value = torch.tensor(4.0)
    adv = gae(rewards, values, dones, last_value, gamma=0.9, lam=1.0)
    # lam=1: advantage = discounted return (bootstrapped at the rollout end) - value
    ret = torch.tensor([1.0 + 0.9 * 0.0, 0.0, 2.0 + 0.9 * 1.0 + 0.81 * 4.0, 1.0 + 0.9 * 4.0])
    torch.testing.assert_close(adv, ret - values)


def test_history_of_a_goal_does_not_depend_on_the_other_goals():
    """Learner 0 trained next to goal B or goal C makes exactly the same history."""
    a, b, c = (3, 1), (7, 2), (0, 6)
    h_ab = train_ppo_histories([a, b], 10, 10, 100, TINY, seed=3)
    h_ac = train_ppo_histories([a, c], 10, 10, 100, TINY, seed=3)
    assert np.array_equal(h_ab.action[0], h_ac.action[0])
    assert np.array_equal(h_ab.obs[0], h_ac.obs[0])
    assert np.array_equal(h_ab.reward[0], h_ac.reward[0])
    assert not np.array_equal(h_ab.reward[1], h_ac.reward[1])  # the other goal did differ


def test_collection_records_exactly_the_transitions_made(tmp_path):
    goals = [(2, 3), (5, 0), (1, 1)]
    cfg = replace(TINY, num_envs=2)  # 2 envs per goal: ordering within a history matters
    store = collect_ppo_histories(ENV, cfg, goals, tmp_path / "s", seed=1, progress=False)
    T, per_goal = 100, cfg.steps_per_goal // 100
    assert len(store) == len(goals) * per_goal and store.num_steps == len(goals) * 2_000
    assert np.all(store.episode_lengths == T)

    # the same run in memory (same seed, deterministic): the store must hold it in order
    hist = train_ppo_histories(goals, 10, 10, T, cfg, seed=1)
    meta = store.metadata
    assert [m["history"] for m in meta] == [g for g in range(3) for _ in range(per_goal)]
    for i, m in enumerate(meta):
        g, k = m["history"], m["index"]
        assert (m["env"], m["task"], m["seed"], m["source"]) == (
            "darkroom",
            list(goals[g]),
            1,
            "ppo",
        )
        ep = store.episode(i)
        rnd, e = divmod(k, 2)
        sl = slice(rnd * T, (rnd + 1) * T)
        assert np.array_equal(ep["obs"], hist.obs[g, e, sl])
        assert np.array_equal(ep["action"], hist.action[g, e, sl])
        assert np.array_equal(ep["reward"], hist.reward[g, e, sl])
        assert ep["obs"].dtype == np.int64 and ep["obs"].shape == (T, 2)
        assert not ep["terminated"].any() and ep["truncated"].tolist() == [False] * 99 + [True]
    assert sorted(m["index"] for m in meta if m["history"] == 0) == list(range(per_goal))

    # every recorded transition is what the gymnasium env does with those actions
    for i in (0, len(store) // 2, len(store) - 1):
        ep, goal = store.episode(i), tuple(meta[i]["task"])
        env = envs.make("darkroom", width=10, height=10, goal=goal)
        obs, _ = env.reset(seed=0)
        for t in range(T):
            assert np.array_equal(ep["obs"][t], obs)
            obs, reward, terminated, truncated, _ = env.step(int(ep["action"][t]))
            assert reward == ep["reward"][t] and truncated == ep["truncated"][t]


def test_ppo_learns_two_goals():
    """From ~random (first 10 episodes) to near-optimal (last 10) within 8K steps per goal.

    Calibration (3 seeds): first 10 episodes 3-7, last 10 75-85 of an optimal 94.
    """
    tasks = DarkRoomTasks()
    goals = [(4, 2), (1, 5)]
    cfg = replace(TINY, steps_per_goal=8_000, update_epochs=10, lr=1e-3)
    hist = train_ppo_histories(goals, 10, 10, 100, cfg, seed=0)
    returns = hist.reward.reshape(len(goals), -1, 100).sum(-1)  # [goal, episode]
    first, last = returns[:, :10].mean(1), returns[:, -10:].mean(1)
    assert [tasks.optimal_return(g) for g in goals] == [94, 94]
    assert np.all(first < 15), first
    assert np.all(last > 60), last


def test_cache_is_reused_and_keyed_by_everything(tmp_path):
    goals = [(2, 3), (5, 0)]
    root = ppo_data_path(tmp_path, ENV, TINY, goals, seed=0)
    assert root.parent == tmp_path / "darkroom_10x10" and root.name.startswith("ppo_")
    rows: list[dict] = []
    store = collect_ppo_histories(ENV, TINY, goals, root, seed=0, progress=False, log=rows.append)
    assert rows and all("train/step" in r for r in rows)
    n_rows, before = len(rows), history_returns(store)

    again = collect_ppo_histories(ENV, TINY, goals, root, seed=0, progress=False, log=rows.append)
    assert len(rows) == n_rows  # nothing trained the second time
    assert again.root == store.root and again.attrs == store.attrs
    after = history_returns(again)
    assert all(np.array_equal(before[h], after[h]) for h in before)

    # anything that changes the data changes the key; a mismatching store is never reused
    other = [ppo_data_path(tmp_path, ENV, TINY, goals, seed=1)]
    other.append(ppo_data_path(tmp_path, ENV, replace(TINY, lr=1e-3), goals, seed=0))
    other.append(ppo_data_path(tmp_path, ENV, TINY, goals[::-1], seed=0))
    other.append(ppo_data_path(tmp_path, {**ENV, "max_steps": 50}, TINY, goals, seed=0))
    assert len({root, *other}) == 5
    attrs = store.attrs
    assert attrs.pop("complete") is True and attrs == ppo_attrs(ENV, TINY, goals, 0)
    with pytest.raises(ValueError, match="different attrs"):
        collect_ppo_histories(ENV, TINY, goals, root, seed=1, progress=False)


def test_steps_must_fill_whole_episodes():
    with pytest.raises(ValueError, match="multiple of num_envs"):
        train_ppo_histories([(1, 1)], 10, 10, 100, replace(TINY, steps_per_goal=250), seed=0)


def test_cli_collect_runs_in_a_subprocess(tmp_path):
    args = [
        sys.executable, "-m", "agents.ppo", "collect", "env=darkroom", "env.num_train_tasks=3",
        "agent.steps_per_goal=300", "agent.rollout_len=100", "agent.num_minibatches=2",
        "logger.mode=disabled", f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
        "train.progress=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "goals learned" in out.stdout
    (root,) = (tmp_path / "data" / "darkroom_10x10").glob("ppo_*")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["attrs"]["complete"] is True
    assert manifest["attrs"]["goals"] == [list(g) for g in DarkRoomTasks().train[:3]]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["collect/goals"] == 3 and summary["collect/steps"] == 900
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/step"] for r in rows] == [100, 200, 300]  # one row per PPO iteration
    assert all(0.0 <= r["train/return"] <= 99.0 for r in rows)
