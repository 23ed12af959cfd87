"""ACT's simulated ALOHA tasks (envs/aloha.py) and the scripted transfer-cube expert
(envs/aloha_expert.py), recorded through agents.act."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from agents import act
from envs.aloha import N_JOINTS, AlohaEnv, gl_backend
from envs.aloha_expert import AlohaExpertConfig, AlohaScriptedExpert, quat_axis_angle, quat_mul
from rl_core.rollout import rollout
from tests.test_act import config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "task,obs_type",
    [("transfer_cube", "pixels"), ("transfer_cube", "state"), ("insertion", "state")],
)
def test_aloha_passes_the_gymnasium_checker(task: str, obs_type: str) -> None:
    env = AlohaEnv(task=task, obs_type=obs_type, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert info == {"is_success": False, "stage": 0.0}
    assert env.render().shape == (240, 320, 3)
    joints = env.joint_positions()
    if obs_type == "pixels":
        assert env.image_shape == (3, 48, 64) and env.proprio_dim == N_JOINTS
        np.testing.assert_allclose(obs[-N_JOINTS:], joints, rtol=1e-6)
    else:  # joints, then the object pose(s) as reset
        n_objects = 1 if task == "transfer_cube" else 2
        assert env.image_shape is None and obs.shape == (N_JOINTS + 7 * n_objects,)
        np.testing.assert_allclose(obs[N_JOINTS:], env.object_pose, atol=1e-6)
    # the same seed gives the same initial state, a new seed another object pose
    pose = env.object_pose.copy()
    np.testing.assert_array_equal(env.reset(seed=0)[0], obs)
    env.reset(seed=1)
    assert not np.allclose(env.object_pose, pose)
    env.close()


def test_pixel_frame_shows_the_cube_and_state_matches_pixels_physics() -> None:
    assert gl_backend() in ("egl", "osmesa")  # this machine renders offscreen
    pixels = envs.make("aloha_transfer_cube", obs_type="pixels")
    state = envs.make("aloha_transfer_cube", obs_type="state")
    obs, _ = pixels.reset(seed=4)
    frame = obs[: 3 * 48 * 64].reshape(3, 48, 64)
    red = (frame[0] > 0.6) & (frame[1] < 0.2) & (frame[2] < 0.2)
    assert 1 <= red.sum() <= 20  # the red cube, a few pixels at 48x64
    state.reset(seed=4)
    hold = pixels.joint_positions()
    for _ in range(5):  # rendering does not change the physics
        o_pix, *_ = pixels.step(hold)
        o_state, *_ = state.step(hold)
    np.testing.assert_allclose(o_pix[-N_JOINTS:], o_state[:N_JOINTS], atol=1e-6)
    pixels.close()
    state.close()


def test_joint_targets_are_clipped_and_episodes_truncate() -> None:
    envs_ = [AlohaEnv(obs_type="state", max_steps=3) for _ in range(2)]
    for env in envs_:
        env.reset(seed=0)
    start = envs_[0].joint_positions()
    too_far = envs_[0].step(np.full(N_JOINTS, 100.0, np.float32))
    at_bound = envs_[1].step(envs_[1].action_space.high)
    np.testing.assert_array_equal(too_far[0], at_bound[0])  # out-of-range targets are clipped
    assert too_far[1:4] == (0.0, False, False) and too_far[4]["stage"] == 0.0
    env = envs_[0]
    env.reset(seed=0)
    for _ in range(2):
        *_, truncated, _ = env.step(start)
        assert not truncated
    *_, truncated, _ = env.step(start)
    assert truncated
    assert gym.spec("icrl/AlohaTransferCube-v0") is not None


def test_quaternion_helpers_follow_mujoco() -> None:
    q = quat_mul(quat_axis_angle([0, 0, 1], 90), quat_axis_angle([0, 0, 1], 90))
    np.testing.assert_allclose(q, quat_axis_angle([0, 0, 1], 180), atol=1e-12)


def test_scripted_expert_transfers_the_cube_and_noise_adds_pauses() -> None:
    """Seeded episodes through the rollout loop: the clean expert reaches reward 4 (success) on
    both, the noisy one on at least one (agents.act drops failures); hesitations slow it."""
    lengths = {}
    for name, noise in [
        ("clean", AlohaExpertConfig()),
        ("noisy", AlohaExpertConfig(jitter_std=0.005, pause_prob=0.02, waypoint_pause_prob=0.5)),
    ]:
        env_list = [AlohaEnv(obs_type="state") for _ in range(2)]
        expert = AlohaScriptedExpert(env_list, noise, seed=0)
        result = rollout([lambda e=e: e for e in env_list], expert, seed=0, progress=False)
        success = [bool(info[-1]["is_success"]) for info in result.infos]
        assert all(success) if name == "clean" else any(success), (name, success)
        assert result.returns.max() >= 4.0
        lengths[name] = result.lengths.mean()
    assert lengths["noisy"] > lengths["clean"] + 20


@pytest.mark.parametrize("env", ["aloha_transfer_cube_state", "aloha_transfer_cube"])
def test_act_collects_only_successful_aloha_demonstrations_and_trains(
    tmp_path: Path, env: str
) -> None:
    cfg = config(
        tmp_path, f"env={env}", "demos.episodes=2", "train.steps=2", "train.batch_size=4",
        "agent.eval_episodes=1", "agent.executions=[open_loop]", "agent.execution=open_loop",
        "agent.hidden_dim=16", "agent.dim_feedforward=32", "agent.cnn_channels=[8,16]",
    )  # fmt: skip
    store = act.demonstrations(cfg, progress=False)
    assert len(store) == 2 and all(m["source"] == "scripted" for m in store.metadata)
    assert all(store.episode(i)["reward"].max() == 4.0 for i in range(2))  # successes only
    obs_dim = 21 if env.endswith("_state") else 3 * 48 * 64 + 14
    episode = store.episode(0)
    assert episode["obs"].shape[1:] == (obs_dim,) and episode["action"].shape[1:] == (14,)
    act.train(cfg)
    table = (tmp_path / "results" / "act" / "ablation.csv").read_text().splitlines()
    assert table[1].startswith(f"{env},clean,10,open_loop,0,")


def test_scripted_insertion_expert_inserts_the_peg() -> None:
    env_list = [AlohaEnv(task="insertion", obs_type="state") for _ in range(2)]
    expert = AlohaScriptedExpert(env_list, seed=0)
    result = rollout([lambda e=e: e for e in env_list], expert, seed=0, progress=False)
    assert any(info[-1]["is_success"] for info in result.infos)  # ~83% of seeds succeed
    assert all(info[-1]["stage"] >= 2.0 for info in result.infos)  # both objects lifted at least


def test_without_working_egl_the_env_falls_back_with_a_message(tmp_path: Path) -> None:
    """An EGL device that does not exist makes EGL fail: the env takes OSMesa where it works,
    else state observations, and says so."""
    code = (
        "import warnings, envs\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    env = envs.make('aloha_transfer_cube')\n"
        "import os; print('RESULT', env.obs_type, env.observation_space.shape[0], "
        "os.environ['MUJOCO_GL'], any('falling back' in str(x.message) for x in w))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update(MUJOCO_EGL_DEVICE_ID="99", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    obs_type, dim, backend, warned = result.split()[1:]
    if backend == "osmesa":  # software GL without EGL: pixels still work
        assert obs_type == "pixels" and warned == "False"
    else:
        assert (obs_type, dim, backend, warned) == ("state", "21", "disable", "True")
