"""ACT (agents/act.py) and its tiny task PointReach (envs/point_reach.py)."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from hydra import compose, initialize_config_module

import envs
from agents import act
from envs.point_reach import ExpertConfig, PointReachEnv, PointReachExpert, target_from_frame
from rl_core.chunking import ChunkSampler
from rl_core.config import ConfigError
from rl_core.data import EpisodeStore
from rl_core.rollout import RandomPolicy, rollout

REPO = Path(__file__).resolve().parents[1]
NOISY = ExpertConfig(jitter_std=0.01, pause_prob=0.02, waypoint_pause_prob=0.5)


def config(tmp: Path, *overrides: str):
    with initialize_config_module("configs", version_base="1.3"):
        return compose(
            "act",
            overrides=[
                f"data_dir={tmp / 'data'}", f"run_dir={tmp / 'run'}",
                f"results_dir={tmp / 'results'}", "logger.mode=disabled", "train.progress=false",
                *overrides,
            ],
        )  # fmt: skip


# ----------------------------------------------------------------------------- env and expert


@pytest.mark.parametrize("obs_type", ["pixels", "state"])
def test_point_reach_passes_the_gymnasium_checker(obs_type: str) -> None:
    env = gym.make("icrl/PointReach-v0", obs_type=obs_type, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert env.render().shape == (32, 32, 3)
    np.testing.assert_allclose(obs[-env.proprio_dim :][:2], env.pos)
    if obs_type == "pixels":
        frame = obs[: -env.proprio_dim].reshape(1, *env.image_shape)
        np.testing.assert_allclose(target_from_frame(frame)[0], env.target, atol=5e-3)


def test_position_command_moves_at_most_speed_and_success_terminates() -> None:
    env = PointReachEnv(obs_type="state", speed=0.1)
    env.reset(seed=1)
    start = env.pos.copy()
    env.step(np.array([1.0, 1.0], np.float32))
    assert np.linalg.norm(env.pos - start) == pytest.approx(0.1, abs=1e-6)
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(env.target)
        if terminated:
            break
    assert terminated and reward == 1.0 and info["is_success"] and not truncated


@pytest.mark.parametrize("expert", [ExpertConfig(), NOISY], ids=["clean", "noisy"])
def test_scripted_expert_succeeds_and_noise_adds_pauses(expert: ExpertConfig) -> None:
    fns = [functools.partial(envs.make, "point_reach")] * 40
    store_result = rollout(fns, PointReachExpert(0.03, expert, seed=0), seed=0, progress=False)
    assert store_result.returns.mean() == 1.0  # every demonstration reaches its target
    clean = rollout(fns, PointReachExpert(0.03, seed=0), seed=0, progress=False)
    if expert.waypoint_pause_prob > 0:  # hesitations make the noisy demonstrations longer
        assert store_result.lengths.mean() > clean.lengths.mean() + 3


# ----------------------------------------------------------------------------- loss and model


def test_cvae_loss_on_a_hand_made_batch_equals_the_formula() -> None:
    pred = torch.tensor(
        [[[1.0, 0.0], [0.5, 0.5], [9.0, 9.0]], [[0.0, 0.0], [0.0, 1.0], [2.0, 2.0]]]
    )
    target = torch.tensor(
        [[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]]
    )
    is_pad = torch.tensor([[False, False, True], [False, False, False]])
    mu = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    loss, l1, kl = act.act_loss(pred, target, is_pad, mu, logvar, kl_weight=10.0)
    # L1 over the 5 valid slots (10 numbers): 1 + 0 + .5 + .5 | 1 + 1 + 1 + 0 + 1 + 1
    assert l1.item() == pytest.approx(7.0 / 10)
    # KL per sample: 0.5 * sum(mu^2 + var - 1 - logvar)
    kl0 = 0.5 * ((0 + 1 - 1 - 0) + (1 + 2 - 1 - math.log(2.0)))
    kl1 = 0.5 * ((4 + 1 - 1 - 0) + (0 + 1 - 1 - 0))
    assert kl.item() == pytest.approx((kl0 + kl1) / 2)
    assert loss.item() == pytest.approx(0.7 + 10.0 * (kl0 + kl1) / 2)
    # the official reduction: a mean over all 12 numbers, padded ones as zero
    _, l1_all, _ = act.act_loss(pred, target, is_pad, mu, logvar, 10.0, "all")
    assert l1_all.item() == pytest.approx(7.0 / 12)
    # without the CVAE there is no KL term
    assert act.act_loss(pred, target, is_pad, None, None, 10.0)[2].item() == 0.0


def small_model(chunk_size: int = 4, **kw) -> act.ACTModel:
    cfg = act.ACTConfig(
        chunk_size=chunk_size, hidden_dim=32, dim_feedforward=64, n_heads=2, n_encoder_layers=1,
        n_vae_encoder_layers=1, latent_dim=8, cnn_channels=[8, 16], **kw,
    )  # fmt: skip
    return act.ACTModel(cfg, (3, 16, 16), proprio_dim=2, action_dim=2)


def test_model_shapes_gradients_and_first_decoder_layer_quirk() -> None:
    torch.manual_seed(0)
    model = small_model(n_decoder_layers=3)
    obs = torch.rand(5, 3 * 16 * 16 + 2)
    action, is_pad = torch.rand(5, 4, 2), torch.zeros(5, 4, dtype=torch.bool)
    is_pad[0, 2:] = True
    pred, target, mu, logvar = model(obs, action, is_pad)
    assert pred.shape == target.shape == (5, 4, 2) and mu.shape == logvar.shape == (5, 8)
    act.act_loss(pred, target, is_pad, mu, logvar, 10.0)[0].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(model.decoder) == 3
    model.eval()
    assert model.predict(obs).shape == (5, 4, 2)
    # the official quirk: only the first decoder layer's output is used -> one layer is built
    assert len(small_model(n_decoder_layers=7, first_decoder_layer_only=True).decoder) == 1
    # k = 1 (single-step imitation, the ablation's baseline) goes through the same model
    single = small_model(chunk_size=1)
    pred1, *_ = single(obs, action[:, :1], is_pad[:, :1])
    assert pred1.shape == (5, 1, 2)
    # padded slots do not change the CVAE's latent (masked in its encoder)
    changed = action.clone()
    changed[0, 2:] += 5.0
    proprio_n = model._proprio_in(obs[:, -2:])
    latents = [
        model.encode_latent(proprio_n, model.normalised_target(a, obs[:, -2:]), is_pad)[0]
        for a in (action, changed)
    ]
    torch.testing.assert_close(latents[0], latents[1])


def test_relative_model_predicts_absolute_actions() -> None:
    torch.manual_seed(0)
    model = small_model(action_repr="relative").eval()
    model.action_mean.fill_(0.1)
    model.action_std.fill_(2.0)
    obs = torch.rand(3, 3 * 16 * 16 + 2)
    state = obs[:, -2:]
    decoded = model.decode(*model.split_obs(obs)[:1], model._proprio_in(state), torch.zeros(3, 8))
    torch.testing.assert_close(model.predict(obs), decoded * 2.0 + 0.1 + state[:, None])
    action = torch.rand(3, 4, 2)
    torch.testing.assert_close(
        model.normalised_target(action, state), (action - state[:, None] - 0.1) / 2.0
    )


# ----------------------------------------------------------------------------- commands


def run_cli(cmd: str, tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "agents.act", cmd, f"data_dir={tmp / 'data'}",
        f"run_dir={tmp / 'run'}", f"results_dir={tmp / 'results'}", "logger.mode=disabled",
        "train.progress=false", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_collect_train_eval_and_results_table(tmp_path: Path) -> None:
    tiny = [
        "demos.episodes=4", "env.image_size=16", "agent.cnn_channels=[8,16]",
        "agent.hidden_dim=16", "agent.dim_feedforward=32", "agent.eval_episodes=3",
        "train.steps=3", "train.batch_size=4",
    ]  # fmt: skip
    proc = run_cli("train", tmp_path, *tiny)
    stores = list((tmp_path / "data" / "point_reach").glob("demos_clean_*"))
    assert len(stores) == 1  # `train` collected the demonstrations once, atomically
    store = EpisodeStore(stores[0], create=False)
    assert len(store) == 4 and store.attrs["complete"] and store.metadata[0]["source"] == "scripted"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("eval/success_rate_ensemble" in r for r in rows)
    with (tmp_path / "results" / "act" / "ablation.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["env", "demos", "chunk", "execution", "seed", "success_rate"]
    assert sorted(r["execution"] for r in table) == ["ensemble", "open_loop", "replan"]
    assert {(r["env"], r["demos"], r["chunk"], r["seed"]) for r in table} == {
        ("point_reach", "clean", "10", "0")
    }
    # `collect` reuses the cached store; `eval` reloads weights and normalisation
    assert "4 demonstrations" in run_cli("collect", tmp_path, *tiny).stdout
    assert "success_rate_replan" in run_cli("eval", tmp_path, *tiny).stdout
    del proc


def test_bad_execution_mode_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="open_loop, replan, ensemble"):
        act.build(config(tmp_path, "agent.execution=closed"))
    with pytest.raises(ConfigError, match="no scripted expert"):
        act.demonstrations(config(tmp_path, "env=darkroom"))


# ----------------------------------------------------------------------------- learning


def test_short_training_imitates_the_expert_far_better_than_random(tmp_path: Path) -> None:
    """A few hundred steps on 50 clean demonstrations (low-dimensional state, CPU-sized ACT)
    reach the target from held-out initial states far more often than random commands."""
    cfg = config(
        tmp_path, "env.obs_type=state", "train.steps=400", "train.lr=1e-3", "train.log_every=100",
        "agent.executions=[ensemble]",
    )  # fmt: skip
    act.train(cfg)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    act_success = [r["eval/success_rate"] for r in rows if "eval/success_rate" in r][-1]
    fns = act.env_fns(cfg.env, 200)
    random = rollout(
        fns, RandomPolicy(fns[0]().action_space, seed=0), seed=act.EVAL_SEED, progress=False
    )
    random_success = float(random.returns.mean())
    print(f"ACT success {act_success:.2f}, random {random_success:.2f}")
    assert random_success < 0.3
    assert act_success >= random_success + 0.5, (act_success, random_success)


def test_chunk_sampler_on_recorded_demonstrations(tmp_path: Path) -> None:
    cfg = config(tmp_path, "demos.episodes=3", "env.obs_type=state")
    store = act.demonstrations(cfg, progress=False)
    sampler = ChunkSampler(store, 10)
    last = sampler.batch_at(np.array([store.episode_lengths[0] - 1]))
    assert last["is_pad"][0].tolist() == [False] + [True] * 9
    # absolute position commands: the last one is within the success radius of the target
    assert np.linalg.norm(last["action"][0, 0] - last["obs"][0, 2:]) < cfg.env.success_radius + 1e-6


def test_replan_runs_at_most_k_actions_so_k1_works_in_every_mode() -> None:
    model = small_model(chunk_size=1).eval()
    for mode in ("open_loop", "replan", "ensemble"):
        policy = act.ACTPolicy(model, model.cfg, torch.device("cpu"), mode)
        policy.reset(2)
        obs = np.random.default_rng(0).random((2, 3 * 16 * 16 + 2), dtype=np.float32)
        for _ in range(3):
            assert policy.act(obs).shape == (2, 2)
        assert policy.queries == 3  # k = 1: every mode queries every step


def test_summary_table_gives_mean_and_t_interval_over_seeds() -> None:
    rows = [
        {"env": "e", "demos": "noisy", "chunk": "10", "execution": "ensemble", "seed": str(s),
         "success_rate": str(v)}
        for s, v in enumerate([0.5, 0.6, 0.7])
    ]  # fmt: skip
    mean, ci = act.mean_ci95([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and ci == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert act.mean_ci95([0.4]) == (0.4, 0.0)
    table = act.summary_table(rows).splitlines()
    assert table[0] == "| env | demos | chunk k | open_loop | replan | ensemble | n |"
    assert table[2] == "| e | noisy | 10 | – | – | 60 ± 25 | 3 |"


def test_paper_experiment_builds_acts_sizes(tmp_path: Path) -> None:
    """experiment=paper (configs/scoped/act/): k = 100, width 512, 4 + 7 + 4 layers; the
    transformers alone are ~72 M parameters (ACT reports ~80 M with its ResNet18 backbone)."""
    from rl_core.config import to_dataclass

    cfg = config(tmp_path, "experiment=paper", "env=aloha_transfer_cube")
    acfg = to_dataclass(cfg.agent, act.ACTConfig, "agent")
    assert (acfg.chunk_size, acfg.hidden_dim, acfg.n_decoder_layers) == (100, 512, 7)
    assert cfg.train.batch_size == 8 and cfg.train.lr == 1e-5
    model = act.ACTModel(acfg, image_shape=(3, 48, 64), proprio_dim=14, action_dim=14)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    backbone = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    assert len(model.decoder) == 7
    assert 68 < millions - backbone < 76 and 70 < millions < 85, (millions, backbone)
