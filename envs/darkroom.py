"""Dark-Room and Dark Key-Door grid worlds with the RA-DT task splits.

Paper: Schmied et al., "Retrieval-Augmented Decision Transformer: External Memory
for In-context RL" (RA-DT; arXiv 2410.07071, CoLLAs 2025). Official code:
github.com/ml-jku/RA-DT, envs in ``src/envs/minihack_utils.py`` (MiniHack rooms
``MiniHack-Room-Dark-Dense-{10x10,20x20,40x20}-v0`` and
``MiniHack-KeyDoor-Dark-Dense-*-v0``), task lists in
``configs/env_params/dark_room*.yaml`` and ``dark_keydoor*.yaml``.

Rules (the same as the official env, checked by reading its code and MiniHack/NLE):

* grid ``width x height`` (paper: 10x10, 20x20, 40x20; any size works); episode
  length ``max_steps`` = number of cells (100 / 400 / 800) unless given;
* coordinates ``(x, y)``: x is the column (0..width-1), y the row (0..height-1),
  growing *downwards* as on the NetHack screen; the agent starts at ``(0, 0)``,
  the top-left corner, every episode;
* 5 actions, NetHack's N/E/S/W/wait: 0 up (y-1), 1 right (x+1), 2 down (y+1),
  3 left (x-1), 4 stay; walking into a wall leaves the agent in place;
* Dark-Room: reward +1 for every step that *ends* on the goal, staying included;
* Key-Door: +1 once, on the first step that ends on the key; after that, +1 for
  every step that ends on the door. Only one of the two is checked per step
  (MiniHack's ``SequentialRewardManager``), so the step that picks up the key
  never also pays for the door. The key's and door's positions are invisible;
  the agent sees only ``(x, y)`` (not whether it holds the key);
* no termination ever; truncation after exactly ``max_steps`` steps;
* the last step (step ``max_steps``) pays nothing: NLE ends the episode by
  "abort" before MiniHack's reward manager runs. This is why the paper's optimal
  return on 10x10 is ``T - (x + y)`` (mean 90.1 over the eval goals) and not
  ``T - (x + y) + 1``. Pass ``reward_on_last_step=True`` for the textbook rule.

Task splits (``DarkRoomTasks``, ``KeyDoorTasks``) reproduce the official
``make_train_test_pos``: all cells listed as ``(x, y)`` with x outer, permuted
by ``np.random.RandomState(43)`` (goals/doors) and ``RandomState(42)`` (keys);
the first 100 are taken, 80 train then 20 eval. Tests check them against
entries of the official YAML lists for all three sizes.

Deviations from the official env:

* pure-numpy gymnasium env instead of MiniHack/NLE (no NetHack, no pixels);
* observation order: the official observation is NLE's ``tty_cursor`` minus the
  room origin, i.e. ``(row, col) = (y, x)`` (read, not executed); ours is ``(x, y)``, the order of the
  goal lists. Swap the two columns when importing the official HF datasets
  (``ml-jku/dark_room``, ``ml-jku/dark_keydoor``);
* Key-Door state is reset every episode. In MiniHack (``reward_manager.py`` read
  at commit 983ab2a, not executed) ``SequentialRewardManager`` does not reset its event index on
  ``reset()``, so once a key was collected, later episodes of the same env
  instance reward the door without the key. We follow the paper's description;
* the official 10x10 Key-Door eval list replaces the key of task 1 (it equals
  that task's door, ``(8, 4)``) with ``(3, 1)``; we apply the same fix for the
  official parameters only. Other collisions are kept, as in the official
  40x20 list (train task 37: key = door = ``(19, 18)``);
* extras: ``reset(options={"goal": ...})`` (or ``key``/``door``) switches the task
  without rebuilding the env; ``info`` carries the task; ``render_mode="ansi"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env, register_tasks

Pos = tuple[int, int]

ACTION_NAMES: tuple[str, ...] = ("up", "right", "down", "left", "stay")
# (dx, dy) per action; y grows downwards, so "up" is y - 1 (NetHack's North).
MOVES: tuple[Pos, ...] = ((0, -1), (1, 0), (0, 1), (-1, 0), (0, 0))
_MOVES_NP = np.array(MOVES, dtype=np.int64)
NUM_ACTIONS = len(MOVES)


# ----------------------------------------------------------------------------- transition rule
def move(x: int, y: int, action: int, width: int, height: int) -> Pos:
    """One move on plain ints (the env's hot path): apply ``MOVES[action]``, clamp at walls."""
    dx, dy = MOVES[action]
    x += dx
    y += dy
    return (
        0 if x < 0 else width - 1 if x >= width else x,
        0 if y < 0 else height - 1 if y >= height else y,
    )


def darkroom_step(pos_xy: np.ndarray, action: np.ndarray, width: int, height: int) -> np.ndarray:
    """Vectorised :func:`move`: ``pos_xy [..., 2]`` and ``action [...]`` -> new positions.

    Why: tabular Q-learning or PPO over many goals steps thousands of agents in
    one numpy call instead of thousands of env objects; same rule, same table.
    """
    action = np.asarray(action)
    if action.size and (action.min() < 0 or action.max() >= NUM_ACTIONS):
        raise ValueError(f"actions must be in [0, {NUM_ACTIONS}), got {action!r}")
    new = np.asarray(pos_xy, dtype=np.int64) + _MOVES_NP[action]
    return np.clip(new, 0, np.array([width - 1, height - 1], dtype=np.int64))


def pays_reward(
    t_after: int | np.ndarray, max_steps: int, reward_on_last_step: bool = False
) -> np.ndarray:
    """Whether step number ``t_after`` (1-based) can pay: the official env's last step cannot."""
    return np.asarray(t_after) <= (max_steps if reward_on_last_step else max_steps - 1)


def darkroom_reward(
    new_pos_xy: np.ndarray,
    goal_xy: np.ndarray,
    t_after: int | np.ndarray,
    max_steps: int,
    reward_on_last_step: bool = False,
) -> np.ndarray:
    """Vectorised Dark-Room reward of the step that ended at ``new_pos_xy`` (float32)."""
    on_goal = np.all(np.asarray(new_pos_xy) == np.asarray(goal_xy), axis=-1)
    return (on_goal & pays_reward(t_after, max_steps, reward_on_last_step)).astype(np.float32)


def keydoor_reward(
    new_pos_xy: np.ndarray,
    has_key: np.ndarray,
    key_xy: np.ndarray,
    door_xy: np.ndarray,
    t_after: int | np.ndarray,
    max_steps: int,
    reward_on_last_step: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Key-Door reward and updated ``has_key`` for the step that ended at ``new_pos_xy``."""
    pos = np.asarray(new_pos_xy)
    has_key = np.asarray(has_key, dtype=bool)
    live = pays_reward(t_after, max_steps, reward_on_last_step)
    got_key = ~has_key & np.all(pos == np.asarray(key_xy), axis=-1) & live
    at_door = has_key & np.all(pos == np.asarray(door_xy), axis=-1) & live
    return (got_key | at_door).astype(np.float32), has_key | got_key


# ----------------------------------------------------------------------------- environments
def _check_pos(name: str, pos: Any, width: int, height: int) -> Pos:
    x, y = (int(v) for v in pos)
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"{name}={pos!r} lies outside the {width}x{height} grid")
    return (x, y)


class _GridEnv(gym.Env):
    """Shared grid, spaces, clock and rendering of Dark-Room and Key-Door."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        width: int,
        height: int,
        max_steps: int | None,
        reward_on_last_step: bool,
        render_mode: str | None,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"grid must be at least 1x1, got {width}x{height}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.width, self.height = int(width), int(height)
        self.max_steps = int(max_steps) if max_steps is not None else self.width * self.height
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.reward_on_last_step = bool(reward_on_last_step)
        self.render_mode = render_mode
        self.observation_space = spaces.MultiDiscrete([self.width, self.height])
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        # Last step number that can pay (see module docstring).
        self._last_paying = self.max_steps if self.reward_on_last_step else self.max_steps - 1
        self._x = self._y = self._t = 0

    def _obs(self) -> np.ndarray:
        return np.array((self._x, self._y), dtype=np.int64)

    def _move(self, action: Any) -> None:
        a = int(action)
        if not 0 <= a < NUM_ACTIONS:
            raise ValueError(f"action must be in [0, {NUM_ACTIONS}), got {action!r}")
        self._x, self._y = move(self._x, self._y, a, self.width, self.height)
        self._t += 1

    def _marks(self) -> dict[Pos, str]:
        return {}

    def render(self) -> str | None:
        """ANSI text: '@' agent, task cells marked by the subclass, '.' floor."""
        if self.render_mode != "ansi":
            return None
        marks = self._marks()
        rows = []
        for y in range(self.height):
            row = [marks.get((x, y), ".") for x in range(self.width)]
            if y == self._y:
                row[self._x] = "@"
            rows.append("".join(row))
        return "\n".join(rows) + "\n"


class DarkRoomEnv(_GridEnv):
    """Dark-Room (RA-DT): find an invisible goal from (0, 0); +1 per step on it.

    Args:
        width, height: grid size (paper: 10x10, 20x20, 40x20).
        goal: ``(x, y)`` of the goal; default the far corner ``(width-1, height-1)``.
        max_steps: episode length; default ``width * height``.
        reward_on_last_step: False (official) makes the final step pay nothing.
        render_mode: None or "ansi".
    """

    def __init__(
        self,
        width: int = 10,
        height: int = 10,
        goal: Pos | None = None,
        max_steps: int | None = None,
        reward_on_last_step: bool = False,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(width, height, max_steps, reward_on_last_step, render_mode)
        self.goal = (self.width - 1, self.height - 1)
        if goal is not None:
            self.set_goal(goal)

    def set_goal(self, goal: Pos) -> None:
        """Switch the task; takes effect immediately (normally call before reset)."""
        self.goal = _check_pos("goal", goal, self.width, self.height)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and options.get("goal") is not None:
            self.set_goal(options["goal"])
        self._x = self._y = self._t = 0
        return self._obs(), {"goal": self.goal}

    def step(self, action: Any):
        self._move(action)
        reward = 1.0 if (self._x, self._y) == self.goal and self._t <= self._last_paying else 0.0
        return self._obs(), reward, False, self._t >= self.max_steps, {}

    def _marks(self) -> dict[Pos, str]:
        return {self.goal: "G"}


class KeyDoorEnv(_GridEnv):
    """Dark Key-Door (RA-DT): find an invisible key (+1 once), then the door (+1 per step on it).

    Args:
        width, height: grid size (paper: 10x10, 20x20, 40x20).
        key: ``(x, y)`` of the key; default bottom-left ``(0, height-1)``.
        door: ``(x, y)`` of the door; default the far corner ``(width-1, height-1)``.
        max_steps: episode length; default ``width * height``.
        reward_on_last_step: False (official) makes the final step pay nothing.
        render_mode: None or "ansi".
    """

    def __init__(
        self,
        width: int = 10,
        height: int = 10,
        key: Pos | None = None,
        door: Pos | None = None,
        max_steps: int | None = None,
        reward_on_last_step: bool = False,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(width, height, max_steps, reward_on_last_step, render_mode)
        self.key: Pos = (0, self.height - 1)
        self.door: Pos = (self.width - 1, self.height - 1)
        self.set_task(key=key, door=door)
        self.has_key = False

    def set_task(self, key: Pos | None = None, door: Pos | None = None) -> None:
        """Move the key and/or the door (normally call before reset)."""
        if key is not None:
            self.key = _check_pos("key", key, self.width, self.height)
        if door is not None:
            self.door = _check_pos("door", door, self.width, self.height)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            self.set_task(key=options.get("key"), door=options.get("door"))
        self._x = self._y = self._t = 0
        self.has_key = False
        return self._obs(), {"key": self.key, "door": self.door, "has_key": False}

    def step(self, action: Any):
        self._move(action)
        reward = 0.0
        if self._t <= self._last_paying:
            pos = (self._x, self._y)
            if not self.has_key:
                if pos == self.key:
                    self.has_key = True
                    reward = 1.0
            elif pos == self.door:
                reward = 1.0
        return self._obs(), reward, False, self._t >= self.max_steps, {"has_key": self.has_key}

    def _marks(self) -> dict[Pos, str]:
        marks = {self.door: "D"}
        if not self.has_key:
            marks[self.key] = "K"
        return marks


# ----------------------------------------------------------------------------- task distributions
SPLITS = ("train", "eval")


def _official_cells(width: int, height: int, seed: int, n: int) -> list[Pos]:
    """First ``n`` cells of the official permutation (``make_train_test_pos``, x outer loop)."""
    cells = [(x, y) for x in range(width) for y in range(height)]
    order = np.random.RandomState(seed).permutation(len(cells))[:n]
    return [cells[i] for i in order]


def _check_counts(width: int, height: int, num_train: int, num_eval: int) -> None:
    if num_train < 0 or num_eval < 0 or num_train + num_eval > width * height:
        raise ValueError(
            f"need 0 <= num_train + num_eval <= {width * height} cells, got {num_train} + {num_eval}"
        )


def _pick_split(tasks: Any, split: str) -> list:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return tasks.train if split == "train" else tasks.eval


def _steps_to(a: Pos, b: Pos) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


@dataclass
class DarkRoomTasks:
    """The RA-DT Dark-Room goal split: 100 goals, 80 train / 20 eval, seed 43.

    ``train``/``eval`` are lists of ``(x, y)`` goals identical to the official
    ``configs/env_params/dark_room{,_20x20,_40x20}.yaml`` for the default counts.
    """

    width: int = 10
    height: int = 10
    seed: int = 43
    num_train: int = 80
    num_eval: int = 20
    max_steps: int | None = None
    reward_on_last_step: bool = False
    train: list[Pos] = field(init=False, repr=False)
    eval: list[Pos] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_counts(self.width, self.height, self.num_train, self.num_eval)
        goals = _official_cells(self.width, self.height, self.seed, self.num_train + self.num_eval)
        self.train, self.eval = goals[: self.num_train], goals[self.num_train :]

    @property
    def horizon(self) -> int:
        """Episode length of the envs this object makes."""
        return self.max_steps if self.max_steps is not None else self.width * self.height

    def split(self, split: str) -> list[Pos]:
        """Goals of ``"train"`` or ``"eval"``."""
        return _pick_split(self, split)

    def env_kwargs(self, goal: Pos, **overrides: Any) -> dict[str, Any]:
        """Constructor kwargs of :class:`DarkRoomEnv` for ``goal``."""
        kwargs = dict(
            width=self.width,
            height=self.height,
            max_steps=self.max_steps,
            reward_on_last_step=self.reward_on_last_step,
        )
        return {**kwargs, **overrides, "goal": tuple(goal)}

    def env_fns(self, split: str, **env_kwargs: Any) -> list[Callable[[], DarkRoomEnv]]:
        """One picklable constructor per goal of ``split`` (for vector envs / the rollout loop)."""
        return [
            functools.partial(DarkRoomEnv, **self.env_kwargs(g, **env_kwargs))
            for g in self.split(split)
        ]

    def optimal_return(self, goal: Pos) -> int:
        """Return of walking straight to ``goal`` and staying: steps that end on it and can pay.

        The first paying step is ``max(x + y, 1)`` (a goal at the start pays from
        step 1, by staying); the last is ``T - 1`` (official) or ``T``.
        """
        last = self.horizon if self.reward_on_last_step else self.horizon - 1
        first = max(goal[0] + goal[1], 1)
        return max(0, last - first + 1)

    def mean_optimal_return(self, split: str) -> float:
        """Mean :meth:`optimal_return` over a split (10x10 eval: 90.05, paper's 90.1)."""
        goals = self.split(split)
        return float(np.mean([self.optimal_return(g) for g in goals])) if goals else 0.0


class KeyDoorTask(NamedTuple):
    """One Key-Door task: where the key and the door are, ``(x, y)`` each."""

    key: Pos
    door: Pos


# Hand edit in the official dark_keydoor.yaml: eval key 1 would sit on its door (8, 4).
_OFFICIAL_KEY_FIXES: dict[tuple[int, int], dict[tuple[str, int], Pos]] = {
    (10, 10): {("eval", 1): (3, 1)},
}


@dataclass
class KeyDoorTasks:
    """The RA-DT Dark Key-Door split: doors from seed 43, keys from seed 42, 80 / 20.

    ``train``/``eval`` are lists of :class:`KeyDoorTask` identical to the official
    ``configs/env_params/dark_keydoor{,_20x20,_40x20}.yaml`` for the default
    seeds and counts (including the one hand-fixed 10x10 eval key).
    """

    width: int = 10
    height: int = 10
    seed: int = 43
    key_seed: int = 42
    num_train: int = 80
    num_eval: int = 20
    max_steps: int | None = None
    reward_on_last_step: bool = False
    train: list[KeyDoorTask] = field(init=False, repr=False)
    eval: list[KeyDoorTask] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_counts(self.width, self.height, self.num_train, self.num_eval)
        n = self.num_train + self.num_eval
        doors = _official_cells(self.width, self.height, self.seed, n)
        keys = _official_cells(self.width, self.height, self.key_seed, n)
        tasks = [KeyDoorTask(k, d) for k, d in zip(keys, doors)]
        self.train, self.eval = tasks[: self.num_train], tasks[self.num_train :]
        if (self.seed, self.key_seed, self.num_train, self.num_eval) == (43, 42, 80, 20):
            for (split, i), key in _OFFICIAL_KEY_FIXES.get((self.width, self.height), {}).items():
                tasks_of = self.split(split)
                tasks_of[i] = tasks_of[i]._replace(key=key)

    @property
    def horizon(self) -> int:
        """Episode length of the envs this object makes."""
        return self.max_steps if self.max_steps is not None else self.width * self.height

    def split(self, split: str) -> list[KeyDoorTask]:
        """Tasks of ``"train"`` or ``"eval"``."""
        return _pick_split(self, split)

    def env_kwargs(self, task: KeyDoorTask, **overrides: Any) -> dict[str, Any]:
        """Constructor kwargs of :class:`KeyDoorEnv` for ``task``."""
        kwargs = dict(
            width=self.width,
            height=self.height,
            max_steps=self.max_steps,
            reward_on_last_step=self.reward_on_last_step,
        )
        key, door = task
        return {**kwargs, **overrides, "key": tuple(key), "door": tuple(door)}

    def env_fns(self, split: str, **env_kwargs: Any) -> list[Callable[[], KeyDoorEnv]]:
        """One picklable constructor per task of ``split``."""
        return [
            functools.partial(KeyDoorEnv, **self.env_kwargs(t, **env_kwargs))
            for t in self.split(split)
        ]

    def optimal_return(self, task: KeyDoorTask) -> int:
        """Return of walking to the key, then to the door, and staying there.

        The key pays at step ``max(|key|, 1)``; the door is checked only from the
        step after, so it first pays at ``key_step + max(|door - key|, 1)``.
        """
        key, door = task
        last = self.horizon if self.reward_on_last_step else self.horizon - 1
        key_step = max(key[0] + key[1], 1)
        door_step = key_step + max(_steps_to(key, door), 1)
        return int(key_step <= last) + max(0, last - door_step + 1)

    def mean_optimal_return(self, split: str) -> float:
        """Mean :meth:`optimal_return` over a split."""
        tasks = self.split(split)
        return float(np.mean([self.optimal_return(t) for t in tasks])) if tasks else 0.0


register_env("darkroom", DarkRoomEnv, gym_id="icrl/DarkRoom-v0")
register_env("keydoor", KeyDoorEnv, gym_id="icrl/KeyDoor-v0")
register_tasks("darkroom", DarkRoomTasks)
register_tasks("keydoor", KeyDoorTasks)
