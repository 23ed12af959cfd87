"""Atari through ale-py with the Atari 100k protocol as DIAMOND and Δ-IRIS use it.

Why: world-model agents (Δ-IRIS, DIAMOND, IRIS) report Atari 100k scores; comparing with their
numbers needs their preprocessing. ale-py >= 0.9 ships the ROMs, so nothing is downloaded.

The protocol (DIAMOND `src/envs/env.py` + `atari_preprocessing.py`; Δ-IRIS `config/env/atari.yaml`):

* ALE v5 game with `frameskip=1` inside and no sticky actions (`repeat_action_probability=0`, as
  the `*NoFrameskip-v4` ids both papers use), the minimal action set;
* gymnasium's `AtariPreprocessing`: action repeat 4 with the reward summed, max-pool over the last
  two frames, resize to 64x64 with area interpolation (the same cv2 call as DIAMOND's copy of it),
  RGB kept (`grayscale_obs=False`), 1..30 no-ops at reset (`noop_max`);
* no reward clipping in the env (Δ-IRIS / DIAMOND use the reward sign only as a model target);
* `life_loss_terminal`: losing a life ends the episode with `terminated=True` *for training
  only*; the next `reset()` (without a seed) continues the same game with one no-op step instead
  of restarting it (the `EpisodicLifeEnv` of IRIS / Δ-IRIS and DIAMOND's `DoneOnLifeLoss`).
  Evaluation must pass `life_loss_terminal=False`, so an episode is a whole game;
* the 108K-frame cap (30 minutes of play) is ALE's own `max_num_frames_per_episode`, counted in
  emulator frames including no-op starts; reaching it gives `truncated=True`.

Deviations: gymnasium's `AtariPreprocessing` ends a life-loss episode with a full reset, which
would show only the first life (DIAMOND's comment), so the life-loss logic lives here rather
than in its `terminal_on_life_loss`. Δ-IRIS caps *training* episodes at 20K frames and uses 1
no-op at test; we default to DIAMOND's single setting (108K frames, up to 30 no-ops) and expose
both as options (`max_frames`, `noop_max`). IRIS resizes each frame before max-pooling; we pool
first (DIAMOND, gymnasium).

`info` gains `life_loss` (a life was lost on this step) and keeps ALE's `lives`,
`episode_frame_number`, `frame_number`.

Cost on one core (random policy, other jobs on the machine): ~1,350 agent steps/s on Pong, ~900
on Breakout (4 emulated frames, an RGB screen copy per frame, one resize per step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

NOOP = 0


@dataclass
class AtariConfig:
    """Settings of :class:`AtariEnv`; defaults are the Atari 100k protocol of DIAMOND."""

    game: str = "Pong"  # ALE name in CamelCase: Pong, Breakout, MsPacman, ...
    image_size: int = 64
    frame_skip: int = 4
    noop_max: int = 30
    max_frames: int = 108_000  # emulator frames per game (30 min at 60 Hz)
    life_loss_terminal: bool = False  # True for training only
    repeat_action_probability: float = 0.0  # sticky actions off, as the *NoFrameskip-v4 ids
    full_action_space: bool = False


def _make_ale(cfg: AtariConfig, render_mode: str | None) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{cfg.game}-v5",
        frameskip=1,
        repeat_action_probability=cfg.repeat_action_probability,
        full_action_space=cfg.full_action_space,
        max_num_frames_per_episode=cfg.max_frames,
        render_mode=render_mode,
        disable_env_checker=True,
    )
    return gym.wrappers.AtariPreprocessing(
        env,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=cfg.image_size,
        terminal_on_life_loss=False,  # handled by AtariEnv (see the module docstring)
        grayscale_obs=False,
        scale_obs=False,
    )


class AtariEnv(gym.Env):
    """One Atari game under the Atari 100k protocol; obs (S, S, 3) uint8 (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        self.cfg = AtariConfig(**kwargs)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.render_mode = render_mode
        self._env = _make_ale(self.cfg, render_mode)
        self.observation_space = self._env.observation_space
        self.action_space = spaces.Discrete(int(self._env.action_space.n))
        self._continue_game = False  # last episode ended on a life loss, not on game over

    @property
    def ale(self) -> Any:
        return self._env.unwrapped.ale

    def action_meanings(self) -> list[str]:
        return list(self._env.unwrapped.get_action_meanings())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if self._continue_game and seed is None:
            self._continue_game = False
            obs, _, terminated, truncated, info = self._env.step(NOOP)
            if not (terminated or truncated):
                return obs, {**info, "life_loss": False}
        self._continue_game = False
        obs, info = self._env.reset(seed=seed)
        return obs, {**info, "life_loss": False}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        lives = self.ale.lives()
        obs, reward, terminated, truncated, info = self._env.step(int(action))
        life_loss = self.ale.lives() < lives
        if self.cfg.life_loss_terminal and life_loss and not (terminated or truncated):
            terminated, self._continue_game = True, True
        info = {**info, "life_loss": life_loss}
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def config(self) -> dict[str, Any]:
        return asdict(self.cfg)


register_env("atari", AtariEnv, gym_id="icrl/Atari-v0")
