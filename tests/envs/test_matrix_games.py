"""Repeated matrix games: PettingZoo/gymnasium API, presets, partner zoo, best-response oracle."""

from __future__ import annotations

import itertools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test, seed_test
from pettingzoo.utils.conversions import parallel_to_aec

import envs
from envs.matrix_games import (
    GAMES,
    PARTNERS,
    MatrixGame,
    MatrixGameEnv,
    SingleAgentMatrixGame,
    best_response_value,
    make_game,
    make_partner,
    optimal_value,
    partner_label,
)

ROCK, PAPER, SCISSORS = range(3)
COOP, DEFECT = range(2)
FOOTBALL, BALLET = range(2)
BEATS = {ROCK: PAPER, PAPER: SCISSORS, SCISSORS: ROCK}  # BEATS[a] wins against a
NON_SQUARE = [[[1, 0], [0, 1], [2, 2]], [[0, 3], [3, 0], [1, 1]]]  # 2 x 3 actions


def play(partner, agent_actions) -> list[int]:
    """The partner's actions when the agent plays ``agent_actions`` (the env's play path)."""
    partner.reset()
    out = []
    for a in agent_actions:
        b = partner.act()
        partner.observe(b, a)
        out.append(b)
    return out


# ----------------------------------------------------------------------------- API tests
@pytest.mark.parametrize("game", [*GAMES, NON_SQUARE])
def test_parallel_api(game):
    parallel_api_test(MatrixGameEnv(game, rounds=25, history=2), num_cycles=60)


def test_seed_test_through_aec_covers_the_whole_game():
    # pettingzoo 1.27's parallel_seed_test checks one step only; the AEC seed test checks all.
    seed_test(lambda: parallel_to_aec(MatrixGameEnv("rps", rounds=30, history=3)), num_cycles=100)


@pytest.mark.parametrize("partner", ["tit_for_tat", "biased_random", "switching"])
def test_single_agent_view_passes_check_env_without_warnings(partner):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for render_mode in (None, "ansi"):
            env = gym.make(
                "icrl/MatrixGame-v0", game="pd", partner=partner, rounds=5, render_mode=render_mode
            )
            check_env(env.unwrapped)


def test_registry_makes_both_views():
    single = envs.make("matrix", game="bos", partner="constant", rounds=7)
    assert isinstance(single, SingleAgentMatrixGame) and single.rounds == 7
    assert isinstance(envs.make("matrix_parallel", game="rps"), MatrixGameEnv)


def test_single_agent_step_obs_info_and_truncation():
    env = SingleAgentMatrixGame(
        "rps", "constant", rounds=3, history=2, partner_kwargs={"action": "paper"}
    )
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [3, 3, 3, 3] and info == {
        "round": 0,
        "history": (),
        "partner_action": -1,
    }
    obs, r, term, trunc, info = env.step(SCISSORS)
    assert (r, term, trunc) == (1.0, False, False)
    assert obs.tolist() == [3, 3, SCISSORS, PAPER] and info["partner_action"] == PAPER
    obs, r, term, trunc, info = env.step(ROCK)
    assert r == -1.0 and obs.tolist() == [SCISSORS, PAPER, ROCK, PAPER] and not trunc
    *_, trunc, info = env.step(PAPER)
    assert trunc and info["round"] == 3
    assert info["history"] == ((SCISSORS, PAPER), (ROCK, PAPER), (PAPER, PAPER))


def test_parallel_env_pays_both_players_and_shows_each_its_own_view():
    env = MatrixGameEnv("pd", rounds=2)
    obs, _ = env.reset()
    assert obs["player_0"].tolist() == [2, 2]
    obs, rewards, terms, truncs, infos = env.step({"player_0": COOP, "player_1": DEFECT})
    assert rewards == {"player_0": 0.0, "player_1": 10.0}
    assert obs["player_0"].tolist() == [COOP, DEFECT] and obs["player_1"].tolist() == [DEFECT, COOP]
    assert infos["player_1"]["history"] == ((DEFECT, COOP),)
    env.step({"player_0": DEFECT, "player_1": DEFECT})
    assert env.agents == []
    with pytest.raises(RuntimeError):
        env.step({"player_0": 0, "player_1": 0})


def test_seeded_resets_replay_a_stochastic_partner_exactly():
    env = SingleAgentMatrixGame("rps", "biased_random", rounds=50, seed=7)

    def partner_actions(seed=None):
        env.reset(seed=seed)
        return [env.step(ROCK)[-1]["partner_action"] for _ in range(50)]

    first = partner_actions()  # constructor seed 7
    assert partner_actions(seed=7) == first
    assert partner_actions(seed=8) != first
    assert partner_actions() != partner_actions()  # seedless resets draw fresh games


