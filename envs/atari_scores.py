"""Human-normalised scores (HNS) for the 26 Atari 100k games and their aggregates.

Why: Atari 100k results (SimPLe, IRIS, Δ-IRIS, DIAMOND) are compared as HNS = (score - random) /
(human - random) aggregated over games by mean, median and IQM; this module holds the table and
those three numbers so every agent reports them the same way.

Source of the table: the random and human scores of the Atari 100k benchmark (Kaiser et al. 2020,
"Model-Based Reinforcement Learning for Atari" (SimPLe), from the DQN line of work), as shipped by
IRIS in `eloialonso/iris/results/data/{RANDOM,HUMAN}.json` and used unchanged by Δ-IRIS and DIAMOND.

Aggregates follow rliable (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"): `iqm` is the 25%-trimmed mean over *all runs* of all games (scipy's `trim_mean`,
as rliable's `aggregate_iqm`); `median` is the median over games of each game's mean over runs
(rliable's `aggregate_median`); `mean` the mean over games of those per-game means.
Scores are given as `{game: [score of run 1, run 2, ...]}`; games may have different run counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import trim_mean

# game: (random, human)
ATARI_100K_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "UpNDown": (533.4, 11693.2),
}
ATARI_100K_GAMES: tuple[str, ...] = tuple(ATARI_100K_SCORES)

RunScores = Mapping[str, Sequence[float] | float]


def human_normalized_score(game: str, score: float | np.ndarray) -> float | np.ndarray:
    """(score - random) / (human - random) for one of the 26 games."""
    if game not in ATARI_100K_SCORES:
        raise ValueError(
            f"no random/human score for {game!r}; known: {', '.join(ATARI_100K_GAMES)}"
        )
    random, human = ATARI_100K_SCORES[game]
    return (np.asarray(score, dtype=np.float64) - random) / (human - random)


def normalize(scores: RunScores) -> dict[str, np.ndarray]:
    """HNS per run for each game: `{game: array of runs}`."""
    return {
        game: np.atleast_1d(human_normalized_score(game, runs)) for game, runs in scores.items()
    }


def _game_means(hns: Mapping[str, np.ndarray]) -> np.ndarray:
    if not hns:
        raise ValueError("no games given")
    return np.array([np.mean(runs) for runs in hns.values()])


def mean_hns(scores: RunScores) -> float:
    """Mean over games of the per-game mean HNS over runs."""
    return float(np.mean(_game_means(normalize(scores))))


def median_hns(scores: RunScores) -> float:
    """Median over games of the per-game mean HNS over runs (rliable's `aggregate_median`)."""
    return float(np.median(_game_means(normalize(scores))))


def iqm_hns(scores: RunScores) -> float:
    """Interquartile mean: mean of the middle 50% of all (game, run) HNS (rliable's IQM)."""
    flat = np.concatenate(list(normalize(scores).values()))
    return float(trim_mean(flat, proportiontocut=0.25, axis=None))


def aggregate(scores: RunScores) -> dict[str, float]:
    """`mean`, `median`, `iqm` HNS and `superhuman` (games whose mean HNS >= 1)."""
    means = _game_means(normalize(scores))
    return {
        "mean": mean_hns(scores),
        "median": median_hns(scores),
        "iqm": iqm_hns(scores),
        "superhuman": float(np.sum(means >= 1.0)),
    }
