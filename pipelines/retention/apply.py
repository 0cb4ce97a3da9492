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
import sqlalchemy as sa

from pipelines.audit import current_head, logged
from pipelines.context import CoreContext
from pipelines.duck import table_exists
from pipelines.navigation import mark_mirrored
from pipelines.policy.models import Dataset, Policy
from pipelines.pushback import TARGET_SCHEMA, apply_decisions
from pipelines.retention.columns import ARCHIVED, CLEARED, ColumnGroup, column_groups, structural_columns
from pipelines.retention.intent import (
    INTENT_TABLE,
    Day,
    day_id,
    day_prefix,
    forget_confirmed,
    mark_audited,
    record_day,
    record_targets,
    recorded_day,
)
from pipelines.retention.ledger import quarantined_sql
from pipelines.sqltext import ident as q
from pipelines.sqltext import list_literal, literal, transaction

# ledger status -> (warehouse step, source action)
STEPS = {"archived": ("archive", "erase"), "to_erase": ("erase", "erase"), "to_anonymise": ("anonymise", "anonymise")}


@dataclass
class WarehouseOutcome:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # dataset -> step -> rows changed

    def total(self, step: str) -> int:
        return sum(steps.get(step, 0) for steps in self.rows.values())


PENDING = "_ret_pending"  # temp table: what the ledger decided that the warehouse or a source still holds
RECORD = ""  # `kind` of a whole record's row in PENDING (else the column group's name)
RAW, ARCHIVE, QUARANTINE = "raw", "archive", "quarantine"  # where PENDING found it


def _identified(columns: list[str], alias: str = "") -> str:
    """SQL: the row still holds one of `columns` (so anonymising it would change something)."""
    a = f"{alias}." if alias else ""
    return "(" + (" OR ".join(f"{a}{q(c)} IS NOT NULL" for c in columns) or "false") + ")"


# A quarantined row's values are not in the warehouse (the quarantine keeps what fixing it needs: key, ids,
# dates), so it cannot be archived: one the ledger sends to the archive stays at its source, listed in the
# quarantine, until it is fixed and ingested; then it is archived whole and leaves the source.
QUARANTINE_STEPS = ("to_erase", "to_anonymise")


def _key_type(con: duckdb.DuckDBPyConnection, ds: Dataset) -> str:
    return con.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = 'raw' "
                       "AND table_name = ? AND column_name = ?", [ds.name, ds.primary_key]).fetchall()[0][0]


