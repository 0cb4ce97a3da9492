"""Recorded intent of the rights decisions: their push-back targets and an audit outbox, both in the warehouse.

A decision's targets are written to `rights.decision_targets` in the same warehouse transaction that records
the decision, and its audit entries go to `rights.audit_outbox` in that transaction too. `flush_audit` then
appends the outbox to the audit log and empties it; only after that is anything pushed, so a log that cannot
be appended stops the run before any source changes. A run killed between the append and the emptying leaves
entries the log already holds: the next run's first flush (`recover=True`) reads the log for their keys
(`details.audit_key`) and appends only the missing ones, so each entry is written exactly once.

A decision still pending (not confirmed by every source) is pushed again by the next run from these targets,
whether or not its person still resolves through identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping

import duckdb
import pyarrow as pa

from pipelines.audit import AuditLog, logged
from pipelines.pushback import TARGET_SCHEMA

AUDIT_KEY = "audit_key"

INTENT_DDL = """
CREATE TABLE IF NOT EXISTS rights.decision_targets (
    decision_id VARCHAR, system VARCHAR, table_name VARCHAR, key_column VARCHAR, key_value VARCHAR,
    action VARCHAR, payload VARCHAR
);
CREATE TABLE IF NOT EXISTS rights.audit_outbox (entry_key VARCHAR PRIMARY KEY, seq BIGINT, entry JSON);
"""


def ensure_intent_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(INTENT_DDL)


def record_targets(con: duckdb.DuckDBPyConnection, targets: pa.Table) -> None:
    """Add the targets of decisions not recorded yet (call inside the transaction recording the decisions)."""
    con.register("_new_targets", targets.cast(TARGET_SCHEMA))
    con.execute("INSERT INTO rights.decision_targets SELECT * FROM _new_targets WHERE decision_id NOT IN "
                "(SELECT decision_id FROM rights.decision_targets)")
    con.unregister("_new_targets")


def pending_targets(con: duckdb.DuckDBPyConnection, decision_ids: Iterable[str]) -> pa.Table:
    """The recorded targets of these decisions."""
    return con.sql("SELECT * FROM rights.decision_targets WHERE list_contains($ids, decision_id) "
                   "ORDER BY decision_id, system, table_name, key_value",
                   params={"ids": sorted(decision_ids)}).to_arrow_table().cast(TARGET_SCHEMA)


def target_summary(targets: pa.Table, tokenise: Callable[[str], str]) -> dict[str, dict[str, object]]:
    """decision_id -> what the audit says it targets: per source, per table and action, the keyed tokens
    of the row keys (never a raw key), and a SHA-256 digest of the full target list (values included)."""
    summary: dict[str, dict[str, object]] = {}
    rows = sorted(targets.to_pylist(), key=lambda r: tuple(str(r[k]) for k in TARGET_SCHEMA.names))
    for row in rows:  # one row per decision and source key: a person's records, not their data rows
        decision = summary.setdefault(row["decision_id"], {"sources": {}, "targets": 0, "_digest": hashlib.sha256()})
        table = decision["sources"].setdefault(row["system"], {}).setdefault(
            f"{row['table_name']}.{row['key_column']}:{row['action']}", [])
        table.append(tokenise(f"{row['key_column']}:{row['key_value']}"))
        decision["targets"] += 1
        decision["_digest"].update(json.dumps(row, sort_keys=True).encode() + b"\n")
    for decision in summary.values():
        decision["digest"] = decision.pop("_digest").hexdigest()
    return summary


def enqueue_audit(con: duckdb.DuckDBPyConnection, entries: list[Mapping[str, object]]) -> None:
    """Queue audit entries, each with a unique `details.audit_key` (call inside the state's transaction)."""
    if not entries:
        return
    start = con.execute("SELECT coalesce(max(seq), 0) FROM rights.audit_outbox").fetchall()[0][0]
    first: dict[str, int] = {}  # a key queued twice keeps its first entry, as one insert per entry did
    for i, e in enumerate(entries):
        first.setdefault(e["details"][AUDIT_KEY], i)
    # one statement for the batch: an insert per entry cost ~4 ms each (2 s for 100 requests)
    con.register("_queued", pa.table({
        "entry_key": list(first), "seq": [start + 1 + i for i in first.values()],
        "entry": [json.dumps(entries[i], sort_keys=True, default=str) for i in first.values()]}))
    con.execute("INSERT OR IGNORE INTO rights.audit_outbox SELECT entry_key, seq, CAST(entry AS JSON) FROM _queued")
    con.unregister("_queued")


def flush_audit(con: duckdb.DuckDBPyConnection, audit: AuditLog, *, recover: bool = False) -> int:
    """Append the queued entries to the audit log, then empty the queue; raises (queue kept) when the log
    cannot be appended. `recover`: skip the entries a killed run already appended. Returns entries written."""
    queued = con.execute("SELECT entry_key, entry FROM rights.audit_outbox ORDER BY seq").fetchall()
    if not queued:
        return 0
    entries = [json.loads(entry) for _, entry in queued]
    if recover:
        done = logged(audit.path, {key for key, _ in queued}, lambda e: e.get("details", {}).get(AUDIT_KEY),
                      f'"{AUDIT_KEY}"')
        entries = [e for e in entries if e["details"][AUDIT_KEY] not in done]
    audit.extend(entries)
    con.execute("DELETE FROM rights.audit_outbox WHERE list_contains(?, entry_key)", [[k for k, _ in queued]])
    return len(entries)
