"""Apply the retention ledger: in the warehouse (archive / erase / anonymise) and, through push-back, in the sources.

Warehouse: archived records move from `raw.<table>` to the restricted `archive.<table>`; erased records are
deleted from both; anonymised records lose, where they are, every column the policy marks identifying (direct,
key or quasi). Each step is keyed on primary keys and skips what is already done, so re-applying the same
ledger (ingest re-copies the sources into raw.* every night) converges to the same state.

Sources: the same decisions as push-back targets (archived and erased rows leave the source system; anonymised
rows are anonymised there), with one deterministic decision id per (as_of, dataset, action), so a re-run with
the same as_of is recognised as already applied.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from pipelines.audit import AuditLog
from pipelines.policy.models import Dataset, Policy
from pipelines.pushback import TARGET_SCHEMA, apply_decisions
from pipelines.refresh import touched_tables
from pipelines.retention.ledger import lit, q, quarantined_sql, table_exists

# ledger status -> (warehouse step, source action)
STEPS = {"archived": ("archive", "erase"), "to_erase": ("erase", "erase"), "to_anonymise": ("anonymise", "anonymise")}


@dataclass
class WarehouseOutcome:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> step -> rows changed

    def total(self, step: str) -> int:
        return sum(steps.get(step, 0) for steps in self.rows.values())


def _keys(dataset: str, status: str) -> str:
    return f"SELECT record_key FROM retention.record_status WHERE dataset = '{dataset}' AND status = '{status}'"


def _identified(columns: list[str]) -> str:
    """SQL: the row still holds one of `columns` (so anonymising it would change something)."""
    return "(" + (" OR ".join(f"{q(c)} IS NOT NULL" for c in columns) or "false") + ")"


def _settle_quarantined(con: duckdb.DuckDBPyConnection, ds: Dataset) -> int:
    """Quarantined rows the ledger decided on: what the archive keeps is moved there (with the values that could
    be typed), and the quarantine copy goes; the source row was erased or anonymised by push-back, and the next
    ingest quarantines again whatever is left of it."""
    quarantined = quarantined_sql(con, ds)
    if quarantined is None:
        return 0
    pk = q(ds.primary_key)
    con.execute(f"INSERT INTO archive.{q(ds.name)} BY NAME SELECT * FROM ({quarantined}) "
                f"WHERE CAST({pk} AS VARCHAR) IN ({_keys(ds.name, 'archived')}) "
                f"AND {pk} NOT IN (SELECT {pk} FROM archive.{q(ds.name)})")
    decided = " UNION ALL ".join(_keys(ds.name, status) for status in STEPS)
    return con.execute(f"DELETE FROM raw.quarantine WHERE system = {lit(ds.system)} AND table_name = {lit(ds.name)} "
                       f"AND record->>{lit(ds.primary_key)} IN ({decided})").fetchall()[0][0]


def apply_in_warehouse(con: duckdb.DuckDBPyConnection, policy: Policy) -> WarehouseOutcome:
    """Carry out retention.record_status in the warehouse, in one transaction."""
    outcome = WarehouseOutcome()
    con.execute("CREATE SCHEMA IF NOT EXISTS archive")
    pending = {d for (d,) in con.execute(
        "SELECT DISTINCT dataset FROM retention.record_status WHERE status IN ('archived', 'to_erase', 'to_anonymise')"
    ).fetchall()}
    con.execute("BEGIN")
    try:
        for ds in policy.datasets:
            if ds.name not in pending or not table_exists(con, "raw", ds.name):
                continue
            raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", f"CAST({q(ds.primary_key)} AS VARCHAR)"
            con.execute(f"CREATE TABLE IF NOT EXISTS {arc} AS SELECT * FROM {raw} WHERE false")
            rows = outcome.rows.setdefault(ds.name, {})
            rows["archive"] = con.execute(
                f"INSERT INTO {arc} BY NAME SELECT * FROM {raw} WHERE {pk} IN ({_keys(ds.name, 'archived')}) "
                f"AND {pk} NOT IN (SELECT {pk} FROM {arc})").fetchall()[0][0]
            con.execute(f"DELETE FROM {raw} WHERE {pk} IN ({_keys(ds.name, 'archived')})")
            rows["erase"] = sum(
                con.execute(f"DELETE FROM {table} WHERE {pk} IN ({_keys(ds.name, 'to_erase')})").fetchall()[0][0]
                for table in (raw, arc))
            rows["quarantine"] = _settle_quarantined(con, ds)
            columns = ds.anonymised_columns
            if columns:
                assignments = ", ".join(f"{q(c)} = NULL" for c in columns)
                rows["anonymise"] = sum(
                    con.execute(f"UPDATE {table} SET {assignments} WHERE {pk} IN ({_keys(ds.name, 'to_anonymise')}) "
                                f"AND {_identified(columns)}").fetchall()[0][0]
                    for table in (raw, arc))
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return outcome


def decision_targets(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date) -> pa.Table:
    """Push-back targets (pipelines.pushback.TARGET_SCHEMA) for the records this run found in the sources.

    Only what the last ingest copied into raw.* can still be in a source: rows already in the archive left it
    when archived, rows already anonymised need nothing. Anonymise targets carry the policy's identifying
    columns as the payload. Call before `apply_in_warehouse`, which empties raw.* of these rows.
    """
    parts = []
    for ds in policy.datasets:
        if not table_exists(con, "raw", ds.name):
            continue
        payload = json.dumps(sorted(ds.anonymised_columns))
        relations = [f"raw.{q(ds.name)}", *(f"({x})" for x in [quarantined_sql(con, ds)] if x is not None)]
        for status, (_, action) in STEPS.items():
            where = f" WHERE {_identified(ds.anonymised_columns)}" if action == "anonymise" else ""
            still_there = " UNION ALL ".join(
                f"SELECT CAST({q(ds.primary_key)} AS VARCHAR) FROM {r}{where}" for r in relations)
            decision = f"retention:{as_of.isoformat()}:{ds.name}:{status}"
            parts.append(f"""
                SELECT '{decision}' AS decision_id, '{ds.system}' AS system, '{ds.name}' AS table_name,
                       '{ds.primary_key}' AS key_column, record_key AS key_value, '{action}' AS action,
                       {"'" + payload + "'" if action == 'anonymise' else 'NULL'} AS payload
                FROM retention.record_status
                WHERE dataset = '{ds.name}' AND status = '{status}'
                AND record_key IN ({still_there})""")
    if not parts:
        return pa.Table.from_pylist([], schema=TARGET_SCHEMA)
    return con.sql(" UNION ALL ".join(parts) + " ORDER BY decision_id, key_value").to_arrow_table()


def table_order(policy: Policy) -> dict[str, list[str]]:
    """Deletion order per SQL source, children before parents, for push-back."""
    return {system: policy.deletion_order(system) for system in {d.system for d in policy.datasets}}


@dataclass
class RetentionOutcome:
    warehouse: WarehouseOutcome
    source_rows: int  # source rows targeted by push-back this run
    decisions_confirmed: int
    decisions_failed: dict[str, str]
    touched: set[tuple[str, str]] = field(default_factory=set)  # (system, table) changed at the source this run


def apply_retention(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    as_of: dt.date,
    *,
    members: sa.Engine | None,
    prospects: sa.Engine | None,
    navigation_dir: Path | None,
    outbox_dir: Path | None,
    audit: AuditLog | None = None,
) -> RetentionOutcome:
    """Push the ledger's decisions to the sources, then carry them out in the warehouse.

    A source decision that is not confirmed is not recorded as applied there: the next run re-ingests those
    rows, targets them again and retries; the warehouse side is deterministic and simply re-applied.
    """
    targets = decision_targets(con, policy, as_of)
    confirmed, failed, touched = 0, {}, set()
    if targets.num_rows:
        report = apply_decisions(targets, members=members, prospects=prospects, navigation_dir=navigation_dir,
                                 outbox_dir=outbox_dir, audit=audit, table_order=table_order(policy))
        confirmed, failed = len(report.confirmed), dict(report.failed)
        touched = touched_tables(targets, report)
    return RetentionOutcome(apply_in_warehouse(con, policy), targets.num_rows, confirmed, failed, touched)


def residue(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, int]:
    """Records the last ledger sent out of the active base (archived, erased) or to anonymisation that raw.* or
    raw.quarantine still holds as they were: dataset -> count. Empty means retention was fully applied."""
    left: dict[str, int] = {}
    for ds in policy.datasets:
        if not table_exists(con, "raw", ds.name):
            continue
        pk = f"CAST({q(ds.primary_key)} AS VARCHAR)"
        identifying = _identified(ds.anonymised_columns)
        relations = [f"raw.{q(ds.name)}", *(f"({x})" for x in [quarantined_sql(con, ds)] if x is not None)]
        n = sum(con.execute(f"""
            SELECT count(*) FROM {relation} WHERE {pk} IN (
                SELECT record_key FROM retention.record_status WHERE dataset = '{ds.name}'
                AND status IN ('archived', 'to_erase'))
            OR ({pk} IN ({_keys(ds.name, 'to_anonymise')}) AND {identifying})""").fetchall()[0][0]
            for relation in relations)
        if n:
            left[ds.name] = n
    return left
