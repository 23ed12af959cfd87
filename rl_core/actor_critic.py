"""The actor-critic every world-model agent trains in imagination: CNN-LSTM on pixels, λ-returns.

Why shared: Δ-IRIS, DIAMOND and IRIS all train the same kind of policy on imagined frames: a small
CNN over one frame, an LSTM cell for memory, a policy head and a (zero-initialised) value head,
trained with REINFORCE, a value baseline and λ-returns (Micheli et al. 2023; Alonso et al. 2024).
The world model only has to offer `reset(frames, actions) -> frame` and `step(actions) ->
(frame, reward, end)` (:class:`ImaginedEnv`); the loss here is agent-agnostic.

Loss (per imagined trajectory of H steps, `values` from the EMA target network as in Δ-IRIS;
DIAMOND uses the online network, `target_tau: 0`):
    R_t = r_t + γ (1 - d_t) ((1 - λ) V(s_{t+1}) + λ R_{t+1}),  R_H = V(s_H)
    policy  = -log π(a_t | s_t) (R_t - V(s_t))        (advantage not back-propagated)
    value   = (V_online(s_t) - R_t)^2                 (R_t not back-propagated)
    entropy = -H(π(· | s_t)) * entropy_weight
Steps after an imagined termination are masked out of every term (the imagined episode is over);
the official codes keep imagining through them. Shape legend: b batch, t time, c h w a frame.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ActorCritic",
    "ActorCriticConfig",
    "ActorCriticPolicy",
    "ImaginationConfig",
    "ImaginationLearner",
    "ImaginedEnv",
    "actor_critic_loss",
    "ema_update",
    "frames_to_tensor",
    "lambda_returns",
]

LSTMState = tuple[Tensor, Tensor]


def frames_to_tensor(frames: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 frames (..., h, w, c) -> float32 (..., c, h, w) in [0, 1] on `device`."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    x = x.to(device, non_blocking=True)
    return (x.float() / 255.0).movedim(-1, -3)


def lambda_returns(
    rewards: Tensor, values: Tensor, ends: Tensor, gamma: float, lam: float
) -> Tensor:
    """λ-returns (b, H) from rewards (b, H), ends (b, H) and values (b, H + 1) (V of s_0..s_H).

    R_t = r_t + γ (1 - d_t) ((1 - λ) V_{t+1} + λ R_{t+1}) with R_H = V_H: λ = 1 gives the
    discounted return bootstrapped with V_H, λ = 0 the one-step TD target.
    """
    if values.shape[1] != rewards.shape[1] + 1:
        raise ValueError(
            f"values need one more step than rewards: {tuple(values.shape)} vs {tuple(rewards.shape)}"
        )
    cont = 1.0 - ends.float()
    out = torch.empty_like(rewards)
    nxt = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        nxt = rewards[:, t] + gamma * cont[:, t] * ((1 - lam) * values[:, t + 1] + lam * nxt)
        out[:, t] = nxt
    return out


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online (parameters and float buffers)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, 1.0 - tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.lerp_(o, 1.0 - tau)
        else:
            t.copy_(o)


@dataclass
class ActorCriticConfig:
    """CNN-LSTM sizes. Δ-IRIS/DIAMOND: conv [32, 32, 64, 64] on 64x64 frames, LSTM 512."""

    channels: list[int] = field(default_factory=lambda: [16, 16, 32, 32])  # conv + ReLU + max-pool
    lstm_dim: int = 128


class ActorCritic(nn.Module):
    """Frame (b, c, h, w) in [0, 1] + LSTM state -> policy logits (b, A), value (b,), new state."""

    def __init__(
        self, num_actions: int, image_shape: Sequence[int], cfg: ActorCriticConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ActorCriticConfig()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for out in cfg.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"{len(cfg.channels)} pooling levels are too many for {image_shape}")
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.lstm = nn.LSTMCell(c * h * w, cfg.lstm_dim)
        self.policy_head = nn.Linear(cfg.lstm_dim, num_actions)
        self.value_head = nn.Linear(cfg.lstm_dim, 1)
        for head in (self.policy_head, self.value_head):  # start uniform, V = 0 (official codes)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.num_actions = num_actions

    def initial_state(self, batch: int, device: torch.device | str) -> LSTMState:
        zeros = torch.zeros(batch, self.cfg.lstm_dim, device=device)
        return zeros, zeros.clone()

    def forward(self, frame: Tensor, state: LSTMState) -> tuple[Tensor, Tensor, LSTMState]:
        hx, cx = self.lstm(self.trunk(frame * 2 - 1), state)
        return self.policy_head(hx), self.value_head(hx).squeeze(-1), (hx, cx)

    def burn_in(self, frames: Tensor, state: LSTMState) -> LSTMState:
        """Run the LSTM over real frames (b, t, c, h, w) before imagination starts."""
        for t in range(frames.shape[1]):
            _, _, state = self(frames[:, t], state)
        return state


class ImaginedEnv(Protocol):
    """A batched world model seen as an environment (frames float (b, c, h, w) in [0, 1])."""

    def reset(self, frames: Tensor, actions: Tensor) -> Tensor:
        """Burn in on real frames (b, t + 1, c, h, w) and actions (b, t); return frames[:, -1]."""

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Imagine one step: next frame (b, c, h, w), reward (b,), end (b,) bool."""


