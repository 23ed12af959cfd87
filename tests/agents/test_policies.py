"""AD / DT evaluation policies: the KV cache + masks must reproduce the training-time forward.

Logits are captured with a forward hook on the model's action head (the policies sample from
them), and compared with `ADModel.forward` / `DTModel.forward` on the same token sequence.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from agents.ad import ADConfig, ADModel, ADPolicy
from agents.dt import DTConfig, DTModel, DTPolicy
from envs.darkroom import DarkRoomEnv
from rl_core.config import ConfigError
from rl_core.rollout import rollout

ATOL = 1e-5
CPU = torch.device("cpu")


class HeadLogits:
    """Collects every output of `model.head` while active (one call per policy step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.logits: list[torch.Tensor] = []
        self.handle = model.head.register_forward_hook(lambda m, i, out: self.logits.append(out))

    def close(self) -> list[torch.Tensor]:
        self.handle.remove()
        return self.logits


class Recorder:
    """Wraps a policy in the rollout loop and keeps what it saw and did."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.obs, self.actions, self.rewards, self.dones = [], [], [], []

    def reset(self, n_envs: int) -> None:
        self.policy.reset(n_envs)

    def act(self, obs):
        self.obs.append(np.array(obs))
        self.actions.append(np.asarray(self.policy.act(obs)))
        return self.actions[-1]

    def observe(self, actions, rewards, dones) -> None:
        self.rewards.append(np.array(rewards, dtype=np.float32))
        self.dones.append(np.array(dones))
        self.policy.observe(actions, rewards, dones)


def darkroom_fns(goals, size: int = 5, max_steps: int = 6):
    return [
        functools.partial(DarkRoomEnv, width=size, height=size, goal=g, max_steps=max_steps)
        for g in goals
    ]


# ----------------------------------------------------------------------------- AD


def make_ad(n_layer: int, window: int) -> ADModel:
    torch.manual_seed(0)
    cfg = ADConfig(d_model=32, n_layer=n_layer, n_head=4, dropout=0.0)
    return ADModel((5, 5), 5, cfg, max_len=window).eval()


def run_ad(model: ADModel, window: int, episodes: int):
    rec = Recorder(ADPolicy(model, window, CPU, temperature=1.0, seed=0))
    hook = HeadLogits(model)
    goals = [(4, 4), (1, 2), (0, 0)]
    rollout(darkroom_fns(goals), rec, episodes=episodes, seed=0, progress=False)
    logits = torch.stack([lg[:, -1] for lg in hook.close()], dim=1)  # (b, steps, A)
    obs = torch.as_tensor(np.stack(rec.obs, axis=1))  # (b, steps, 2)
    actions = np.stack(rec.actions, axis=1)
    rewards = np.stack(rec.rewards, axis=1)
    # AD's token t carries the previous step of the same history, across episode boundaries
    prev_action = torch.as_tensor(np.pad(actions[:, :-1], ((0, 0), (1, 0)), constant_values=-1))
    prev_reward = torch.as_tensor(np.pad(rewards[:, :-1], ((0, 0), (1, 0))))
    return logits, obs, prev_action, prev_reward


@torch.no_grad()
def test_ad_policy_logits_equal_full_forward_within_the_window():
    window = 24
    model = make_ad(n_layer=2, window=window)
    logits, obs, prev_action, prev_reward = run_ad(model, window, episodes=4)  # 24 steps
    assert logits.shape == (3, 24, 5)
    ref = model(obs, prev_action, prev_reward)
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_ad_policy_rolling_window_equals_last_window_tokens_with_one_layer():
    """Past the window the cache drops old steps; with one layer that is exactly re-encoding."""
    window = 8
    model = make_ad(n_layer=1, window=window)
    logits, obs, prev_action, prev_reward = run_ad(model, window, episodes=3)  # 18 steps
    for t in range(18):
        s = slice(max(0, t - window + 1), t + 1)
        ref = model(obs[:, s], prev_action[:, s], prev_reward[:, s])[:, -1]
        torch.testing.assert_close(logits[:, t], ref, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- DT

HORIZON, K, TARGET = 12, 4, 7.0


def make_dt(n_layer: int) -> tuple[DTModel, DTConfig]:
    torch.manual_seed(0)
    cfg = DTConfig(
        context_len=K, d_model=32, n_layer=n_layer, n_head=4, dropout=0.0,
        target_mean=TARGET, target_std=0.0, temperature=1.0,
    )  # fmt: skip
    return DTModel((5, 5), 5, HORIZON, cfg).eval(), cfg


def left_pad(x, dtype) -> torch.Tensor:
    """One training window (1, K, ...): zeros before the episode, as DTWindowSampler pads."""
    x = np.asarray(x, dtype=dtype)
    return torch.as_tensor(np.concatenate([np.zeros((K - len(x), *x.shape[1:]), dtype), x]))[None]


def run_dt(n_layer: int, episode_lengths: list[list[int]], seed: int = 0):
    """Drive DTPolicy over scripted episodes (one length list per env, equal totals).

    Returns the policy's logits (steps, b, A) and the reference logits of `DTModel.forward` on
    each env's episode so far, as a left-padded window of the last K steps.
    """
    model, cfg = make_dt(n_layer)
    n, total = len(episode_lengths), sum(episode_lengths[0])
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 5, size=(total, n, 2))
    rewards = rng.integers(0, 2, size=(total, n)).astype(np.float32)
    dones = np.zeros((total, n), dtype=bool)
    for i, lengths in enumerate(episode_lengths):
        dones[np.cumsum(lengths) - 1, i] = True
    policy = DTPolicy(model, cfg, CPU, seed=seed)
    policy.reset(n)
    hook = HeadLogits(model)
    actions = np.zeros((total, n), dtype=np.int64)
    for step in range(total):
        actions[step] = policy.act(obs[step])
        policy.observe(actions[step], rewards[step], dones[step])
    got = torch.stack(hook.close())

    ref = torch.zeros_like(got)
    for i in range(n):
        start = 0
        for step in range(total):
            steps = np.arange(max(start, step - K + 1), step + 1)
            timestep = steps - start  # episodes here are never longer than the horizon
            rtg = TARGET - np.concatenate([[0.0], np.cumsum(rewards[start:step, i])])[timestep]
            act = actions[steps, i].copy()
            act[-1] = 0  # a_t is not chosen yet; the causal mask hides it from s_t
            out = model(
                left_pad(rtg, np.float32),
                left_pad(obs[steps, i], np.int64),
                left_pad(act, np.int64),
                left_pad(timestep, np.int64),
                torch.as_tensor(np.arange(K) >= K - len(steps))[None],
            )
            ref[step, i] = out[0, -1]
            if dones[step, i]:
                start = step + 1
    return got, ref


@pytest.mark.parametrize(
    "lengths",
    [
        [[3, 4, 2]] * 3,  # boundaries at the same time for all envs, episodes <= K
        [[3, 4, 2], [4, 1, 4], [2, 3, 4]],  # boundaries at different times
    ],
)
@torch.no_grad()
def test_dt_policy_logits_equal_training_forward_within_episodes(lengths):
    got, ref = run_dt(n_layer=2, episode_lengths=lengths)
    assert got.shape == (9, 3, 5)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("lengths", [[[11, 9]] * 2, [[11, 9], [8, 12]]])
@torch.no_grad()
def test_dt_policy_after_the_window_rolls_with_one_layer(lengths):
    """Episodes longer than K: the state token sees exactly the training window of K steps."""
    got, ref = run_dt(n_layer=1, episode_lengths=lengths)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_dt_policy_greedy_acts_from_the_logits():
    """Temperature 0 picks the argmax of the logits the other tests check."""
    model, cfg = make_dt(n_layer=2)
    cfg.temperature = 0.0
    policy = DTPolicy(model, cfg, CPU, seed=0)
    policy.reset(4)
    hook = HeadLogits(model)
    obs = np.random.default_rng(0).integers(0, 5, size=(4, 2))
    for _ in range(3):
        action = policy.act(obs)
        policy.observe(action, np.zeros(4), np.zeros(4, dtype=bool))
        assert np.array_equal(action, hook.logits[-1].argmax(-1).numpy())
    hook.close()


@pytest.mark.parametrize("cap", [None, 1.0, 0.5])
@torch.no_grad()
def test_dt_policy_caps_the_return_to_go_at_what_the_steps_left_can_earn(cap):
    """rtg_cap c: the RTG the policy conditions on is min(target - rewards so far, c x steps
    left), every step and after an episode boundary; None leaves it uncapped."""
    model, cfg = make_dt(n_layer=1)
    cfg.target_mean, cfg.rtg_cap = 10.0, cap  # 10 > 0.5 x HORIZON: the cap binds from step 0
    policy = DTPolicy(model, cfg, CPU, seed=0)
    policy.reset(2)
    rng = np.random.default_rng(1)
    lengths = [HORIZON, 5]  # env 1 starts a new episode after 5 steps
    earned, t = np.zeros(2), np.zeros(2, dtype=int)
    for step in range(HORIZON):
        expected = 10.0 - earned
        if cap is not None:
            expected = np.minimum(expected, cap * (HORIZON - t))
        np.testing.assert_allclose(policy.rtg.numpy(), expected, rtol=0, atol=1e-5)
        action = policy.act(rng.integers(0, 5, size=(2, 2)))
        reward = rng.integers(0, 2, size=2).astype(np.float32)
        done = np.array([False, step == lengths[1] - 1])
        policy.observe(action, reward, done)
        earned, t = earned + reward, t + 1
        earned[done], t[done] = 0.0, 0


def test_dt_config_rejects_a_non_positive_rtg_cap():
    with pytest.raises(ConfigError, match="rtg_cap=0"):
        DTConfig(rtg_cap=0)
