"""A fingerprint of everything a nightly run leaves behind, to compare two end states.

One hash per part: each table of the SQL sources, each navigation Parquet file and the push-back manifest,
each table of the warehouse (active base, archive, rights, ledger) and of the analytics file, each file of the
outbox (art. 19 notices, transfer extracts) and of the access-request exports, the audit log, and the list of
files in the data folder (a leftover temporary file or DuckDB WAL shows there).

Wall-clock processing values differ between any two runs and are compared by presence only (set or not): the
columns and JSON fields named in WALL_CLOCK_FIELDS, nothing else. JSON-lines files (notices, audit log) are
compared as multisets of entries, so a duplicated entry is a difference but the order of one batch is not.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

# When the pipeline did something (or an id drawn for one run), not what it holds. Compared as set / not set.
WALL_CLOCK_FIELDS = frozenset({
    # warehouse, analytics file, sources' bookkeeping
    "quarantined_at", "ingested_at", "applied_at", "published_at", "computed_at", "generated_at", "decided_at",
    "executed_at", "confirmed_at", "ts_run", "recorded_at", "run_id", "batch_id", "mtime_ns",
    "state_changed_at",
    # JSON: audit entries and their chain (the hash covers `ts`), notices, manifests
    "ts", "hash", "prev_hash", "created_at", "notice_id",
})
# Files the fingerprint does not read: written for people, with the time they were produced in their text.
NOT_COMPARED = ("reports",)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _blank(value: object) -> object:
    """Drop wall-clock fields from a JSON value, keeping whether each was set."""
    if isinstance(value, dict):
        return {k: (v is not None if k in WALL_CLOCK_FIELDS else _blank(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value


def _jsonl(path: Path) -> str:
    lines = [json.dumps(_blank(json.loads(line)), sort_keys=True) for line in path.read_text().splitlines() if line]
    return f"{len(lines)} entries {_digest(lines)}"


def _csv(path: Path) -> str:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return "empty"
    header, body = rows[0], rows[1:]
    kept = [i for i, name in enumerate(header) if name not in WALL_CLOCK_FIELDS]
    return f"{len(body)} rows {_digest([repr([r[i] for i in kept]) for r in body] + [repr(header)])}"


def _file(path: Path) -> str:
    if path.suffix == ".jsonl":
        return _jsonl(path)
    if path.suffix == ".json":
        return _digest([json.dumps(_blank(json.loads(path.read_text())), sort_keys=True)])
    if path.suffix == ".csv":
        return _csv(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        keep = [c for c in table.column_names if c not in WALL_CLOCK_FIELDS]
        return f"{table.num_rows} rows {_digest([repr(r) for r in table.select(keep).to_pylist()])}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sqlite(path: Path) -> dict[str, str]:
    out = {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            cursor = con.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            rows = [repr([v is not None if n in WALL_CLOCK_FIELDS else v for n, v in zip(names, row, strict=True)])
                    for row in cursor]
            out[f"source {path.name}:{table}"] = f"{len(rows)} rows {_digest(rows)}"
    finally:
        con.close()
    return out


def _duckdb(path: Path, label: str) -> dict[str, str]:
    out = {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            columns = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                "ORDER BY ordinal_position", [schema, table]).fetchall()
            select = ", ".join(
                f'"{c}" IS NOT NULL AS "{c}"' if c in WALL_CLOCK_FIELDS else f'"{c}"' for (c,) in columns
            )
            names = ", ".join(f'"{c}"' for (c,) in columns)
            count, total = con.execute(
                f'SELECT count(*), coalesce(sum(hash(struct_pack({names}))), 0) '
                f'FROM (SELECT {select} FROM "{schema}"."{table}")'
            ).fetchall()[0]
            out[f"{label} {schema}.{table}"] = f"{count} rows {total}"
    finally:
        con.close()
    return out


def fingerprint(data_dir: Path) -> dict[str, str]:
    """Part name -> digest of the end state under `data_dir` (the SEM_DATA_DIR of a run)."""
    parts: dict[str, str] = {}
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.relative_to(data_dir).parts[0] not in
                   NOT_COMPARED)
    parts["files in the data folder"] = _digest([str(p.relative_to(data_dir)) for p in files])
    for path in files:
        relative = str(path.relative_to(data_dir))
        if path.suffix == ".db":
            parts.update(_sqlite(path))
        elif path.name in ("warehouse.duckdb", "analytics.duckdb"):
            parts.update(_duckdb(path, path.stem))
        elif path.suffix in (".wal", ".tmp") or path.name.startswith("."):
            parts[relative] = "left over"
        else:
            parts[relative] = _file(path)
    return parts


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The parts that differ, missing or extra, by name."""
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
