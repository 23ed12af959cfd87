"""The world-model agents' actor-critic trained on real env steps only: the model-free baseline.

Why: DIAMOND's official code has `training.model_free=true`, which unplugs the world model and
trains the same actor-critic, with the same loss, on the real environment. Beside the agent at
equal environment steps it measures what the world model buys (sample efficiency).

What one gradient step does (as the official `env_loop` on a `TorchEnv`): step `envs` persistent
real envs `horizon` times with the current policy (sampled actions, gradients kept), then the
λ-return REINFORCE loss of :func:`rl_core.actor_critic.actor_critic_loss` over those steps.
Episodes and the LSTM state continue across gradient steps (the state is detached between them
and zeroed when an episode ends), so consecutive updates see consecutive real steps.

Deviations from the official code:
* rewards are clipped with sign() before the returns, as the official λ-returns do (here done
  on the real reward, so imagination and model-free see the same reward scale);
* a truncation (time limit) bootstraps from V(final observation), folded into that step's reward
  (r + γ V(s_final)) and then cut like an end, which gives the same targets as the official
  separate `trunc` flag; an end (termination) bootstraps nothing;
* the env steps taken are counted in the `env_steps` buffer (saved with the module), so the
  shared loop reports returns against all real steps and a run can be matched to a world-model
  run's collection budget (see :func:`matched_updates`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from rl_core.actor_critic import (
    ActorCritic,
    ImaginationConfig,
    LSTMState,
    actor_critic_loss,
    ema_update,
    frames_to_tensor,
)

__all__ = ["RealEnvLearner", "matched_updates"]


class RealEnvLearner(nn.Module):
    """`compute_loss(batch)` for the actor-critic on `len(env_fns)` real envs (batch ignored).

    Uses the horizon, γ, λ, entropy weight and target τ of an :class:`ImaginationConfig` (burn-in
    is unused: the LSTM state carries over from the previous steps of the same real episode).
    """

    def __init__(
        self,
        actor_critic: ActorCritic,
        env_fns: Sequence[Callable[[], gym.Env]],
        cfg: ImaginationConfig,
        *,
        seed: int = 0,
        vectorization: str = "sync",
    ) -> None:
        super().__init__()
        if not env_fns:
            raise ValueError("RealEnvLearner needs at least one env")
        if vectorization not in ("sync", "async"):
            raise ValueError(f"vectorization={vectorization!r}: expected 'sync' or 'async'")
        self.actor_critic = actor_critic
        self.target = copy.deepcopy(actor_critic).requires_grad_(False) if cfg.target_tau else None
        self.cfg = cfg
        self.env_fns = list(env_fns)
        self.seed = seed
        self.vectorization = vectorization
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))
        self.__dict__["envs"] = None  # created on first use; not a submodule, not saved
        self._obs: np.ndarray | None = None
        self._state: LSTMState | None = None
        self._target_state: LSTMState | None = None

    @property
    def steps_per_update(self) -> int:
        """Real env steps one gradient step takes."""
        return len(self.env_fns) * self.cfg.horizon

    def parameters(self, recurse: bool = True):  # the optimiser sees the online network only
        return self.actor_critic.parameters(recurse)

    def after_step(self) -> None:
        if self.target is not None:
            ema_update(self.target, self.actor_critic, self.cfg.target_tau)

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.__dict__["envs"] = None

    def _start(self, device: torch.device) -> None:
        vector = (
            gym.vector.SyncVectorEnv if self.vectorization == "sync" else gym.vector.AsyncVectorEnv
        )
        envs = vector(self.env_fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        self.__dict__["envs"] = envs
        # a resumed run continues with fresh episodes from a seed that depends on its progress
        self._obs, _ = envs.reset(seed=self.seed + int(self.env_steps))
        self._state = self.actor_critic.initial_state(len(self.env_fns), device)
        if self.target is not None:
            self._target_state = self.target.initial_state(len(self.env_fns), device)

    def rollout(self) -> dict[str, Tensor]:
        """`horizon` real steps of every env with the current policy (gradients kept)."""
        ac, cfg = self.actor_critic, self.cfg
        device = next(ac.parameters()).device
        if self.envs is None:
            self._start(device)
        state = (self._state[0].detach(), self._state[1].detach())  # type: ignore[index]
        logits, values, baseline, acts, rewards, ends = [], [], [], [], [], []
        for _ in range(cfg.horizon):
            frame = frames_to_tensor(self._obs, device)
            lg, v, state = ac(frame, state)
            if self.target is not None:
                with torch.no_grad():
                    _, tv, self._target_state = self.target(frame, self._target_state)
                baseline.append(tv)
            a = torch.distributions.Categorical(logits=lg.float()).sample()
            next_obs, r, terminated, truncated, _ = self.envs.step(a.cpu().numpy())
            r = np.sign(np.asarray(r, dtype=np.float32))
            cut = np.logical_and(truncated, np.logical_not(terminated))
            if cut.any():  # time limit: bootstrap from the final observation
                r = r + cfg.gamma * self._final_values(next_obs, state, cut, device)
            done = np.logical_or(terminated, truncated)
            if done.any():
                reset_obs, _ = self.envs.reset(options={"reset_mask": done})
                shape = done.shape + (1,) * (next_obs.ndim - 1)
                next_obs = np.where(done.reshape(shape), reset_obs, next_obs)
                keep = torch.as_tensor(~done, device=device, dtype=torch.float32)[:, None]
                state = (state[0] * keep, state[1] * keep)
                if self._target_state is not None:
                    self._target_state = tuple(s * keep for s in self._target_state)  # type: ignore[assignment]
            self._obs = next_obs
            for store, x in zip((logits, values, acts), (lg, v, a), strict=True):
                store.append(x)
            rewards.append(torch.as_tensor(r, device=device))
            ends.append(torch.as_tensor(done, device=device))
        last = frames_to_tensor(self._obs, device)
        _, v_last, _ = ac(last, state)
        values.append(v_last)
        if self.target is not None:
            with torch.no_grad():
                baseline.append(self.target(last, self._target_state)[1])
        self._state = (state[0].detach(), state[1].detach())
        self.env_steps += self.steps_per_update
        values_t = torch.stack(values, 1)
        return {
            "logits": torch.stack(logits, 1),
            "values": values_t,
            "baseline": torch.stack(baseline, 1) if baseline else values_t.detach(),
            "actions": torch.stack(acts, 1),
            "rewards": torch.stack(rewards, 1).float(),
            "ends": torch.stack(ends, 1).bool(),
        }

    @torch.no_grad()
    def _final_values(
        self, final_obs: np.ndarray, state: LSTMState, rows: np.ndarray, device: torch.device
    ) -> np.ndarray:
        """V(final observation) of the `rows` envs (0 elsewhere), from their current LSTM state."""
        idx = torch.as_tensor(np.flatnonzero(rows), device=device)
        net = self.target if self.target is not None else self.actor_critic
        net_state = self._target_state if self.target is not None else state
        sub = (net_state[0][idx], net_state[1][idx])  # type: ignore[index]
        _, v, _ = net(frames_to_tensor(final_obs[rows], device), sub)
        out = np.zeros(len(rows), np.float32)
        out[rows] = v.float().cpu().numpy()
        return out

    def compute_loss(
        self, batch: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        traj = self.rollout()
        loss, metrics = actor_critic_loss(
            traj, traj["baseline"], torch.ones_like(traj["rewards"]), self.cfg
        )
        metrics["real_reward"] = traj["rewards"].mean().item()
        metrics["real_ends"] = traj["ends"].float().mean().item()
        return loss, metrics


def matched_updates(budget: int, steps_done: int, steps_per_update: int) -> int:
    """Gradient steps that bring `steps_done` real steps closest to a `budget` of real steps
    (so a model-free run's env steps track a world-model run's collection within half an
    update)."""
    if steps_per_update <= 0:
        raise ValueError(f"steps_per_update must be positive, got {steps_per_update}")
    return max(0, math.floor((budget - steps_done) / steps_per_update + 0.5))
