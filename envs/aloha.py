"""ACT's simulated bimanual ALOHA tasks (transfer-cube, insertion) from gym-aloha, cheap on a CPU.

Paper: Zhao, Kumar, Levine, Finn, "Learning Fine-Grained Bimanual Manipulation with Low-Cost
Hardware" (ACT, RSS 2023); official sim code github.com/tonyzhaozh/act (`sim_env.py`), packaged
as `gym-aloha` 0.1.5 (github.com/huggingface/gym-aloha), whose MuJoCo models, reset ranges and
staged rewards are used here unchanged (`gym_aloha.assets`, `gym_aloha.tasks.sim`).

Why a wrapper instead of `gym_aloha.env.AlohaEnv`: its task renders three cameras at 480x640 in
every `get_observation` and the env renders a fourth view, which runs at ~4 steps/s on a CPU
without a GPU (software OpenGL, llvmpipe); `obs_type="state"` raises NotImplementedError; the box
pose is a module global; and observations are dicts while our rollout loop and store take arrays.
Here the physics is stepped directly (10 MuJoCo substeps of 2 ms per 20 ms control step, as
`control.Environment(control_timestep=DT)`), and one small frame is rendered straight from the
physics (`physics.render(h, w, camera_id)`) with no multisampling and no shadows/reflections.

Measured on this 2-core CPU machine (1 thread, llvmpipe, another job on the other core;
`OMP_NUM_THREADS=1 python -c "import envs.aloha as a; a.benchmark()"`): **~120 env steps/s with
the 48x64 top-camera frame** and ~2,400 steps/s with `obs_type="state"`, vs **~4 steps/s for
gym-aloha's `AlohaTransferCube-v0` at its default 480x640** (three cameras rendered per step plus
the returned one): about 30x faster with pixels. The frame's cost is a fixed ~7 ms per render
(64x64 and 32x32 cost the same); with the model's default 4x multisampling, shadows and
reflections one 64x64 render takes ~60 ms (~16/s instead of ~150/s). Each pixel env
holds its own GL context (~90 MB with llvmpipe: 50 envs in lock-step take ~4.7 GB).

Interface (ours, not gym-aloha's):
* action (14,): absolute joint-position targets, ACT's layout: left arm 6 joints, left gripper
  (normalised: 0 closed, 1 open), right arm 6, right gripper. Bounds are the actuators' ranges;
  out-of-range commands are clipped (gym-aloha declares an incorrect [-1, 1] box);
* observation: one float32 vector (the rollout loop and store take arrays, see agents/act.py):
  `obs_type="pixels"`: the (3, H, W) frame in [0, 1] flattened (CHW) then the 14 joint positions
  (proprioception, gripper normalised); `obs_type="state"`: the 14 joint positions then the object
  pose(s) (cube: xyz + quaternion, 7; insertion: peg then socket, 14). `image_shape` (None for
  state) and `proprio_dim` give the layout to agents;
* reward: gym-aloha's staged contact reward (transfer-cube: 1 touched, 2 lifted, 3 attempted
  transfer, 4 transferred; insertion: 1 both touched, 2 both lifted, 3 peg touches socket,
  4 inserted); success = reaching the task's max reward 4; `terminated` on success (as
  gym-aloha; ACT instead runs the full episode and counts max reward == 4) unless
  `terminate_on_success=False`; `truncated` after `max_steps` (ACT: 400 transfer-cube, gym-aloha
  300). `info`: `is_success`, `stage` (the highest reward so far);
* the initial object pose comes from the env's seeded RNG with gym-aloha's ranges; it is kept as
  `object_pose` so that a privileged scripted expert can read it (envs/aloha_expert.py).

OpenGL: `MUJOCO_GL` is chosen before dm_control is first imported: the user's value if it works,
else EGL, else OSMesa (each probed once per process in a subprocess, since PyOpenGL binds its
platform at import). When none works, pixel envs fall back to `obs_type="state"` with a warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.registry import register_env

OBS_TYPES = ("pixels", "state")
TASKS = ("transfer_cube", "insertion")
N_JOINTS = 14
CONTROL_DT = 0.02  # s per env step (gym-aloha / ACT: 50 Hz)
_XML = {
    "transfer_cube": "bimanual_viperx_transfer_cube.xml",
    "insertion": "bimanual_viperx_insertion.xml",
}
# initial object positions (x, y, z ranges), gym-aloha's `sample_box_pose` / `sample_insertion_pose`
_RANGES = {
    "transfer_cube": [np.array([[0.0, 0.2], [0.4, 0.6], [0.05, 0.05]])],
    "insertion": [
        np.array([[0.1, 0.2], [0.4, 0.6], [0.05, 0.05]]),  # peg
        np.array([[-0.2, -0.1], [0.4, 0.6], [0.05, 0.05]]),  # socket
    ],
}
_PROBE = (
    "import mujoco; m = mujoco.MjModel.from_xml_string('<mujoco/>'); "
    "r = mujoco.Renderer(m, 8, 8); r.update_scene(mujoco.MjData(m)); "
    "print('render-ok', r.render().shape)"
)
_GL_BACKEND: list[str | None] = []  # cached choice: [] = not chosen yet, [None] = no GL
_GL_TRIED: list[str] = []  # the backends probed, for the fallback message


def _probe_gl(backend: str) -> bool:
    """Whether MuJoCo can render offscreen with `backend` (in a fresh process: see module doc)."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "render-ok" in proc.stdout


