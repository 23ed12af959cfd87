"""``python -m agents.NAME CMD [overrides] [hydra flags]``: sub-commands on top of Hydra.

Hydra has no positional sub-commands, so ``run_cli`` takes the command word out
of argv, records it as the override ``cmd=<name>`` and hands the rest to a
normal ``@hydra.main`` app (full override grammar, ``--multirun``, ``--cfg``,
``--help``, ``--info`` all keep working).

Before Hydra runs, the overrides are checked against the composed config so that
a typo fails in one line that lists what would have been valid (Hydra alone says
"Key 'lrr' is not in struct" and nothing more). Errors raised by commands as
``ConfigError`` are printed the same way, without a traceback.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rl_core.config import ConfigError, redact_secrets

__all__ = ["run_cli", "setup_run", "git_revision", "check_overrides"]

CONFIG_MODULE = "configs"
DEFAULT_COMMAND = "train"
EXIT_USAGE = 2

# Hydra flags whose value is the next token (unless written as --flag=value).
_VALUE_FLAGS = {
    "--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
    "--config-dir", "-cd", "--experimental-rerun",
}  # fmt: skip
_INFO_FLAGS = {"--info", "-i"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# With these flags Hydra composes nothing from our overrides, or from another config dir.
_NO_CHECK_FLAGS = {
    "--version", "--shell-completion", "-sc", "--experimental-rerun",
    "--config-path", "-cp", "--config-dir", "-cd",
}  # fmt: skip


class CliError(Exception):
    """A user error on the command line; printed as one message, exit code 2."""


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Split argv (without the program) into positionals and flags (with their values)."""
    positionals: list[str] = []
    flags: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("-") and tok != "-":
            flags.append(tok)
            takes_value = tok in _VALUE_FLAGS or (
                tok in _INFO_FLAGS and i + 1 < len(args) and args[i + 1] in _INFO_CHOICES
            )
            if takes_value and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        else:
            positionals.append(tok)
        i += 1
    return positionals, flags


def _flag_value(flags: list[str], names: set[str]) -> str | None:
    for i, tok in enumerate(flags):
        name, eq, value = tok.partition("=")
        if name in names:
            return value if eq else (flags[i + 1] if i + 1 < len(flags) else None)
    return None


def _program() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name


# ---------------------------------------------------------------- override checks


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return not isinstance(value, (list, dict))  # strings accept any scalar


def _check_type(path: str, default: Any, value: Any) -> None:
    """Reject a value whose type differs from the YAML default's (``seed=abc``)."""
    if value is None or default is None or default == "???":
        return
    if _is_interpolation(default) or _is_interpolation(value) or _type_ok(default, value):
        return
    raise CliError(
        f"Bad value for '{path}': expected {type(default).__name__} "
        f"(default {default!r}), got {value!r} ({type(value).__name__})."
    )


def _lookup(plain: dict[str, Any], path: str, groups: list[str], line: str) -> Any:
    """The default value at ``path``; an unknown key raises with the valid keys at its level."""
    node: Any = plain
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            level = ".".join(walked)
            valid = sorted(str(k) for k in node if not (not level and k == "hydra"))
            where = f"under '{level}'" if level else "at the top level"
            bad = ".".join([*walked, part])
            msg = f"Unknown config key '{bad}'"
            if bad != path:
                msg += f" (in '{line}')"
            msg += f". Valid keys {where}: {', '.join(valid) or '(none)'}."
            if not level and groups:
                msg += f" Config groups: {', '.join(groups)}."
            close = difflib.get_close_matches(part, valid, n=1)
            if close:
                msg += f" Did you mean '{'.'.join([*walked, close[0]])}'?"
            if bad == path and not line.startswith("~"):
                msg += f" To add a new key use '+{line}'."
            raise CliError(msg)
        else:
            raise CliError(
                f"Cannot set '{path}': '{'.'.join(walked)}' is a value "
                f"({type(node).__name__}), not a config node."
            )
        walked.append(part)
    return node


def _values(override: Any) -> list[Any]:
    """Every value an override stands for (each choice of a sweep)."""
    from hydra.core.override_parser.types import Override

    if override.is_discrete_sweep():
        return list(override.sweep_iterator(transformer=Override._convert_value))
    if override.is_sweep_override():
        return []  # interval sweeps are for optimising sweepers; nothing to enumerate
    return [override.value()]


