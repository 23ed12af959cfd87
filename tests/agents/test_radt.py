"""RA-DT (agents/radt.py): CLI end to end, KV-cached policy vs full forward, empty memory, and
the retrieval hit rate of a short training run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.dt import DTModel, DTPolicy
from agents.radt import RADTConfig, RADTModel, RADTPolicy, _dt_config
from retrieval.embedders import DTEmbedder
from rl_core.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
HORIZON = 100


def run_radt(cmd: str, tmp: Path, *overrides: str, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "agents.radt", cmd,
        f"data_dir={tmp / 'data'}", f"run_dir={tmp / 'run'}", f"results_dir={tmp / 'results'}",
        "logger.mode=disabled", "train.progress=false", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_radt_cli_train_eval_and_retrieval_hit_rate(tmp_path: Path) -> None:
    """Tiny `train` + `eval` through the CLI: checkpoint, embedder, results rows, and a
    retrieval task hit rate far above chance (1/80 training goals)."""
    overrides = [
        "source.episodes=10", "source.histories_per_task=1", "train.steps=20",
        "train.batch_size=16", "train.log_every=10", "embedder.steps=20", "agent.eval_trials=2",
    ]  # fmt: skip
    run_radt("train", tmp_path, *overrides)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.pt").exists()
    assert (run_dir / "embedder.pt").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [r["icl/mean_reward"] for r in rows if "icl/mean_reward" in r]
    assert len(curve) == 2
    hits = [r["train/retrieval_search_task_hit_rate"] for r in rows if "train/retrieval_search_task_hit_rate" in r]  # fmt: skip
    assert hits and np.mean(hits) > 5 / 80, hits
    own = [r["train/retrieval_trajectory_hit_rate"] for r in rows if "train/retrieval_trajectory_hit_rate" in r]  # fmt: skip
    assert own and max(own) == 0.0  # never the query's own trajectory
    with (tmp_path / "results" / "darkroom" / "icl_10x10.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["agent"], r["trial"]) for r in table] == [("radt", "1"), ("radt", "2")]
    # the pretrained embedder is cached in data_dir and reused by `eval` through run_dir
    assert list((tmp_path / "data").glob("*/embedder_dt_*/checkpoints/last.pt"))
    proc = run_radt("eval", tmp_path, *overrides)
    assert "return_last_trial" in proc.stdout
    # `diagnose` re-runs the same evaluation: per-task returns whose mean is the table's curve
    proc = run_radt("diagnose", tmp_path, *overrides)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    returns = np.load(run_dir / "icl_returns.npy")
    assert returns.shape == (20, 2)
    table_curve = [float(r["mean_reward"]) for r in table]
    np.testing.assert_allclose(returns.mean(0), table_curve, atol=1e-4)
    assert stats["late_mean_return"] == pytest.approx(returns[:, 1].mean())


def test_radt_lm_variant_runs_offline_end_to_end(tmp_path: Path) -> None:
    """`embedder=lm`: the frozen MiniLM (installed package, no download) behind FrozenHopfield
    embeds keys and queries; the rows are named radt_lm."""
    overrides = [
        "embedder=lm", "env.num_train_tasks=4", "env.num_eval_tasks=2", "source.episodes=4",
        "source.histories_per_task=1", "train.steps=4", "train.batch_size=4",
        "agent.eval_trials=2", "agent.retrieve_every=25",
    ]  # fmt: skip
    proc = run_radt("train", tmp_path, *overrides)
    assert "memory: 64 keys" in proc.stdout  # 16 episodes x 100 steps / C = 25
    with (tmp_path / "results" / "darkroom" / "icl_10x10.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["agent"], r["trial"]) for r in table] == [("radt_lm", "1"), ("radt_lm", "2")]
    assert not list((tmp_path / "data").glob("*/embedder_dt_*"))  # no DT pretraining


# ----------------------------------------------------------------------------- policy


def _setup(
    n_layer: int = 2,
    seed: int = 0,
    reward_token: bool = False,
    reencode: bool = False,
    positions: str = "timestep",
):
    torch.manual_seed(seed)
    cfg = RADTConfig(
        context_len=8, d_model=32, n_layer=n_layer, n_head=4, dropout=0.0,
        reward_token=reward_token, reencode=reencode, positions=positions,
    )  # fmt: skip
    model = RADTModel((10, 10), 5, HORIZON, cfg).eval()
    dt = DTModel((10, 10), 5, HORIZON, _dt_config(cfg))
    embedder = DTEmbedder(dt, context_len=cfg.context_len)
    return cfg, model, embedder


def _fixed_context(n: int, seed: int = 1, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 1, length, dtype=torch.bool)
    mask[0, 0, :5] = False  # a left-padded value
    return {
        "obs": torch.randint(0, 10, (n, 1, length, 2), generator=g),
        "action": torch.randint(0, 5, (n, 1, length), generator=g),
        "reward": torch.randint(0, 2, (n, 1, length), generator=g).float(),
        "rtg": torch.rand(n, 1, length, generator=g) * 50,
        "timestep": torch.arange(length).repeat(n, 1, 1),
        "mask": mask,
    }


def _random_window(n: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full K-step window of random steps, as the model's forward takes it."""
    g = torch.Generator().manual_seed(seed)
    return {
        "rtg": torch.rand(n, k, generator=g) * 50,
        "obs": torch.randint(0, 10, (n, k, 2), generator=g),
        "action": torch.randint(0, 5, (n, k), generator=g),
        "timestep": torch.arange(k).repeat(n, 1),
        "mask": torch.ones(n, k, dtype=torch.bool),
        "reward": torch.randint(0, 2, (n, k), generator=g).float(),
    }


