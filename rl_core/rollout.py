"""One rollout loop for every agent: N envs in lock-step, multi-episode trials, recording.

Why one loop: evaluation, data collection and in-context trials all step environments the same
way; agents differ only in their `Policy`. A trial of `episodes` consecutive episodes per env
calls `policy.reset` once, so a policy that keeps context (AD, DT, RA-DT, LLM agents) carries it
across episode boundaries: that is in-context evaluation.

Envs are stepped through a gymnasium vector env with autoreset disabled, so every recorded
episode is exact (no hidden reset step to mask) and finished envs are reset explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm


@runtime_checkable
class Policy(Protocol):
    """What the rollout loop needs from an agent, for a batch of `n_envs` environments."""

    def reset(self, n_envs: int) -> None:
        """Start a new trial: forget all context."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions (n_envs, ...) for the current observations (n_envs, ...)."""

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Outcome of the last step; `dones[i]` means env i's episode ended (its next obs is a reset)."""


@dataclass
class RolloutResult:
    """Per-episode metrics; row = env, column = episode within the trial (for ICL curves)."""

    returns: np.ndarray  # (n_envs, episodes) float64
    lengths: np.ndarray  # (n_envs, episodes) int64
    steps: int = 0  # env steps taken (all envs)
    infos: list[list[dict[str, Any]]] = field(default_factory=list)  # final info per episode

    @property
    def mean_return_per_trial(self) -> np.ndarray:
        """Mean over envs of the return of episode k (k = 1..episodes): the in-context curve."""
        return self.returns.mean(axis=0)


def _step_buffer(next_obs: bool) -> dict[str, list]:
    keys = ["obs", "action", "reward", "terminated", "truncated"]
    return {k: [] for k in keys + (["next_obs"] if next_obs else [])}


def _episode_arrays(buffer: Mapping[str, list]) -> dict[str, np.ndarray]:
    """A finished episode's per-step lists as the store's arrays (rewards float32)."""
    episode = {k: np.stack(v) for k, v in buffer.items()}
    episode["reward"] = episode["reward"].astype(np.float32)
    return episode


class _EpisodeRecorder:
    """Collects per-env step buffers and writes finished episodes to a store."""

    def __init__(self, writer: Any, metadata: Sequence[Mapping[str, Any]], next_obs: bool) -> None:
        self.writer = writer
        self.metadata = metadata
        self.next_obs = next_obs
        self.buffers: list[dict[str, list]] = [self._empty() for _ in metadata]

    def _empty(self) -> dict[str, list]:
        return _step_buffer(self.next_obs)

    def add(self, i: int, obs, action, reward, terminated, truncated, next_obs) -> None:
        buf = self.buffers[i]
        buf["obs"].append(obs)
        buf["action"].append(action)
        buf["reward"].append(reward)
        buf["terminated"].append(terminated)
        buf["truncated"].append(truncated)
        if self.next_obs:
            buf["next_obs"].append(next_obs)

    def finish(self, i: int, episode_index: int) -> None:
        meta = {**self.metadata[i], "trial_episode": episode_index}
        self.writer.add(_episode_arrays(self.buffers[i]), meta)
        self.buffers[i] = self._empty()


