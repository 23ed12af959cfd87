"""rl_core.tables: runs that update one result table keep each other's rows, even side by side."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from rl_core.tables import read_rows, upsert_json_rows, upsert_rows

COLUMNS = ("agent", "seed", "value")


def _write(path: Path, agent: str, seed: int, value: str) -> None:
    upsert_rows(
        path, COLUMNS, [{"agent": agent, "seed": seed, "value": value}], key=("agent", "seed"),
        sort_key=lambda r: (r["agent"], int(r["seed"])),
    )  # fmt: skip


def _writer(path: str, agent: str, rounds: int) -> None:
    for r in range(rounds):
        for seed in range(5):
            _write(Path(path), agent, seed, f"{agent}-{r}")


def test_replaces_own_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    _write(path, "ad", 0, "1")
    _write(path, "dt", 0, "2")
    _write(path, "ad", 0, "3")
    assert read_rows(path, COLUMNS) == [
        {"agent": "ad", "seed": "0", "value": "3"},
        {"agent": "dt", "seed": "0", "value": "2"},
    ]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_wrong_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("agent,score\nad,1\n")
    with pytest.raises(ValueError, match=r"t\.csv.*expected \['agent', 'seed', 'value'\]"):
        _write(path, "ad", 0, "1")


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    """Four processes update the same table 20 times each: every agent's last rows survive."""
    path = tmp_path / "t.csv"
    agents = ["a", "b", "c", "d"]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), a, 20)) for a in agents]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = read_rows(path, COLUMNS)
    assert sorted((r["agent"], int(r["seed"]), r["value"]) for r in rows) == [
        (a, s, f"{a}-19") for a in agents for s in range(5)
    ]


def test_json_rows_replace_same_key_and_keep_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "bench" / "speed.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"agent": "ad", "device": "cpu", "ours": 1}))  # a lone object
    key = lambda r: (r["agent"], r["device"])  # noqa: E731
    upsert_json_rows(path, [{"agent": "ad", "device": "cuda", "ours": 2}], key=key)
    rows = upsert_json_rows(path, [{"agent": "ad", "device": "cpu", "ours": 3}], key=key)
    assert rows == json.loads(path.read_text())
    assert [(r["device"], r["ours"]) for r in rows] == [("cuda", 2), ("cpu", 3)]
