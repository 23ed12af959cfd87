"""Procgen (Cobbe et al. 2020) games, CoinRun and the rest, as single gymnasium envs.

Why: CoinRun is the data set of Genie-style world models and Procgen's level split
(`num_levels`, `start_level`) tests generalisation. `procgen` has no wheel for Python >= 3.11;
`procgen-mirror` (same 0.10.7 code) has one and runs here. It pins numpy < 2 but its C library
is loaded through cffi and works with numpy 2, so it is installed with `--no-deps` (see
`setup.cfg`). Its API is gym3 (`act` then `observe`, batched); this wraps one `ProcgenGym3Env`.

* obs (64, 64, 3) uint8, 15 discrete actions (Procgen's shared action set);
* options: `env_name` (one of :data:`ENV_NAMES`), `distribution_mode` (easy/hard/extreme/
  memory/exploration), `num_levels` (0 = unbounded) and `start_level`, plus Procgen's visual
  switches;
* seeding: Procgen draws each level from a generator seeded once at creation (`rand_seed`), and
  gym3 has no reset, so `reset(seed=s)` (and a reset in mid-episode) builds a fresh gym3 env
  (about 1 ms after the first one) with `rand_seed` drawn from this env's generator: resets with
  the same seed give the same levels, different seeds different levels (with `num_levels` != 1);
* episode ends: gym3 starts the next level inside `step`, so the terminal step never shows the
  final frame: it returns the episode's last frame again (not the next level's first frame, which
  would leak another level into the episode) and the next `reset()` returns the new level's
  first frame without rebuilding anything. Procgen does not tell time-outs from deaths or
  success, so every end is `terminated` (as gym3's own gym adapter does); `info` has
  `level_complete` on the last step and `level_seed` always.

Cost on one core: ~12,000 steps/s on CoinRun; the first env of a process loads the assets (~2 s).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

ENV_NAMES: tuple[str, ...] = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)
DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")


def _gym3_env_class() -> Any:
    # `import procgen` registers gym (old API) ids, and old gym prints a deprecation notice on
    # stderr that says nothing about our use (we use the gym3 class only).
    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env


class ProcgenEnv(gym.Env):
    """One Procgen game behind gymnasium's API; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        env_name: str = "coinrun",
        distribution_mode: str = "easy",
        num_levels: int = 0,
        start_level: int = 0,
        use_backgrounds: bool = True,
        restrict_themes: bool = False,
        use_monochrome_assets: bool = False,
        center_agent: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if env_name not in ENV_NAMES:
            raise ValueError(f"env_name={env_name!r}: expected one of {', '.join(ENV_NAMES)}")
        if distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(
                f"distribution_mode={distribution_mode!r}: expected one of "
                f"{', '.join(DISTRIBUTION_MODES)}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        self.env_name, self.distribution_mode = env_name, distribution_mode
        self.num_levels, self.start_level = num_levels, start_level
        self.render_mode = render_mode
        self._options = dict(
            env_name=env_name,
            distribution_mode=distribution_mode,
            use_backgrounds=use_backgrounds,
            restrict_themes=restrict_themes,
            use_monochrome_assets=use_monochrome_assets,
            center_agent=center_agent,
            # exploration mode fixes the level itself and refuses these
            **({} if distribution_mode == "exploration" else {"num_levels": num_levels}),
            **({} if distribution_mode == "exploration" else {"start_level": start_level}),
        )
        self._cls = _gym3_env_class()
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = spaces.Discrete(15)
        self._env: Any = None
        self._obs: np.ndarray | None = None
        self._at_start = False  # gym3 already started a new level (after an episode end)

    def _build(self) -> None:
        if self._env is not None:
            self._env.close()
        seed = int(self.np_random.integers(2**31 - 1))
        self._env = self._cls(num=1, num_threads=0, rand_seed=seed, **self._options)

    def _level_seed(self) -> int:
        return int(self._env.get_info()[0]["level_seed"])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or not self._at_start:
            self._build()
        self._at_start = False
        _, ob, _ = self._env.observe()
        self._obs = ob["rgb"][0].copy()
        return self._obs.copy(), {"level_seed": self._level_seed()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._env is None or self._at_start:
            raise RuntimeError("call reset() before step() (and after an episode end)")
        self._env.act(np.array([int(action)], dtype=np.int32))
        reward, ob, first = self._env.observe()
        raw = self._env.get_info()[0]
        done = bool(first[0])
        info: dict[str, Any] = {"level_seed": int(raw["level_seed"])}
        if done:
            self._at_start = True
            info["level_complete"] = bool(raw["prev_level_complete"])
            info["level_seed"] = int(raw["prev_level_seed"])
        else:
            self._obs = ob["rgb"][0].copy()
        return self._obs.copy(), float(reward[0]), done, False, info

    def render(self) -> np.ndarray | None:
        return None if self._obs is None else self._obs.copy()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


register_env("procgen", ProcgenEnv, gym_id="icrl/Procgen-v0")
