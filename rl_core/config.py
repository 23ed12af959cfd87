"""Typed views of Hydra config nodes.

Hydra hands every command an untyped ``DictConfig``; agents want dataclasses so
that a typo or a wrong type fails at start-up, with the full key path and the
valid keys in the message, instead of deep inside a training loop.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    ValidationError,
)

T = TypeVar("T")


def _tag_if(flag: Any, tag: str) -> str:
    """`${tag_if:${flag},_suffix}`: the suffix when the flag is true (run names of variants)."""
    if isinstance(flag, str):
        flag = flag.strip().lower() in ("true", "1", "yes")
    return str(tag) if flag else ""


if not OmegaConf.has_resolver("tag_if"):  # configs name variants' runs apart with it
    OmegaConf.register_new_resolver("tag_if", _tag_if)

__all__ = ["ConfigError", "to_dataclass", "redact_secrets", "is_secret_key"]


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key path and what is allowed."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else (where or key)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _field_type(cls: type, path: list[str]) -> Any:
    """Follow dataclass fields along ``path`` and return the annotated type (or None)."""
    tp: Any = cls
    for part in path:
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _valid_keys(schema: DictConfig, parent: list[str]) -> list[str]:
    node = OmegaConf.select(schema, ".".join(parent)) if parent else schema
    return sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []


def _as_plain(node: DictConfig | Mapping) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.asdict(node)
    return dict(node)


def to_dataclass(node: DictConfig | Mapping, cls: type[T], where: str = "") -> T:
    """Merge ``node`` into the dataclass ``cls`` (defaults fill the gaps) and build it.

    ``where`` is the node's path in the full config (``"agent"``), used only in
    error messages. Raises ``ConfigError`` for an unknown key, a value of the
    wrong type, or a missing mandatory value.
    """
    schema = OmegaConf.structured(cls)
    data = _as_plain(node)
    try:
        merged = OmegaConf.merge(schema, data)
        return typing.cast(T, OmegaConf.to_object(merged))
    except (ConfigKeyError, ConfigAttributeError) as e:
        parts = str(e.full_key or e.key or "").split(".")
        parent = parts[:-1]
        valid = ", ".join(_valid_keys(schema, parent)) or "(none)"
        level = _join(where, ".".join(parent)) or "the top level"
        raise ConfigError(
            f"Unknown config key '{_join(where, '.'.join(parts))}'. "
            f"Valid keys under '{level}': {valid}"
        ) from None
    except MissingMandatoryValue as e:
        raise ConfigError(f"Missing value for '{_join(where, str(e.full_key))}'") from None
    except ValidationError as e:
        key = str(e.full_key or e.key or "")
        tp = _field_type(cls, key.split(".")) if key else None
        expected = f"expected {_type_name(tp)}" if tp is not None else "wrong type"
        got = OmegaConf.select(OmegaConf.create(data), key) if key else None
        detail = str(e).splitlines()[0]
        raise ConfigError(
            f"Bad value for '{_join(where, key)}': {expected}, got {got!r} ({detail})"
        ) from None


_SECRET_PARTS = {"secret", "password", "passwd", "credential", "credentials"}


def is_secret_key(name: str) -> bool:
    """True for key names that usually hold credentials.

    ``token`` only counts as the last word (``hf_token``, ``access_token``) so that
    model sizes such as ``n_tokens`` or ``token_dim`` are kept.
    """
    low = str(name).lower()
    if "api_key" in low or "apikey" in low:
        return True
    words = [w for w in re.split(r"[_\-.\s]+", low) if w]
    return bool(_SECRET_PARTS.intersection(words)) or (bool(words) and words[-1] == "token")


def redact_secrets(config: Any) -> Any:
    """Plain copy of ``config`` without string values under secret-looking keys or the W&B API
    key value."""
    if isinstance(config, (DictConfig, ListConfig)):
        try:
            config = OmegaConf.to_container(config, resolve=True)
        except Exception:  # an interpolation that only resolves inside a Hydra app
            config = OmegaConf.to_container(config, resolve=False)
    api_key = os.environ.get("WANDB_API_KEY")
    if isinstance(config, Mapping):
        # only strings can hold credentials: `reward_token: true` is a setting, not a secret
        return {
            k: redact_secrets(v)
            for k, v in config.items()
            if not (is_secret_key(str(k)) and isinstance(v, str))
        }
    if isinstance(config, (list, tuple)):
        return [redact_secrets(v) for v in config]
    if api_key and isinstance(config, str) and api_key in config:
        return "<redacted>"
    return config
