"""Push-back to a SQL source (SQLite or PostgreSQL, same SQLAlchemy Core code).

Inside ONE transaction per source: bulk-load the targets into a staging table (COPY on PostgreSQL with
psycopg 3, executemany elsewhere), drop the targets of decisions the source already recorded, then one
set-based statement per (table, action, column set), children before parents, and record the applied
decision ids in `privacy_applied_decisions`. A process killed anywhere in between leaves the source as it
was (the database rolls the transaction back), so a re-run resumes from scratch without double-applying.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from pipelines.policy.models import Condition
from pipelines.pushback.targets import ACTIONS, TargetSet
from pipelines.sources.schema import source_clock
from pipelines.sqltext import bound_condition

APPLIED_TABLE = "privacy_applied_decisions"
STAGING_TABLE = "privacy_decision_staging"
STAGING_CHUNK_ROWS = 100_000
EFFECTS_TABLE = "privacy_decision_effects"

bookkeeping = sa.MetaData()

applied = sa.Table(
    APPLIED_TABLE, bookkeeping,
    sa.Column("decision_id", sa.String(200), primary_key=True),
    sa.Column("applied_at", sa.Text, nullable=False),  # ISO text, like the legacy sources' timestamps
    sa.Column("table_name", sa.Text),  # comma-separated tables the decision touched
    sa.Column("rows_affected", sa.Integer, nullable=False),
)

staging = sa.Table(
    STAGING_TABLE, bookkeeping,
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("decision_id", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(100), nullable=False),
    sa.Column("key_column", sa.String(100), nullable=False),
    sa.Column("key_value", sa.Text, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    # SQLite stores JSON as text; declaring it JSON elsewhere lets payload["col"] compile per dialect.
    sa.Column("payload", sa.JSON().with_variant(sa.Text, "sqlite")),
    sa.Column("columns_key", sa.Text, nullable=False),  # sorted columns an anonymise/rectify touches
)

effects = sa.Table(
    EFFECTS_TABLE, bookkeeping,
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("decision_id", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(100), nullable=False),
    sa.Column("rows_affected", sa.Integer, nullable=False),
)

STAGING_COLUMNS = [c.name for c in staging.c]


@dataclass(frozen=True)
class Group:
    """Targets one set-based statement handles."""

    table_name: str
    key_column: str
    action: str
    columns_key: str

    @property
    def columns(self) -> list[str]:
        return self.columns_key.split(",") if self.columns_key else []


@dataclass(frozen=True)
class NoticeRule:
    """A recipient owed an art. 19 notice for `actions` on a subject (targets keyed by `key_column` in
    `system`): when the subject has a row in `table_name` (disclosed to it) meeting every condition of `where`."""

    recipient: str
    system: str
    key_column: str
    table_name: str
    actions: tuple[str, ...]
    where: tuple[Condition, ...] = ()


@dataclass
class SqlOutcome:
    newly_applied: list[str] = field(default_factory=list)
    rows_affected: int = 0
    notices: list[dict[str, str]] = field(default_factory=list)


def ensure_bookkeeping(engine: sa.Engine) -> None:
    bookkeeping.create_all(engine, checkfirst=True)


def groups_of(targets: TargetSet, order: Sequence[str]) -> list[Group]:
    """Statement groups, children before parents and, within a table, in ACTIONS order."""
    combos = targets.distinct(["table_name", "key_column", "action", "columns_key"])
    position = {name: i for i, name in enumerate(order)}
    groups = [Group(**c) for c in combos]
    return sorted(groups, key=lambda g: (position.get(g.table_name, len(position)), ACTIONS.index(g.action),
                                         g.key_column, g.columns_key))


def load_staging(con: sa.Connection, targets: pa.Table | TargetSet, batch_id: str,
                 chunk_rows: int = STAGING_CHUNK_ROWS) -> None:
    """Bulk-load the targets into the staging table, `chunk_rows` at a time: a retention pass at 1 M members
    stages ~13 M targets, which as one CSV buffer or one list of Python dicts does not fit in memory."""
    given = [c for c in STAGING_COLUMNS if c != "batch_id"]
    batches = targets.select(given).to_batches(max_chunksize=chunk_rows) if isinstance(targets, pa.Table) \
        else targets.batches(given, chunk_rows)
    chunks = (pa.RecordBatch.from_arrays([*batch.columns, pa.array([batch_id] * batch.num_rows, pa.string())],
                                         names=[*given, "batch_id"]).select(STAGING_COLUMNS) for batch in batches)
    dbapi = con.connection.dbapi_connection
    if con.dialect.name == "postgresql" and con.dialect.driver == "psycopg":
        with dbapi.cursor() as cur, cur.copy(
            f"COPY {STAGING_TABLE} ({', '.join(STAGING_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
        ) as copy:
            for chunk in chunks:
                buffer = io.BytesIO()
                pacsv.write_csv(chunk, buffer, pacsv.WriteOptions(include_header=False))
                copy.write(buffer.getvalue())
        # Fresh statistics so the planner hashes the staged keys instead of guessing a tiny table.
        con.execute(sa.text(f"ANALYZE {STAGING_TABLE}"))
    elif con.dialect.name == "sqlite":
        # The driver's executemany on plain tuples: SQLAlchemy's insert of one dict per row cost more than the
        # statements that then apply the decisions (a first night stages hundreds of thousands of targets).
        insert = (f"INSERT INTO {STAGING_TABLE} ({', '.join(STAGING_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(STAGING_COLUMNS))})")
        for chunk in chunks:
            con.exec_driver_sql(insert, list(zip(*(column.to_pylist() for column in chunk.columns), strict=True)))
    else:
        for chunk in chunks:
            con.execute(staging.insert(), chunk.to_pylist())


def _in_group(batch_id: str, group: Group) -> sa.ColumnElement[bool]:
    return sa.and_(
        staging.c.batch_id == batch_id,
        staging.c.table_name == group.table_name,
        staging.c.key_column == group.key_column,
        staging.c.action == group.action,
        staging.c.columns_key == group.columns_key,
    )


def _key_match(table: sa.Table, key_column: str) -> sa.ColumnElement[bool]:
    column = table.c[key_column]
    return column == sa.cast(staging.c.key_value, column.type)


def _payload_value(table: sa.Table, column: str) -> sa.ColumnElement:
    return sa.cast(staging.c.payload[column].as_string(), table.c[column].type)


def _staged_keys(table: sa.Table, batch_id: str, group: Group) -> sa.Select:
    column = table.c[group.key_column]
    return sa.select(sa.cast(staging.c.key_value, column.type)).where(_in_group(batch_id, group))


def _suppressed(table: sa.Table) -> sa.Exists:
    return sa.exists().where(table.c.contact_hash == staging.c.key_value)


def _count_effects(con: sa.Connection, table: sa.Table, batch_id: str, group: Group) -> None:
    if group.action == "suppress":
        matched = sa.case((~_suppressed(table), 1), else_=0)
        source = staging
    else:
        matched = sa.case((table.c[group.key_column].is_not(None), 1), else_=0)
        source = staging.outerjoin(table, _key_match(table, group.key_column))
    counted = (
        sa.select(staging.c.decision_id, sa.literal(group.table_name), sa.func.sum(matched), sa.literal(batch_id))
        .select_from(source).where(_in_group(batch_id, group)).group_by(staging.c.decision_id)
    )
    con.execute(sa.insert(effects).from_select(["decision_id", "table_name", "rows_affected", "batch_id"],
                                               counted))


def _marked(table: sa.Table, values: dict[str, object]) -> dict[str, object]:
    """`values`, and the source's own clock as the change marker where the source keeps one: incremental ingest
    re-reads the row, whatever `now` the caller decided with (one older than the watermark would be missed)."""
    return {**values, "updated_at": source_clock()} if "updated_at" in table.c else values


def _statement(table: sa.Table, batch_id: str, group: Group, now: str) -> sa.Executable:
    in_group = _in_group(batch_id, group)
    key = table.c[group.key_column]
    if group.action == "erase":
        return sa.delete(table).where(key.in_(_staged_keys(table, batch_id, group)))
    if group.action == "anonymise":
        return sa.update(table).where(key.in_(_staged_keys(table, batch_id, group))).values(
            _marked(table, {c: None for c in group.columns}))
    if group.action == "lift_restriction":
        return sa.update(table).where(key.in_(_staged_keys(table, batch_id, group))).values(
            _marked(table, {"restricted_at": None, "restriction_decision_id": None}))
    if group.action == "restrict":
        return sa.update(table).where(_key_match(table, group.key_column), in_group).values(
            _marked(table, {"restricted_at": now, "restriction_decision_id": staging.c.decision_id}))
    if group.action == "rectify":
        return sa.update(table).where(_key_match(table, group.key_column), in_group).values(
            _marked(table, {c: _payload_value(table, c) for c in group.columns}))
    # suppress: one suppression row per new contact hash, whatever the number of decisions naming it
    row = _marked(table, {
        "contact_hash": staging.c.key_value,
        "channel": sa.func.min(staging.c.payload["channel"].as_string()),
        "objected_at": sa.func.coalesce(sa.func.min(staging.c.payload["objected_at"].as_string()), now),
        "source_request_id": sa.func.min(staging.c.payload["source_request_id"].as_string()),
    })
    new_hashes = (
        sa.select(*(v if isinstance(v, sa.ColumnElement) else sa.literal(v) for v in row.values()))
        .where(in_group, ~_suppressed(table))
        .group_by(staging.c.key_value)
    )
    return sa.insert(table).from_select(list(row), new_hashes)


def _collect_notices(con: sa.Connection, metadata: sa.MetaData, system: str, batch_id: str,
                     rules: Sequence[NoticeRule]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for rule in rules:
        if rule.system != system:
            continue
        query = sa.select(staging.c.decision_id, staging.c.action, staging.c.key_value).distinct().where(
            staging.c.batch_id == batch_id,
            staging.c.key_column == rule.key_column,
            staging.c.action.in_(rule.actions),
        )
        holder = metadata.tables[rule.table_name]
        # An uncorrelated IN: the holder's keys are read once and hashed. A correlated EXISTS scanned the holder
        # once per staged row where its key column has no index (SQLite): quadratic at scale.
        disclosed = sa.select(sa.cast(holder.c[rule.key_column], sa.Text))
        for c in rule.where:
            disclosed = disclosed.where(bound_condition(holder.c[c.column], c.operator, c.value))
        query = query.where(staging.c.key_value.in_(disclosed))
        found += [
            {"recipient": rule.recipient, "decision_id": r.decision_id, "action": r.action,
             "key_column": rule.key_column, "key_value": r.key_value}
            for r in con.execute(query)
        ]
    return found


def apply_to_source(
    engine: sa.Engine,
    metadata: sa.MetaData,
    system: str,
    targets: TargetSet,
    *,
    batch_id: str,
    now: str,
    order: Sequence[str],
    notice_rules: Sequence[NoticeRule],
    before_commit: Callable[[list[dict[str, str]]], None],
    checkpoint: Callable[[str], None],
) -> SqlOutcome:
    """Apply one system's targets (prepared: columns_key added) in one transaction; see module doc.

    `before_commit` receives the art. 19 notices found for the newly applied decisions and must persist
    them durably (the outbox de-duplicates), so a crash after it only leads to a harmless re-send."""
    ensure_bookkeeping(engine)
    outcome = SqlOutcome()
    with engine.begin() as con:
        already = _recorded(con, targets.decision_ids())
        pending = targets.of_decisions(already, keep=False)
        newly = pending.decision_ids()
        load_staging(con, pending, batch_id)
        checkpoint("staged")
        if newly:
            outcome.notices = _collect_notices(con, metadata, system, batch_id, notice_rules)
            for group in groups_of(pending, order):
                table = metadata.tables[group.table_name]
                _count_effects(con, table, batch_id, group)
                con.execute(_statement(table, batch_id, group, now))
                checkpoint(f"after:{group.table_name}")
            per_table = (
                sa.select(effects.c.decision_id, effects.c.table_name,
                          sa.func.sum(effects.c.rows_affected).label("n"))
                .where(effects.c.batch_id == batch_id)
                .group_by(effects.c.decision_id, effects.c.table_name).subquery()
            )
            con.execute(sa.insert(applied).from_select(
                ["decision_id", "applied_at", "table_name", "rows_affected"],
                sa.select(per_table.c.decision_id, sa.literal(now),
                          sa.func.aggregate_strings(per_table.c.table_name, ","), sa.func.sum(per_table.c.n))
                .group_by(per_table.c.decision_id),
            ))
            outcome.newly_applied = newly
            outcome.rows_affected = int(con.execute(
                sa.select(sa.func.coalesce(sa.func.sum(effects.c.rows_affected), 0))
                .where(effects.c.batch_id == batch_id)).scalar_one())
        con.execute(sa.delete(effects).where(effects.c.batch_id == batch_id))
        con.execute(sa.delete(staging).where(staging.c.batch_id == batch_id))
        before_commit(outcome.notices)
        checkpoint("before_commit")
    return outcome


def _violations(table: sa.Table, batch_id: str, group: Group) -> sa.Select:
    """Decision ids of the group whose effect is not visible in the source."""
    in_group = _in_group(batch_id, group)
    if group.action == "suppress":
        return sa.select(staging.c.decision_id).where(in_group, ~_suppressed(table))
    joined = sa.select(staging.c.decision_id).select_from(
        staging.join(table, _key_match(table, group.key_column))).where(in_group)
    if group.action == "erase":
        return joined
    if group.action == "anonymise":
        return joined.where(sa.or_(*(table.c[c].is_not(None) for c in group.columns)))
    if group.action == "restrict":
        return joined.where(table.c.restricted_at.is_(None))
    if group.action == "lift_restriction":
        return joined.where(table.c.restricted_at.is_not(None))
    return joined.where(sa.or_(*(table.c[c].is_distinct_from(_payload_value(table, c))
                                 for c in group.columns)))


def _recorded(con: sa.Connection, decision_ids: list[str]) -> set[str]:
    """Those of the decisions the source records as applied."""
    return set(con.execute(sa.select(applied.c.decision_id).where(applied.c.decision_id.in_(decision_ids))).scalars())


def unconfirmed(engine: sa.Engine, metadata: sa.MetaData, targets: TargetSet, batch_id: str) -> set[str]:
    """Re-read the source: the decision ids (of `targets`) whose effect is not there. Read-only: the
    staged copy of the targets is rolled back."""
    ids = targets.decision_ids()
    if not ids:
        return set()
    ensure_bookkeeping(engine)
    failed: set[str] = set()
    with engine.connect() as con:
        trans = con.begin()
        try:
            load_staging(con, targets, batch_id)
            for group in groups_of(targets, []):
                table = metadata.tables[group.table_name]
                failed |= {r[0] for r in con.execute(_violations(table, batch_id, group))}
            never_applied = set(ids) - _recorded(con, ids)
        finally:
            trans.rollback()
    return failed | never_applied