def _representative(override: Any) -> str | None:
    """The override as one job of a sweep would see it (its first choice)."""
    if not override.is_sweep_override():
        return override.input_line
    if not override.is_discrete_sweep():
        return None
    first = next(iter(override.sweep_string_iterator()), None)
    return None if first is None else f"{override.get_key_element()}={first}"


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Raise ``CliError`` if an override names an unknown key or group option or has a bad type.

    Uses Hydra's own parser and compose API, so it understands the full grammar
    (``+``/``++``/``~``, sweeps, ``hydra.*``); each sweep choice is checked.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    errors = (HydraException, OmegaConfBaseException, ValueError)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        loader: Any = GlobalHydra.instance().config_loader()
        try:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        except errors as e:
            raise CliError(str(e)) from None
        # The primary config's hydra.searchpath adds agent-scoped groups (configs/scoped/*).
        _, repo = loader._parse_overrides_and_create_caching_repo(config_name, [])
        top_groups = sorted(g for g in repo.get_group_options("", ObjectType.GROUP) if g != "hydra")

        group_lines: list[str] = []
        key_overrides = []
        for o in parsed:
            is_group = repo.group_exists(o.key_or_group)
            if not is_group or isinstance(o.value(), dict):
                key_overrides.append(o)
                continue
            if not o.is_delete():
                options = repo.get_group_options(o.key_or_group, ObjectType.CONFIG)
                for value in _values(o):
                    for name in value if isinstance(value, list) else [value]:
                        if name not in options:
                            close = difflib.get_close_matches(str(name), options, n=1)
                            hint = f" Did you mean '{close[0]}'?" if close else ""
                            raise CliError(
                                f"Unknown option '{name}' for config group '{o.key_or_group}'. "
                                f"Valid options: {', '.join(options) or '(none)'}.{hint}"
                            )
            line = _representative(o)
            if line is not None:
                group_lines.append(line)

        try:
            base = compose(config_name, overrides=group_lines, return_hydra_config=True)
        except errors as e:
            raise CliError(str(e)) from None
        plain = OmegaConf.to_container(base, resolve=False)
        assert isinstance(plain, dict)
        for o in key_overrides:
            if o.is_add() or o.is_force_add():
                continue
            line = o.input_line or o.key_or_group
            default = _lookup(plain, o.key_or_group, top_groups, line)
            if o.is_delete() or o.key_or_group.startswith("hydra."):
                continue  # hydra's own keys accept several types (hydra.verbose=true|module)
            for value in _values(o):
                _check_type(o.key_or_group, default, value)

        job = [line for o in parsed if (line := _representative(o)) is not None]
        try:
            cfg = compose(config_name, overrides=job, return_hydra_config=True)
        except errors as e:
            raise CliError(str(e)) from None
        _check_interpolations(cfg)
        sweeper = str(OmegaConf.select(cfg, "hydra.sweeper._target_", default=""))
        interval = [o.input_line for o in parsed if o.is_interval_sweep()]
        if interval and sweeper.endswith("BasicSweeper"):
            raise CliError(
                f"'{interval[0]}': interval sweeps need an optimising sweeper plugin "
                "(e.g. hydra/sweeper=optuna); the basic sweeper takes a,b,c or range(...)."
            )


def _check_interpolations(cfg: DictConfig) -> None:
    """Resolve the job's keys and run dir now, so a bad ``${...}`` fails before Hydra starts."""
    from omegaconf.errors import OmegaConfBaseException

    for key in [k for k in cfg if k != "hydra"] + ["hydra.run.dir", "hydra.sweep.dir"]:
        try:
            node = OmegaConf.select(cfg, str(key), throw_on_missing=False)
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            if "HydraConfig was not set" not in str(e):  # ${hydra:...} resolves only in the app
                raise CliError(str(e)) from None


# ---------------------------------------------------------------- entry point


def run_cli(
    commands: Mapping[str, Callable[[DictConfig], Any]],
    config_name: str,
    argv: list[str] | None = None,
) -> None:
    """Run ``commands[CMD](cfg)`` for ``argv = [prog, CMD?, overrides..., flags...]``.

    ``argv`` defaults to ``sys.argv``. Without a command word, ``train`` runs.
    Overrides are moved before the flags (with ``cmd=<name>`` first) because
    Hydra's argparse rejects overrides split by a flag (``a=1 --multirun b=2``).
    """
    import hydra
    from omegaconf.errors import OmegaConfBaseException

    argv = list(sys.argv if argv is None else argv)
    positionals, flags = _split_args(argv[1:])
    names = ", ".join(commands)
    command = next((p for p in positionals if "=" not in p and p[:1] not in "~+"), None)
    if command is None:
        if DEFAULT_COMMAND not in commands:
            _fail(f"no command given. Valid commands: {names}")
        command = DEFAULT_COMMAND
    else:
        positionals.remove(command)
    if command not in commands:
        close = difflib.get_close_matches(command, list(commands), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        _fail(f"unknown command '{command}'. Valid commands: {names}.{hint}")

    # --hydra-help composes Hydra's own config only, where a 'cmd' key does not exist.
    hydra_help = "--hydra-help" in flags
    overrides = positionals if hydra_help else [f"cmd={command}", *positionals]
    if not hydra_help and not any(f.partition("=")[0] in _NO_CHECK_FLAGS for f in flags):
        name = _flag_value(flags, {"--config-name", "-cn"}) or config_name
        try:
            check_overrides(name, overrides)
        except CliError as e:
            _fail(str(e))
    if any(f in ("--help", "-h") for f in flags):
        print(f"Usage: {_program()} [{'|'.join(commands)}] [KEY=VALUE ...] [HYDRA FLAGS]")
        print(f"Commands: {names} (default: {DEFAULT_COMMAND})\n")

    _SWEPT_KEYS.clear()
    _SWEPT_KEYS.update(_swept_keys(overrides) - {"seed", "cmd"})

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name, version_base="1.3")
    def _dispatch(cfg: DictConfig) -> Any:
        _name_sweep_job(cfg)
        try:
            return commands[cfg.cmd](cfg)
        except ConfigError as e:
            _fail(str(e))

    saved = sys.argv
    sys.argv = [argv[0], *overrides, *flags]
    try:
        _dispatch()
    except OmegaConfBaseException as e:
        # Hydra fails to format errors raised before the job starts (e.g. a bad
        # interpolation in hydra.run.dir) and re-raises them: print them plainly.
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _fail(f"{e}\n(set HYDRA_FULL_ERROR=1 for a complete stack trace)")
    finally:
        sys.argv = saved


# ---------------------------------------------------------------- run directory


_SWEPT_KEYS: set[str] = set()


def _swept_keys(overrides: list[str]) -> set[str]:
    """Keys given several values on the command line (`lr=1e-3,1e-4`, `range(...)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # malformed overrides are reported by check_overrides / Hydra itself
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def _name_sweep_job(cfg: DictConfig) -> None:
    """Give each job of a `--multirun` sweep its own run name (and so run dir and W&B id).

    `run_name` is `{env}__{agent}__{seed}`: a sweep over anything but the seed would otherwise
    write every job into one directory. The job's values of the swept keys other than the seed
    are appended, unless the user set `run_name` or `run_dir` themselves.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    overrides = HydraConfig.get().overrides.task
    if any(o.split("=", 1)[0].lstrip("+~") in ("run_name", "run_dir") for o in overrides):
        return
    extra = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in _SWEPT_KEYS)
    if extra:
        cfg.run_name = f"{cfg.run_name}__{','.join(extra)}".replace("/", "-")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def git_revision(path: Path | None = None) -> str:
    """``<sha>`` or ``<sha>-dirty`` of the code at ``path`` (default: this package), else "unknown"."""
    where = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def setup_run(cfg: DictConfig) -> Path:
    """Seed everything and prepare ``cfg.run_dir`` (resolved config + git revision).

    Every command calls this first. Only rank 0 (env ``RANK``) writes files, so
    DDP workers share one run directory without racing.
    """
    from rl_core.utils import seed_everything  # imports torch: only commands that run pay for it

    run_dir = Path(cfg.run_dir)
    seed_everything(int(cfg.seed))
    if _rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = OmegaConf.create(redact_secrets(OmegaConf.to_container(cfg, resolve=True)))
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
        (run_dir / "git_rev.txt").write_text(git_revision() + "\n")
    return run_dir