def _pending_sql(con: duckdb.DuckDBPyConnection, policy: Policy, ds: Dataset) -> str:
    """SQL (dataset, record_key, kind, status, place): each decision of the ledger on a record of `ds` (kind
    RECORD, status from record_status) or on one of its column groups (kind: the group, status: its state) that
    is not reflected yet where the record is found (place: raw, archive, quarantine).

    Not reflected: an archived record still in raw; an erased one anywhere; an anonymised one, or a record's column
    group out of its stage, still holding a value (a quarantined row counts as holding every value: the quarantine
    keeps only what fixing the row needs, so judged on the masked copy a member quarantined for a bad birth date
    kept their postal address at the source after the address's purposes ended). An archived column group leaves
    raw only: a quarantined row's archived groups wait at the source until the row is fixed and ingested. Hash joins
    on the typed key, one per place: what is already done costs a join, nothing more."""
    raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", q(ds.primary_key)
    typed = _key_type(con, ds)
    key = f"TRY_CAST(s.record_key AS {typed})"
    name, anonymised = literal(ds.name), ds.anonymised_columns
    statuses = ("SELECT record_key, status FROM retention.record_status WHERE dataset = "
                f"{name} AND status IN ('archived', 'to_erase', 'to_anonymise')")
    found = f"SELECT {name} AS dataset, s.record_key, {literal(RECORD)} AS kind, s.status, {{place}} AS place FROM"
    parts = [f"{found.format(place=literal(RAW))} ({statuses}) s JOIN {raw} r ON r.{pk} = {key} "
             f"WHERE s.status <> 'to_anonymise' OR {_identified(anonymised, 'r')}"]
    if table_exists(con, "archive", ds.name):
        parts.append(f"{found.format(place=literal(ARCHIVE))} ({statuses}) s JOIN {arc} a ON a.{pk} = {key} "
                     f"WHERE s.status = 'to_erase' OR (s.status = 'to_anonymise' AND {_identified(anonymised, 'a')})")
    quarantined = quarantined_sql(con, ds) is not None
    # the quarantined rows' keys, typed as raw's (as the ledger read them)
    quarantine = (f"SELECT DISTINCT TRY_CAST(record->>{literal(ds.primary_key)} AS {typed}) AS k FROM raw.quarantine "
                  f"WHERE system = {literal(ds.system)} AND table_name = {name}")
    if quarantined:
        parts.append(f"{found.format(place=literal(QUARANTINE))} ({statuses}) s JOIN ({quarantine}) x ON x.k = {key} "
                     f"WHERE list_contains({list_literal(QUARANTINE_STEPS)}, s.status)")
    for group in (g for g in column_groups(policy) if g.dataset == ds.name):
        columns = list(group.columns)
        states = (f"SELECT record_key, state AS status FROM retention.column_status WHERE dataset = {name} "
                  f"AND column_group = {literal(group.name)}")
        held = f"SELECT {name}, s.record_key, {literal(group.name)}, s.status, {{place}} FROM ({states}) s"
        parts.append(f"{held.format(place=literal(RAW))} JOIN {raw} r ON r.{pk} = {key} "
                     f"WHERE {_identified(columns, 'r')}")
        if table_exists(con, "archive", ds.name):
            parts.append(f"{held.format(place=literal(ARCHIVE))} JOIN {arc} a ON a.{pk} = {key} "
                         f"WHERE s.status = {literal(CLEARED)} AND {_identified(columns, 'a')}")
        if quarantined:
            parts.append(f"{held.format(place=literal(QUARANTINE))} JOIN ({quarantine}) x ON x.k = {key} "
                         f"WHERE s.status = {literal(CLEARED)}")
    return " UNION ALL ".join(parts)


def _requarantined(con: duckdb.DuckDBPyConnection, policy: Policy) -> set[str]:
    """Navigation files holding a quarantined row whose copy in raw.quarantine would differ from what re-reading the
    file after push-back gives: an anonymised row (the warehouse lets its copy go: _settle_quarantined) or a column
    group cleared from it that its copy holds a column of. An erased row is gone from both; a group of columns its
    copy does not hold leaves the copy as it is (push-back stands in for a re-read of the others: mark_mirrored)."""
    if not table_exists(con, "raw", "quarantine"):
        return set()
    parts = []
    for ds in (d for d in policy.datasets if d.system == "navigation"):
        changed = [f"(p.kind = {literal(RECORD)} AND p.status = 'to_anonymise')"] + [
            f"(p.kind = {literal(g.name)} AND list_has_any(json_keys(q.record), {list_literal(g.columns)}))"
            for g in column_groups(policy) if g.dataset == ds.name]
        parts.append(f"SELECT q.record->>'source_file' FROM raw.quarantine q JOIN {PENDING} p "
                     f"ON p.dataset = {literal(ds.name)} AND p.place = {literal(QUARANTINE)} "
                     f"AND p.record_key = q.record->>{literal(ds.primary_key)} "
                     f"WHERE q.system = 'navigation' AND q.table_name = {literal(ds.name)} "
                     f"AND ({' OR '.join(changed)})")
    if not parts:
        return set()
    return {path for (path,) in con.execute(" UNION ".join(parts)).fetchall()}


def find_pending(con: duckdb.DuckDBPyConnection, policy: Policy) -> set[str]:
    """Create temp table PENDING (see _pending_sql) for every dataset; return the datasets with a row there."""
    parts = [_pending_sql(con, policy, ds) for ds in policy.datasets if table_exists(con, "raw", ds.name)]
    body = " UNION ALL ".join(parts) or ("SELECT NULL::VARCHAR dataset, NULL::VARCHAR record_key, NULL::VARCHAR kind, "
                                         "NULL::VARCHAR status, NULL::VARCHAR place WHERE false")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {PENDING} AS {body}")
    return {d for (d,) in con.execute(f"SELECT DISTINCT dataset FROM {PENDING}").fetchall()}


def _pending(ds: Dataset, kind: str, statuses: tuple[str, ...], places: tuple[str, ...], typed: str | None = None
             ) -> str:
    """SQL: keys of `ds` in PENDING (as `typed`, the raw key's type, if given: compared to the key column as is)."""
    key = f"CAST(record_key AS {typed})" if typed else "record_key"
    return (f"SELECT DISTINCT {key} FROM {PENDING} WHERE dataset = {literal(ds.name)} AND kind = {literal(kind)} "
            f"AND list_contains({list_literal(statuses)}, status) AND list_contains({list_literal(places)}, place)")


def _settle_quarantined(con: duckdb.DuckDBPyConnection, ds: Dataset) -> int:
    """Quarantined rows the ledger erased or anonymised: the quarantine copy goes (push-back erased or anonymised
    the source row; the next ingest quarantines again whatever is left of it)."""
    return con.execute(f"DELETE FROM raw.quarantine WHERE system = {literal(ds.system)} "
                       f"AND table_name = {literal(ds.name)} AND record->>{literal(ds.primary_key)} IN "
                       f"({_pending(ds, RECORD, QUARANTINE_STEPS, (QUARANTINE,))})").fetchall()[0][0]


def _merge_into_archive(con: duckdb.DuckDBPyConnection, policy: Policy, ds: Dataset, keys: str,
                        columns: list[str]) -> int:
    """Copy `columns` of the raw rows whose key is in `keys` (typed like the key column) into the archive, keeping
    what the archive already holds where raw has nothing (a column group moved there earlier). Returns the rows
    new to the archive."""
    raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", q(ds.primary_key)
    follow = sorted(structural_columns(policy, ds) & {c for (c,) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'raw' AND table_name = ?",
        [ds.name]).fetchall()})
    added = con.execute(
        f"INSERT INTO {arc} BY NAME SELECT {', '.join(q(c) for c in follow)} FROM {raw} "
        f"WHERE {pk} IN ({keys}) AND {pk} NOT IN (SELECT {pk} FROM {arc})").fetchall()[0][0]
    moved = [c for c in columns if c not in follow]
    if moved:
        con.execute(f"UPDATE {arc} SET {', '.join(f'{q(c)} = coalesce(r.{q(c)}, {arc}.{q(c)})' for c in moved)} "
                    f"FROM {raw} r WHERE {arc}.{pk} = r.{pk} AND r.{pk} IN ({keys})")
    return added


def _clear_groups(con: duckdb.DuckDBPyConnection, policy: Policy, ds: Dataset, groups: list[ColumnGroup],
                  typed: str) -> int:
    """Column groups out of a kept record's stage: archived ones move to the archive, then both leave raw;
    cleared ones are erased from raw and archive. Returns the cells-rows changed."""
    changed = 0
    raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", q(ds.primary_key)
    for group in groups:
        columns = list(group.columns)
        in_raw = (RAW,)
        _merge_into_archive(con, policy, ds, _pending(ds, group.name, (ARCHIVED,), in_raw, typed), columns)
        nulls = ", ".join(f"{q(c)} = NULL" for c in columns)
        changed += con.execute(f"UPDATE {raw} SET {nulls} WHERE {pk} IN "
                               f"({_pending(ds, group.name, (ARCHIVED, CLEARED), in_raw, typed)}) "
                               f"AND {_identified(columns)}").fetchall()[0][0]
        # a record archived in this run came from raw with its values: its cleared groups leave the archive copy
        changed += con.execute(f"UPDATE {arc} SET {nulls} WHERE {pk} IN "
                               f"({_pending(ds, group.name, (CLEARED,), (ARCHIVE, RAW), typed)}) "
                               f"AND {_identified(columns)}").fetchall()[0][0]
    # an archived group whose period ended leaves an empty shell beside the live record: drop it
    clearable = [c for g in groups for c in g.columns]
    con.execute(f"DELETE FROM {arc} WHERE {pk} IN (SELECT {pk} FROM {raw}) AND NOT {_identified(clearable)}")
    return changed


def apply_in_warehouse(con: duckdb.DuckDBPyConnection, policy: Policy, pending: set[str]) -> WarehouseOutcome:
    """Carry out in the warehouse what find_pending found (inside the caller's transaction): `pending`, the
    datasets it found something for; each statement reads only their PENDING keys."""
    outcome = WarehouseOutcome()
    con.execute("CREATE SCHEMA IF NOT EXISTS archive")
    decided = {d for (d,) in con.execute(
        "SELECT DISTINCT dataset FROM retention.record_status WHERE status IN ('archived', 'to_erase', 'to_anonymise') "
        "UNION SELECT DISTINCT dataset FROM retention.column_status").fetchall()}
    groups = column_groups(policy)
    for ds in policy.datasets:
        if ds.name not in decided or not table_exists(con, "raw", ds.name):
            continue
        raw, arc, pk = f"raw.{q(ds.name)}", f"archive.{q(ds.name)}", q(ds.primary_key)
        con.execute(f"CREATE TABLE IF NOT EXISTS {arc} AS SELECT * FROM {raw} WHERE false")
        steps = ["archive", "erase", "quarantine", "columns_cleared"] + ["anonymise"] * bool(ds.anonymised_columns)
        rows = outcome.rows.setdefault(ds.name, dict.fromkeys(steps, 0))
        if ds.name not in pending:  # everything the ledger decided is already done: nothing to read or write
            continue
        typed = _key_type(con, ds)
        all_columns = [c for (c,) in con.execute(f"SELECT column_name FROM (DESCRIBE {raw})").fetchall()]
        archived = _pending(ds, RECORD, ("archived",), (RAW,), typed)
        rows["archive"] = _merge_into_archive(con, policy, ds, archived, all_columns)
        con.execute(f"DELETE FROM {raw} WHERE {pk} IN ({archived})")
        rows["erase"] = sum(
            con.execute(f"DELETE FROM {table} WHERE {pk} IN ({_pending(ds, RECORD, ('to_erase',), (place,), typed)})"
                        ).fetchall()[0][0] for table, place in ((raw, RAW), (arc, ARCHIVE)))
        rows["quarantine"] = _settle_quarantined(con, ds)
        mine = [g for g in groups if g.dataset == ds.name]
        rows["columns_cleared"] = _clear_groups(con, policy, ds, mine, typed) if mine else 0
        if ds.anonymised_columns:
            assignments = ", ".join(f"{q(c)} = NULL" for c in ds.anonymised_columns)
            rows["anonymise"] = sum(
                con.execute(f"UPDATE {table} SET {assignments} WHERE {pk} IN "
                            f"({_pending(ds, RECORD, ('to_anonymise',), (place,), typed)}) "
                            f"AND {_identified(ds.anonymised_columns)}").fetchall()[0][0]
                for table, place in ((raw, RAW), (arc, ARCHIVE)))
    return outcome


