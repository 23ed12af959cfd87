"""rl_core.model_based / actor_critic / data.segments / rollout.StepCollector.

The world model here is an exact simulator of a tiny pixel corridor, so these tests check the
shared machinery (λ-returns, imagination learning, replay segments, collection, checkpoints and
resume) without any learned model in the way.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_core.actor_critic import (
    ActorCritic,
    ActorCriticConfig,
    ActorCriticPolicy,
    ImaginationConfig,
    ImaginationLearner,
    ema_update,
    frames_to_tensor,
    lambda_returns,
)
from rl_core.data import EpisodeStore
from rl_core.data.segments import SegmentSampler
from rl_core.model_based import (
    CollectConfig,
    Component,
    ComponentSchedule,
    EvalConfig,
    LoopConfig,
    ModelBasedLoop,
    train_component,
)
from rl_core.model_free import RealEnvLearner, matched_updates
from rl_core.rollout import RandomPolicy, StepCollector, rollout

SIZE = 6  # corridor cells; frames are 8x8, the agent is a bright column


class PixelCorridor(gym.Env):
    """Start at cell 0; action 1 moves right, 0 left; reaching the last cell gives +1 and ends."""

    metadata = {"render_modes": []}

    def __init__(self, max_steps: int = 20) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.max_steps = max_steps

    def _obs(self) -> np.ndarray:
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[:, self.pos + 1] = 255
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = 0, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos = int(np.clip(self.pos + (1 if int(action) == 1 else -1), 0, SIZE - 1))
        done = self.pos == SIZE - 1
        return self._obs(), float(done), done, self.t >= self.max_steps and not done, {}


class ExactCorridorModel:
    """The corridor's true dynamics on float frames: an `ImaginedEnv` without learning."""

    def reset(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.pos = frames[:, -1, 0, 0, 1:].argmax(-1)  # bright column - 1
        return frames[:, -1]

    def step(self, actions: torch.Tensor):
        self.pos = (self.pos + torch.where(actions == 1, 1, -1)).clamp(0, SIZE - 1)
        frames = torch.zeros(len(actions), 3, 8, 8)
        frames[torch.arange(len(actions)), :, :, self.pos + 1] = 1.0
        end = self.pos == SIZE - 1
        return frames, end.float(), end


# ----------------------------------------------------------------------------- λ-returns


def test_lambda_returns_hand_worked() -> None:
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 2.0, 4.0]])
    no_end = torch.zeros(1, 3, dtype=torch.bool)
    # R2 = 2 + .9 * 4 = 5.6; R1 = .9 (.5*2 + .5*5.6) = 3.42; R0 = 1 + .9 (.5*1 + .5*3.42) = 2.989
    out = lambda_returns(r, v, no_end, gamma=0.9, lam=0.5)
    torch.testing.assert_close(out, torch.tensor([[2.989, 3.42, 5.6]]))
    # an end at t=1 cuts everything after it: R1 = 0, R0 = 1 + .9 (.5*1 + .5*0)
    ends = torch.tensor([[False, True, False]])
    out = lambda_returns(r, v, ends, gamma=0.9, lam=0.5)
    torch.testing.assert_close(out[:, :2], torch.tensor([[1.45, 0.0]]))
    # λ = 1, γ = 1: the plain sum of rewards plus the bootstrap value
    torch.testing.assert_close(lambda_returns(r, v, no_end, 1.0, 1.0)[0, 0], torch.tensor(7.0))
    # λ = 0: one-step TD targets
    td = lambda_returns(r, v, no_end, 0.9, 0.0)
    torch.testing.assert_close(td, r + 0.9 * v[:, 1:])
    with pytest.raises(ValueError, match="one more step"):
        lambda_returns(r, v[:, :3], no_end, 0.9, 0.5)


def test_ema_update_moves_target_toward_online() -> None:
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    ema_update(target, online, tau=0.75)
    torch.testing.assert_close(target.weight, 0.75 * before + 0.25 * online.weight.detach())


# ----------------------------------------------------------------------------- data


def _corridor_store(tmp_path: Path, episodes: int = 6, seed: int = 0) -> EpisodeStore:
    store = EpisodeStore(tmp_path / "replay")
    rollout(
        [lambda: PixelCorridor(max_steps=12)] * 2,
        RandomPolicy(gym.spaces.Discrete(2), seed=seed),
        episodes=episodes // 2,
        record_to=store,
        record_next_obs=True,
        seed=seed,
        progress=False,
    )
    return store


def test_segments_align_frames_with_transitions(tmp_path: Path) -> None:
    store = _corridor_store(tmp_path)
    sampler = SegmentSampler(store)
    rng = np.random.default_rng(0)
    batch = sampler.sample(64, 5, rng)
    assert batch["frames"].shape == (64, 6, 8, 8, 3) and batch["frames"].dtype == np.uint8
    assert batch["action"].shape == batch["mask"].shape == (64, 5)
    pos = batch["frames"][:, :, 0, 1:, 0].argmax(-1)  # (b, T+1) cell of each frame
    valid = batch["mask"]
    move = np.where(batch["action"] == 1, 1, -1)
    expected = np.clip(pos[:, :-1] + move, 0, SIZE - 1)
    assert np.array_equal(pos[:, 1:][valid], expected[valid])  # frame t+1 follows action t
    assert (batch["reward"][valid] == (pos[:, 1:][valid] == SIZE - 1)).all()
    # padding: after a transition is invalid every later one is too, and padded frames are zero
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()
    assert (batch["frames"][~batch["frame_mask"]] == 0).all()
    assert valid.sum() < valid.size  # some segments ran past an episode's end


def test_context_windows_stay_inside_episodes(tmp_path: Path) -> None:
    store = _corridor_store(tmp_path)
    sampler = SegmentSampler(store)
    ctx = sampler.sample_context(200, 2, np.random.default_rng(1))
    assert ctx["frames"].shape == (200, 3, 8, 8, 3) and ctx["action"].shape == (200, 2)
    assert ctx["mask"].all()
    last = ctx["frames"][:, -1, 0, 1:, 0].argmax(-1)
    assert (last < SIZE - 1).all()  # never starts from a terminal frame
    ctx0 = sampler.sample_context(10, 0, np.random.default_rng(1))
    assert ctx0["frames"].shape == (10, 1, 8, 8, 3) and ctx0["action"].shape == (10, 0)
    with pytest.raises(ValueError, match="burn_in"):
        sampler.sample_context(4, 100, np.random.default_rng(0))


def test_windows_enumerate_every_in_episode_segment(tmp_path: Path) -> None:
    sampler = SegmentSampler()
    for length in (5, 2, 3):  # frames carry their step index
        frames = np.arange(length + 1, dtype=np.uint8)[:, None].repeat(4, 1)
        sampler.add_episode(frames, np.arange(length), np.zeros(length), np.zeros(length, bool))
    w = sampler.windows(3)
    assert w["mask"].all() and w["frame_mask"].all()
    # 3 windows in the 5-step episode, none in the 2-step one, 1 in the 3-step one, in order
    assert w["action"].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [0, 1, 2]]
    assert w["frames"][:, :, 0].tolist() == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [0, 1, 2, 3]]
    with pytest.raises(ValueError, match="no episode has 6"):
        sampler.windows(6)


def test_segment_sampler_loads_only_new_episodes(tmp_path: Path) -> None:
    store = _corridor_store(tmp_path, episodes=4)
    sampler = SegmentSampler(store)
    assert len(sampler) == 4
    _ = sampler.sample(4, 3, np.random.default_rng(0))
    rollout([PixelCorridor] * 2, RandomPolicy(gym.spaces.Discrete(2), seed=3), episodes=1,
            record_to=store, record_next_obs=True, progress=False)  # fmt: skip
    assert sampler.update(store) == 2 and len(sampler) == 6
    assert sampler.total_steps == store.num_steps
    store_no_next = EpisodeStore(tmp_path / "plain")
    rollout([PixelCorridor], RandomPolicy(gym.spaces.Discrete(2)), record_to=store_no_next,
            progress=False)  # fmt: skip
    with pytest.raises(KeyError, match="next_obs"):
        SegmentSampler(store_no_next)


def test_step_collector_keeps_episodes_running_across_calls(tmp_path: Path) -> None:
    store = EpisodeStore(tmp_path / "replay")
    collector = StepCollector([functools.partial(PixelCorridor, 50)] * 2, record_to=store, seed=0)
    policy = RandomPolicy(gym.spaces.Discrete(2), seed=0)
    returns = []
    for _ in range(10):
        returns += collector.collect(policy, 7)
    collector.close()
    assert collector.total_steps == 80  # 7 rounded up to a multiple of 2 envs, 10 times
    pending = sum(len(b["obs"]) for b in collector._buffers)
    assert store.num_steps + pending == 80  # every step is stored or still in a running episode
    assert len(store) == len(returns) > 0
    for i in range(len(store)):
        ep = store.episode(i)
        assert ep["terminated"][-1] or ep["truncated"][-1]
        assert np.array_equal(ep["obs"][1:], ep["next_obs"][:-1])  # one episode, not spliced


