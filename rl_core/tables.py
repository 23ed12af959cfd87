"""Result tables as CSV files that several runs update: replace your rows, keep everyone else's.

Why: `results/*.csv` collect rows from many runs (agents x seeds x ...); a run must replace only
the rows it owns (same key columns), never lose other rows, and never leave a half-written file.
Runs often finish side by side (seeds in parallel, Hydra multirun launchers), so each update is
a read-modify-write under a file lock (`filelock`, a hidden `.<name>.lock` beside the table) and
writes through `rl_core.utils.atomic_write` (a temporary file of its own, then an atomic rename).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from rl_core.utils import atomic_write, atomic_write_text


def read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """All rows of `path` (none if it does not exist); a wrong header is a clear error."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != tuple(columns):
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(columns)}")
        return list(reader)


def upsert_rows(
    path: Path,
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    key: Sequence[str],
    sort_key: Callable[[Mapping[str, str]], Any],
) -> list[dict[str, str]]:
    """Write `rows` into the table, replacing existing rows with the same `key` columns.

    Values are written as given (format them first); the file is replaced atomically.
    """
    path = Path(path)
    new = [{c: str(r[c]) for c in columns} for r in rows]
    owned = {tuple(r[k] for k in key) for r in new}
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        kept = [r for r in read_rows(path, columns) if tuple(r[k] for k in key) not in owned]
        table = sorted(kept + new, key=sort_key)

        def write(f: IO[str]) -> None:
            writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            writer.writerows(table)

        atomic_write(path, write, text=True)
    return table


def upsert_json_rows(
    path: Path,
    rows: Sequence[dict[str, Any]],
    key: Callable[[Mapping[str, Any]], Any],
    sort_key: Callable[[Mapping[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """The JSON twin of `upsert_rows` (benchmark results: a list of row objects): rows whose
    `key(row)` equals a new row's are replaced, the others kept (a lone object counts as a list
    of one); locked and replaced atomically like the CSV tables."""
    path = Path(path)
    owned = {key(r) for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        old = json.loads(path.read_text()) if path.exists() else []
        old = old if isinstance(old, list) else [old]
        merged = [r for r in old if key(r) not in owned] + list(rows)
        if sort_key is not None:
            merged.sort(key=sort_key)
        atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged
