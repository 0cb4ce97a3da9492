"""A fingerprint of everything a nightly run leaves behind, to compare two end states.

One hash per part: each table of the SQL sources, each navigation Parquet file and the push-back manifest,
each table of the warehouse (active base, archive, rights, ledger) and of the analytics file, each file of the
outbox (art. 19 notices, transfer extracts) and of the access-request exports, the audit log, and the list of
files in the data folder (a leftover temporary file or DuckDB WAL shows there).

Wall-clock processing values differ between any two runs: the fields named in WALL_CLOCK_TIMES are compared to
the day, those in RUN_IDS by presence only (set or not), the JSON text of EMBEDDED_TIMES with its times cut to
the day, nothing else. A name is a column or JSON key in any
table, or `table.column` for one table (the table's bare name: `members` is the source table and its raw and
archive copies; a JSON-lines file's table is its stem). The scenario's own data folder, which appears in
recorded file paths, is read as `<data>`. JSON-lines files (notices, audit log) are compared as multisets of
entries, so a duplicated entry is a difference but the order within one batch is not.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from pipelines.sqltext import ident, literal, qualified

# Read from the wall clock when the pipeline acted: compared to the day (the runs compared ran the same day).
# The ledger's clocks are here because an objection's clock starts when the objection was recorded.
WALL_CLOCK_TIMES = frozenset({
    "quarantined_at", "ingested_at", "applied_at", "published_at", "computed_at", "generated_at", "decided_at",
    "executed_at", "confirmed_at", "recorded_at", "state_changed_at",
    "decisions.closed_at", "exclusions.since", "objections.since", "members.restricted_at",
    "prospects.restricted_at", "suppression_list.objected_at", "ledger.clock_start", "ledger.active_until",
    "ledger.archive_until", "clock_events.clock", "audit.ts", "notices.created_at",
    "updated_at", "watermarks.watermark",  # change markers push-back sets, and the ingest watermark they move
})
# Drawn afresh by each run, chained over those times, or saying which run did it: compared by presence only.
# `digest` is the audit's SHA-256 of a rights decision's targets, whose payloads hold the objection time;
# `mac` is the keyed HMAC of an entry's hash, so it follows the entry's time; the incremental ledger's
# `record_inputs.input_hash` hashes the columns the ledger reads, an objection's or restriction's time among them
# (the rows it hashes are compared themselves).
RUN_IDS = frozenset({"run_id", "batch_id", "ingested_files.mtime_ns", "audit.hash", "audit.prev_hash",
                     "audit.mac", "audit.digest", "audit.newly_applied", "record_inputs.input_hash"})
# JSON text columns whose values embed wall-clock times (an objection's `objected_at`): times cut to the day.
EMBEDDED_TIMES = frozenset({"decision_targets.payload", "pushback_targets.payload", "privacy_decision_staging.payload"})
_DAY_ONLY = r"\1"  # the date group of _TIME_OF_DAY
_TIME_OF_DAY = r"(\d{4}-\d{2}-\d{2})[ T]\d{2}:\d{2}:\d{2}(\.\d+)?"
# (The audit log's head anchor, `audit.jsonl.head`, is the table `audit` too: its `ts` and `hash` are reduced.)
# Written for people, with the time they were produced in their text: not compared.
NOT_COMPARED = ("reports",)
# What the last load read (for the raw checks): a re-run after a kill reads less than one uninterrupted run.
NOT_COMPARED_TABLES = frozenset({"raw.ingest_scope"})


def _kind(table: str, name: str) -> str | None:
    for kind, names in (("time", WALL_CLOCK_TIMES), ("id", RUN_IDS), ("embedded", EMBEDDED_TIMES)):
        if name in names or f"{table}.{name}" in names:
            return kind
    return None


def _field(table: str, name: str, value: object) -> object:
    kind = _kind(table, name)
    if kind == "id":
        return value is not None
    if kind == "time" and value is not None:
        return str(value)[:10]
    if kind == "embedded" and isinstance(value, str):
        return re.sub(_TIME_OF_DAY, _DAY_ONLY, value)
    return blank_json(table, value) if isinstance(value, dict | list) else value


def blank_json(table: str, value: object) -> object:
    """A JSON value with its wall-clock fields reduced (see _field), at any depth."""
    if isinstance(value, dict):
        return {k: _field(table, k, v) for k, v in value.items()}
    if isinstance(value, list):  # rows listed in no guaranteed order (an export bundle): compared as a multiset
        return sorted((blank_json(table, v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


class _Reader:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def text(self, path: Path) -> str:
        return path.read_text().replace(str(self.data_dir), "<data>")

    def file(self, path: Path) -> str:
        table = path.name.split(".")[0]
        if path.suffix == ".jsonl":
            entries = [json.dumps(blank_json(table, json.loads(line)), sort_keys=True)
                       for line in self.text(path).splitlines() if line]
            return f"{len(entries)} entries {_digest(entries)}"
        if path.suffix in (".json", ".head"):
            return _digest([json.dumps(blank_json(table, json.loads(self.text(path))), sort_keys=True)])
        if path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(self.text(path))))
            header = rows[0] if rows else []
            body = [repr([_field(table, n, v) for n, v in zip(header, r, strict=False)]) for r in rows[1:]]
            return f"{len(body)} rows {_digest([*body, repr(header)])}"
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            rows = [repr({k: _field(path.parent.parent.name, k, v) for k, v in r.items()})
                    for r in table.to_pylist()]
            return f"{table.num_rows} rows {_digest(rows)}"
        return hashlib.sha256(self.text(path).encode() if path.suffix in (".md", ".txt") else path.read_bytes()
                              ).hexdigest()

    def sqlite(self, path: Path) -> dict[str, str]:
        out = {}
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
                cursor = con.execute(f"SELECT * FROM {ident(table)}")
                names = [d[0] for d in cursor.description]
                rows = [repr([_field(table, n, v) for n, v in zip(names, row, strict=True)]) for row in cursor]
                out[f"source {path.name}:{table}"] = f"{len(rows)} rows {_digest(rows)}"
        finally:
            con.close()
        return out

    def duckdb(self, path: Path) -> dict[str, str]:
        out = {}
        con = duckdb.connect(str(path), read_only=True)
        try:
            tables = con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
            for schema, table in tables:
                if f"{schema}.{table}" in NOT_COMPARED_TABLES:
                    continue
                columns = con.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", [schema, table]
                ).fetchall()
                select = ", ".join(self._column_sql(table, c, t) for c, t in columns)
                names = ", ".join(ident(c) for c, _ in columns)
                count, total = con.execute(
                    f"SELECT count(*), coalesce(sum(hash(struct_pack({names}))), 0) "
                    f"FROM (SELECT {select} FROM {qualified(schema, table)})"
                ).fetchall()[0]
                out[f"{path.stem} {schema}.{table}"] = f"{count} rows {total}"
        finally:
            con.close()
        return out

    def _column_sql(self, table: str, column: str, data_type: str) -> str:
        quoted = ident(column)
        kind = _kind(table, column)
        if kind == "id":
            return f"{quoted} IS NOT NULL AS {quoted}"
        if kind == "time":
            return f"left(CAST({quoted} AS VARCHAR), 10) AS {quoted}"
        if kind == "embedded":
            return f"regexp_replace({quoted}, {literal(_TIME_OF_DAY)}, {literal(_DAY_ONLY)}, 'g') AS {quoted}"
        if data_type in ("VARCHAR", "JSON"):
            return f"replace(CAST({quoted} AS VARCHAR), {literal(self.data_dir)}, '<data>') AS {quoted}"
        return quoted


def fingerprint(data_dir: Path) -> dict[str, str]:
    """Part name -> digest of the end state under `data_dir` (the SEM_DATA_DIR of a run)."""
    reader = _Reader(data_dir)
    parts: dict[str, str] = {}
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.relative_to(data_dir).parts[0] not in
                   NOT_COMPARED)
    parts["files in the data folder"] = _digest([str(p.relative_to(data_dir)) for p in files])
    for path in files:
        relative = str(path.relative_to(data_dir))
        if path.suffix in (".wal", ".tmp") or path.name.startswith("."):
            parts[relative] = "left over"
        elif path.suffix == ".db":
            parts.update(reader.sqlite(path))
        elif path.suffix == ".duckdb":
            parts.update(reader.duckdb(path))
        else:
            parts[relative] = reader.file(path)
    return parts


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The parts that differ, missing or extra, by name."""
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