# ----------------------------------------------------------------------------- imagination


def _corridor_ac(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(2, (3, 8, 8), ActorCriticConfig(channels=[8, 8], lstm_dim=32))


def test_actor_critic_learns_in_an_exact_imagined_env(tmp_path: Path) -> None:
    store = _corridor_store(tmp_path, episodes=8)
    sampler = SegmentSampler(store)
    ac = _corridor_ac()
    learner = ImaginationLearner(
        ac, ExactCorridorModel(), ImaginationConfig(horizon=8, burn_in=1, gamma=0.9, lam=0.95,
                                                    entropy_weight=0.001, target_tau=0.9)
    )  # fmt: skip

    def sample(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        ctx = sampler.sample_context(b, 1, rng)
        return {"frames": frames_to_tensor(ctx["frames"]), "action": torch.as_tensor(ctx["action"])}

    comp = Component("actor_critic", learner, ComponentSchedule(batch_size=32, lr=3e-3), sample,
                     after_step=learner.after_step)  # fmt: skip
    rng = np.random.default_rng(0)
    first = train_component(comp, 5, rng, torch.device("cpu"))
    last = train_component(comp, 150, rng, torch.device("cpu"))
    assert last["imagined_return"] > first["imagined_return"] + 0.3
    assert {"loss_policy", "loss_value", "entropy", "grad_norm"} <= set(last)
    policy = ActorCriticPolicy(ac, greedy=True)
    res = rollout([PixelCorridor] * 4, policy, episodes=2, seed=0, progress=False)
    rand = rollout([PixelCorridor] * 4, RandomPolicy(gym.spaces.Discrete(2), seed=0), episodes=2,
                   seed=0, progress=False)  # fmt: skip
    assert res.returns.mean() == 1.0 and res.lengths.mean() == SIZE - 1  # the shortest path
    assert rand.returns.mean() < 0.8


# ----------------------------------------------------------------------------- the loop


def _loop(tmp_path: Path, epochs: int) -> ModelBasedLoop:
    store = EpisodeStore(tmp_path / "run" / "replay")
    sampler = SegmentSampler()
    ac = _corridor_ac()
    learner = ImaginationLearner(ac, ExactCorridorModel(),
                                 ImaginationConfig(horizon=8, burn_in=1, gamma=0.9))  # fmt: skip

    def sample(b: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        ctx = sampler.sample_context(b, 1, rng)
        return {"frames": frames_to_tensor(ctx["frames"]), "action": torch.as_tensor(ctx["action"])}

    comp = Component(
        "actor_critic", learner,
        ComponentSchedule(start_epoch=2, steps_first=60, steps_per_epoch=30, batch_size=32, lr=3e-3),
        sample, after_step=learner.after_step,
    )  # fmt: skip
    cfg = LoopConfig(
        epochs=epochs, progress=False,
        collect=CollectConfig(envs=2, first_steps=60, steps_per_epoch=20, epsilon=0.0),
        eval=EvalConfig(every=1, episodes=2, envs=2, greedy=True),
    )  # fmt: skip
    return ModelBasedLoop(
        cfg, components=[comp], actor_critic=ac, env_fns=[PixelCorridor] * 2,
        eval_env_fns=[PixelCorridor] * 2, store=store, sampler=sampler,
        run_dir=tmp_path / "run", device=torch.device("cpu"), seed=0,
        extra_state={"target": learner.target},
    )  # fmt: skip


def test_loop_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    loop = _loop(tmp_path, epochs=2)
    history = loop.run()
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    assert history[0]["env_steps"] == 60 and history[1]["env_steps"] == 80
    assert loop.ckpt_path.exists()
    weights = {k: v.clone() for k, v in loop.actor_critic.state_dict().items()}

    resumed = _loop(tmp_path, epochs=4)  # same run dir, two more epochs
    assert resumed.load() and resumed.epoch == 2
    for k, v in resumed.actor_critic.state_dict().items():
        torch.testing.assert_close(v, weights[k])
    history = resumed.run(resume=True)
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0, 4.0]  # earlier history kept
    assert history[-1]["env_steps"] == 120
    assert history[-1]["return"] == 1.0  # the greedy policy walks the corridor
    assert len(resumed.sampler) == len(resumed.store) > 0


# ----------------------------------------------------------------------------- model-free


def test_matched_updates_track_an_env_step_budget() -> None:
    assert matched_updates(2000, 0, 128) == 16  # 15.6 -> 16: 2048 steps
    assert matched_updates(2200, 2048, 128) == 1  # 1.19 -> 1
    assert matched_updates(2400, 2176, 128) == 2  # 1.75 -> 2
    assert matched_updates(100, 500, 64) == 0  # already past the budget
    with pytest.raises(ValueError, match="steps_per_update"):
        matched_updates(100, 0, 0)


def test_real_env_learner_bootstraps_truncations_and_counts_steps() -> None:
    ac = _corridor_ac()
    with torch.no_grad():
        ac.policy_head.bias.copy_(torch.tensor([30.0, -30.0]))  # always left: never terminates
        ac.value_head.bias.fill_(2.0)  # V = 2 everywhere
    learner = RealEnvLearner(
        ac, [functools.partial(PixelCorridor, 3)] * 2,
        ImaginationConfig(horizon=7, gamma=0.5, lam=1.0, target_tau=0.0),
    )  # fmt: skip
    traj = learner.rollout()
    # truncated at steps 3 and 6 (0-based 2, 5): reward 0 + γ V(final) = 1.0 and the return cuts
    expected = torch.tensor([0, 0, 1.0, 0, 0, 1.0, 0]).expand(2, 7)
    torch.testing.assert_close(traj["rewards"], expected)
    assert traj["ends"][0].tolist() == [False, False, True, False, False, True, False]
    assert int(learner.env_steps) == 14 == learner.steps_per_update
    learner.rollout()  # episodes go on across calls: the next truncation comes after 2 steps
    assert int(learner.env_steps) == 28
    learner.close()


def test_real_env_learner_learns_the_corridor_from_real_steps() -> None:
    ac = _corridor_ac()
    learner = RealEnvLearner(
        ac, [PixelCorridor] * 8,
        ImaginationConfig(horizon=8, gamma=0.9, lam=0.95, entropy_weight=0.001, target_tau=0.9),
        seed=1,
    )  # fmt: skip
    comp = Component("actor_critic", learner, ComponentSchedule(lr=3e-3), lambda b, rng: {},
                     after_step=learner.after_step, needs_data=False)  # fmt: skip
    train_component(comp, 150, np.random.default_rng(0), torch.device("cpu"))
    learner.close()
    assert int(learner.env_steps) == 150 * 64
    res = rollout([PixelCorridor] * 4, ActorCriticPolicy(ac, greedy=True), episodes=2, seed=0,
                  progress=False)  # fmt: skip
    assert res.returns.mean() == 1.0 and res.lengths.mean() == SIZE - 1


def test_loop_counts_a_model_free_learners_env_steps_and_resumes(tmp_path: Path) -> None:
    def make(epochs: int) -> tuple[ModelBasedLoop, RealEnvLearner]:
        ac = _corridor_ac()
        learner = RealEnvLearner(ac, [PixelCorridor] * 2, ImaginationConfig(horizon=5))
        budget = CollectConfig(first_steps=60, steps_per_epoch=20)
        comp = Component(
            "actor_critic", learner, ComponentSchedule(), lambda b, rng: {},
            steps_at=lambda e: matched_updates(budget.budget_through(e), int(learner.env_steps),
                                               learner.steps_per_update),
            needs_data=False,
        )  # fmt: skip
        cfg = LoopConfig(epochs=epochs, progress=False,
                         collect=CollectConfig(envs=1, first_steps=0, steps_per_epoch=0),
                         eval=EvalConfig(every=1, episodes=1, envs=2))  # fmt: skip
        loop = ModelBasedLoop(
            cfg, components=[comp], actor_critic=ac, env_fns=[PixelCorridor],
            eval_env_fns=[PixelCorridor] * 2, store=EpisodeStore(tmp_path / "run" / "replay"),
            sampler=SegmentSampler(), run_dir=tmp_path / "run", device=torch.device("cpu"),
        )  # fmt: skip
        return loop, learner

    loop, learner = make(2)
    history = loop.run()
    # 60 then 80 real steps budgeted, 10 per update: 6 updates, then 2
    assert [h["env_steps"] for h in history] == [60.0, 80.0]
    assert len(loop.store) == 0  # nothing collected into the replay store
    resumed, learner = make(3)
    resumed.run(resume=True)
    assert int(learner.env_steps) == 100 and resumed.history[-1]["env_steps"] == 100.0
