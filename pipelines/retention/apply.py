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

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from pipelines.audit import current_head, logged
from pipelines.context import CoreContext
from pipelines.policy.models import Dataset, Policy
from pipelines.pushback import TARGET_SCHEMA, apply_decisions
from pipelines.refresh import touched_tables
from pipelines.retention.columns import ARCHIVED, CLEARED, ColumnGroup, column_groups, structural_columns
from pipelines.retention.intent import (
    Day,
    day_id,
    day_prefix,
    forget_confirmed,
    mark_audited,
    record_day,
    record_targets,
    recorded_day,
)
from pipelines.retention.ledger import quarantined_sql, table_exists
from pipelines.sqltext import ident as q
from pipelines.sqltext import literal, transaction

# ledger status -> (warehouse step, source action)
STEPS = {"archived": ("archive", "erase"), "to_erase": ("erase", "erase"), "to_anonymise": ("anonymise", "anonymise")}


@dataclass
class WarehouseOutcome:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> step -> rows changed

    def total(self, step: str) -> int:
        return sum(steps.get(step, 0) for steps in self.rows.values())


def _keys(dataset: str, status: str) -> str:
    return (f"SELECT record_key FROM retention.record_status WHERE dataset = {literal(dataset)} "
            f"AND status = {literal(status)}")


def _identified(columns: list[str]) -> str:
    """SQL: the row still holds one of `columns` (so anonymising it would change something)."""
    return "(" + (" OR ".join(f"{q(c)} IS NOT NULL" for c in columns) or "false") + ")"


# A quarantined row's values are not in the warehouse (the quarantine keeps what fixing it needs: key, ids,
# dates), so it cannot be archived: one the ledger sends to the archive stays at its source, listed in the
# quarantine, until it is fixed and ingested; then it is archived whole and leaves the source.
QUARANTINE_STEPS = ("to_erase", "to_anonymise")


def _settle_quarantined(con: duckdb.DuckDBPyConnection, ds: Dataset) -> int:
    """Quarantined rows the ledger erased or anonymised: the quarantine copy goes (push-back erased or anonymised
    the source row; the next ingest quarantines again whatever is left of it)."""
    if quarantined_sql(con, ds) is None:
        return 0
    decided = " UNION ALL ".join(_keys(ds.name, status) for status in QUARANTINE_STEPS)
    return con.execute(f"DELETE FROM raw.quarantine WHERE system = {literal(ds.system)} "
                       f"AND table_name = {literal(ds.name)} "
                       f"AND record->>{literal(ds.primary_key)} IN ({decided})").fetchall()[0][0]


def _group_keys(group: ColumnGroup, state: str | None = None) -> str:
    where = f" AND state = {literal(state)}" if state else ""
    return (f"SELECT record_key FROM retention.column_status WHERE dataset = {literal(group.dataset)} "
            f"AND column_group = {literal(group.name)}{where}")


def _merge_into_archive(con: duckdb.DuckDBPyConnection, policy: Policy, ds: Dataset, keys: str,
                        columns: list[str]) -> int:
    """Copy `columns` of the raw rows whose key is in `keys` into the archive, keeping what the archive already
    holds where raw has nothing (a column group moved there earlier). Returns the rows new to the archive."""
    raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", q(ds.primary_key)
    follow = sorted(structural_columns(policy, ds) & {c for (c,) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'raw' AND table_name = ?",
        [ds.name]).fetchall()})
    added = con.execute(
        f"INSERT INTO {arc} BY NAME SELECT {', '.join(q(c) for c in follow)} FROM {raw} "
        f"WHERE CAST({pk} AS VARCHAR) IN ({keys}) AND {pk} NOT IN (SELECT {pk} FROM {arc})").fetchall()[0][0]
    moved = [c for c in columns if c not in follow]
    if moved:
        con.execute(f"UPDATE {arc} SET {', '.join(f'{q(c)} = coalesce(r.{q(c)}, {arc}.{q(c)})' for c in moved)} "
                    f"FROM {raw} r WHERE {arc}.{pk} = r.{pk} AND CAST(r.{pk} AS VARCHAR) IN ({keys})")
    return added


def _clear_groups(con: duckdb.DuckDBPyConnection, policy: Policy, ds: Dataset, groups: list[ColumnGroup]) -> int:
    """Column groups out of a kept record's stage: archived ones move to the archive, then both leave raw;
    cleared ones are erased from raw and archive. Returns the cells-rows changed."""
    changed = 0
    raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", f"CAST({q(ds.primary_key)} AS VARCHAR)"
    for group in groups:
        columns = list(group.columns)
        _merge_into_archive(con, policy, ds, _group_keys(group, ARCHIVED), columns)
        nulls = ", ".join(f"{q(c)} = NULL" for c in columns)
        changed += con.execute(f"UPDATE {raw} SET {nulls} WHERE {pk} IN ({_group_keys(group)}) "
                               f"AND {_identified(columns)}").fetchall()[0][0]
        changed += con.execute(f"UPDATE {arc} SET {nulls} WHERE {pk} IN ({_group_keys(group, CLEARED)}) "
                               f"AND {_identified(columns)}").fetchall()[0][0]
    if groups:  # an archived group whose period ended leaves an empty shell beside the live record: drop it
        clearable = [c for g in groups for c in g.columns]
        con.execute(f"DELETE FROM {arc} WHERE {q(ds.primary_key)} IN (SELECT {q(ds.primary_key)} FROM {raw}) "
                    f"AND NOT {_identified(clearable)}")
    return changed


def apply_in_warehouse(con: duckdb.DuckDBPyConnection, policy: Policy) -> WarehouseOutcome:
    """Carry out retention.record_status and retention.column_status in the warehouse (inside the caller's
    transaction)."""
    outcome = WarehouseOutcome()
    con.execute("CREATE SCHEMA IF NOT EXISTS archive")
    pending = {d for (d,) in con.execute(
        "SELECT DISTINCT dataset FROM retention.record_status WHERE status IN ('archived', 'to_erase', 'to_anonymise') "
        "UNION SELECT DISTINCT dataset FROM retention.column_status").fetchall()}
    groups = column_groups(policy)
    for ds in policy.datasets:
        if ds.name not in pending or not table_exists(con, "raw", ds.name):
            continue
        raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", f"CAST({q(ds.primary_key)} AS VARCHAR)"
        con.execute(f"CREATE TABLE IF NOT EXISTS {arc} AS SELECT * FROM {raw} WHERE false")
        rows = outcome.rows.setdefault(ds.name, {})
        all_columns = [c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {raw})").fetchall()]
        rows["archive"] = _merge_into_archive(con, policy, ds, _keys(ds.name, "archived"), all_columns)
        con.execute(f"DELETE FROM {raw} WHERE {pk} IN ({_keys(ds.name, 'archived')})")
        rows["erase"] = sum(
            con.execute(f"DELETE FROM {table} WHERE {pk} IN ({_keys(ds.name, 'to_erase')})").fetchall()[0][0]
            for table in (raw, arc))
        rows["quarantine"] = _settle_quarantined(con, ds)
        rows["columns_cleared"] = _clear_groups(con, policy, ds, [g for g in groups if g.dataset == ds.name])
        columns = ds.anonymised_columns
        if columns:
            assignments = ", ".join(f"{q(c)} = NULL" for c in columns)
            rows["anonymise"] = sum(
                con.execute(f"UPDATE {table} SET {assignments} WHERE {pk} IN ({_keys(ds.name, 'to_anonymise')}) "
                            f"AND {_identified(columns)}").fetchall()[0][0]
                for table in (raw, arc))
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
        for status, (_, action) in STEPS.items():
            still_there = _still_held(con, ds, ds.anonymised_columns if action == "anonymise" else None,
                                      quarantined=status in QUARANTINE_STEPS)
            decision = f"{day_prefix(as_of)}{ds.name}:{status}"
            parts.append(f"""
                SELECT {literal(decision)} AS decision_id, {literal(ds.system)} AS system,
                       {literal(ds.name)} AS table_name, {literal(ds.primary_key)} AS key_column,
                       record_key AS key_value, {literal(action)} AS action,
                       {literal(payload if action == 'anonymise' else None)}::VARCHAR AS payload
                FROM retention.record_status
                WHERE dataset = {literal(ds.name)} AND status = {literal(status)}
                AND record_key IN ({still_there})""")
    parts += _column_targets(con, policy, as_of)
    if not parts:
        return pa.Table.from_pylist([], schema=TARGET_SCHEMA)
    return con.sql(" UNION ALL ".join(parts) + " ORDER BY decision_id, key_value").to_arrow_table()


def _still_held(con: duckdb.DuckDBPyConnection, ds: Dataset, columns: list[str] | None,
                quarantined: bool = True) -> str:
    """SQL: keys of the dataset's rows a source may still hold (with a value in one of `columns`, if given).

    A raw row tells which values it holds. A quarantined row does not: the quarantine keeps only what fixing the
    row needs (key, ids, dates), so every quarantined row counts as holding `columns`. Judged on the masked copy,
    a member quarantined for a bad birth date kept its postal address at the source after the address's
    purposes ended."""
    pk = f"CAST({q(ds.primary_key)} AS VARCHAR)"
    where = f" WHERE {_identified(columns)}" if columns is not None else ""
    parts = [f"SELECT {pk} FROM raw.{q(ds.name)}{where}"]
    if quarantined and (x := quarantined_sql(con, ds)) is not None:
        parts.append(f"SELECT {pk} FROM ({x})")
    return " UNION ALL ".join(parts)


def _column_targets(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date) -> list[str]:
    """Column groups out of their record's stage leave the source: one anonymise decision per group (its
    columns nulled), only for rows that still hold a value in them."""
    parts = []
    for group in column_groups(policy):
        ds = policy.dataset(group.dataset)
        if not table_exists(con, "raw", ds.name):
            continue
        columns = list(group.columns)
        # An archived group leaves a source only once its values are in the archive: a quarantined row's are not
        # in the warehouse, so its archived groups wait at the source until the row is fixed and ingested.
        parts.append(f"""
            SELECT {literal(f'{day_prefix(as_of)}{ds.name}:columns:{group.name}')} AS decision_id,
                   {literal(ds.system)} AS system, {literal(ds.name)} AS table_name,
                   {literal(ds.primary_key)} AS key_column,
                   record_key AS key_value, 'anonymise' AS action, {literal(json.dumps(sorted(columns)))} AS payload
            FROM retention.column_status
            WHERE dataset = {literal(ds.name)} AND column_group = {literal(group.name)}
            AND (record_key IN ({_still_held(con, ds, columns, quarantined=False)})
                 OR (state = {literal(CLEARED)} AND record_key IN ({_still_held(con, ds, columns)})))""")
    return parts


def table_order(policy: Policy) -> dict[str, list[str]]:
    """Deletion order per SQL source, children before parents, for push-back."""
    return {system: policy.deletion_order(system) for system in {d.system for d in policy.datasets}}


@dataclass
class RetentionOutcome:
    warehouse: WarehouseOutcome  # rows changed in the warehouse by the day's decisions (see apply_retention)
    source_rows: int  # source rows targeted by the day's push-back
    decisions_confirmed: int
    decisions_failed: dict[str, str]
    touched: set[tuple[str, str]] = field(default_factory=set)  # (system, table) to re-read from the sources
    day: Day | None = None  # the day as recorded before this run (None: this run applied it first)

    newly_applied: int = 0  # decisions a source applied in this run (not skipped as already applied)

    @property
    def changed(self) -> bool:
        return self.newly_applied > 0 or any(n for steps in self.warehouse.rows.values() for n in steps.values())


def apply_retention(
    con: duckdb.DuckDBPyConnection,
    ctx: CoreContext,
    as_of: dt.date,
    *,
    members: sa.Engine | None,
    prospects: sa.Engine | None,
) -> RetentionOutcome:
    """Record the push-back targets, carry the ledger out in the warehouse, then push the targets to the sources.

    In that order so that a run killed anywhere loses nothing: archived rows are in the archive before they
    leave a source, and targets recorded before a source changes are pushed again as recorded by the next run
    (pipelines.retention.intent) until every source confirms them; the warehouse side is deterministic and
    simply re-applied. A run finishing a day an interrupted run started reports the day's figures, recorded by
    that run with its warehouse changes, not the little it had left to do; a re-run of a finished day its own.
    """
    policy = ctx.policy
    day = recorded_day(con, as_of)
    owed, carried_over = record_targets(con, decision_targets(con, policy, as_of))
    with transaction(con):
        warehouse = apply_in_warehouse(con, policy)
        if day is None:
            record_day(con, as_of, Day(warehouse.rows, owed.num_rows, current_head(ctx.audit.path).seq))
    confirmed, failed, touched, newly = 0, {}, set(), 0
    if owed.num_rows:
        report = apply_decisions(owed, members=members, prospects=prospects, navigation_dir=ctx.paths.navigation,
                                 outbox_dir=ctx.paths.outbox, audit=ctx.audit, tokenise=ctx.tokenise,
                                 notice_rules=ctx.notice_rules, table_order=table_order(policy),
                                 carried_over=carried_over | set(owed["decision_id"].to_pylist()))
        forget_confirmed(con, report.confirmed)
        confirmed, failed = len(report.confirmed), dict(report.failed)
        touched = touched_tables(owed, report)
        newly = len({d for ids in report.applied.values() for d in ids})
    if carried_over:  # what the interrupted run pushed is re-read too: the ledger is rebuilt as after a whole run
        touched |= set(zip(owed["system"].to_pylist(), owed["table_name"].to_pylist(), strict=True))
    if day is not None and not day.audited:
        warehouse = WarehouseOutcome(day.warehouse_rows)
    source_rows = day.source_rows if day is not None and not day.audited else owed.num_rows
    return RetentionOutcome(warehouse, source_rows, confirmed, failed, touched, day, newly)


def audit_applied(con: duckdb.DuckDBPyConnection, ctx: CoreContext, as_of: dt.date, outcome: RetentionOutcome
                  ) -> bool:
    """Append the day's `retention.applied` entry once (call after the sources were re-read); returns whether it
    did. Not again for a day an interrupted run audited before it died, nor for a re-run of a finished day that
    changed nothing."""
    entry, day = day_id(as_of), outcome.day
    if day is None:
        append = True
    elif not day.audited:  # the interrupted run may have appended it just before it died
        append = not logged(ctx.audit.path, {entry},
                            lambda e: e.get("decision_id") if e.get("seq", 0) > day.audit_seq else None,
                            '"retention.applied"')
    else:
        append = outcome.changed
    if append:
        summary = {step: outcome.warehouse.total(step) for step in ("archive", "erase", "anonymise")}
        ctx.audit.append("retention.applied", decision_id=entry, details={
            "as_of": as_of.isoformat(), "policy": ctx.policy.version_label, "warehouse_rows": summary,
            "source_rows": outcome.source_rows})
    mark_audited(con, as_of)
    return append


def residue(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, int]:
    """Records the last ledger sent out of the active base (archived, erased) or to anonymisation that raw.* or
    raw.quarantine still holds as they were: dataset -> count. Empty means retention was fully applied."""
    left: dict[str, int] = {}
    for ds in policy.datasets:
        if not table_exists(con, "raw", ds.name):
            continue
        pk = f"CAST({q(ds.primary_key)} AS VARCHAR)"
        # what each status must have taken out of the sources (see decision_targets)
        held = {"archived": _still_held(con, ds, None, quarantined=False),
                "to_erase": _still_held(con, ds, None),
                "to_anonymise": _still_held(con, ds, ds.anonymised_columns, quarantined=False)}
        n = con.execute(f"""
            SELECT count(*) FROM retention.record_status WHERE dataset = {literal(ds.name)} AND ("""
            + " OR ".join(f"(status = {literal(status)} AND record_key IN ({keys}))" for status, keys in held.items())
            + ")").fetchall()[0][0]
        n += sum(con.execute(f"SELECT count(*) FROM raw.{q(ds.name)} WHERE {pk} IN ({_group_keys(group)}) "
                             f"AND {_identified(list(group.columns))}").fetchall()[0][0]
                 for group in column_groups(policy) if group.dataset == ds.name)
        if n:
            left[ds.name] = n
    return left