def _forward(model, w: dict[str, torch.Tensor], ctx) -> torch.Tensor:
    return model(w["rtg"], w["obs"], w["action"], w["timestep"], w["mask"], w["reward"], ctx)


def _roll(policy, n: int, steps: int, seed: int = 0):
    """Drive a policy for `steps` steps of one episode; record its inputs and logits."""
    rng = np.random.default_rng(seed)
    policy.reset(n)
    rec = {"obs": [], "rtg": [], "action": [], "reward": [], "logits": []}
    for _ in range(steps):
        obs = rng.integers(0, 10, size=(n, 2))
        rec["rtg"].append(policy.rtg.clone())
        action = policy.act(obs)
        rec["obs"].append(torch.as_tensor(obs))
        rec["action"].append(torch.as_tensor(action))
        if getattr(policy, "last_logits", None) is not None:
            rec["logits"].append(policy.last_logits.clone())
        reward = rng.integers(0, 2, size=n).astype(np.float32)
        rec["reward"].append(torch.as_tensor(reward))
        policy.observe(action, reward, np.zeros(n, bool))
    return rec


def _full_forward(model, rec, ctx):
    obs, rtg, action, reward = (torch.stack(rec[k], 1) for k in ("obs", "rtg", "action", "reward"))
    n, t = action.shape
    timestep = torch.arange(t).repeat(n, 1)
    mask = torch.ones(n, t, dtype=torch.bool)
    with torch.no_grad():
        return model(rtg, obs, action, timestep, mask, reward, ctx)


@pytest.mark.parametrize(
    ("reward_token", "reencode"), [(False, False), (True, False), (True, True)],
    ids=["R_s_a", "s_R_a_r", "reencoded"],
)  # fmt: skip
def test_policy_matches_full_forward_with_the_same_context(
    reward_token: bool, reencode: bool
) -> None:
    cfg, model, embedder = _setup(reward_token=reward_token, reencode=reencode)
    n, steps = 3, cfg.context_len  # within one window the rolling cache is exact
    ctx = _fixed_context(n)
    policy = RADTPolicy(model, cfg, torch.device("cpu"), seed=0, embedder=embedder)
    tokens, mask = model.context_tokens(ctx)
    policy.retrieve = lambda: (tokens, mask[:, None, :])  # type: ignore[method-assign]
    rec = _roll(policy, n, steps)
    full = _full_forward(model, rec, ctx)
    cached = torch.stack(rec["logits"], 1)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    # and the context matters: without it the logits differ
    assert not torch.allclose(cached, _full_forward(model, rec, None), atol=1e-3)


@pytest.mark.parametrize("positions", ["timestep", "window"])
def test_reencoding_policy_equals_a_forward_pass_over_the_last_k_steps(positions: str) -> None:
    """The official evaluation: every step re-encodes the last K steps with the current context,
    so past the first window it is exact where a rolling cache is not."""
    cfg, model, embedder = _setup(reward_token=True, reencode=True, positions=positions)
    n, k = 2, cfg.context_len
    ctx = _fixed_context(n)
    policy = RADTPolicy(model, cfg, torch.device("cpu"), seed=0, embedder=embedder)
    tokens, mask = model.context_tokens(ctx)
    policy.retrieve = lambda: (tokens, mask[:, None, :])  # type: ignore[method-assign]
    rec = _roll(policy, n, 2 * k + 3)
    for t in (k, 2 * k + 2):
        torch.testing.assert_close(rec["logits"][t], _window_logits(model, rec, ctx, t, k))


def _window_logits(model, rec, ctx, t: int, k: int) -> torch.Tensor:
    obs, rtg, action, reward = (
        torch.stack(rec[key][t - k + 1 : t + 1], 1) for key in ("obs", "rtg", "action", "reward")
    )
    n = action.shape[0]
    timestep = torch.arange(t - k + 1, t + 1).repeat(n, 1)
    with torch.no_grad():
        logits = model(rtg, obs, action, timestep, torch.ones(n, k, dtype=torch.bool), reward, ctx)
    return logits[:, -1]


