"""Scripted demonstrations for `envs.aloha` (transfer-cube, insertion), made the way ACT made its.

ACT (Zhao et al. 2023; official `scripted_policy.py` + `record_sim_episodes.py` in
github.com/tonyzhaozh/act) scripts waypoints for both grippers in end-effector space, runs them in
an end-effector-controlled copy of the scene (each gripper welded to a mocap body), records the
joint positions it goes through, and replays those as joint-position targets in the joint-space
env. Here the same; the waypoints follow the structure and timing of ACT's scripted policies:

* transfer-cube: the right gripper goes above the cube (tilted 60 degrees down and, ours, turned
  toward the cube as seen from the right arm's base), down, closes, lifts to the meeting point,
  later opens and retreats; the left gripper, turned 90 degrees about its axis, waits beside the
  meeting point, moves in to take the cube, closes, retreats. Success (reward 4) is the left
  gripper touching the cube while it is off the table, reached at ~210 steps of the 400;
* insertion: the right gripper takes the peg, the left one the socket, both lift to either side
  of the middle and push together until the peg touches the pin (~330 steps).

Deviations from ACT's script (besides the waypoint values, which are ours): the end-effector
scene is gym-aloha's `bimanual_viperx_end_effector_<task>.xml`, whose mocap welds are
stiffened (solimp 0.9/0.95 instead of 0.25/0.25: with MuJoCo 3 the soft weld left the gripper
centimetres off its target and the scripted grasp failed) and whose mocap bodies start exactly
at the pose the weld holds (the gripper's finger point, 13.5 cm ahead of `gripper_link`) so
nothing jumps at the start; transfer-cube's grasp orientation yaws toward the cube (cubes near
the right arm's base were missed otherwise); the replayed action at step t is the joint position the
end-effector sim reached after step t (ACT: before it), grippers replaced by their normalised
commands, as ACT does.

Noise ("human-like", `AlohaExpertConfig`): Gaussian jitter on both end-effector targets every
step (hand tremor, metres) and hesitations: with `pause_prob` per step and `waypoint_pause_prob`
at every waypoint, both grippers hold still for `pause_min..pause_max` steps and the plan's clock
stops. Paused states look like moving ones, so the demonstrations are non-Markovian.

`AlohaScriptedExpert` is a rollout `Policy` (rl_core.rollout) for a batch of `AlohaEnv`s. It is
privileged, as ACT's scripted policy (which reads the object pose from the simulator): it holds
the env objects and reads each episode's initial object pose(s) (`AlohaEnv.object_pose`), so
the envs must be stepped in this process (the rollout loop's default `sync` vectorisation).
Replays that fail are recorded like any episode; agents.act keeps only the successful ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.aloha import CONTROL_DT, N_JOINTS, _import_gym_aloha

__all__ = [
    "AlohaExpertConfig",
    "AlohaScriptedExpert",
    "EndEffectorSim",
    "plan_insertion",
    "plan_transfer_cube",
]

RIGHT_BASE = np.array([0.469, 0.5, 0.0])  # the right arm's base (vx300s_right.xml)
MEET = np.array([0.0, 0.5, 0.25])  # where the cube changes hands
PLAN_STEPS = 400  # ACT's episode length for both tasks


@dataclass
class AlohaExpertConfig:
    """Noise of the scripted expert; all zero = clean demonstrations."""

    jitter_std: float = 0.0  # m, Gaussian noise on both end-effector targets every step
    pause_prob: float = 0.0  # chance per step of a hesitation anywhere on the way
    waypoint_pause_prob: float = 0.0  # chance of a hesitation at each waypoint
    pause_min: int = 5  # hesitation length in steps, uniform in [pause_min, pause_max]
    pause_max: int = 15


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions (MuJoCo's convention)."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def quat_axis_angle(axis: Sequence[float], degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * axis])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    return quat_mul(quat_mul(q, np.concatenate([[0.0], v])), quat_conj(q))[1:]


@dataclass
class Waypoints:
    """One gripper's plan: at step t[i] be at xyz[i] with orientation quat[i] and gripper g[i]."""

    t: np.ndarray  # (n,)
    xyz: np.ndarray  # (n, 3)
    quat: np.ndarray  # (n, 4)
    gripper: np.ndarray  # (n,) normalised: 0 closed, 1 open

    @classmethod
    def of(cls, rows: list[tuple[float, Any, Any, float]]) -> Waypoints:
        t, xyz, quat, g = zip(*rows)
        return cls(np.array(t, float), np.array(xyz, float), np.array(quat, float), np.array(g))

    def at(self, clock: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Linear interpolation between the waypoints around `clock` (held after the last)."""
        i = int(np.clip(np.searchsorted(self.t, clock, side="right") - 1, 0, len(self.t) - 2))
        f = float(np.clip((clock - self.t[i]) / (self.t[i + 1] - self.t[i]), 0.0, 1.0))
        quat = self.quat[i] + f * (self.quat[i + 1] - self.quat[i])
        return (
            self.xyz[i] + f * (self.xyz[i + 1] - self.xyz[i]),
            quat / np.linalg.norm(quat),
            float(self.gripper[i] + f * (self.gripper[i + 1] - self.gripper[i])),
        )


def plan_transfer_cube(
    cube_xyz: np.ndarray, init_left: np.ndarray, init_right: np.ndarray
) -> tuple[Waypoints, Waypoints]:
    """Waypoints (left, right) for the grippers' finger points, from their start poses (7,)."""
    cube_xyz = np.asarray(cube_xyz, dtype=np.float64)
    to_cube = cube_xyz - RIGHT_BASE
    yaw = np.degrees(np.arctan2(-to_cube[1], -to_cube[0]))  # 0 when the cube is straight ahead
    pick = quat_mul(
        quat_mul(quat_axis_angle([0, 0, 1], -yaw), init_right[3:]),
        quat_axis_angle([0, 1, 0], -60),
    )
    take = quat_axis_angle([1, 0, 0], 90)  # left gripper turned: its fingers close vertically
    rest = np.array([1.0, 0.0, 0.0, 0.0])
    above, grasp = cube_xyz + [0, 0, 0.08], cube_xyz + [0, 0, -0.015]
    wait, handover = MEET + [-0.1, 0, -0.02], MEET + [0.02, 0, -0.02]
    left = Waypoints.of(
        [
            (0, init_left[:3], init_left[3:], 0.0),
            (100, wait, take, 1.0),  # open, beside the meeting point
            (260, handover, take, 1.0),  # move in around the cube
            (310, handover, take, 0.0),  # close
            (360, wait, rest, 0.0),  # pull the cube out of the right gripper
            (PLAN_STEPS, wait, rest, 0.0),
        ]
    )
    right = Waypoints.of(
        [
            (0, init_right[:3], init_right[3:], 0.0),
            (90, above, pick, 1.0),  # open, above the cube
            (130, grasp, pick, 1.0),  # down
            (170, grasp, pick, 0.0),  # close
            (200, MEET + [0.05, 0, 0], pick, 0.0),  # lift toward the meeting point
            (220, MEET, pick, 0.0),
            (310, MEET, pick, 1.0),  # open: the left gripper holds it now
            (360, MEET + [0.1, 0, 0], pick, 1.0),  # retreat
            (PLAN_STEPS, MEET + [0.1, 0, 0], pick, 1.0),
        ]
    )
    return left, right


def plan_insertion(
    peg_xyz: np.ndarray, socket_xyz: np.ndarray, init_left: np.ndarray, init_right: np.ndarray
) -> tuple[Waypoints, Waypoints]:
    """Waypoints (left, right): the right gripper takes the peg, the left one the socket (both
    tilted 60 degrees down, no yaw: a yawed grasp misaligns peg and socket), both lift to the
    middle and push together until the peg touches the pin (reward 4)."""
    pick_right = quat_mul(init_right[3:], quat_axis_angle([0, 1, 0], -60))
    pick_left = quat_mul(init_left[3:], quat_axis_angle([0, 1, 0], 60))
    meet, lift = MEET + [0.0, 0.0, -0.1], 0.00715  # peg held slightly higher than the socket
    rows = []
    for obj, pick, side in ((socket_xyz, pick_left, -1.0), (peg_xyz, pick_right, 1.0)):
        start = init_left if side < 0 else init_right
        dz = 0.0 if side < 0 else lift
        rows.append(
            [
                (0, start[:3], start[3:], 0.0),
                (120, obj + [0, 0, 0.08], pick, 1.0),  # open, above the object
                (170, obj + [0, 0, -0.03], pick, 1.0),  # down
                (220, obj + [0, 0, -0.03], pick, 0.0),  # close
                (285, meet + [0.1 * side, 0, dz], pick, 0.0),  # lift to either side of the middle
                (340, meet + [0.05 * side, 0, dz], pick, 0.0),  # push together: insert
                (PLAN_STEPS, meet + [0.05 * side, 0, dz], pick, 0.0),
            ]
        )
    return Waypoints.of(rows[0]), Waypoints.of(rows[1])


class EndEffectorSim:
    """gym-aloha's end-effector-controlled scene: each gripper follows a mocap body's pose."""

    def __init__(self, task: str = "transfer_cube") -> None:
        from dm_control import mujoco as dm_mujoco
        from gym_aloha.tasks.sim_end_effector import (
            InsertionEndEffectorTask,
            TransferCubeEndEffectorTask,
        )

        if task not in ("transfer_cube", "insertion"):
            raise ValueError(f"task={task!r}: expected transfer_cube or insertion")
        self.task_name = task
        self.constants = _import_gym_aloha()
        xml = self.constants.ASSETS_DIR / f"bimanual_viperx_end_effector_{task}.xml"
        self.physics = dm_mujoco.Physics.from_xml_path(str(xml))
        self.physics.model.eq_solimp[:, :3] = [0.9, 0.95, 0.001]  # stiff welds (module doc)
        # supplies get_qpos and the staged reward
        self.task = (
            TransferCubeEndEffectorTask() if task == "transfer_cube" else InsertionEndEffectorTask()
        )
        self.n_objects = 1 if task == "transfer_cube" else 2
        self.n_substeps = round(CONTROL_DT / float(self.physics.model.opt.timestep))

    def reset(self, object_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start pose, objects at `object_pose` (7 per object: cube, or peg then socket); returns
        the mocap poses (left, right) (7,) that the welds hold at the start, i.e. where each
        gripper's finger point is."""
        physics, c = self.physics, self.constants
        with physics.reset_context():
            physics.data.qpos[:16] = c.START_ARM_POSE
            physics.data.qpos[16 : 16 + 7 * self.n_objects] = object_pose
            closed = c.PUPPET_GRIPPER_POSITION_CLOSE
            physics.data.ctrl[:] = [closed, -closed, closed, -closed]
        poses = []
        for i, side in enumerate(("left", "right")):
            body = f"vx300s_{side}/gripper_link"
            g_pos, g_quat = physics.named.data.xpos[body], physics.named.data.xquat[body]
            rel_pos, rel_quat = physics.model.eq_data[i, 3:6], physics.model.eq_data[i, 6:10]
            # weld: gripper = mocap * relpose  =>  mocap = gripper * relpose^-1
            quat = quat_mul(g_quat, quat_conj(rel_quat))
            pos = g_pos - quat_rotate(quat, rel_pos)
            physics.data.mocap_pos[i], physics.data.mocap_quat[i] = pos, quat
            poses.append(np.concatenate([pos, quat]))
        physics.forward()
        return poses[0], poses[1]

    def step(
        self, left: np.ndarray, left_grip: float, right: np.ndarray, right_grip: float
    ) -> tuple[np.ndarray, float]:
        """Move the mocaps to `left`/`right` (7,) and the grippers to their normalised commands;
        return the joint action that reproduces the step (the 14 joint positions reached, the
        grippers as their normalised commands) and the staged reward."""
        physics, c = self.physics, self.constants
        physics.data.mocap_pos[0], physics.data.mocap_quat[0] = left[:3], left[3:]
        physics.data.mocap_pos[1], physics.data.mocap_quat[1] = right[:3], right[3:]
        g_left = c.unnormalize_puppet_gripper_position(left_grip)
        g_right = c.unnormalize_puppet_gripper_position(right_grip)
        physics.data.ctrl[:] = [g_left, -g_left, g_right, -g_right]
        physics.step(self.n_substeps)
        action = self.task.get_qpos(physics)
        action[6], action[13] = left_grip, right_grip
        return action, float(self.task.get_reward(physics))


def scripted_episode(
    sim: EndEffectorSim,
    object_pose: np.ndarray,
    cfg: AlohaExpertConfig,
    rng: np.random.Generator,
    max_steps: int = PLAN_STEPS,
) -> tuple[np.ndarray, float]:
    """One scripted episode in the end-effector sim: joint actions (max_steps, 14) for the
    joint-space env, and the highest staged reward the end-effector sim reached."""
    init_left, init_right = sim.reset(object_pose)
    if sim.task_name == "transfer_cube":
        left, right = plan_transfer_cube(object_pose[:3], init_left, init_right)
    else:
        left, right = plan_insertion(object_pose[:3], object_pose[7:10], init_left, init_right)
    stops = np.union1d(left.t[1:-1], right.t[1:-1])  # waypoint times: hesitation chances
    actions = np.zeros((max_steps, N_JOINTS))
    clock, pause_left, best = 0.0, 0, 0.0
    held = (left.at(0.0), right.at(0.0))
    for t in range(max_steps):
        if pause_left == 0:
            previous, clock = clock, clock + 1.0
            at_stop = bool(((stops > previous) & (stops <= clock)).any())
            if rng.random() < cfg.pause_prob or (
                at_stop and rng.random() < cfg.waypoint_pause_prob
            ):
                pause_left = int(rng.integers(cfg.pause_min, cfg.pause_max + 1))
            held = (left.at(clock), right.at(clock))
        else:
            pause_left -= 1
        (xl, ql, gl), (xr, qr, gr) = held
        if cfg.jitter_std > 0:
            xl = xl + rng.normal(0.0, cfg.jitter_std, 3)
            xr = xr + rng.normal(0.0, cfg.jitter_std, 3)
        actions[t], reward = sim.step(np.r_[xl, ql], gl, np.r_[xr, qr], gr)
        best = max(best, reward)
    return actions.astype(np.float32), best


class AlohaScriptedExpert:
    """Scripted demonstrator for a batch of `AlohaEnv`s of one task (a rollout `Policy`).

    At each env's first step of an episode it runs the end-effector sim from that env's initial
    object pose(s) (with this expert's noise) and then replays the recorded joint actions, one per
    step. `ee_success` counts the plans whose end-effector run reached the max reward.
    """

    def __init__(
        self,
        envs: Sequence[Any],
        cfg: AlohaExpertConfig | None = None,
        seed: int = 0,
        max_steps: int = PLAN_STEPS,
    ) -> None:
        self.envs = [env.unwrapped for env in envs]
        tasks = {getattr(env, "task", None) for env in self.envs}
        if len(tasks) != 1 or not tasks <= {"transfer_cube", "insertion"}:
            raise ValueError(f"expected AlohaEnvs of one task, got tasks {tasks}")
        self.cfg = cfg or AlohaExpertConfig()
        self.rng = np.random.default_rng(seed)
        self.max_steps = max_steps
        self.sim = EndEffectorSim(tasks.pop())
        self.plans: list[np.ndarray | None] = []
        self.t = np.zeros(0, dtype=np.int64)
        self.planned = self.ee_success = 0

    def reset(self, n_envs: int) -> None:
        if n_envs != len(self.envs):
            raise ValueError(f"expert holds {len(self.envs)} envs, the rollout has {n_envs}")
        self.plans = [None] * n_envs
        self.t = np.zeros(n_envs, dtype=np.int64)

    def act(self, obs: np.ndarray) -> np.ndarray:
        actions = np.zeros((len(self.envs), N_JOINTS), dtype=np.float32)
        for i, env in enumerate(self.envs):
            plan = self.plans[i]
            if plan is None:
                plan, best = scripted_episode(
                    self.sim, env.object_pose, self.cfg, self.rng, self.max_steps
                )
                self.plans[i] = plan
                self.planned += 1
                self.ee_success += int(best >= env.max_reward)
            actions[i] = plan[min(self.t[i], len(plan) - 1)]
        self.t += 1
        return actions

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        for i in np.flatnonzero(np.asarray(dones, dtype=bool)):
            self.plans[i] = None
            self.t[i] = 0
