"""``to_dataclass`` turns config nodes into dataclasses and names the bad key when it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from rl_core.config import ConfigError, is_secret_key, redact_secrets, to_dataclass
from rl_core.logging import LoggerConfig


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class Agent:
    d_model: int = 64
    name: str = "ad"
    dropout: float = 0.1
    max_steps: int | None = None
    optim: Optim = field(default_factory=Optim)


def test_merges_values_over_defaults_and_resolves_interpolations() -> None:
    root = OmegaConf.create({"width": 32, "agent": {"d_model": "${width}", "optim": {"lr": 3}}})
    agent = to_dataclass(root.agent, Agent, "agent")
    assert agent == Agent(d_model=32, optim=Optim(lr=3.0))
    assert isinstance(agent.optim.lr, float)
    assert to_dataclass({"max_steps": 5}, Agent).max_steps == 5


def test_unknown_key_names_full_path_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        to_dataclass({"d_model": 8, "lrr": 1}, Agent, "agent")
    msg = str(e.value)
    assert "'agent.lrr'" in msg and "d_model, dropout, max_steps, name, optim" in msg


def test_unknown_nested_key_lists_keys_of_its_own_level() -> None:
    with pytest.raises(ConfigError) as e:
        to_dataclass({"optim": {"lrr": 1}}, Agent, "agent")
    msg = str(e.value)
    assert "'agent.optim.lrr'" in msg and "Valid keys under 'agent.optim': betas, lr" in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"d_model": "abc"}, ["'agent.d_model'", "expected int", "'abc'"]),
        ({"d_model": 1.5}, ["'agent.d_model'", "expected int", "1.5"]),
        ({"max_steps": "many"}, ["'agent.max_steps'", "int | None"]),
        ({"optim": {"lr": "fast"}}, ["'agent.optim.lr'", "expected float"]),
    ],
)
def test_wrong_type_names_path_and_expected_type(data: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        to_dataclass(data, Agent, "agent")
    for text in expected:
        assert text in str(e.value)


def test_config_error_is_a_value_error_and_post_init_checks_pass_through() -> None:
    with pytest.raises(ValueError, match=r"'logger.mode'.*offline, online, auto, disabled"):
        to_dataclass({"mode": "sometimes"}, LoggerConfig, "logger")
    assert to_dataclass({"mode": "disabled", "tags": ["a"]}, LoggerConfig).tags == ["a"]


def test_secret_keys_are_dropped_but_model_sizes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    cfg = {
        "wandb_api_key": "x",
        "hf_token": "x",
        "db": {"password": "x", "client_secret": "x", "host": "h"},
        "n_tokens": 16,
        "token_dim": 8,
        "reward_token": True,  # a setting named like a credential, but not a string
        "note": "key is " + "k" * 40,
        "items": [{"access_token": "x", "keep": 1}],
    }
    assert redact_secrets(OmegaConf.create(cfg)) == {
        "db": {"host": "h"},
        "n_tokens": 16,
        "token_dim": 8,
        "reward_token": True,
        "note": "<redacted>",
        "items": [{"keep": 1}],
    }
    assert is_secret_key("API_KEY") and not is_secret_key("tokenizer")