def test_window_positions_carry_no_absolute_time() -> None:
    """positions=window (the official global positions): the same window and retrieved
    sub-trajectory give the same logits whatever episode step they come from; with timestep
    embeddings they do not (the policy could align its step with the retrieved one's)."""
    n = 3
    ctx = _fixed_context(n)
    shifted_ctx = {**ctx, "timestep": ctx["timestep"] + 40}
    for positions, invariant in (("window", True), ("timestep", False)):
        cfg, model, _ = _setup(reward_token=True, reencode=True, positions=positions)
        window = _random_window(n, cfg.context_len)
        with torch.no_grad():
            early = _forward(model, window, ctx)
            late = _forward(model, {**window, "timestep": window["timestep"] + 50}, shifted_ctx)
        assert torch.allclose(early, late, atol=1e-5) == invariant, positions


def test_window_positions_leave_no_parameter_unused() -> None:
    """Every parameter gets a gradient (DistributedDataParallel fails on unused ones): with
    window positions the timestep embeddings do not exist."""
    cfg, model, _ = _setup(reward_token=True, reencode=True, positions="window")
    assert model.time_emb is None and model.ctx_time_emb is None
    model.train()
    _forward(model, _random_window(2, cfg.context_len), _fixed_context(2)).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert not unused


def test_window_positions_need_reencoded_evaluation() -> None:
    cfg, model, embedder = _setup(reward_token=True, reencode=False, positions="window")
    with pytest.raises(ConfigError, match="agent.positions=window"):
        RADTPolicy(model, cfg, torch.device("cpu"), seed=0, embedder=embedder)
    with pytest.raises(ConfigError, match="agent.positions='absolute'"):
        RADTConfig(positions="absolute")


def test_empty_memory_equals_no_context() -> None:
    cfg, model, embedder = _setup()
    n, steps = 4, 12
    radt = RADTPolicy(model, cfg, torch.device("cpu"), seed=3, embedder=embedder)
    rec = _roll(radt, n, steps)
    assert radt.memory.sizes() == [0] * n and radt.context is None
    dt_policy = DTPolicy(model, cfg, torch.device("cpu"), seed=3)  # type: ignore[arg-type]
    rec_dt = _roll(dt_policy, n, steps)
    for a, b in zip(rec["action"], rec_dt["action"]):
        assert torch.equal(a, b)
    torch.testing.assert_close(
        torch.stack(rec["logits"], 1)[:, : cfg.context_len],
        _full_forward(model, rec, None)[:, : cfg.context_len], atol=1e-5, rtol=1e-4,
    )  # fmt: skip
    # an all-masked context (a task whose memory is still empty) changes nothing either
    ctx = _fixed_context(n)
    ctx["mask"] = torch.zeros_like(ctx["mask"])
    torch.testing.assert_close(_full_forward(model, rec, ctx), _full_forward(model, rec, None))


def test_eval_memory_fills_with_finished_episodes() -> None:
    cfg, model, embedder = _setup()
    n = 2
    policy = RADTPolicy(model, cfg, torch.device("cpu"), seed=0, embedder=embedder)
    policy.reset(n)
    rng = np.random.default_rng(0)
    for t in range(HORIZON + 3):
        action = policy.act(rng.integers(0, 10, size=(n, 2)))
        done = np.full(n, t == HORIZON - 1)
        policy.observe(action, np.zeros(n, np.float32), done)
    assert policy.memory.sizes() == [HORIZON // cfg.chunk] * n
    assert policy.context is not None  # the second episode cross-attends to the first
    tokens, mask = policy.context
    assert tokens.shape == (n, 4 * 2 * cfg.chunk, cfg.d_model) and mask.any()


@pytest.mark.parametrize("n_layer", [1])
def test_model_forward_backward(n_layer: int) -> None:
    cfg, model, _ = _setup(n_layer, reward_token=True)
    model.train()
    _forward(model, _random_window(2, cfg.context_len), _fixed_context(2)).sum().backward()
    assert model.ctx_obs_emb[0].weight.grad is not None
    assert model.gpt.blocks[0].cross.q.weight.grad is not None


# ----------------------------------------------------------------------------- configs


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module("configs", version_base="1.3"):
        return compose("radt", overrides=list(overrides))


def test_paper_experiment_has_the_paper_sizes() -> None:
    from agents.radt import build

    cfg = _compose("experiment=paper")
    assert cfg.source.name == "ppo" and cfg.train.batch_size == 128 and cfg.train.steps == 100_000
    assert cfg.run_name == "darkroom_paper__radt__0"
    model, a, _ = build(cfg)
    assert (a.d_model, a.n_layer, a.n_head, a.context_len) == (512, 4, 8, 50)
    n_params = sum(p.numel() for p in model.parameters())
    assert 15e6 < n_params < 18e6, n_params  # the paper: about 16.5M with cross-attention


def test_larger_grids_get_their_own_run_names_and_targets() -> None:
    cfg = _compose("env=darkroom_20x20")
    assert cfg.run_name == "darkroom_20x20__radt__0"
    assert (cfg.agent.target_mean, cfg.agent.target_std) == (370, 10)
    assert _compose().run_name == "darkroom__radt__0"


def test_steps_before_first_reward() -> None:
    from agents.radt import steps_before_first_reward

    reward = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1, 0], np.float32)  # episodes of 4, 3, 3 steps
    timestep = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 2])
    assert steps_before_first_reward(reward, timestep).tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