def decision_targets(policy: Policy, as_of: dt.date, pending: set[str]) -> str:
    """SQL: push-back targets (pipelines.pushback.TARGET_SCHEMA) for what find_pending found at the sources' side:
    `pending`, the datasets it found something for.

    Only what the last ingest copied into raw.* (or quarantined) can still be in a source: rows already in the
    archive left it when archived, rows already anonymised need nothing. Anonymise targets carry the policy's
    identifying columns as the payload; a column group out of its stage, its own columns. Call before
    `apply_in_warehouse`, which empties raw.* of these rows.
    """
    parts = []
    for ds in policy.datasets:
        if ds.name not in pending:
            continue
        payload = json.dumps(sorted(ds.anonymised_columns))
        for status, (_, action) in STEPS.items():
            places = (RAW, QUARANTINE) if status in QUARANTINE_STEPS else (RAW,)
            parts.append(_target_sql(ds, f"{day_prefix(as_of)}{ds.name}:{status}", action,
                                     payload if action == "anonymise" else None,
                                     _pending(ds, RECORD, (status,), places)))
        for group in (g for g in column_groups(policy) if g.dataset == ds.name):
            # An archived group leaves a source only once its values are in the archive: a quarantined row's are not
            # in the warehouse, so its archived groups wait at the source until the row is fixed and ingested.
            parts.append(_target_sql(ds, f"{day_prefix(as_of)}{ds.name}:columns:{group.name}", "anonymise",
                                     json.dumps(sorted(group.columns)),
                                     f"{_pending(ds, group.name, (ARCHIVED, CLEARED), (RAW,))} UNION "
                                     f"{_pending(ds, group.name, (CLEARED,), (QUARANTINE,))}"))
    if not parts:
        return "SELECT " + ", ".join(f"NULL::VARCHAR AS {q(c)}" for c in TARGET_SCHEMA.names) + " WHERE false"
    return " UNION ALL ".join(parts)


def _target_sql(ds: Dataset, decision: str, action: str, payload: str | None, keys: str) -> str:
    return (f"SELECT {literal(decision)} AS decision_id, {literal(ds.system)} AS system, "
            f"{literal(ds.name)} AS table_name, {literal(ds.primary_key)} AS key_column, record_key AS key_value, "
            f"{literal(action)} AS action, {literal(payload)}::VARCHAR AS payload FROM ({keys}) k(record_key)")


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
    mirrored: list[str] = field(default_factory=list)  # navigation files rewritten and recorded as such, not re-read

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
    pending = find_pending(con, policy)
    owed = record_targets(con, decision_targets(policy, as_of, pending))
    requarantined = _requarantined(con, policy)  # before the warehouse side lets their quarantine copy go
    with transaction(con):
        warehouse = apply_in_warehouse(con, policy, pending)
        if day is None:
            record_day(con, as_of, Day(warehouse.rows, owed.targets, current_head(ctx.audit.path).seq))
    confirmed, failed, touched, newly, mirrored = 0, {}, set(), 0, []
    if owed.targets:
        report = apply_decisions(INTENT_TABLE, members=members, prospects=prospects,
                                 navigation_dir=ctx.paths.navigation, outbox_dir=ctx.paths.outbox, audit=ctx.audit,
                                 tokenise=ctx.tokenise, notice_rules=ctx.notice_rules, table_order=table_order(policy),
                                 carried_over=owed.decision_ids, shared=con)
        forget_confirmed(con, report.confirmed)
        # The warehouse carried the decisions out before the navigation files were rewritten: what it holds of
        # them is already what they now hold, so they are not read again (pipelines.navigation.mark_mirrored).
        mirrored = mark_mirrored(con, report.rewritten, skip=requarantined)
        confirmed, failed = len(report.confirmed), dict(report.failed)
        touched = set(report.touched)
        newly = len({d for ids in report.applied.values() for d in ids})
    if owed.earlier:  # what the interrupted run pushed is re-read too: the ledger is rebuilt as after a whole run
        touched |= owed.tables
    if day is not None and not day.audited:
        warehouse = WarehouseOutcome(day.warehouse_rows)
    source_rows = day.source_rows if day is not None and not day.audited else owed.targets
    return RetentionOutcome(warehouse, source_rows, confirmed, failed, touched, day, newly, mirrored)


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
    raw.quarantine still holds as they were, and their column groups out of their stage still in raw: dataset ->
    count. Empty means retention was fully applied."""
    find_pending(con, policy)
    # what each status must have taken out of the sources (see decision_targets)
    return dict(con.execute(f"""
        SELECT dataset, count(DISTINCT record_key) FILTER (WHERE kind = {literal(RECORD)} AND (place = {literal(RAW)}
                   OR (status = 'to_erase' AND place = {literal(QUARANTINE)})))
               + count(*) FILTER (WHERE kind <> {literal(RECORD)} AND place = {literal(RAW)}) AS n
        FROM {PENDING} GROUP BY dataset HAVING n > 0 ORDER BY dataset""").fetchall())
