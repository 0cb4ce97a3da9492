"""What retention still owes the sources and the audit log, recorded in the warehouse before anything acts.

A run killed after one source committed its part and before the others did would leave the next run to
recompute the day from sources already half changed: a member erased at the member system no longer resolves
to their prospect record, so the rest would never be pushed, and records whose status followed that member
would get another one. Instead:

- the targets of each decision are recorded once, in `retention.pushback_targets`, and a decision stays there
  until every source confirms it: the next run pushes the recorded targets again (sources skip what they already
  applied) rather than recomputed ones;
- while targets of a day are owed, the day's ledger stands as decided (`owed_on`: build_ledger keeps it), so the
  re-run carries out the same decisions and ends with the same per-record statuses;
- what the day's first application changed (warehouse rows per dataset and step, source rows targeted) is
  recorded in `retention.pushback_days`, in the transaction that changes the warehouse, with the audit log's
  head at that moment. The day's `retention.applied` entry reports those figures and is appended once: a re-run
  finishing an interrupted day looks for it after that head; a re-run of a day already audited appends one only
  if it changed something itself.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import duckdb

from pipelines.pushback import TARGET_SCHEMA
from pipelines.sqltext import transaction

INTENT_TABLE = "retention.pushback_targets"
DAYS_TABLE = "retention.pushback_days"
KIND = "retention"  # first part of every retention decision id (`day_prefix`)
DDL = f"""
CREATE SCHEMA IF NOT EXISTS retention;
CREATE TABLE IF NOT EXISTS {INTENT_TABLE} (decision_id VARCHAR, system VARCHAR, table_name VARCHAR,
    key_column VARCHAR, key_value VARCHAR, action VARCHAR, payload VARCHAR);
CREATE TABLE IF NOT EXISTS {DAYS_TABLE} (as_of DATE PRIMARY KEY, warehouse_rows VARCHAR, source_rows BIGINT,
    audit_seq BIGINT, audited BOOLEAN);
"""


def day_prefix(as_of: dt.date) -> str:
    """Every retention decision id of the day starts with this (`retention:<as_of>:<dataset>:<status>`)."""
    return f"{day_id(as_of)}:"


def day_id(as_of: dt.date) -> str:
    """The day's own id: the `decision_id` of its `retention.applied` audit entry."""
    return f"{KIND}:{as_of.isoformat()}"


@dataclass(frozen=True)
class Owed:
    """What INTENT_TABLE holds once the day's targets are recorded: every target still owed, by any day."""

    targets: int
    decision_ids: frozenset[str]
    earlier: frozenset[str]  # decisions an earlier run recorded (it may have pushed and audited part of them)
    tables: frozenset[tuple[str, str]]  # (system, table) they target


def record_targets(con: duckdb.DuckDBPyConnection, targets_sql: str) -> Owed:
    """Record the targets `targets_sql` selects (TARGET_SCHEMA's columns) of decisions not recorded yet, in the
    warehouse itself (they are never all in memory: tens of millions the first night at 1,000,000 members); return
    what is owed."""
    con.execute(DDL)
    earlier = frozenset(r[0] for r in con.execute(f"SELECT DISTINCT decision_id FROM {INTENT_TABLE}").fetchall())
    columns = ", ".join(TARGET_SCHEMA.names)
    with transaction(con):
        con.execute(f"INSERT INTO {INTENT_TABLE} ({columns}) SELECT {columns} FROM ({targets_sql}) WHERE "
                    f"decision_id NOT IN (SELECT decision_id FROM {INTENT_TABLE})")
    counted = con.execute(f"SELECT system, table_name, decision_id, count(*) FROM {INTENT_TABLE} GROUP BY ALL"
                          ).fetchall()
    return Owed(sum(r[3] for r in counted), frozenset(r[2] for r in counted), earlier,
                frozenset((r[0], r[1]) for r in counted))


def forget_confirmed(con: duckdb.DuckDBPyConnection, decision_ids: list[str]) -> None:
    """Decisions every source confirmed are owed nothing more."""
    if decision_ids:
        con.execute(f"DELETE FROM {INTENT_TABLE} WHERE list_contains($ids, decision_id)", {"ids": decision_ids})


def owed_on(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> bool:
    """Whether push-back targets of the day's decisions are still owed (recorded, not confirmed everywhere)."""
    con.execute(DDL)
    return bool(con.execute(f"SELECT count(*) FROM {INTENT_TABLE} WHERE starts_with(decision_id, $prefix)",
                            {"prefix": day_prefix(as_of)}).fetchall()[0][0])


@dataclass(frozen=True)
class Day:
    """What the day's first application of the ledger changed, and the audit log's head before it."""

    warehouse_rows: dict[str, dict[str, int]]  # dataset -> step -> warehouse rows changed
    source_rows: int  # source rows targeted by push-back
    audit_seq: int  # the day's audit entry, if any, comes after this one
    audited: bool = False  # its `retention.applied` entry is in the log


def recorded_day(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> Day | None:
    """The day as its first application recorded it, None when no run has applied it yet."""
    con.execute(DDL)
    rows = con.execute(f"SELECT warehouse_rows, source_rows, audit_seq, audited FROM {DAYS_TABLE} WHERE as_of = ?",
                       [as_of]).fetchall()
    return Day(json.loads(rows[0][0]), *rows[0][1:]) if rows else None


def record_day(con: duckdb.DuckDBPyConnection, as_of: dt.date, day: Day) -> None:
    """Record the day's first application (call inside the transaction that changes the warehouse)."""
    con.execute(DDL)
    con.execute(f"INSERT INTO {DAYS_TABLE} VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [as_of, json.dumps(day.warehouse_rows, sort_keys=True), day.source_rows, day.audit_seq, day.audited])


def mark_audited(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
    """The day's `retention.applied` entry is in the log."""
    con.execute(f"UPDATE {DAYS_TABLE} SET audited = true WHERE as_of = ?", [as_of])
