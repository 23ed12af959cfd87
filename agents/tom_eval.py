"""Theory-of-mind evaluation on repeated matrix games, shared by R-max and the LLM adapter.

Riemer et al. 2024, "Can Large Language Models Adapt to Other Agents In-Context?" (arXiv
2412.19726) separate *literal* theory of mind (predicting the partner's next action) from
*functional* theory of mind (acting well on it). Per game of T rounds we report:

* ``mean_reward``: the agent's return / T;
* ``regret_per_step``: Delta/T = (V* - return) / T, with V* the exact optimal expected return
  against that partner (``envs.matrix_games.best_response_value``, backward induction);
* ``tom_accuracy``: fraction of rounds whose prediction equals the partner's actual action
  (a missing prediction, -1, counts as wrong);
* ``tom_regret_per_step``: Delta_ToM/T = (V* - sum_t R[BR(p_t), b_t]) / T, the regret of an
  agent that best-responds (myopically) to its own prediction p_t, scored against the
  partner's actual action b_t. Ties of the best response are averaged; a round without a
  prediction scores the mean over the agent's actions. The paper's definition is known only
  from a summary ("the regret of an agent that always best-responds to its own predictions");
  the per-round counterfactual is our reading. It ignores how the partner would have reacted,
  so against reactive partners (PD tit-for-tat) it can be negative;
* ``invalid_answers``, ``retries``: the policy's counters (LLM parsing failures; 0 for R-max).

``play_games`` plays one game per seed through ``rl_core.rollout`` (seeds batched as envs when
the policy's counters are per-env arrays), ``summarize`` adds means with 95% Student-t CIs,
``write_summary`` keeps ``results/tom/summary.csv`` (one row per game x partner x agent x seed),
``write_markdown`` renders an agent's table, ``run_eval``/``run_sweep`` are the CLI commands.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from envs.matrix_games import (
    MatrixGame,
    SingleAgentMatrixGame,
    best_response_value,
    make_game,
    partner_label,
)
from rl_core.cli import setup_run
from rl_core.config import ConfigError, to_dataclass
from rl_core.logging import Logger, LoggerConfig
from rl_core.rollout import rollout
from rl_core.tables import upsert_rows
from rl_core.utils import atomic_write_text

COLUMNS = (
    "game",
    "partner",
    "agent",
    "seed",
    "rounds",
    "mean_reward",
    "regret_per_step",
    "tom_regret_per_step",
    "tom_accuracy",
    "invalid_answers",
    "retries",
)
KEY = ("game", "partner", "agent", "seed")
METRICS = (
    "mean_reward",
    "regret_per_step",
    "tom_regret_per_step",
    "tom_accuracy",
    "invalid_answers",
    "retries",
)
_INT_COLUMNS = {"seed", "rounds", "invalid_answers", "retries"}
COUNTERS = ("invalid_answers", "retries")

# Reference values: {(game, partner): {metric: (value, error or None)}}.
Reference = Mapping[tuple[str, str], Mapping[str, tuple[float, float | None]]]


@runtime_checkable
class ToMPolicy(Protocol):
    """A rollout ``Policy`` that also predicts the partner.

    ``last_predictions()`` returns, per env, the partner action it predicted for the step it
    just acted in (-1: no prediction). Optional counters ``invalid_answers`` and ``retries``
    are either per-env integer arrays (shape [n_envs], reset by ``reset``; seeds are then
    batched in one rollout) or plain ints (then every seed is played by a fresh policy).
    """

    def reset(self, n_envs: int) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None: ...

    def last_predictions(self) -> np.ndarray: ...


class _Recorder:
    """Wraps a ToMPolicy for the rollout loop and keeps its prediction of every step."""

    def __init__(self, policy: ToMPolicy) -> None:
        self.policy = policy
        self.predictions: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def reset(self, n_envs: int) -> None:
        self.policy.reset(n_envs)
        self.n_envs = n_envs

    def act(self, obs: np.ndarray) -> np.ndarray:
        actions = np.asarray(self.policy.act(obs))
        preds = np.asarray(self.policy.last_predictions(), dtype=np.int64).reshape(-1)
        if preds.shape != (self.n_envs,):
            raise ValueError(
                f"last_predictions() must give one prediction per env ({self.n_envs}), got {preds.shape}"
            )
        self.predictions.append(preds.copy())
        self.actions.append(actions.reshape(-1).copy())
        return actions

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.policy.observe(actions, rewards, dones)


def _counters(policy: Any, n_envs: int) -> dict[str, np.ndarray] | None:
    """Per-env counter arrays, or None if the policy keeps plain-int totals."""
    out = {}
    for name in COUNTERS:
        value = np.asarray(getattr(policy, name, np.zeros(n_envs, dtype=np.int64)))
        if value.ndim == 0:
            return None
        if value.shape != (n_envs,):
            raise ValueError(
                f"policy.{name} has shape {value.shape}, expected ({n_envs},) or an int"
            )
        out[name] = value.astype(np.int64)
    return out


def tom_rewards(game: MatrixGame) -> np.ndarray:
    """``[n_partner_actions + 1, n_partner_actions]``: reward of best-responding to prediction p
    when the partner plays b; the last row is "no prediction" (mean over the agent's actions)."""
    r = game.agent_payoffs
    rows = []
    for p in range(game.n_partner_actions):
        col = r[:, p]
        ties = np.flatnonzero(col >= col.max() - 1e-9)
        rows.append(r[ties].mean(axis=0))
    rows.append(r.mean(axis=0))
    return np.stack(rows)


def score_game(
    game: MatrixGame,
    history: np.ndarray,
    predictions: np.ndarray,
    optimal: float,
) -> dict[str, float]:
    """Metrics of one game from its joint actions [T, 2], predictions [T] and the optimum V*."""
    history = np.asarray(history, dtype=np.int64).reshape(-1, 2)
    preds = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if len(preds) != len(history):
        raise ValueError(f"{len(preds)} predictions for {len(history)} rounds")
    rounds = len(history)
    a, b = history[:, 0], history[:, 1]
    ret = float(game.agent_payoffs[a, b].sum())
    valid = (preds >= 0) & (preds < game.n_partner_actions)
    row = np.where(valid, preds, game.n_partner_actions)
    tom_ret = float(tom_rewards(game)[row, b].sum())
    return {
        "rounds": rounds,
        "mean_reward": ret / rounds,
        "regret_per_step": (optimal - ret) / rounds,
        "tom_regret_per_step": (optimal - tom_ret) / rounds,
        "tom_accuracy": float(np.mean(valid & (preds == b))),
    }


def oracle_value(game: MatrixGame, partner: str, rounds: int, seed: int, **kwargs: Any) -> float:
    """V* for a zoo partner. A partner's seed drives only its random draws, never its policy,
    so V* (an expectation over those draws) is the same for every seed."""
    return best_response_value(game, partner, seed, rounds, **kwargs)


def play_games(
    make_policy: Callable[[], ToMPolicy],
    game: str | MatrixGame,
    partner: str,
    seeds: Sequence[int],
    rounds: int,
    agent_name: str,
    *,
    partner_kwargs: Mapping[str, Any] | None = None,
    history: int = 1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Play one game of ``rounds`` rounds per seed (seed = the partner's seed); one row each.

    Rows have exactly the columns of ``results/tom/summary.csv`` (``COLUMNS``).
    """
    g = make_game(game)
    kwargs = dict(partner_kwargs or {})
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("play_games needs at least one seed")
    optimal = oracle_value(g, partner, rounds, seeds[0], **kwargs)
    probe = make_policy()
    probe.reset(len(seeds))
    batches = [seeds] if _counters(probe, len(seeds)) is not None else [[s] for s in seeds]
    label = partner_label(partner, kwargs)
    rows: list[dict[str, Any]] = []
    for batch in batches:
        policy = probe if batch is batches[0] else make_policy()
        recorder = _Recorder(policy)
        env_fns = [
            lambda s=s: SingleAgentMatrixGame(g, partner, rounds, history, s, kwargs) for s in batch
        ]
        result = rollout(
            env_fns, recorder, seed=None, progress=progress, desc=f"{g.name} vs {label}"
        )
        counters = _counters(policy, len(batch))
        if counters is None:  # plain ints: this policy played this one game only
            counters = {n: np.asarray([int(getattr(policy, n, 0))]) for n in COUNTERS}
        preds = np.stack(recorder.predictions)  # [T, n]
        actions = np.stack(recorder.actions)
        for i, seed in enumerate(batch):
            joint = np.asarray(result.infos[i][0]["history"], dtype=np.int64).reshape(-1, 2)
            if not np.array_equal(joint[:, 0], actions[: len(joint), i]):
                raise RuntimeError("recorded actions disagree with the env's history")
            metrics = score_game(g, joint, preds[: len(joint), i], optimal)
            if not math.isclose(
                metrics["mean_reward"] * rounds, result.returns[i, 0], abs_tol=1e-6
            ):
                raise RuntimeError("return recomputed from the history disagrees with the rollout")
            rows.append(
                {
                    "game": g.name,
                    "partner": label,
                    "agent": agent_name,
                    "seed": seed,
                    **metrics,
                    **{n: int(counters[n][i]) for n in COUNTERS},
                }
            )
    return [{c: r[c] for c in COLUMNS} for r in rows]


# ----------------------------------------------------------------------------- statistics
# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency).
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t (table; linear in 1/df between entries, 1.96 at infinity)."""
    if df < 1:
        return math.nan
    if df in _T975:
        return _T975[df]
    keys = sorted(_T975)
    lo = max(k for k in keys if k < df)
    hi = min((k for k in keys if k > df), default=None)
    if hi is None:
        x0, y0, x1, y1 = 1 / lo, _T975[lo], 0.0, 1.959964
    else:
        x0, y0, x1, y1 = 1 / lo, _T975[lo], 1 / hi, _T975[hi]
    return y0 + (1 / df - x0) * (y1 - y0) / (x1 - x0)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, 95% CI half-width (Student t) and standard error; nan spreads for one value."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(len(x)))
    return mean, t_quantile_975(len(x) - 1) * se, se


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (game, partner, agent, rounds): ``n`` and ``<metric>``, ``<metric>_ci95``,
    ``<metric>_se`` for every metric."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["game"], r["partner"], r["agent"], int(r["rounds"])), []).append(r)
    out = []
    for (game, partner, agent, rounds), members in sorted(groups.items()):
        entry: dict[str, Any] = {
            "game": game, "partner": partner, "agent": agent, "rounds": rounds, "n": len(members),
        }  # fmt: skip
        for m in METRICS:
            mean, ci, se = mean_ci([float(r[m]) for r in members])
            entry.update({m: mean, f"{m}_ci95": ci, f"{m}_se": se})
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- result files
def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a summary table (numbers parsed); [] if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return [
            {
                k: (int(v) if k in _INT_COLUMNS else v if k in KEY else float(v))
                for k, v in r.items()
            }
            for r in reader
        ]


def _fmt(column: str, value: Any) -> str:
    if column in _INT_COLUMNS:
        return str(int(value))
    if column in KEY:
        return str(value)
    return f"{float(value):.4f}"


def write_summary(rows: Iterable[Mapping[str, Any]], path: str | Path) -> list[dict[str, Any]]:
    """Merge ``rows`` into the CSV at ``path``: rows with the same (game, partner, agent, seed)
    are replaced, all others kept; sorted; written atomically. Returns the table's rows."""
    path = Path(path)
    new = [{c: _fmt(c, r[c]) for c in COLUMNS} for r in rows]
    upsert_rows(
        path, COLUMNS, new, key=KEY,
        sort_key=lambda r: (r["game"], r["partner"], r["agent"], int(r["seed"])),
    )  # fmt: skip
    return read_summary(path)


def _pm(mean: float, ci: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def markdown_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of ``summarize`` output: mean ± 95% CI per metric."""
    head = "| game | partner | agent | games | T | mean reward | regret/T | Δ_ToM/T | ToM acc. | invalid | retries |"
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        cells = [s["game"], s["partner"], f"`{s['agent']}`", str(s["n"]), str(s["rounds"])]
        cells += [_pm(s[m], s[f"{m}_ci95"]) for m in METRICS[:3]]
        cells.append(_pm(100 * s["tom_accuracy"], 100 * s["tom_accuracy_ci95"], 1) + "%")
        cells += [f"{s[m]:.2f}" for m in COUNTERS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_table(summary: Sequence[Mapping[str, Any]], reference: Reference) -> str:
    """Ours (mean ± SE) next to reference numbers, with |difference| / combined SE.

    A difference within 1.96 combined standard errors (the reference's ± read as a standard
    error, 0 when unknown) counts as reproduced.
    """
    lines = [
        "| game | partner | metric | ours (mean ± SE) | reference | diff / combined SE | reproduced |",
        "|---|---|---|---|---|---|---|",
    ]
    by_key = {(s["game"], s["partner"]): s for s in summary}
    for (game, partner), metrics in reference.items():
        s = by_key.get((game, partner))
        for metric, (value, err) in metrics.items():
            if s is None:
                lines.append(f"| {game} | {partner} | {metric} | (not run) | {value} | | |")
                continue
            mean, se = s[metric], s[f"{metric}_se"]
            combined = math.sqrt((0.0 if math.isnan(se) else se) ** 2 + (err or 0.0) ** 2)
            z = abs(mean - value) / combined if combined > 0 else math.inf
            ref = f"{value}" + (f" ± {err}" if err is not None else "")
            ok = "yes" if z <= 1.96 else "no"
            lines.append(
                f"| {game} | {partner} | {metric} | {_pm(mean, se)} | {ref} | {z:.1f} | {ok} |"
            )
    return "\n".join(lines)


def write_markdown(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    title: str,
    intro: str = "",
    reference: Reference | None = None,
    reference_intro: str = "",
) -> str:
    """Write an agent's results page (summary table, optional reference comparison) atomically."""
    summary = summarize(rows)
    parts = [f"# {title}", intro.strip(), markdown_table(summary)]
    if reference:
        parts += [
            "## Against the reference",
            reference_intro.strip(),
            reference_table(summary, reference),
        ]
    text = "\n\n".join(p for p in parts if p) + "\n"
    atomic_write_text(path, text)
    return text


def log_games(logger: Any, rows: Sequence[Mapping[str, Any]], prefix: str = "eval") -> None:
    """One ``eval/*`` row per game (``eval/step`` = game index) and the means in the summary."""
    for k, r in enumerate(rows):
        logger.log({"eval/step": k, **{f"{prefix}/{m}": float(r[m]) for m in METRICS}})
    for s in summarize(rows):
        logger.summary(
            {
                f"{prefix}/{m}{suffix}": s[f"{m}{suffix}"]
                for m in METRICS
                for suffix in ("", "_ci95")
            }
        )


# ----------------------------------------------------------------------------- CLI glue
def partner_spec(node: Any) -> tuple[str, dict[str, Any]]:
    """``cfg.partner`` -> (name, kwargs); keys set to null keep the partner's default."""
    spec = (
        OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    )
    if "name" not in spec:
        raise ConfigError("partner config needs a 'name'")
    name = str(spec.pop("name"))
    return name, {k: v for k, v in spec.items() if v is not None}


def game_spec(node: Any) -> MatrixGame:
    """``cfg.game`` -> a ``MatrixGame`` (preset by name, or custom payoffs)."""
    spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    try:
        return make_game(spec)
    except ValueError as e:
        raise ConfigError(f"game: {e}") from None


def _results(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / "tom"


def _write_results(
    cfg: DictConfig,
    rows: list[dict[str, Any]],
    agent: str,
    reference: Reference | None,
    reference_intro: str,
) -> None:
    table = write_summary(rows, _results(cfg) / "summary.csv")
    family = agent.split(":")[0]
    mine = [r for r in table if r["agent"].split(":")[0] == family]
    write_markdown(
        mine,
        _results(cfg) / f"{family}.md",
        title=f"`{family}` on repeated matrix games",
        intro=(
            "Generated from `summary.csv` by `agents/tom_eval.py` (see `README.md` for the "
            "commands). Mean ± 95% CI over seeded games; regret against the exact best "
            "response (backward induction over the partner's state)."
        ),
        reference=reference,
        reference_intro=reference_intro,
    )
    print(markdown_table(summarize(rows)))


def _play_from_cfg(
    cfg: DictConfig,
    make_policy: Callable[[MatrixGame], ToMPolicy],
    agent: str,
    game: MatrixGame,
    partner: str,
    kwargs: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Play the configured games; a bad game/partner setting is a ConfigError (clean CLI exit)."""
    seeds = range(int(cfg.seed), int(cfg.seed) + int(cfg.env.games))
    try:
        return play_games(
            lambda: make_policy(game),
            game,
            partner,
            seeds,
            int(cfg.env.rounds),
            agent,
            partner_kwargs=kwargs,
            history=int(cfg.env.history),
            progress=bool(cfg.train.progress),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_eval(
    cfg: DictConfig,
    make_policy: Callable[[MatrixGame], ToMPolicy],
    agent: str,
    reference: Reference | None = None,
    reference_intro: str = "",
) -> list[dict[str, Any]]:
    """CLI ``eval``: ``cfg.env.games`` seeded games of ``cfg.game`` vs ``cfg.partner``; logs
    ``eval/*``, merges the rows into ``results_dir/tom/summary.csv``, rewrites the agent's page."""
    run_dir = setup_run(cfg)
    game = game_spec(cfg.game)
    partner, kwargs = partner_spec(cfg.partner)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    config = OmegaConf.to_container(cfg, resolve=True)
    with Logger(logger_cfg, run_dir, cfg.run_name, config) as logger:
        rows = _play_from_cfg(cfg, make_policy, agent, game, partner, kwargs)
        log_games(logger, rows)
    _write_results(cfg, rows, agent, reference, reference_intro)
    return rows


def run_sweep(
    cfg: DictConfig,
    make_policy: Callable[[MatrixGame], ToMPolicy],
    agent: str,
    reference: Reference | None = None,
    reference_intro: str = "",
) -> list[dict[str, Any]]:
    """CLI ``sweep``: every game of ``cfg.sweep.games`` x partner of ``cfg.sweep.partners``
    (a name, for the partner's defaults, or a mapping like ``cfg.partner``), one run, one table."""
    run_dir = setup_run(cfg)
    logger_cfg = to_dataclass(cfg.logger, LoggerConfig, "logger")
    config = OmegaConf.to_container(cfg, resolve=True)
    rows: list[dict[str, Any]] = []
    with Logger(logger_cfg, run_dir, cfg.run_name, config) as logger:
        for game_name in cfg.sweep.games:
            game = game_spec(str(game_name))
            for entry in cfg.sweep.partners:
                partner, kwargs = (
                    partner_spec(entry) if isinstance(entry, DictConfig) else (str(entry), {})
                )
                got = _play_from_cfg(cfg, make_policy, agent, game, partner, kwargs)
                log_games(logger, got, prefix=f"eval/{game.name}/{got[0]['partner']}")
                rows += got
    _write_results(cfg, rows, agent, reference, reference_intro)
    return rows
