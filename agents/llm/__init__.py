"""LLM agents for repeated matrix games (Riemer et al. 2024): backends, prompts, parsing, policy.

``python -m agents.llm eval game=rps partner=tit_for_tat backend=openai model=NAME`` plays seeded
games through `agents.tom_eval` and reports literal ToM (prediction accuracy) and functional ToM
(regret). See ``agents/llm/README.md``.
"""

from __future__ import annotations

from agents.llm.backends import (
    Answer,
    Backend,
    FatalBackendError,
    HFBackend,
    HFConfig,
    OpenAIBackend,
    OpenAIConfig,
    TransientError,
)
from agents.llm.parsing import parse_choice
from agents.llm.policy import LLMAgentConfig, LLMPolicy
from agents.llm.prompts import STRATEGIES, GameText, Query, Round, build_queries
from agents.llm.retry import Outcome, RetryConfig, ask

__all__ = [
    "STRATEGIES",
    "Answer",
    "Backend",
    "FatalBackendError",
    "GameText",
    "HFBackend",
    "HFConfig",
    "LLMAgentConfig",
    "LLMPolicy",
    "OpenAIBackend",
    "OpenAIConfig",
    "Outcome",
    "Query",
    "RetryConfig",
    "Round",
    "TransientError",
    "ask",
    "build_queries",
    "parse_choice",
]