def rollout(
    env_fns: Sequence[Callable[[], gym.Env]],
    policy: Policy,
    *,
    episodes: int = 1,
    record_to: Any | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    record_next_obs: bool = False,
    seed: int | None = None,
    vectorization: str = "sync",
    progress: bool = True,
    desc: str = "rollout",
) -> RolloutResult:
    """Run `episodes` consecutive episodes in each env with one policy; return per-episode metrics.

    record_to: an `EpisodeStore` (anything with `.writer()`); every finished episode is written
    with `metadata[i]` of its env plus `trial_episode` (its position in the trial).
    vectorization: "sync" for cheap envs (Dark-Room, matrix games), "async" for expensive ones
    (Atari, Crafter), where stepping in subprocesses pays off.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = len(env_fns)
    if n == 0:
        raise ValueError("rollout needs at least one env constructor")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"metadata has {len(metadata)} entries for {n} envs")
    vector_cls = {"sync": gym.vector.SyncVectorEnv, "async": gym.vector.AsyncVectorEnv}
    if vectorization not in vector_cls:
        raise ValueError(f"vectorization={vectorization!r}: expected one of {sorted(vector_cls)}")
    envs = vector_cls[vectorization](
        list(env_fns), autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    returns = np.zeros((n, episodes), dtype=np.float64)
    lengths = np.zeros((n, episodes), dtype=np.int64)
    infos: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    done_count = np.zeros(n, dtype=np.int64)
    writer_ctx = record_to.writer() if record_to is not None else None
    writer = writer_ctx.__enter__() if writer_ctx is not None else None
    recorder = (
        _EpisodeRecorder(writer, metadata or [{} for _ in range(n)], record_next_obs)
        if writer is not None
        else None
    )
    bar = tqdm(total=n * episodes, desc=desc, unit="ep", disable=not progress, leave=False)
    steps = 0
    try:
        obs, _ = envs.reset(seed=seed)
        policy.reset(n)
        ep_return = np.zeros(n, dtype=np.float64)
        ep_len = np.zeros(n, dtype=np.int64)
        while (done_count < episodes).any():
            actions = np.asarray(policy.act(obs))
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            dones = np.logical_or(terminated, truncated)
            active = done_count < episodes
            steps += int(active.sum())
            ep_return += np.where(active, rewards, 0.0)
            ep_len += active
            if recorder is not None:
                for i in np.flatnonzero(active):
                    recorder.add(
                        i, obs[i], actions[i], rewards[i], terminated[i], truncated[i], next_obs[i]
                    )
            policy.observe(actions, np.asarray(rewards), dones)
            finished = np.flatnonzero(dones & active)
            for i in finished:
                k = done_count[i]
                returns[i, k], lengths[i, k] = ep_return[i], ep_len[i]
                infos[i].append(_info_at(info, i))
                if recorder is not None:
                    recorder.finish(i, int(k))
                done_count[i] += 1
            bar.update(len(finished))
            ep_return[dones] = 0.0
            ep_len[dones] = 0
            if dones.any():
                reset_obs, _ = envs.reset(options={"reset_mask": dones})
                next_obs = np.where(_expand(dones, next_obs), reset_obs, next_obs)
            obs = next_obs
    except BaseException:
        writer_ctx = None  # never flush a half-recorded trial on error
        raise
    finally:
        bar.close()
        envs.close()
        if writer_ctx is not None:
            writer_ctx.__exit__(None, None, None)
    return RolloutResult(returns=returns, lengths=lengths, steps=steps, infos=infos)


class StepCollector:
    """The rollout loop for online agents: step persistent envs `steps` at a time, across calls.

    Why not :func:`rollout`: online agents collect a fixed number of steps per epoch (Δ-IRIS: 200)
    while episodes run longer (an Atari game lasts thousands of steps), so the envs, the unfinished
    episodes and the policy's recurrent state must survive between calls. Finished episodes are
    written to `record_to` (with `next_obs`) at the end of each call; unfinished ones wait in RAM
    (an interrupted run loses only those). Returns of episodes finished in a call are returned.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        record_to: Any,
        metadata: Mapping[str, Any] | None = None,
        seed: int | None = None,
        vectorization: str = "sync",
    ) -> None:
        vector_cls = {"sync": gym.vector.SyncVectorEnv, "async": gym.vector.AsyncVectorEnv}
        if vectorization not in vector_cls:
            raise ValueError(
                f"vectorization={vectorization!r}: expected one of {sorted(vector_cls)}"
            )
        self.n = len(env_fns)
        self.envs = vector_cls[vectorization](
            list(env_fns), autoreset_mode=gym.vector.AutoresetMode.DISABLED
        )
        self.store = record_to
        self.metadata = dict(metadata or {})
        self.seed = seed
        self.obs: np.ndarray | None = None
        self.policy: Any = None
        self.total_steps = 0
        self.episodes_done = 0
        self._buffers: list[dict[str, list]] = []
        self._returns = np.zeros(self.n)

    def collect(self, policy: Policy, steps: int) -> list[float]:
        """Take at least `steps` env steps in total (a multiple of the env count) with `policy`."""
        if self.obs is None:
            self.obs, _ = self.envs.reset(seed=self.seed)
            self._buffers = [_step_buffer(next_obs=True) for _ in range(self.n)]
            self._returns[:] = 0.0
        if policy is not self.policy:  # a new policy starts without context, mid-episode
            self.policy = policy
            policy.reset(self.n)
        finished: list[tuple[dict[str, list], float]] = []
        taken = 0
        while taken < steps:
            actions = np.asarray(policy.act(self.obs))
            next_obs, rewards, terminated, truncated, _ = self.envs.step(actions)
            dones = np.logical_or(terminated, truncated)
            for i in range(self.n):
                buf = self._buffers[i]
                for key, value in (
                    ("obs", self.obs[i]), ("action", actions[i]), ("reward", rewards[i]),
                    ("terminated", terminated[i]), ("truncated", truncated[i]),
                    ("next_obs", next_obs[i]),
                ):  # fmt: skip
                    buf[key].append(value)
            self._returns += rewards
            policy.observe(actions, np.asarray(rewards), dones)
            for i in np.flatnonzero(dones):
                finished.append((self._buffers[i], float(self._returns[i])))
                self._buffers[i] = _step_buffer(next_obs=True)
                self._returns[i] = 0.0
            if dones.any():
                reset_obs, _ = self.envs.reset(options={"reset_mask": dones})
                next_obs = np.where(_expand(dones, next_obs), reset_obs, next_obs)
            self.obs = next_obs
            taken += self.n
        self.total_steps += taken
        if finished:
            with self.store.writer() as writer:
                for buf, _ in finished:
                    meta = {**self.metadata, "collect_index": self.episodes_done}
                    writer.add(_episode_arrays(buf), meta)
                    self.episodes_done += 1
        return [ret for _, ret in finished]

    def close(self) -> None:
        self.envs.close()


