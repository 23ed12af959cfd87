"""``python -m agents.llm eval|sweep``: an LLM plays seeded repeated matrix games.

The games, the metrics (ToM accuracy, regret, Δ_ToM with 95% CIs) and the result files
(``results/tom/summary.csv``, ``results/tom/llm.md``) are the shared ToM evaluation of
`agents.tom_eval`, as for R-max, so LLM and tabular agents land in one table. The agent is named
``llm:<backend>:<model>``. Seeded games are batched as envs, and with the OpenAI backend their
questions go out concurrently. Every question and answer goes to
``run_dir/llm_steps_<model>.jsonl`` (rewritten by each run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agents.llm.backends import (
    Backend,
    FatalBackendError,
    HFBackend,
    HFConfig,
    OpenAIBackend,
    OpenAIConfig,
)
from agents.llm.policy import LLMAgentConfig, LLMPolicy, matrix_obs_partner
from agents.tom_eval import partner_spec, run_eval, run_sweep
from envs.matrix_games import partner_label
from rl_core.config import ConfigError, to_dataclass

__all__ = ["make_backend", "agent_name", "evaluate", "sweep"]

BACKENDS = ("openai", "hf")


def _model(cfg: DictConfig) -> str:
    model = OmegaConf.select(cfg, "model", throw_on_missing=False)
    if model in (None, "", "???"):
        raise ConfigError(
            "no model given: add model=NAME (backend=openai: the served model's name; "
            "backend=hf: a local model folder)"
        )
    return str(model)


def make_backend(cfg: DictConfig) -> Backend:
    """The backend of ``cfg.backend`` for ``cfg.model``."""
    name = str(cfg.backend.name)
    try:
        if name == "openai":
            bcfg = to_dataclass(cfg.backend, OpenAIConfig, "backend")
            return OpenAIBackend(bcfg, _model(cfg), seed=int(cfg.seed))
        if name == "hf":
            hcfg = to_dataclass(cfg.backend, HFConfig, "backend")
            return HFBackend(hcfg, _model(cfg), seed=int(cfg.seed))
    except (FatalBackendError, ValueError) as e:
        raise ConfigError(str(e)) from None
    raise ConfigError(f"backend.name={name!r}: expected one of {', '.join(BACKENDS)}")


def agent_name(backend: Backend) -> str:
    """``llm:<backend>:<model>``, the `agent` column of the results table."""
    return f"llm:{backend.name}:{backend.model}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


def _policy_factory(cfg: DictConfig, pairs: list[tuple[str, str]]):
    """``game -> LLMPolicy`` for `agents.tom_eval`; `pairs` names the (game, partner) of each
    successive call (tom_eval builds one policy per game x partner when counters are per env)."""
    try:
        agent_cfg = to_dataclass(cfg.agent, LLMAgentConfig, "agent")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    backend = make_backend(cfg)
    log_path = Path(cfg.run_dir) / f"llm_steps_{_slug(backend.model)}.jsonl"
    log_path.unlink(missing_ok=True)  # the log matches this run's rows in summary.csv
    first = int(cfg.seed)
    seeds = list(range(first, first + int(cfg.env.games)))
    policies: list[LLMPolicy] = []

    def make(game: Any) -> LLMPolicy:
        k = len(policies)
        game_name, partner = pairs[k] if k < len(pairs) else (game.name, None)
        policy = LLMPolicy(
            backend,
            game,
            agent_cfg,
            rounds=int(cfg.env.rounds),
            seed=first,
            log_path=log_path,
            log_meta={"game": game.name, "partner": partner, "agent": agent_name(backend)},
            env_seeds=seeds,
            partner_of=matrix_obs_partner(game.n_partner_actions),
        )
        policies.append(policy)
        return policy

    return make, backend, policies


def _run(cfg: DictConfig, runner, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    make, backend, policies = _policy_factory(cfg, pairs)
    try:
        return runner(cfg, make, agent=agent_name(backend))
    except FatalBackendError as e:
        raise ConfigError(str(e)) from None
    finally:
        for p in policies:
            p.close()


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """CLI ``eval``: ``env.games`` seeded games of ``game`` against ``partner``."""
    partner, kwargs = partner_spec(cfg.partner)
    return _run(cfg, run_eval, [(str(cfg.game.name), partner_label(partner, kwargs))])


def sweep(cfg: DictConfig) -> list[dict[str, Any]]:
    """CLI ``sweep``: every game x partner of ``sweep``, one table."""
    pairs = []
    for game in cfg.sweep.games:
        for entry in cfg.sweep.partners:
            name, kwargs = partner_spec(entry) if isinstance(entry, DictConfig) else (entry, {})
            pairs.append((str(game), partner_label(str(name), kwargs)))
    return _run(cfg, run_sweep, pairs)
