"""Pixel environments of issue 6 (envs/atari.py, atari_scores.py, crafter_env.py, minigrid_env.py,
procgen_env.py, vector.py): gymnasium's checker, the Atari 100k preprocessing, HNS aggregates,
the Crafter score, MiniGrid observation kinds, Procgen seeding, vector envs and the Hydra configs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from omegaconf import OmegaConf

import envs
from envs.atari_scores import (
    ATARI_100K_GAMES,
    aggregate,
    human_normalized_score,
    iqm_hns,
    median_hns,
)
from envs.crafter_env import ACHIEVEMENTS, PREFIX, crafter_score, success_rates, unlocked
from rl_core.rollout import RandomPolicy, rollout

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "env"


def checked(gym_id: str, **kwargs) -> None:
    """check_env on the bare env made through gymnasium, so it has a spec and the checker also
    compares seeded resets, steps and the other render modes."""
    env = gym.make(gym_id, **kwargs).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    env.close()


def frames(env) -> tuple[np.ndarray, np.ndarray]:
    """Reset and one step of `env` (seed 0, action 0)."""
    obs, _ = env.reset(seed=0)
    nxt, *_ = env.step(0)
    return obs, nxt


# ----------------------------------------------------------------------------- Atari


@pytest.mark.parametrize("game", ["Pong", "Breakout"])
def test_atari_passes_the_checker(game: str) -> None:
    checked("icrl/Atari-v0", game=game)


def test_atari_frames_are_64x64_rgb_max_pooled_over_the_last_two_frames() -> None:
    import cv2

    env = envs.make("atari", game="Breakout", noop_max=0)
    raw = gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0)
    obs, _ = env.reset(seed=5)
    raw.reset(seed=5)
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.action_space.n == 4  # minimal action set
    for action in [1, 2, 2, 3, 0, 1]:
        obs, reward, *_ = env.step(action)
        total, last = 0.0, []
        for _ in range(4):
            frame, r, *_ = raw.step(action)
            total += r
            last = [*last[-1:], frame]
        pooled = np.maximum(last[0], last[1])
        want = cv2.resize(pooled, (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs, want)
        assert reward == total
    raw.close()


def _run_breakout(life_loss_terminal: bool, steps: int) -> list[tuple[bool, bool, dict]]:
    env = envs.make("atari", game="Breakout", noop_max=0, life_loss_terminal=life_loss_terminal)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        out.append((terminated, truncated, info))
        if terminated or truncated:
            break
    return out


def test_atari_life_loss_ends_the_episode_only_when_asked_and_reset_continues_the_game() -> None:
    on = _run_breakout(True, 2000)
    terminated, _, info = on[-1]
    assert terminated and info["life_loss"] and info["lives"] == 4  # 5 lives at the start
    off = _run_breakout(False, len(on))
    assert off[-1][2]["life_loss"] and not off[-1][0]  # same step: a life lost, no terminal
    assert not any(t for t, _, _ in off)

    env = envs.make("atari", game="Breakout", noop_max=0, life_loss_terminal=True)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(len(on)):
        *_, info = env.step(int(rng.integers(4)))
    frame_number = info["episode_frame_number"]
    _, info = env.reset()  # no seed: the same game goes on
    assert info["lives"] == 4 and info["episode_frame_number"] == frame_number + 4
    _, info = env.reset(seed=1)  # seeded: a new game
    assert info["lives"] == 5 and info["episode_frame_number"] == 0


def test_atari_frame_cap_truncates_and_counts_emulator_frames() -> None:
    env = envs.make("atari", game="Pong", noop_max=0, max_frames=400)
    env.reset(seed=0)
    steps = 0
    while steps < 200:
        _, _, terminated, truncated, info = env.step(0)
        steps += 1
        if terminated or truncated:
            break
    assert truncated and not terminated
    assert steps == 100 and info["episode_frame_number"] == 400  # frameskip 4
    assert envs.AtariConfig().max_frames == 108_000


def test_atari_noop_starts_vary_with_the_seed() -> None:
    env = envs.make("atari", game="Pong")
    starts = {env.reset(seed=s)[1]["episode_frame_number"] for s in range(8)}
    assert starts <= set(range(1, 31)) and len(starts) > 1


# ----------------------------------------------------------------------------- HNS


def test_hns_median_iqm_on_hand_worked_scores() -> None:
    # Pong random -20.7 human 14.6; Breakout 1.7 / 30.5; Boxing 0.1 / 12.1
    scores = {"Pong": [14.6, -20.7], "Breakout": [30.5, 59.3, 1.7, 16.1], "Boxing": [36.1, 6.1]}
    assert human_normalized_score("Breakout", 16.1) == pytest.approx(0.5)
    # HNS per run: Pong [1, 0], Breakout [1, 2, 0, 0.5], Boxing [3, 0.5]
    # game means 0.5, 0.875, 1.75 -> mean 3.125 / 3, median 0.875
    # IQM: sorted runs 0 0 | 0.5 0.5 1 1 | 2 3 -> mean of the middle four = 0.75
    agg = aggregate(scores)
    assert agg["mean"] == pytest.approx(3.125 / 3)
    assert agg["median"] == pytest.approx(0.875) == median_hns(scores)
    assert agg["iqm"] == pytest.approx(0.75) == iqm_hns(scores)
    assert agg["superhuman"] == 1


def test_hns_reproduces_the_published_iris_aggregates() -> None:
    # IRIS per-game means over 5 seeds (IRIS paper Table 1 / DIAMOND Table 1):
    # mean HNS 1.046, median 0.289, superhuman on 10 of 26
    iris = [420.0, 143.0, 1524.4, 853.6, 53.1, 13074.0, 70.1, 83.7, 1565.0, 59324.2, 2034.4, 31.1,
            259.1, 2236.1, 7037.4, 462.7, 838.2, 6616.4, 21759.8, 999.1, 14.6, 100.0, 745.7,
            9614.6, 661.3, 3546.2]  # fmt: skip
    agg = aggregate(dict(zip(ATARI_100K_GAMES, iris, strict=True)))
    assert len(ATARI_100K_GAMES) == 26
    assert round(agg["mean"], 3) == 1.046 and round(agg["median"], 3) == 0.289
    assert agg["superhuman"] == 10
    with pytest.raises(ValueError, match="Pong"):
        human_normalized_score("Pongg", 0.0)


# ----------------------------------------------------------------------------- Crafter


def test_crafter_passes_the_checker() -> None:
    # a 32x32 world instead of 64x64: world generation is ~1 s per reset at 64x64 and the
    # checker resets a dozen times; the wrapper code is the same
    checked("icrl/Crafter-v0", area=(32, 32))


def test_crafter_obs_seeding_and_achievements_in_info() -> None:
    import crafter

    assert ACHIEVEMENTS == tuple(crafter.constants.achievements)
    env = envs.make("crafter", area=(32, 32))
    first, _ = env.reset(seed=3)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(env.reset(seed=3)[0], first)
    assert not np.array_equal(env.reset(seed=4)[0], first)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        _, _, terminated, truncated, info = env.step(int(rng.integers(17)))
        if terminated or truncated:
            break
    assert {k for k in info if k.startswith(PREFIX)} == {PREFIX + a for a in ACHIEVEMENTS}
    assert unlocked(info) == {a for a in ACHIEVEMENTS if info[PREFIX + a] > 0}
    assert len(unlocked(info)) >= 1


def test_crafter_truncates_at_length() -> None:
    env = envs.make("crafter", area=(32, 32), length=5)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(5)]
    assert ends[-1] == (False, True) and not any(any(e) for e in ends[:-1])


def test_crafter_score_on_a_hand_made_log() -> None:
    episodes = [
        {"collect_wood", "place_table"},
        {"collect_wood"},
        set(),
        {"collect_wood", "wake_up"},
    ]
    rates = success_rates(episodes)
    assert rates["collect_wood"] == 75 and rates["place_table"] == 25 and rates["wake_up"] == 25
    assert sum(rates.values()) == 125  # the other 19 are 0
    # exp((ln 76 + ln 26 + ln 26 + 19 ln 1) / 22) - 1 = exp(10.846926 / 22) - 1 = 0.637289
    assert crafter_score(episodes) == pytest.approx(0.637289, abs=1e-6)
    assert crafter_score(episodes) == pytest.approx(
        math.exp((math.log(76) + 2 * math.log(26)) / 22) - 1
    )
    assert crafter_score([set(ACHIEVEMENTS)]) == pytest.approx(100.0)
    assert crafter_score([set()]) == 0.0
    with pytest.raises(ValueError, match="unknown"):
        crafter_score([{"collect_wod"}])


# ----------------------------------------------------------------------------- MiniGrid


MINIGRID_KINDS = [
    ({"obs_type": "pixels", "view": "full"}, (32, 32, 3)),
    ({"obs_type": "pixels", "view": "partial", "image_size": 64}, (64, 64, 3)),
    ({"obs_type": "symbolic", "view": "full"}, (5, 5, 3)),
    ({"obs_type": "symbolic", "view": "partial"}, (7, 7, 3)),
]


@pytest.mark.parametrize("kwargs,shape", MINIGRID_KINDS)
def test_minigrid_passes_the_checker_with_each_observation_kind(kwargs: dict, shape: tuple) -> None:
    checked("icrl/MiniGrid-v0", **kwargs)
    env = envs.make("minigrid", **kwargs)
    assert env.observation_space.shape == shape
    for obs in frames(env):
        assert obs.shape == shape and obs.dtype == np.uint8


def test_minigrid_empty_5x5_symbolic_grid_and_small_action_set() -> None:
    from minigrid.core.constants import OBJECT_TO_IDX

    env = envs.make("minigrid", obs_type="symbolic", num_actions=3)
    obs, _ = env.reset(seed=0)
    objects = obs[..., 0]
    assert (objects[0, :] == OBJECT_TO_IDX["wall"]).all() and (
        objects[:, 4] == OBJECT_TO_IDX["wall"]
    ).all()
    assert objects[3, 3] == OBJECT_TO_IDX["goal"] and (objects == OBJECT_TO_IDX["agent"]).sum() == 1
    assert env.action_space.n == 3
    # forward, forward, right, forward, forward reaches the goal from (1, 1) facing east
    for action in [2, 2, 1, 2]:
        _, reward, terminated, _, _ = env.step(action)
        assert not terminated
    _, reward, terminated, _, _ = env.step(2)
    assert terminated and 0 < reward < 1
    pixels = envs.make("minigrid")
    a, b = frames(pixels)
    assert not np.array_equal(a, b)  # the agent moved: the frame shows it


# ----------------------------------------------------------------------------- Procgen


@pytest.fixture(scope="module")
def procgen():
    return pytest.importorskip(
        "procgen", reason="procgen-mirror (pip install --no-deps, see setup.cfg)"
    )


def test_procgen_passes_the_checker(procgen) -> None:
    checked("icrl/Procgen-v0", env_name="coinrun")


def test_procgen_resets_are_reproducible_per_seed_and_differ_across_seeds(procgen) -> None:
    env = envs.make("procgen", env_name="coinrun", distribution_mode="easy")
    obs_a, info_a = env.reset(seed=7)
    steps_a = [env.step(a)[0] for a in (7, 7, 5)]
    obs_b, info_b = env.reset(seed=7)
    steps_b = [env.step(a)[0] for a in (7, 7, 5)]
    assert info_a == info_b
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(np.stack(steps_a), np.stack(steps_b))
    assert obs_a.shape == (64, 64, 3) and obs_a.dtype == np.uint8
    others = [env.reset(seed=s) for s in (8, 9)]
    assert len({info_a["level_seed"], *(i["level_seed"] for _, i in others)}) == 3
    assert not any(np.array_equal(obs_a, o) for o, _ in others)
    # one level: every seed gives the same level
    single = envs.make("procgen", env_name="coinrun", num_levels=1, start_level=42)
    assert {single.reset(seed=s)[1]["level_seed"] for s in range(3)} == {42}


def test_procgen_episode_end_keeps_the_last_frame_and_reset_starts_the_next_level(procgen) -> None:
    env = envs.make("procgen", env_name="coinrun")
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        prev = obs
        obs, _, terminated, truncated, info = env.step(int(rng.integers(15)))
        if terminated:
            break
    assert terminated and not truncated and "level_complete" in info
    np.testing.assert_array_equal(obs, prev)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    _, nxt = env.reset()
    assert nxt["level_seed"] != info["level_seed"]


# ----------------------------------------------------------------------------- vector, configs


def test_make_vector_is_async_for_atari_and_sync_for_minigrid() -> None:
    assert envs.vectorization("atari") == envs.vectorization("crafter") == "async"
    assert envs.vectorization("minigrid") == envs.vectorization("procgen") == "sync"
    vec = envs.make_vector("minigrid", 3)
    assert isinstance(vec, gym.vector.SyncVectorEnv)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (3, 32, 32, 3) and obs.dtype == np.uint8
    vec.close()
    vec = envs.make_vector("atari", 2, game="Pong")
    try:
        assert isinstance(vec, gym.vector.AsyncVectorEnv)
        obs, _ = vec.reset(seed=0)
        obs, rewards, *_ = vec.step(np.zeros(2, dtype=np.int64))
        assert obs.shape == (2, 64, 64, 3) and obs.dtype == np.uint8 and rewards.shape == (2,)
    finally:
        vec.close()


def test_minigrid_episodes_through_the_rollout_loop() -> None:
    fns = envs.env_fns("minigrid", 2, num_actions=3)
    result = rollout(
        fns, RandomPolicy(gym.spaces.Discrete(3), seed=0), episodes=2, seed=0, progress=False,
        vectorization=envs.vectorization("minigrid"),
    )  # fmt: skip
    assert result.returns.shape == (2, 2) and (result.lengths <= 100).all()


@pytest.mark.parametrize("name", ["atari", "crafter", "minigrid", "procgen"])
def test_env_configs_make_their_env(name: str) -> None:
    if name == "procgen":
        pytest.importorskip("procgen")
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert cfg.pop("name") == name
    cfg.pop("run_tag", None)  # names the run directory, not an env argument
    env = envs.make(name, **cfg)
    assert isinstance(env, gym.Env) and env.observation_space.dtype == np.uint8
    env.close()
