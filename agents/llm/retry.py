"""Asking one question robustly: network retries, re-asks for unreadable answers, a deadline.

Two separate budgets, as recommended for LLM game agents (Concordia, TextArena): transport
failures (timeouts, connection errors, HTTP 5xx/429) are retried with exponential backoff and
jitter; an answer that arrives but cannot be parsed is re-asked with the bad answer and a
format reminder appended to the conversation. Both stop at a per-question deadline, so a game
always finishes in bounded time; what could not be answered is returned as missing, for the
policy to fill with a counted fallback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.llm.backends import Backend, FatalBackendError, RejectedError, TransientError
from agents.llm.parsing import invalid_answer_feedback, parse_choice
from agents.llm.prompts import Query

__all__ = ["RetryConfig", "Outcome", "ask"]


@dataclass
class RetryConfig:
    """``agent.retry``: budgets for one question (a prediction, an action, or both)."""

    invalid_retries: int = 2  # re-asks after an unparseable answer
    net_retries: int = 4  # re-tries after a timeout / connection error / HTTP 5xx or 429
    backoff_s: float = 1.0  # first delay; doubled each time, times a jitter in [0.5, 1]
    max_backoff_s: float = 20.0
    deadline_s: float = 180.0  # wall-clock budget for one question, retries included
    max_failed_in_row: int = 25  # questions in a row lost to the network before the run stops


@dataclass
class Outcome:
    """What came of one question: the parsed fields (None = missing) and every attempt."""

    values: dict[str, int | None]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    invalid: int = 0  # answers received that could not be parsed
    parse_retries: int = 0
    net_retries: int = 0
    net_failed: bool = False  # gave up on the network (or the server refused the request)

    @property
    def retries(self) -> int:
        return self.parse_retries + self.net_retries


def _call(
    backend: Backend,
    query: Query,
    cfg: RetryConfig,
    deadline: float,
    out: Outcome,
    sleep: Callable[[float], None],
    rng: random.Random,
) -> str | None:
    """The answer text, retrying transient failures within the budget; None if none came."""
    for attempt in range(cfg.net_retries + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            out.attempts.append({"error": "deadline exceeded"})
            return None
        start = time.monotonic()
        try:
            ans = backend.answer(query, timeout_s=left)
        except FatalBackendError:
            raise
        except RejectedError as e:
            out.attempts.append({"error": str(e)})
            return None
        except TransientError as e:
            out.attempts.append({"error": str(e), "elapsed_s": round(time.monotonic() - start, 4)})
            if attempt == cfg.net_retries:
                return None
            delay = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt) * rng.uniform(0.5, 1.0)
            if time.monotonic() + delay >= deadline:
                out.attempts.append({"error": "deadline exceeded"})
                return None
            out.net_retries += 1
            sleep(delay)
            continue
        out.attempts.append({"raw": ans.text, **ans.info})
        return ans.text
    return None


def ask(
    backend: Backend,
    query: Query,
    cfg: RetryConfig,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Ask `query`; re-ask while the answer is unreadable; never raises for a bad answer."""
    rng = rng or random.Random(0)
    out = Outcome(values={t: None for t in query.tags})
    deadline = time.monotonic() + cfg.deadline_s
    messages = list(query.messages)
    lenient = len(query.tags) == 1
    for turn in range(cfg.invalid_retries + 1):
        text = _call(backend, query.with_messages(messages), cfg, deadline, out, sleep, rng)
        if text is None:
            out.net_failed = True
            return out
        parsed = {
            t: parse_choice(text, t, labels, lenient=lenient)
            for t, labels in zip(query.tags, query.labels)
        }
        out.attempts[-1]["parsed"] = parsed
        if all(v is not None for v in parsed.values()):
            out.values = parsed  # a complete answer replaces any partial earlier one
            return out
        for t, v in parsed.items():  # keep partial fields, in case no complete answer comes
            if v is not None and out.values[t] is None:
                out.values[t] = v
        out.invalid += 1
        if turn == cfg.invalid_retries:
            break
        out.parse_retries += 1
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": invalid_answer_feedback(query.tags, query.labels)},
        ]
    return out