def gl_backend() -> str | None:
    """The offscreen OpenGL backend for pixel observations (None: no GL), chosen once per process.

    Must run before dm_control is imported (it reads MUJOCO_GL at import). If dm_control is
    already imported, its choice stands.
    """
    if _GL_BACKEND:
        return _GL_BACKEND[0]
    if "dm_control._render" in sys.modules:
        from dm_control import _render

        chosen = _render.BACKEND if _render.BACKEND in ("egl", "osmesa", "glfw") else None
    else:
        requested = os.environ.get("MUJOCO_GL")
        candidates = [requested] if requested else []
        candidates += [b for b in ("egl", "osmesa") if b != requested]
        _GL_TRIED[:] = candidates
        chosen = next((b for b in candidates if _probe_gl(b)), None)
        os.environ["MUJOCO_GL"] = chosen or "disable"
        if chosen:
            os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
    _GL_BACKEND.append(chosen)
    return chosen


def _import_gym_aloha() -> Any:
    try:
        import gym_aloha.constants as constants
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "envs.aloha needs gym-aloha: pip install 'gym-aloha==0.1.5' (or the icrl[aloha] extra)"
        ) from e
    return constants


class AlohaEnv(gym.Env):
    """A gym-aloha task with array observations and a cheap small frame (see the module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: str = "transfer_cube",
        obs_type: str = "pixels",
        height: int = 48,
        width: int = 64,
        camera: str = "top",
        max_steps: int = 400,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        render_height: int = 240,
        render_width: int = 320,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task={task!r}: expected one of {', '.join(TASKS)}")
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type={obs_type!r}: expected one of {', '.join(OBS_TYPES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        if (obs_type == "pixels" or render_mode is not None) and gl_backend() is None:
            warnings.warn(
                "envs.aloha: no offscreen OpenGL works here (tried MUJOCO_GL="
                f"{', '.join(_GL_TRIED) or os.environ.get('MUJOCO_GL')}); "
                "falling back to obs_type='state' (joint positions + object pose) and no render. "
                "Install EGL (libegl1) or OSMesa (libosmesa6) for pixel observations.",
                stacklevel=2,
            )
            obs_type, render_mode = "state", None
        elif "dm_control._render" not in sys.modules and "MUJOCO_GL" not in os.environ:
            os.environ["MUJOCO_GL"] = "disable"  # state only: never let dm_control pick GLFW
        self.constants = _import_gym_aloha()
        from dm_control import mujoco as dm_mujoco
        from gym_aloha.tasks.sim import InsertionTask, TransferCubeTask

        self.task, self.obs_type, self.camera = task, obs_type, camera
        self.height, self.width = height, width
        self.render_mode, self.render_height, self.render_width = (
            render_mode,
            render_height,
            render_width,
        )
        self.max_steps, self.terminate_on_success = max_steps, terminate_on_success
        self.physics = dm_mujoco.Physics.from_xml_path(str(self.constants.ASSETS_DIR / _XML[task]))
        vis = self.physics.model.vis
        vis.quality.offsamples = 0  # no multisampling: 4x cheaper in software GL
        vis.global_.offheight = max(height, render_height)
        vis.global_.offwidth = max(width, render_width)
        self.n_substeps = round(CONTROL_DT / float(self.physics.model.opt.timestep))
        # gym-aloha's task supplies the gripper normalisation (before_step) and the reward
        self.aloha_task = TransferCubeTask() if task == "transfer_cube" else InsertionTask()
        self.max_reward = float(self.aloha_task.max_reward)
        self.n_objects = len(_RANGES[task])
        self.image_shape: tuple[int, int, int] | None = (
            (3, height, width) if obs_type == "pixels" else None
        )
        self.proprio_dim = N_JOINTS if obs_type == "pixels" else N_JOINTS + 7 * self.n_objects
        n_image = 3 * height * width if obs_type == "pixels" else 0
        low = np.concatenate([np.zeros(n_image), np.full(self.proprio_dim, -10.0)])
        high = np.concatenate([np.ones(n_image), np.full(self.proprio_dim, 10.0)])
        self.observation_space = spaces.Box(low.astype(np.float32), high.astype(np.float32))
        ctrl = self.physics.model.actuator_ctrlrange  # 16 actuators: 6 arm + 2 fingers per side
        arm = np.r_[0:6, 8:14]
        a_low, a_high = np.zeros(N_JOINTS, np.float32), np.ones(N_JOINTS, np.float32)
        a_low[np.r_[0:6, 7:13]], a_high[np.r_[0:6, 7:13]] = ctrl[arm, 0], ctrl[arm, 1]
        self.action_space = spaces.Box(a_low, a_high, dtype=np.float32)
        self.object_pose = np.zeros(7 * self.n_objects)
        self.t, self.stage = 0, 0.0

    # -- physics ------------------------------------------------------------------------------
    def _sample_objects(self) -> np.ndarray:
        poses = []
        for ranges in _RANGES[self.task]:
            xyz = self.np_random.uniform(ranges[:, 0], ranges[:, 1])
            poses.append(np.concatenate([xyz, [1.0, 0.0, 0.0, 0.0]]))
        return np.concatenate(poses)

    def joint_positions(self) -> np.ndarray:
        """The 14 joint positions (grippers normalised), gym-aloha's `get_qpos`."""
        return self.aloha_task.get_qpos(self.physics)

    def _obs(self) -> np.ndarray:
        qpos = self.joint_positions()
        if self.obs_type == "state":
            objects = self.physics.data.qpos[16 : 16 + 7 * self.n_objects]
            return np.concatenate([qpos, objects]).astype(np.float32)
        frame = self.physics.render(
            self.height, self.width, camera_id=self.camera,
            render_flag_overrides={"shadow": False, "reflection": False},
        )  # fmt: skip
        frame = np.moveaxis(frame, -1, 0).reshape(-1).astype(np.float32) / 255.0
        return np.concatenate([frame, qpos.astype(np.float32)])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.object_pose = self._sample_objects()
        with self.physics.reset_context():
            self.physics.data.qpos[:16] = self.constants.START_ARM_POSE
            self.physics.data.ctrl[:] = self.constants.START_ARM_POSE
            self.physics.data.qpos[16 : 16 + 7 * self.n_objects] = self.object_pose
        self.t, self.stage = 0, 0.0
        return self._obs(), {"is_success": False, "stage": 0.0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(N_JOINTS)
        action = np.clip(action, self.action_space.low, self.action_space.high)
        self.aloha_task.before_step(action, self.physics)  # normalised grippers -> fingers
        self.physics.step(self.n_substeps)
        reward = float(self.aloha_task.get_reward(self.physics))
        self.stage = max(self.stage, reward)
        self.t += 1
        success = reward >= self.max_reward
        terminated = success and self.terminate_on_success
        truncated = self.t >= self.max_steps and not terminated
        info = {"is_success": bool(self.stage >= self.max_reward), "stage": self.stage}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.physics.render(self.render_height, self.render_width, camera_id=self.camera)

    def close(self) -> None:
        physics = getattr(self, "physics", None)
        if physics is not None:
            physics.free()  # release the GL context now, not at interpreter exit
            self.physics = None


def make_transfer_cube(**kwargs: Any) -> AlohaEnv:
    return AlohaEnv(task="transfer_cube", **kwargs)


def make_insertion(**kwargs: Any) -> AlohaEnv:
    return AlohaEnv(task="insertion", **kwargs)


register_env("aloha_transfer_cube", make_transfer_cube, gym_id="icrl/AlohaTransferCube-v0")
register_env("aloha_insertion", make_insertion, gym_id="icrl/AlohaInsertion-v0")


def _steps_per_second(env: Any, hold: np.ndarray, seconds: float = 5.0) -> float:
    """Env steps/s holding the start pose, after one warm-up step (which creates GL contexts)."""
    env.step(hold)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(hold)
        n += 1
    return n / (time.perf_counter() - start)


def benchmark() -> None:
    """The steps/s figures quoted in the module docstring (command there)."""
    print(f"OpenGL backend: {gl_backend()}")
    hold = np.zeros(N_JOINTS)
    for obs_type in ("state", "pixels"):
        env = AlohaEnv(obs_type=obs_type)
        env.reset(seed=0)
        hold = env.joint_positions()
        rate = _steps_per_second(env, hold)
        env.close()
        print(
            f"icrl aloha_transfer_cube obs_type={obs_type} (48x64 top camera): {rate:.0f} steps/s"
        )
    import gym_aloha  # noqa: F401  (registers gym_aloha/AlohaTransferCube-v0)

    env = gym.make("gym_aloha/AlohaTransferCube-v0").unwrapped
    env.reset(seed=0)
    print(f"gym-aloha AlohaTransferCube-v0 (480x640): {_steps_per_second(env, hold):.1f} steps/s")