# ----------------------------------------------------------------------------- games
def test_preset_payoffs():
    def both(game):
        return GAMES[game].payoffs.tolist()

    assert both("rps") == [
        [[0, 0], [-1, 1], [1, -1]],
        [[1, -1], [0, 0], [-1, 1]],
        [[-1, 1], [1, -1], [0, 0]],
    ]
    assert both("pd") == [[[8, 8], [0, 10]], [[10, 0], [5, 5]]]
    assert both("pd_textbook") == [[[3, 3], [0, 5]], [[5, 0], [1, 1]]]
    assert both("bos") == [[[10, 7], [0, 0]], [[0, 0], [7, 10]]]
    assert both("bos_textbook") == [[[2, 1], [0, 0]], [[0, 0], [1, 2]]]
    assert GAMES["rps"].actions == ("rock", "paper", "scissors")
    assert GAMES["pd"].actions == ("cooperate", "defect")
    assert GAMES["rps"].zero_sum and not GAMES["pd"].zero_sum
    assert GAMES["bos"].r_max == 10.0
    with pytest.raises(ValueError):
        GAMES["rps"].payoffs[0, 0, 0] = 5.0  # presets cannot be changed by accident


def test_make_game_from_bimatrix_mapping_and_errors():
    game = make_game(NON_SQUARE, name="odd")
    assert (game.n_actions, game.n_partner_actions) == (2, 3)
    assert game.actions == ("a0", "a1") and game.partner_actions == ("b0", "b1", "b2")
    custom = make_game(
        {"name": "c", "actions": ["x", "y"], "payoffs": [[[1, 1], [0, 2]], [[2, 0], [0, 0]]]}
    )
    assert custom.actions == ("x", "y") and custom.partner_actions == ("x", "y")
    assert make_game({"name": "rps", "payoffs": None}) is GAMES["rps"]
    with pytest.raises(ValueError, match=r"shape \[n_actions_0\]\[n_actions_1\]\[2\]"):
        make_game([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="ragged"):
        make_game([[[1, 2]], [[1, 2], [3, 4]]])
    with pytest.raises(ValueError, match="presets: rps, pd, bos"):
        make_game("chess")
    with pytest.raises(ValueError, match="3 actions"):
        MatrixGame("bad", ("a", "b", "c"), np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- partners
def test_unknown_partner_or_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match="valid partners: constant, cycle, tit_for_tat"):
        make_partner("random_walk", GAMES["rps"], 0)
    with pytest.raises(ValueError, match="valid: action"):
        make_partner("constant", GAMES["rps"], 0, actoin=1)
    assert set(PARTNERS) >= {"constant", "tit_for_tat", "wsls", "grim_trigger", "switching"}


def test_constant_and_cycle():
    rps = GAMES["rps"]
    assert play(make_partner("constant", rps, 0, action="scissors"), [0, 1, 2, 0]) == [2] * 4
    cycle = make_partner("cycle", rps, 0, sequence=["paper", "rock"])
    assert play(cycle, [0] * 5) == [PAPER, ROCK, PAPER, ROCK, PAPER]
    assert play(make_partner("cycle", rps, 0), [1] * 4) == [0, 1, 2, 0]


def test_tit_for_tat_as_the_paper_defines_it_per_game():
    agent = [ROCK, PAPER, SCISSORS, SCISSORS, ROCK]
    rps = play(make_partner("tit_for_tat", GAMES["rps"], 0), agent)
    assert rps == [ROCK] + [BEATS[a] for a in agent[:-1]]  # best response to your last move
    bos_agent = [BALLET, FOOTBALL, FOOTBALL, BALLET]
    assert play(make_partner("tit_for_tat", GAMES["bos"], 0), bos_agent) == [FOOTBALL, BALLET, FOOTBALL, FOOTBALL]  # fmt: skip
    pd_agent = [DEFECT, COOP, COOP, DEFECT, DEFECT]
    assert play(make_partner("tit_for_tat", GAMES["pd"], 0), pd_agent) == [COOP, DEFECT, COOP, COOP, DEFECT]  # fmt: skip
    opens_with_defect = make_partner("tit_for_tat", GAMES["pd"], 0, first="defect")
    assert play(opens_with_defect, [COOP, COOP]) == [DEFECT, COOP]


def test_win_stay_lose_shift_is_pavlov_in_pd():
    wsls = make_partner("wsls", GAMES["pd"], 0)
    # (C,C) 8 wins: stay C; agent D vs its C: 0 loses, shift to D; agent C vs its D: 10 wins,
    # stay D; (D,D): 5 is no win, shift to C.
    assert play(wsls, [COOP, DEFECT, COOP, DEFECT, DEFECT]) == [COOP, COOP, DEFECT, DEFECT, COOP]


def test_grim_trigger_never_forgives():
    grim = make_partner("grim_trigger", GAMES["pd"], 0)
    assert play(grim, [COOP, COOP, DEFECT, COOP, COOP]) == [COOP, COOP, COOP, DEFECT, DEFECT]


def test_biased_random_is_deterministic_given_its_seed_and_biased():
    game = GAMES["rps"]
    draws = play(make_partner("biased_random", game, 3, favorite="paper", bias=0.8), [0] * 3000)
    assert draws == play(
        make_partner("biased_random", game, 3, favorite="paper", bias=0.8), [0] * 3000
    )
    assert draws != play(
        make_partner("biased_random", game, 4, favorite="paper", bias=0.8), [0] * 3000
    )
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert abs(freq[PAPER] - 0.8) < 0.03 and abs(freq[ROCK] - 0.1) < 0.03
    with pytest.raises(ValueError, match="summing to 1"):
        make_partner("biased_random", game, 0, probs=[0.5, 0.2, 0.2])


def test_fictitious_play_best_responds_to_empirical_frequencies():
    fp = make_partner("fictitious_play", GAMES["rps"], 0)
    # Expected payoffs against the agent's counts so far: none -> all tie -> rock (lowest);
    # {R} -> paper; {R, P}: paper 1 > scissors 0; {R, P, P}: paper 1 = scissors 1 -> paper;
    # {R, P, P, P}: scissors 2 > paper 1.
    assert play(fp, [ROCK, PAPER, PAPER, PAPER, ROCK]) == [ROCK, PAPER, PAPER, PAPER, SCISSORS]


def test_switching_partner_switches_at_the_configured_round():
    sw = make_partner(
        "switching", GAMES["rps"], 0, first="constant", second="tit_for_tat",
        switch_round=3, first_kwargs={"action": "scissors"},
    )  # fmt: skip
    agent = [ROCK, ROCK, PAPER, SCISSORS, ROCK, PAPER]
    assert play(sw, agent) == [SCISSORS] * 3 + [BEATS[PAPER], BEATS[SCISSORS], BEATS[ROCK]]


def test_partner_labels_show_only_non_defaults():
    assert partner_label("constant", {"action": None}) == "constant"
    assert partner_label("constant", {"action": 1}) == "constant[action=1]"
    assert partner_label("switching", {"switch_round": 50, "first_kwargs": {}}) == "switching"


# ----------------------------------------------------------------------------- oracle
def test_oracle_hand_computed_values():
    T = 100
    assert best_response_value("rps", "constant", 0, T) == T  # paper beats rock every round
    # RPS-TFT: the partner's move is known (it beats your last), so every round is won by cycling
    assert best_response_value("rps", "tit_for_tat", 0, T) == T
    # PD-TFT: cooperate, and defect in the last round only
    assert best_response_value("pd", "tit_for_tat", 0, T) == 8 * (T - 1) + 10
    assert best_response_value("pd", "grim_trigger", 0, T) == 8 * (T - 1) + 10
    # BoS-TFT opening with ballet: meeting it (7) costs the next round (0 while it copies
    # ballet), so lose round 1 with football and then match on football: 10 (T - 1)
    assert best_response_value("bos", "tit_for_tat", 0, T, first="ballet") == 10 * (T - 1)
    # always-defect partner in PD: defect every round
    assert best_response_value("pd", "constant", 0, T, action="defect") == 5 * T
    # biased random: best response to the stationary mix; paper earns 0.7 - 0.15 per round
    assert best_response_value("rps", "biased_random", 0, T) == pytest.approx(0.55 * T)
    assert best_response_value("rps", "constant", 0, 0) == 0.0


def _brute_force(game: MatrixGame, partner, rounds: int) -> float:
    """Max over open-loop action sequences, played through reset/act/observe (deterministic)."""
    best = -np.inf
    for seq in itertools.product(range(game.n_actions), repeat=rounds):
        partner.reset()
        total = 0.0
        for a in seq:
            b = partner.act()
            partner.observe(b, a)
            total += game.agent_payoffs[a, b]
        best = max(best, total)
    return best


def _expectimax(game: MatrixGame, partner, state, rounds: int) -> float:
    """Optimal expected return over the full history tree (no state merging)."""
    if rounds == 0:
        return 0.0
    probs = partner.policy(state)
    return max(
        sum(
            p
            * (
                game.agent_payoffs[a, b]
                + _expectimax(game, partner, partner.next_state(state, b, a), rounds - 1)
            )
            for b, p in enumerate(probs)
            if p > 0
        )
        for a in range(game.n_actions)
    )


DETERMINISTIC = [
    "constant",
    "cycle",
    "tit_for_tat",
    "wsls",
    "grim_trigger",
    "fictitious_play",
    "switching",
]


@pytest.mark.parametrize("game", ["rps", "pd", "bos", "bos_textbook"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_oracle_matches_brute_force_on_tiny_horizons(game, name):
    g = GAMES[game]
    kwargs = {"switch_round": 2} if name == "switching" else {}
    partner = make_partner(name, g, 0, **kwargs)
    for rounds in (1, 3, 5):
        assert optimal_value(g, partner, rounds) == pytest.approx(_brute_force(g, partner, rounds))


@pytest.mark.parametrize("game", ["rps", "pd"])
def test_oracle_matches_expectimax_for_random_partners(game):
    g = GAMES[game]
    for partner in (
        make_partner("biased_random", g, 0, bias=0.6),
        make_partner(
            "switching", g, 0, first="biased_random", second="tit_for_tat", switch_round=2
        ),
    ):
        expected = _expectimax(g, partner, partner.initial_state(), 4)
        assert optimal_value(g, partner, 4) == pytest.approx(expected)