@dataclass
class ImaginationConfig:
    """Actor-critic training in imagination (small CPU defaults; Δ-IRIS Atari: H 20, burn-in 5,
    γ 0.995, λ 0.95, entropy 0.002, target τ 0.995)."""

    horizon: int = 10
    burn_in: int = 2  # real transitions fed to the world model and the LSTM first
    gamma: float = 0.99
    lam: float = 0.95
    entropy_weight: float = 0.001
    target_tau: float = 0.995  # EMA target network for values; 0: values of the online network


class ImaginationLearner(nn.Module):
    """`compute_loss(context)` for the actor-critic: imagine `horizon` steps from real contexts.

    The batch is a :meth:`rl_core.data.segments.SegmentSampler.sample_context` batch as tensors:
    ``frames (b, burn_in + 1, c, h, w)`` float and ``action (b, burn_in)`` long. Only the
    actor-critic's parameters are trained (the world model is used under no_grad); call
    :meth:`after_step` after each optimiser step to move the target network.
    """

    def __init__(self, actor_critic: ActorCritic, env: ImaginedEnv, cfg: ImaginationConfig) -> None:
        super().__init__()
        self.actor_critic = actor_critic
        self.target = copy.deepcopy(actor_critic).requires_grad_(False) if cfg.target_tau else None
        # Not a submodule: the world model is trained, saved and put in train/eval mode by its owner.
        self.__dict__["env"] = env
        self.cfg = cfg

    def parameters(self, recurse: bool = True):  # the optimiser sees the online network only
        return self.actor_critic.parameters(recurse)

    def after_step(self) -> None:
        if self.target is not None:
            ema_update(self.target, self.actor_critic, self.cfg.target_tau)

    def imagine(self, frames: Tensor, actions: Tensor) -> dict[str, Tensor]:
        """Roll the policy out in the world model; tensors over (b, H) (+1 step for frames)."""
        cfg, ac = self.cfg, self.actor_critic
        b = frames.shape[0]
        if isinstance(self.env, nn.Module):
            self.env.eval()  # no codebook/EMA updates, no dropout while imagining
        with torch.no_grad():
            obs = self.env.reset(frames, actions)
            state = ac.burn_in(frames[:, :-1], ac.initial_state(b, frames.device))
        state = (state[0].detach(), state[1].detach())
        seen, logits, values, acts, rewards, ends = [obs], [], [], [], [], []
        for _ in range(cfg.horizon):
            lg, v, state = ac(obs, state)
            a = torch.distributions.Categorical(logits=lg).sample()
            obs, r, d = self.env.step(a)
            for store, x in zip(
                (logits, values, acts, rewards, ends), (lg, v, a, r, d), strict=True
            ):
                store.append(x)
            seen.append(obs)
        _, v_last, _ = ac(obs, state)
        values.append(v_last)
        return {
            "frames": torch.stack(seen, 1),
            "logits": torch.stack(logits, 1),
            "values": torch.stack(values, 1),
            "actions": torch.stack(acts, 1),
            "rewards": torch.stack(rewards, 1).float(),
            "ends": torch.stack(ends, 1).bool(),
        }

    @torch.no_grad()
    def _target_values(self, burn: Tensor, seen: Tensor) -> Tensor:
        net = self.target
        state = net.burn_in(burn, net.initial_state(seen.shape[0], seen.device))
        out = []
        for t in range(seen.shape[1]):
            _, v, state = net(seen[:, t], state)
            out.append(v)
        return torch.stack(out, 1)

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.cfg
        traj = self.imagine(batch["frames"], batch["action"])
        baseline = (
            self._target_values(batch["frames"][:, :-1], traj["frames"])
            if self.target is not None
            else traj["values"].detach()
        )
        # alive[t]: no imagined termination before step t
        ended_before = torch.cumsum(traj["ends"].float(), 1) - traj["ends"].float()
        alive = (ended_before == 0).float()
        loss, metrics = actor_critic_loss(traj, baseline, alive, cfg)
        metrics["imagined_return"] = (traj["rewards"] * alive).sum(1).mean().item()
        metrics["imagined_ends"] = traj["ends"].float().mean().item()
        return loss, metrics