def _expand(mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (like.ndim - 1))


def _info_at(info: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Env i's entries of a vector-env info dict (skips the `_key` presence masks)."""
    out = {}
    for key, value in info.items():
        if key.startswith("_"):
            continue
        present = info.get(f"_{key}")
        if present is not None and not present[i]:
            continue
        out[key] = value[i] if isinstance(value, np.ndarray) else value
    return out


class ActionRecorder:
    """A pass-through policy that keeps every batch of actions it returned, (steps, envs): for
    checks that compare what a policy did with what another would have done."""

    def __init__(self, policy: Any) -> None:
        self.policy, self.actions = policy, []

    def reset(self, n_envs: int) -> None:
        self.policy.reset(n_envs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.actions.append(np.asarray(self.policy.act(obs)))
        return self.actions[-1]

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.policy.observe(actions, rewards, dones)


class RandomPolicy:
    """Uniformly random actions from an action space: the baseline every learner must beat."""

    def __init__(self, action_space: gym.Space, seed: int | None = None) -> None:
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)
        self.n_envs = 0

    def reset(self, n_envs: int) -> None:
        self.n_envs = n_envs

    def act(self, obs: np.ndarray) -> np.ndarray:
        if isinstance(self.action_space, gym.spaces.Discrete):
            return (
                self.rng.integers(0, self.action_space.n, size=self.n_envs)
                + self.action_space.start
            )
        self.action_space.seed(int(self.rng.integers(2**31)))
        return np.stack([self.action_space.sample() for _ in range(self.n_envs)])

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        pass
