"""`LLMPolicy`: an LLM playing repeated matrix games through the framework's rollout loop.

The adapter of Riemer et al. (2024), "Can Large Language Models Adapt to Other Agents
In-Context?" (arXiv 2412.19726): every round the model is asked for a prediction of the
partner's next action (literal theory of mind) and for its own action (functional theory of
mind); the evaluation (`agents.tom_eval`) turns the two into ToM accuracy and regret. Deviations:
the prompt text is ours (the paper's is not public), only the plain / chain-of-thought / social
prompt families are implemented, and the prediction is asked in a separate probe for the plain
and chain-of-thought prompts so that it cannot change the action.

The policy keeps, per env, the history of finished rounds (its context); a game is one episode,
so the history is cleared when an episode ends. It writes one JSON line per env and round with
every prompt, raw answer, parsed value, fallback, reward and partner action, so every metric can
be recomputed from the log alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.llm.backends import Backend, FatalBackendError
from agents.llm.prompts import STRATEGIES, GameText, Query, Round, build_queries, make_labels
from agents.llm.retry import Outcome, RetryConfig, ask

__all__ = ["LLMAgentConfig", "LLMPolicy", "matrix_obs_partner", "partner_from_reward"]

PartnerDecoder = Callable[[np.ndarray], "int | None"]


@dataclass
class LLMAgentConfig:
    """``cfg.agent`` for ``python -m agents.llm``."""

    name: str = "llm"
    strategy: str = "plain"  # plain | cot | social (see agents.llm.prompts)
    option_order: str = "shuffle"  # shuffle (seeded, every round) | fixed
    labels: str = "names"  # names (the game's action names) | letters (random, per game)
    history_window: int = 0  # rounds of history in the prompt (0 = all)
    system_prompt: bool = True
    fallback: str = "random"  # action when no valid answer came: random | first
    log_steps: bool = True  # the per-step JSONL log (prompts, answers, parsed values)
    retry: RetryConfig = field(default_factory=RetryConfig)

    def __post_init__(self) -> None:
        checks = {
            "strategy": (self.strategy, STRATEGIES),
            "option_order": (self.option_order, ("shuffle", "fixed")),
            "labels": (self.labels, ("names", "letters")),
            "fallback": (self.fallback, ("random", "first")),
        }
        for key, (value, valid) in checks.items():
            if value not in valid:
                raise ValueError(f"agent.{key}={value!r}: expected one of {', '.join(valid)}")


def matrix_obs_partner(n_partner_actions: int) -> PartnerDecoder:
    """Decoder for `envs.matrix_games` observations: the last (own, partner) pair's partner.

    The env pads rounds not played yet with ``n_partner_actions``, which decodes to None.
    """

    def decode(row: np.ndarray) -> int | None:
        value = int(np.asarray(row).reshape(-1)[-1])
        return value if 0 <= value < n_partner_actions else None

    return decode


def partner_from_reward(payoffs: np.ndarray, action: int, reward: float) -> int | None:
    """The partner action that explains `reward` for our `action`, if exactly one does."""
    hits = np.flatnonzero(np.isclose(payoffs[action, :, 0], reward))
    return int(hits[0]) if len(hits) == 1 else None


@dataclass
class _Pending:
    """A round that has been acted in but not yet completed (reward / partner action)."""

    round: int
    action: int
    prediction: int
    record: dict[str, Any]
    reward: float | None = None


class LLMPolicy:
    """Rollout `Policy` + the ToM extras (`last_predictions`, `invalid_answers`, `retries`).

    game: a `envs.matrix_games.MatrixGame` (anything with `actions`, `payoffs` and optionally
    `partner_actions`); player 0 is this agent.
    partner_of: reads the partner's previous action out of an observation row (None when the
    row holds none, e.g. the first round). Without it, or when it returns None, the partner
    action is recovered from our action and reward when that is unambiguous.
    """

    def __init__(
        self,
        backend: Backend,
        game: Any,
        cfg: LLMAgentConfig | None = None,
        *,
        rounds: int = 100,
        seed: int = 0,
        log_path: str | Path | None = None,
        log_meta: Mapping[str, Any] | None = None,
        env_seeds: Sequence[int] | None = None,
        partner_of: PartnerDecoder | None = None,
    ) -> None:
        self.backend = backend
        self.actions = tuple(game.actions)
        self.partner_actions = tuple(getattr(game, "partner_actions", None) or game.actions)
        self.payoffs = np.asarray(game.payoffs, dtype=np.float64)
        shape = (len(self.actions), len(self.partner_actions), 2)
        if self.payoffs.shape != shape:
            raise ValueError(f"payoffs must have shape {shape}, got {self.payoffs.shape}")
        self.cfg = cfg or LLMAgentConfig()
        self.rounds = rounds
        self.seed = seed
        self.partner_of = partner_of
        self.log_meta = dict(log_meta or {})
        self.env_seeds = list(env_seeds) if env_seeds is not None else None
        self.log_path = Path(log_path) if (log_path and self.cfg.log_steps) else None
        self._log: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self.stats = {  # totals over the policy's life (per-env counters are reset by reset)
            "questions": 0,
            "unparseable_answers": 0,
            "parse_retries": 0,
            "net_retries": 0,
            "net_failures": 0,
            "action_fallbacks": 0,
            "prediction_fallbacks": 0,
        }
        self._failed_in_row = 0
        self.n_envs = 0
        self.reset(0)

    # ------------------------------------------------------------------ Policy protocol
    def reset(self, n_envs: int) -> None:
        self.n_envs = n_envs
        # Per-env counters (the ToM evaluation batches seeded games as envs and reads these):
        self.invalid_answers = np.zeros(n_envs, dtype=np.int64)  # decisions that fell back
        self.retries = np.zeros(n_envs, dtype=np.int64)  # re-asks + network re-tries
        self._games = [0] * n_envs
        self._rngs = [np.random.default_rng([self.seed, i]) for i in range(n_envs)]
        self._texts = [self._new_game_text(i) for i in range(n_envs)]
        self._histories: list[list[Round]] = [[] for _ in range(n_envs)]
        self._pending: list[_Pending | None] = [None] * n_envs
        self._predictions = np.full(n_envs, -1, dtype=np.int64)

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        for i in range(self.n_envs):
            if self._pending[i] is not None:  # the previous round is complete now
                self._finish(i, self.partner_of(obs[i]) if self.partner_of else None)
        jobs: list[tuple[int, Query]] = []
        orders = []
        for i in range(self.n_envs):
            order, partner_order = self._order(i)
            orders.append(order)
            queries = build_queries(
                self._texts[i],
                self._histories[i],
                self.cfg.strategy,
                order,
                partner_order,
                window=self.cfg.history_window,
                system=self.cfg.system_prompt,
            )
            jobs += [(i, q) for q in queries]
        outcomes = self._ask_all(jobs)
        actions = np.zeros(self.n_envs, dtype=np.int64)
        per_env: list[list[tuple[Query, Outcome]]] = [[] for _ in range(self.n_envs)]
        for (i, q), out in zip(jobs, outcomes):
            per_env[i].append((q, out))
        for i in range(self.n_envs):
            actions[i], self._predictions[i] = self._decide(i, per_env[i], orders[i])
        return actions

    def observe(self, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        for i in range(self.n_envs):
            pending = self._pending[i]
            if pending is None:
                continue
            pending.reward = float(rewards[i])
            if dones[i]:  # the next obs is a reset: take the partner action from the reward
                self._finish(i, None)
                self._histories[i] = []
                self._games[i] += 1
                self._texts[i] = self._new_game_text(i)

    # ------------------------------------------------------------------ ToM extras
    def last_predictions(self) -> np.ndarray:
        """Predicted partner action per env for the step just acted (-1: no valid prediction)."""
        return self._predictions.copy()

    def close(self) -> None:
        """Flush the log and stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LLMPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _new_game_text(self, i: int) -> GameText:
        mine, theirs = make_labels(
            self.actions, self.partner_actions, self.cfg.labels, self._rngs[i]
        )
        return GameText(mine, theirs, self.payoffs, self.rounds)

    def _order(self, i: int) -> tuple[list[int], list[int]]:
        """The order options are listed in this round (agent's, partner's)."""
        n, m = len(self.actions), len(self.partner_actions)
        if self.cfg.option_order == "fixed":
            return list(range(n)), list(range(m))
        order = [int(x) for x in self._rngs[i].permutation(n)]
        if self._texts[i].symmetric:
            return order, order
        return order, [int(x) for x in self._rngs[i].permutation(m)]

    def _ask_all(self, jobs: list[tuple[int, Query]]) -> list[Outcome]:
        """Answers to all questions of this step, `backend.concurrency` at a time."""
        seeds = [int(self._rngs[i].integers(2**31)) for i, _ in jobs]
        retry = self.cfg.retry

        def one(k: int) -> Outcome:
            return ask(self.backend, jobs[k][1], retry, rng=random.Random(seeds[k]))

        if self.backend.concurrency <= 1 or len(jobs) <= 1:
            outcomes = [one(k) for k in range(len(jobs))]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.backend.concurrency, thread_name_prefix="llm"
                )
            outcomes = list(self._pool.map(one, range(len(jobs))))
        for (i, _), out in zip(jobs, outcomes):
            self._count(i, out)
        return outcomes

    def _count(self, i: int, out: Outcome) -> None:
        s = self.stats
        s["questions"] += 1
        s["unparseable_answers"] += out.invalid
        s["parse_retries"] += out.parse_retries
        s["net_retries"] += out.net_retries
        s["net_failures"] += int(out.net_failed)
        self.retries[i] += out.retries
        self._failed_in_row = self._failed_in_row + 1 if out.net_failed else 0
        limit = self.cfg.retry.max_failed_in_row
        if limit and self._failed_in_row >= limit:
            last = next((a["error"] for a in reversed(out.attempts) if "error" in a), "?")
            raise FatalBackendError(
                f"{self._failed_in_row} questions in a row got no answer from the backend "
                f"(last error: {last}); is the server up? (agent.retry.max_failed_in_row)"
            )

    def _decide(
        self, i: int, answered: list[tuple[Query, Outcome]], order: list[int]
    ) -> tuple[int, int]:
        values: dict[str, int | None] = {}
        for _, out in answered:
            values.update(out.values)
        action, prediction = values.get("action"), values.get("prediction")
        action_fallback = action is None
        if action is None:
            action = (
                int(self._rngs[i].integers(len(self.actions)))
                if self.cfg.fallback == "random"
                else 0
            )
            self.stats["action_fallbacks"] += 1
            self.invalid_answers[i] += 1
        if prediction is None:
            self.stats["prediction_fallbacks"] += 1
            self.invalid_answers[i] += 1
            prediction = -1
        history = self._histories[i]
        labels = self._texts[i].labels
        partner_labels = self._texts[i].partner_labels
        record = {
            **self.log_meta,
            "env": i,
            "seed": self.env_seeds[i] if self.env_seeds and i < len(self.env_seeds) else None,
            "episode": self._games[i],
            "round": len(history) + 1,
            "strategy": self.cfg.strategy,
            "labels": list(labels),
            "partner_labels": list(partner_labels),
            "order": [labels[k] for k in order],
            "questions": [
                {
                    "kind": q.kind,
                    "messages": list(q.messages),
                    "attempts": out.attempts,
                    "values": out.values,
                    "invalid": out.invalid,
                    "retries": out.retries,
                    "net_failed": out.net_failed,
                }
                for q, out in answered
            ],
            "action": int(action),
            "action_label": labels[action],
            "action_fallback": action_fallback,
            "prediction": int(prediction),
            "prediction_label": partner_labels[prediction] if prediction >= 0 else None,
        }
        self._pending[i] = _Pending(len(history) + 1, int(action), int(prediction), record)
        return int(action), int(prediction)

    def _finish(self, i: int, partner: int | None) -> None:
        """Complete env i's pending round: history entry + log line."""
        p = self._pending[i]
        self._pending[i] = None
        if p is None or p.reward is None:
            return
        if partner is None:
            partner = partner_from_reward(self.payoffs, p.action, p.reward)
        p.record["reward"] = p.reward
        p.record["partner_action"] = partner
        if partner is not None:
            p.record["partner_label"] = self._texts[i].partner_labels[partner]
            p.record["partner_reward"] = float(self.payoffs[p.action, partner, 1])
            p.record["prediction_correct"] = p.prediction == partner
            self._histories[i].append(
                Round(p.action, partner, p.reward, float(self.payoffs[p.action, partner, 1]))
            )
        self._write(p.record)

    def _write(self, record: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._log.write(json.dumps(record, default=_jsonable) + "\n")
        self._log.flush()


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    return str(x)
