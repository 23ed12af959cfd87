"""MiniGrid (Chevalier-Boisvert et al., the `minigrid` package) with pixel or symbolic arrays.

Why: issue 6 needs a small pixel task where RL purely in a world model's imagination can be shown
to work on a CPU within minutes; `MiniGrid-Empty-5x5-v0` at 32x32 pixels with the 3 movement
actions is that task. Symbolic observations of the same grids give a cheap non-pixel control.

Observations are single uint8 arrays (the rollout loop and the store take arrays, not dicts):

* `obs_type="pixels"`, `view="full"`: the whole grid rendered by minigrid's own tile renderer
  (`Grid.render`, what `RGBImgObsWrapper` shows; `tile_size` px per cell), resized to
  `image_size` x `image_size` with area interpolation -> (S, S, 3);
* `obs_type="pixels"`, `view="partial"`: the agent's egocentric 7x7 view rendered as in
  `RGBImgPartialObsWrapper`, resized the same way -> (S, S, 3);
* `obs_type="symbolic"`, `view="full"`: the grid encoding of `FullyObsWrapper`, (W, H, 3) of
  (object, colour, state) with the agent's cell as (agent, red, direction);
* `obs_type="symbolic"`, `view="partial"`: minigrid's own egocentric `image`, (7, 7, 3).

Deviations: the full-view pixels leave out `RGBImgObsWrapper`'s highlight of the agent's field
of view by default (`highlight=False`): it costs about half the step time and shows nothing a
full view lacks. `num_actions` keeps only the first k actions (3 = left, right, forward).
Rewards, termination (goal reached) and truncation (`max_steps`, minigrid's default 4 * size^2)
are minigrid's.

Cost on one core (random policy, other jobs on the machine), Empty-5x5: ~2,700 steps/s with
32x32 full-view pixels, ~4,200 symbolic, ~1,400 with 64x64 partial-view pixels.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

OBS_TYPES = ("pixels", "symbolic")
VIEWS = ("full", "partial")


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    import cv2

    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)


class MiniGridEnv(gym.Env):
    """A MiniGrid task with array observations; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        env_id: str = "MiniGrid-Empty-5x5-v0",
        obs_type: str = "pixels",
        view: str = "full",
        image_size: int = 32,
        tile_size: int = 8,
        highlight: bool = False,
        num_actions: int | None = None,
        max_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type={obs_type!r}: expected one of {', '.join(OBS_TYPES)}")
        if view not in VIEWS:
            raise ValueError(f"view={view!r}: expected one of {', '.join(VIEWS)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

        kwargs = {} if max_steps is None else {"max_steps": max_steps}
        self._env: Any = gym.make(env_id, disable_env_checker=True, **kwargs).unwrapped
        self.env_id, self.obs_type, self.view = env_id, obs_type, view
        self.image_size, self.tile_size, self.highlight = image_size, tile_size, highlight
        self.render_mode = render_mode
        n_all = int(self._env.action_space.n)
        if num_actions is not None and not 1 <= num_actions <= n_all:
            raise ValueError(f"num_actions={num_actions}: expected 1..{n_all} for {env_id}")
        self.action_space = spaces.Discrete(num_actions or n_all)
        if obs_type == "pixels":
            shape: tuple[int, ...] = (image_size, image_size, 3)
        elif view == "full":
            shape = (self._env.width, self._env.height, 3)
        else:
            shape = self._env.observation_space["image"].shape
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)

    def _observe(self, raw: dict[str, Any]) -> np.ndarray:
        env = self._env
        if self.obs_type == "symbolic":
            if self.view == "partial":
                return np.array(raw["image"], dtype=np.uint8)
            from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

            grid = env.grid.encode()
            x, y = env.agent_pos
            grid[x, y] = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], env.agent_dir)
            return grid.astype(np.uint8)
        if self.view == "partial":
            frame = env.get_pov_render(self.tile_size)
        elif self.highlight:
            frame = env.get_frame(highlight=True, tile_size=self.tile_size)
        else:  # the same image as get_frame(highlight=False) without its field-of-view pass
            frame = env.grid.render(self.tile_size, env.agent_pos, env.agent_dir)
        return _resize(frame, self.image_size)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        raw, info = self._env.reset(seed=seed)
        return self._observe(raw), dict(info)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        raw, reward, terminated, truncated, info = self._env.step(int(action))
        return self._observe(raw), float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self) -> np.ndarray | None:
        env = self._env
        return env.get_frame(highlight=self.highlight, tile_size=self.tile_size)

    def close(self) -> None:
        self._env.close()


register_env("minigrid", MiniGridEnv, gym_id="icrl/MiniGrid-v0")