def actor_critic_loss(
    traj: dict[str, Tensor], baseline: Tensor, weight: Tensor, cfg: ImaginationConfig
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE with a value baseline and λ-returns over a (b, H) trajectory (module docstring).

    `traj`: logits (b, H, A), actions, rewards, ends (b, H) and values (b, H + 1) with grad;
    `baseline` (b, H + 1) bootstraps the returns (target or detached online values); `weight`
    (b, H) >= 0 says which steps count (normalised here to a mean over them).
    """
    values = traj["values"]
    returns = lambda_returns(traj["rewards"], baseline, traj["ends"], cfg.gamma, cfg.lam)
    weight = weight / weight.sum().clamp_min(1.0)
    dist = torch.distributions.Categorical(logits=traj["logits"])
    advantage = (returns - baseline[:, :-1]).detach()
    loss_policy = -(dist.log_prob(traj["actions"]) * advantage * weight).sum()
    entropy = (dist.entropy() * weight).sum()
    loss_value = (F.mse_loss(values[:, :-1], returns.detach(), reduction="none") * weight).sum()
    loss = loss_policy + loss_value - cfg.entropy_weight * entropy
    return loss, {
        "loss_policy": loss_policy.item(),
        "loss_value": loss_value.item(),
        "entropy": entropy.item(),
        "value": values[:, :-1].mean().item(),
        "lambda_return": returns.mean().item(),
    }


class ActorCriticPolicy:
    """`rl_core.rollout.Policy` for real envs: uint8 frames in, sampled actions out.

    Keeps one LSTM state per env, zeroed when that env's episode ends; `epsilon` takes a uniform
    random action with that probability (Δ-IRIS/DIAMOND collect with ε = 0.01, temperature 1).
    """

    def __init__(
        self,
        actor_critic: ActorCritic,
        *,
        epsilon: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> None:
        self.ac = actor_critic
        self.epsilon = epsilon
        self.temperature = temperature
        self.greedy = greedy
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        self.state: LSTMState | None = None

    @property
    def device(self) -> torch.device:
        return next(self.ac.parameters()).device

    def reset(self, n_envs: int) -> None:
        self.state = self.ac.initial_state(n_envs, self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        assert self.state is not None, "call reset(n_envs) first"
        logits, _, self.state = self.ac(frames_to_tensor(obs, self.device), self.state)
        logits = logits.float().cpu()
        if self.greedy:
            actions = logits.argmax(-1).numpy()
        else:
            probs = torch.softmax(logits / self.temperature, -1)
            actions = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).numpy()
        explore = self.rng.random(len(actions)) < self.epsilon
        actions[explore] = self.rng.integers(0, self.ac.num_actions, size=int(explore.sum()))
        return actions

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        if self.state is not None and np.any(dones):
            keep = torch.as_tensor(~np.asarray(dones), device=self.device).float()[:, None]
            self.state = (self.state[0] * keep, self.state[1] * keep)
