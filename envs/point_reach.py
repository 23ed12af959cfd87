"""PointReach: a 2-D point must reach a target; a tiny stand-in for ACT's simulated tasks on a CPU.

Why it exists: ACT's tasks (gym-aloha transfer-cube) run at ~8 steps/s on a CPU, far too slow for
tests and smoke runs. PointReach keeps what matters to action chunking: image observations (a
small RGB frame rendered with numpy), proprioception, continuous *absolute* position-target
actions (as ACT's joint-position targets), and a scripted expert that follows waypoints with
human-like noise (jitter, pauses) that makes demonstrations non-Markovian.

Rules:
* arena [0, 1]^2; the point starts uniformly in [0.05, 0.95]^2, the target uniformly in
  [0.1, 0.9]^2 at least `min_distance` away;
* action (2,) in [0, 1]^2: the commanded position. The point moves straight toward it by at most
  `speed` per step (a position controller with a speed limit);
* reward 1 and `terminated` on the step that ends within `success_radius` of the target; else 0;
  `truncated` after `max_steps` steps. `info`: `distance`, `is_success`;
* observation: one float32 vector (the rollout loop and the store take arrays, not dicts):
  `obs_type="pixels"`: the (3, S, S) frame flattened (CHW, values in [0, 1]: the point in red, the
  target in green, Gaussian blobs of `blob_px` pixels) followed by the proprioception, the point's
  position (2,). `obs_type="state"`: position and target (4,), no frame (low-dimensional fallback).
  `image_shape` (None for state) and `proprio_dim` give the layout to agents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

OBS_TYPES = ("pixels", "state")


def render_frame(pos: np.ndarray, target: np.ndarray, size: int, blob_px: float) -> np.ndarray:
    """(3, S, S) float32 frame in [0, 1]: the point in R, the target in G (no occlusion)."""
    centers = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centers
    sigma = blob_px / size

    def blob(p: np.ndarray) -> np.ndarray:
        gx = np.exp(-((centers - p[0]) ** 2) / (2 * sigma**2))  # columns: x
        gy = np.exp(-((centers - p[1]) ** 2) / (2 * sigma**2))  # rows: y
        return np.outer(gy, gx).astype(np.float32)

    frame = np.zeros((3, size, size), dtype=np.float32)
    frame[0], frame[1] = blob(pos), blob(target)
    return frame


class PointReachEnv(gym.Env):
    """Move a point to a target with absolute position commands (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        image_size: int = 32,
        obs_type: str = "pixels",
        max_steps: int = 60,
        speed: float = 0.05,
        success_radius: float = 0.05,
        min_distance: float = 0.3,
        blob_px: float = 1.5,
        render_mode: str | None = None,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type={obs_type!r}: expected one of {', '.join(OBS_TYPES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.image_size, self.obs_type = image_size, obs_type
        self.max_steps, self.speed = max_steps, speed
        self.success_radius, self.min_distance = success_radius, min_distance
        self.blob_px = blob_px
        self.render_mode = render_mode
        self.image_shape: tuple[int, int, int] | None = (
            (3, image_size, image_size) if obs_type == "pixels" else None
        )
        self.proprio_dim = 2 if obs_type == "pixels" else 4
        n_image = 3 * image_size * image_size if obs_type == "pixels" else 0
        self.observation_space = spaces.Box(
            0.0, 1.0, shape=(n_image + self.proprio_dim,), dtype=np.float32
        )
        self.action_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.pos = np.full(2, 0.5, dtype=np.float32)
        self.target = np.full(2, 0.5, dtype=np.float32)
        self.t = 0

    def _obs(self) -> np.ndarray:
        if self.obs_type == "state":
            return np.concatenate([self.pos, self.target]).astype(np.float32)
        frame = render_frame(self.pos, self.target, self.image_size, self.blob_px)
        return np.concatenate([frame.reshape(-1), self.pos]).astype(np.float32)

    def _info(self) -> dict[str, Any]:
        distance = float(np.linalg.norm(self.pos - self.target))
        return {"distance": distance, "is_success": distance < self.success_radius}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(0.05, 0.95, size=2).astype(np.float32)
        while True:
            self.target = self.np_random.uniform(0.1, 0.9, size=2).astype(np.float32)
            if np.linalg.norm(self.target - self.pos) >= self.min_distance:
                break
        self.t = 0
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        command = np.clip(np.asarray(action, dtype=np.float32).reshape(2), 0.0, 1.0)
        delta = command - self.pos
        norm = float(np.linalg.norm(delta))
        if norm > self.speed:
            delta *= self.speed / norm
        self.pos = np.clip(self.pos + delta, 0.0, 1.0).astype(np.float32)
        self.t += 1
        info = self._info()
        terminated = bool(info["is_success"])
        truncated = self.t >= self.max_steps and not terminated
        return self._obs(), float(terminated), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        frame = render_frame(self.pos, self.target, self.image_size, self.blob_px)
        return (np.moveaxis(frame, 0, -1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- scripted expert


@dataclass
class ExpertConfig:
    """Noise of the scripted expert; all zero = clean demonstrations."""

    speed_frac: float = 0.8  # plan speed as a fraction of the env's speed limit
    approach_frac: float = 0.7  # the pre-approach waypoint, as a fraction of the way
    jitter_std: float = 0.0  # Gaussian noise on every command (hand tremor)
    pause_prob: float = 0.0  # chance per step of a hesitation anywhere on the way
    waypoint_pause_prob: float = 0.0  # chance of a hesitation at the pre-approach waypoint
    pause_min: int = 5  # hesitation length in steps, uniform in [pause_min, pause_max]
    pause_max: int = 15


def target_from_frame(frame: np.ndarray) -> np.ndarray:
    """Target position (b, 2) from frames (b, 3, S, S): the centroid of the green channel."""
    g = frame[:, 1]
    size = g.shape[-1]
    centers = (np.arange(size, dtype=np.float64) + 0.5) / size
    mass = g.sum(axis=(1, 2))
    x = (g.sum(axis=1) * centers).sum(-1) / mass
    y = (g.sum(axis=2) * centers).sum(-1) / mass
    return np.stack([x, y], axis=-1)


class PointReachExpert:
    """Scripted demonstrator (a rollout `Policy`), waypoints as ACT's scripted policies.

    At each env's first step it reads the point and the target from the observation (the target
    from the frame's green channel, or the state) and plans a constant-speed path through
    waypoints start -> pre-approach -> target; the command at step t is the plan at the expert's
    own clock. Noise: `jitter_std` on every command; a hesitation (hold the last command, clock
    stopped) starts with `pause_prob` per step and with `waypoint_pause_prob` on reaching the
    pre-approach waypoint. Paused states look like moving ones, so the demonstrations are
    non-Markovian: the case for action chunking.
    """

    def __init__(self, env_speed: float, cfg: ExpertConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or ExpertConfig()
        self.step_len = env_speed * self.cfg.speed_frac
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def reset(self, n_envs: int) -> None:
        self.n = n_envs
        self.fresh = np.ones(n_envs, dtype=bool)  # plan at the next step
        self.start = np.zeros((n_envs, 2))
        self.goal = np.zeros((n_envs, 2))
        self.clock = np.zeros(n_envs)  # distance travelled along the plan
        self.pause_left = np.zeros(n_envs, dtype=np.int64)
        self.paused_at_waypoint = np.zeros(n_envs, dtype=bool)
        self.last = np.zeros((n_envs, 2))

    def _read(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if obs.shape[-1] == 4:  # state: position, target
            return obs[:, :2].astype(np.float64), obs[:, 2:].astype(np.float64)
        size = int(round(np.sqrt((obs.shape[-1] - 2) / 3)))
        frame = obs[:, :-2].reshape(-1, 3, size, size)
        return obs[:, -2:].astype(np.float64), target_from_frame(frame)

    def _plan(self, i: np.ndarray) -> np.ndarray:
        """Commanded positions (len(i), 2) at the clocks of envs `i`: the path's arc length."""
        path = self.goal[i] - self.start[i]
        length = np.linalg.norm(path, axis=-1, keepdims=True)
        frac = np.clip(self.clock[i, None] / np.maximum(length, 1e-9), 0.0, 1.0)
        return self.start[i] + frac * path

    def act(self, obs: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        if self.fresh.any():
            pos, target = self._read(obs[self.fresh])
            self.start[self.fresh], self.goal[self.fresh] = pos, target
            self.last[self.fresh] = pos  # a hesitation on the first step holds the start
            self.clock[self.fresh] = 0.0
            self.pause_left[self.fresh] = 0
            self.paused_at_waypoint[self.fresh] = False
            self.fresh[:] = False
        length = np.linalg.norm(self.goal - self.start, axis=-1)
        moving = self.pause_left == 0
        at_waypoint = moving & ~self.paused_at_waypoint & (self.clock >= cfg.approach_frac * length)
        start_pause = moving & (
            (self.rng.random(self.n) < cfg.pause_prob)
            | (at_waypoint & (self.rng.random(self.n) < cfg.waypoint_pause_prob))
        )
        self.paused_at_waypoint |= at_waypoint
        lengths = self.rng.integers(cfg.pause_min, cfg.pause_max + 1, size=self.n)
        self.pause_left = np.where(start_pause, lengths, self.pause_left)
        moving = self.pause_left == 0
        self.clock = np.where(moving, self.clock + self.step_len, self.clock)
        command = np.where(moving[:, None], self._plan(np.arange(self.n)), self.last)
        self.last = command
        self.pause_left = np.maximum(self.pause_left - 1, 0)
        noise = self.rng.normal(0.0, cfg.jitter_std, size=(self.n, 2)) if cfg.jitter_std else 0.0
        return np.clip(command + noise, 0.0, 1.0).astype(np.float32)

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.fresh |= np.asarray(dones, dtype=bool)


register_env("point_reach", PointReachEnv, gym_id="icrl/PointReach-v0")
