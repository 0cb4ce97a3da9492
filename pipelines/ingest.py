"""Ingestion: typed raw copies of the source systems in the warehouse, malformed rows quarantined.

A SQL table whose dataset declares a `change_marker` (policies/datasets.yaml: a timestamp the source sets on
every insert and update, push-back's included) is read incrementally: the rows changed since the watermark
(less a safety margin), and only its key column to find the rows deleted at the source, merged by key in one
transaction with the new watermark. A table without a marker, the first load and an explicit full re-read copy
the whole table. The navigation log is append-only Parquet partitioned by day: only new or rewritten day files
are read (a file manifest with size and mtime is the watermark).

Every value is read as text and cast in DuckDB with TRY_CAST, so a value that breaks the declared
schema (schema.py) sends its row to `raw.quarantine` with the reason instead of failing the run. The
quarantine keeps only what is needed to handle the row (`QuarantineFields`): in `record` its key, the ids of
the people it is about (so erasure and restriction reach it), the dates its retention runs from (retention
applies to quarantined source rows too) and what identifies no one; in `fix` the offending values, masked for
direct identifiers, which a person needs to fix it. Never the rest of the row (names, e-mails, IBAN, care
acts). A row quarantined again by a later ingest keeps the time it was first quarantined and, once its `fix`
was cleared at the end of its period (policies/own_records.yaml, pipelines.purge), stays cleared. A row no
longer malformed (fixed or gone) leaves the quarantine for `raw.quarantine_resolved` (key, reason, dates only).

SQLite and PostgreSQL sources are read through ADBC, which hands Arrow batches over from C; any other source
goes through its SQLAlchemy DB-API driver.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote as url_quote
from urllib.parse import urlencode

import adbc_driver_manager.dbapi
import adbc_driver_postgresql.dbapi
import adbc_driver_sqlite.dbapi
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from pipelines.duck import scalar, table_exists
from pipelines.policy.models import Policy
from pipelines.sqltext import ident, list_literal, literal

QUARANTINE_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE TABLE IF NOT EXISTS raw.quarantine (
    system VARCHAR, table_name VARCHAR, record_key VARCHAR, reason VARCHAR, record JSON,
    quarantined_at TIMESTAMP
);
ALTER TABLE raw.quarantine ADD COLUMN IF NOT EXISTS fix JSON;
ALTER TABLE raw.quarantine ADD COLUMN IF NOT EXISTS fix_cleared_on DATE;
ALTER TABLE raw.quarantine ADD COLUMN IF NOT EXISTS restricted BOOLEAN;
CREATE TABLE IF NOT EXISTS raw.quarantine_resolved (
    system VARCHAR, table_name VARCHAR, record_key VARCHAR, reason VARCHAR, quarantined_at TIMESTAMP,
    resolved_on DATE
);
CREATE TABLE IF NOT EXISTS raw.ingested_files (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS raw.quarantine_files (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, reason VARCHAR, quarantined_at TIMESTAMP
);
-- which table's folder a bad file was found in (warehouses made before it have NULL there)
ALTER TABLE raw.quarantine_files ADD COLUMN IF NOT EXISTS table_name VARCHAR;
CREATE TABLE IF NOT EXISTS raw.watermarks (
    system VARCHAR, table_name VARCHAR, marker VARCHAR, watermark TIMESTAMP, PRIMARY KEY (system, table_name)
);
CREATE TABLE IF NOT EXISTS raw.ingest_scope (system VARCHAR, table_name VARCHAR, scope VARCHAR, item VARCHAR);
"""

# Change markers are ISO text at the sources ('YYYY-MM-DD HH:MM:SS'), compared as text there.
MARKER_FORMAT = "%Y-%m-%d %H:%M:%S"
# How far before its watermark an incremental read starts: a transaction that commits after a read may carry an
# earlier time, and the source's applications may stamp markers with clocks of their own (push-back and the
# rights stage use the source database's clock).
SAFETY_MARGIN = dt.timedelta(hours=1)

_SA_TO_DUCKDB = {sa.Integer: "BIGINT", sa.Float: "DOUBLE", sa.Boolean: "BOOLEAN"}

_SQLITE_BATCH_ROWS = adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value
# Names the column marking the SQLite reader's leading row (see _with_type_sentinel).
_SENTINEL = "_adbc_type_sentinel"


@dataclass(frozen=True)
class QuarantineFields:
    """What raw.quarantine keeps of a bad row besides its reason: the `kept` columns always (its key, the ids of
    the people it is about, its source file, and what handling it needs without identifying anyone), the
    offending values in full for `shown` columns, else masked to their last 4 characters. The default keeps the
    key columns only and masks every offending value."""

    kept: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()


def quarantine_fields(policy: Policy, table: str) -> QuarantineFields:
    """From policies/: kept = the primary key, ids (`identifying: key`) and references, the columns that time
    the row's retention, hold it or say which purposes it serves (clocks, legal holds, row purposes: retention
    applies to quarantined rows too), and the columns that identify no one and are not health data (a request's
    type, a status), but the change marker (a technical time: were it kept, every update of a malformed row would
    make it a new quarantine entry); shown = all but direct identifiers."""
    ds = policy.dataset(table)
    kept = [ds.primary_key, *(c.name for c in ds.columns if c.identifying == "key"), *ds.references,
            *(c for clock in policy.clocks.values() if clock.table == table for c in clock.columns),
            *(c for h in policy.datasets_file.legal_holds if h.table == table for c in (h.column, h.until_set) if c),
            *(c.column for entry in ds.row_purposes for c in entry.where),  # which purposes the row serves
            *(c.name for c in ds.columns
              if c.identifying == "none" and not c.category.startswith("user.health_and_medical"))]
    return QuarantineFields(kept=tuple(c for c in dict.fromkeys(kept) if c != ds.change_marker),
                            shown=tuple(c.name for c in ds.columns if c.identifying != "direct"))


def change_marker(policy: Policy, table: str) -> str | None:
    """The column policies/datasets.yaml declares as the table's change marker, if any."""
    return policy.dataset(table).change_marker


@dataclass(frozen=True)
class IngestResult:
    table: str
    rows: int
    quarantined: int
    # SQL tables: rows read from the source, of them new and changed; rows deleted at the source; the watermark
    # kept for the next load; whether it was a full copy.
    read: int = 0
    new: int = 0
    changed: int = 0
    deleted: int = 0
    watermark: dt.datetime | None = None
    full: bool = True
    # Incremental loads: the files whose rows were (re)loaded or dropped by this call.
    replaced_files: tuple[str, ...] = ()
    # Files set aside whole (unreadable or wrongly shaped): path -> reason, in raw.quarantine_files.
    quarantined_files: dict[str, str] = field(default_factory=dict)


def duckdb_type(column: sa.Column) -> str:
    """Warehouse type of a source column: `*_date` → DATE, `*_at` → TIMESTAMP, else by SQL type."""
    if column.name.endswith("_date"):
        return "DATE"
    if column.name.endswith("_at"):
        return "TIMESTAMP"
    for sa_type, duck in _SA_TO_DUCKDB.items():
        if isinstance(column.type, sa_type):
            return duck
    return "VARCHAR"


def _text_select(columns: Sequence[sa.Column], where: sa.ColumnElement[bool] | None) -> sa.Select:
    query = sa.select(*[sa.cast(c, sa.Text).label(c.name) for c in columns])
    return query if where is None else query.where(where)


def _text_schema(columns: Sequence[sa.Column]) -> pa.Schema:
    return pa.schema([(c.name, pa.string()) for c in columns])


def adbc_uri(url: sa.URL) -> str | None:
    """The ADBC driver URI of a SQLAlchemy URL: the file of a SQLite database, a libpq URI for PostgreSQL.

    None when ADBC cannot open the same database the way the DB-API driver would (an in-memory SQLite lives
    inside the engine's own connection; SQLite URL options and PostgreSQL multi-host lists mean something
    to the Python driver only, and other dialects have no ADBC driver here).
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.get_driver_name() != "pysqlite" or url.query or url.database in (None, "", ":memory:"):
            return None
        return url.database
    if backend != "postgresql" or any(isinstance(v, tuple) for v in url.query.values()):
        return None
    # Built by hand: SQLAlchemy's rendering leaves spaces bare and writes '+' for them in the query, which
    # libpq would read literally.
    userinfo = ""
    if url.username is not None:
        password = "" if url.password is None else ":" + url_quote(str(url.password), safe="")
        userinfo = url_quote(url.username, safe="") + password + "@"
    host = f"[{url.host}]" if url.host and ":" in url.host else url_quote(url.host or "", safe="")
    port = f":{url.port}" if url.port else ""
    database = "/" + url_quote(url.database, safe="") if url.database else ""
    query = "?" + urlencode(dict(url.query), quote_via=url_quote) if url.query else ""
    return f"postgresql://{userinfo}{host}{port}{database}{query}"


def read_sql_table(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000, *,
                   columns: Sequence[sa.Column] | None = None, where: sa.ColumnElement[bool] | None = None
                   ) -> pa.Table:
    """Read a source table as text columns (the warehouse does the typing): all its columns unless `columns`
    (the key-only read), all its rows unless `where` (the rows changed since a watermark).

    SQLite and PostgreSQL are read through ADBC as a stream of Arrow batches (SQLite's of `batch_size`
    rows; PostgreSQL's driver sizes its own by bytes); a URL that ADBC cannot open (see `adbc_uri`) goes
    through `read_sql_table_dbapi`. Both run the SELECT of every column CAST to text, so the database
    itself renders every value and the two give the same table, but for one thing: ADBC reads SQLite with
    the SQLite its wheel bundles (3.53 in adbc-driver-sqlite 1.13.0), which writes a REAL that 15
    significant digits would not give back with 17 (0.33333333333333332); older ones, such as Debian 12's
    3.40 behind Python's sqlite3, write 15 (0.333333333333333), which is not the stored value.
    """
    uri = adbc_uri(engine.url)
    if uri is None:
        return read_sql_table_dbapi(engine, table, batch_size, columns=columns, where=where)
    columns = list(table.columns) if columns is None else columns
    schema = _text_schema(columns)
    sqlite = engine.dialect.name == "sqlite"
    connect: Callable[[str], adbc_driver_manager.dbapi.Connection]
    if sqlite:
        connect, options = adbc_driver_sqlite.dbapi.connect, {_SQLITE_BATCH_ROWS: str(batch_size)}
        query = _with_type_sentinel(_text_select(columns, where), schema.names)
    else:
        connect, options = adbc_driver_postgresql.dbapi.connect, {}
        query = _text_select(columns, where)
    sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    batches: list[pa.RecordBatch] = []
    with connect(uri) as con, con.cursor() as cursor:
        cursor.adbc_statement.set_options(**options)
        cursor.execute(sql)
        for batch in cursor.fetch_record_batch():
            if sqlite and not batches:
                if batch.column(_SENTINEL)[0].as_py() != "1":
                    raise RuntimeError(f"SQLite did not return the type sentinel row first: {sql}")
                batch = batch.slice(1)
            # Selecting by position also drops the sentinel column; a non-text column would be a driver
            # typing it, and Arrow's rendering of the value is not the database's: refuse rather than cast.
            batch = pa.RecordBatch.from_arrays(batch.columns[: len(schema)], names=schema.names)
            if not batch.schema.equals(schema):
                raise TypeError(f"ADBC returned {batch.schema} for {table.name}, expected text columns")
            batches.append(batch)
    return pa.Table.from_batches(batches, schema=schema)


def _with_type_sentinel(query: sa.Select, names: list[str]) -> sa.CompoundSelect:
    """`query` after one marked row of empty strings, for the SQLite driver's type inference.

    The driver types each column from its first batch, a column NULL throughout it as int64, and fails on
    any later value of another type. The leading row makes every column text from the start; it is marked
    (and checked by the reader) because SQL does not promise the order of UNION ALL.
    """
    sentinel = sa.select(*[sa.literal("", sa.Text).label(n) for n in names], sa.literal("1").label(_SENTINEL))
    return sa.union_all(sentinel, query.add_columns(sa.null().label(_SENTINEL)))


def read_sql_table_dbapi(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000, *,
                         columns: Sequence[sa.Column] | None = None, where: sa.ColumnElement[bool] | None = None
                         ) -> pa.Table:
    """`read_sql_table` through the engine's DB-API driver: any dialect, but rows cross as Python tuples.

    It serves the dialects without an ADBC driver here (and the URLs `adbc_uri` leaves out); tests compare
    the ADBC readers against it.
    """
    columns = list(table.columns) if columns is None else columns
    names = [c.name for c in columns]
    batches: list[pa.RecordBatch] = []
    with engine.connect() as con:
        result = con.execution_options(stream_results=True).execute(_text_select(columns, where))
        while rows := result.fetchmany(batch_size):
            values = list(zip(*rows, strict=True))
            batches.append(pa.record_batch([pa.array(col, type=pa.string()) for col in values], names=names))
    return pa.Table.from_batches(batches, schema=_text_schema(columns))


def _problems_sql(columns: dict[str, str], required: list[str], key: list[str], source: str) -> str:
    """One SQL expression listing everything wrong with a row ('' when nothing is)."""
    checks = [f"CASE WHEN {ident(c)} IS NULL THEN {literal('missing ' + c)} END" for c in required]
    checks += [
        f"CASE WHEN {ident(c)} IS NOT NULL AND TRY_CAST({ident(c)} AS {t}) IS NULL "
        f"THEN {literal(f'bad {t.lower()} in {c}')} END"
        for c, t in columns.items()
        if t != "VARCHAR"
    ]
    if key:
        partition = ", ".join(ident(k) for k in key)
        checks.append(f"CASE WHEN count(*) OVER (PARTITION BY {partition}) > 1 THEN 'duplicate key' END")
    return f"SELECT *, concat_ws('; ', {', '.join(checks)}) AS _problems FROM {source}"


def _quarantine_sql(columns: dict[str, str], key: list[str], fields: QuarantineFields | None) -> tuple[str, str]:
    """SQL JSON (record, fix) of what the quarantine keeps of a staged row (see QuarantineFields)."""
    fields = fields or QuarantineFields(kept=tuple(key))
    kept = [c for c in dict.fromkeys([*fields.kept, "source_file"]) if c in columns]
    record = [f"struct_pack(k := {literal(c)}, v := CAST({ident(c)} AS VARCHAR))" for c in kept]
    fix = []
    for c, t in columns.items():
        if c in kept or t == "VARCHAR":
            continue
        value = f"CAST({ident(c)} AS VARCHAR)"
        shown = value if c in fields.shown else f"{literal('…')} || right({value}, 4)"
        fix.append(f"struct_pack(k := {literal(c)}, v := CASE WHEN TRY_CAST({ident(c)} AS {t}) IS NULL "
                   f"THEN {shown} END)")

    def as_json(entries: list[str]) -> str:
        if not entries:
            return "NULL::JSON"
        return f"to_json(map_from_entries(list_filter([{', '.join(entries)}], lambda x: x.v IS NOT NULL)))"

    return as_json(record), as_json(fix)


def record_key_sql(key: list[str], alias: str = "") -> str:
    """The record key of a row as text (raw.quarantine's record_key): its key columns joined by '|'."""
    prefix = f"{alias}." if alias else ""
    return " || '|' || ".join(f"coalesce(CAST({prefix}{ident(k)} AS VARCHAR), '∅')" for k in key) or "NULL"


def load_typed(
    con: duckdb.DuckDBPyConnection,
    source: str,
    *,
    system: str,
    table: str,
    columns: dict[str, str],
    required: list[str],
    key: list[str],
    replace_files: list[str] | None = None,
    replace_keys: str | None = None,
    fields: QuarantineFields | None = None,
    also: Sequence[tuple[str, list[object]]] = (),
    add_to_scope: bool = False,
) -> IngestResult:
    """Cast `source` (a relation of text columns) into `raw.<table>`, quarantining bad rows (minimised).

    Without `replace_files` or `replace_keys` the table is replaced whole; with `replace_files`, only the rows
    whose `source_file` is listed are replaced (the navigation log); with `replace_keys` (a relation of
    `record_key`s: the rows changed or gone at the source), only the rows of those keys. The quarantine of the
    rows out of scope is left as it is, so an incremental load ends as a full one would. The statements of
    `also` (a watermark) run in the same transaction: a crash leaves the previous state, watermark included.
    The rows loaded are recorded in `raw.ingest_scope` (what the raw quality checks look at), in place of those of
    the table's previous load unless `add_to_scope` (the re-read after push-back, in the run that ingested them).
    """
    target = f"raw.{ident(table)}"
    con.execute(QUARANTINE_DDL)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _staged AS {_problems_sql(columns, required, key, source)}")
    typed = ", ".join(f"TRY_CAST({ident(c)} AS {t}) AS {ident(c)}" for c, t in columns.items())
    key_expr = record_key_sql(key)
    record, fix = _quarantine_sql(columns, key, fields)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _quarantined AS SELECT ?::VARCHAR AS system, ?::VARCHAR AS table_name, "
        f"{key_expr} AS record_key, _problems AS reason, {record} AS record, {fix} AS fix "
        "FROM _staged WHERE _problems <> ''",
        [system, table],
    )
    # Which quarantine rows and raw rows this call replaces.
    if replace_files is not None:
        quarantine_scope, target_scope, scope_params = "AND list_contains(?, record->>'source_file') ", \
            "list_contains(?, source_file)", [replace_files]
        loaded = "files", "SELECT DISTINCT source_file FROM _staged"
    elif replace_keys is not None:
        quarantine_scope = f"AND record_key IN (SELECT record_key FROM {ident(replace_keys)}) "
        target_scope = f"{key_expr} IN (SELECT record_key FROM {ident(replace_keys)})"
        scope_params, loaded = [], ("keys", f"SELECT {key_expr} FROM _staged")
    else:
        quarantine_scope, target_scope, scope_params, loaded = "", "", [], ("all", "SELECT NULL WHERE false")
    con.execute("BEGIN TRANSACTION")
    try:
        # The rows this call replaces: when each was first quarantined, whether its fix was cleared.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _first_seen AS SELECT record_key, reason, CAST(record AS VARCHAR) AS record, "
            "min(quarantined_at) AS quarantined_at, min(fix_cleared_on) AS fix_cleared_on FROM raw.quarantine "
            f"WHERE system = ? AND table_name = ? {quarantine_scope}GROUP BY ALL",
            [system, table, *scope_params],
        )
        # Rows no longer malformed (fixed, or gone from the source): only their key, reason and dates are kept,
        # in raw.quarantine_resolved, for the period policies/own_records.yaml declares (pipelines.purge).
        con.execute(
            "INSERT INTO raw.quarantine_resolved SELECT ?, ?, record_key, min(reason), min(quarantined_at), "
            "current_date FROM _first_seen f WHERE NOT EXISTS (SELECT 1 FROM _quarantined q "
            "WHERE q.record_key IS NOT DISTINCT FROM f.record_key) GROUP BY record_key", [system, table])
        con.execute("DELETE FROM raw.quarantine_resolved WHERE system = ? AND table_name = ? AND record_key IN "
                    "(SELECT record_key FROM _quarantined)", [system, table])  # broken again: not resolved
        if not target_scope:
            con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT {typed} FROM _staged WHERE _problems = ''")
        else:
            con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT {typed} FROM _staged WHERE false")
            con.execute(f"DELETE FROM {target} WHERE {target_scope}", scope_params)
            con.execute(f"INSERT INTO {target} SELECT {typed} FROM _staged WHERE _problems = ''")
        con.execute(f"DELETE FROM raw.quarantine WHERE system = ? AND table_name = ? {quarantine_scope}",
                    [system, table, *scope_params])
        con.execute(
            "INSERT INTO raw.quarantine (system, table_name, record_key, reason, record, fix, quarantined_at, "
            "fix_cleared_on) SELECT q.system, q.table_name, q.record_key, q.reason, q.record, "
            "CASE WHEN f.fix_cleared_on IS NULL THEN q.fix END, coalesce(f.quarantined_at, now()), f.fix_cleared_on "
            "FROM _quarantined q LEFT JOIN _first_seen f ON f.record_key IS NOT DISTINCT FROM q.record_key "
            "AND f.reason = q.reason AND f.record IS NOT DISTINCT FROM CAST(q.record AS VARCHAR)"
        )
        if not add_to_scope:
            con.execute("DELETE FROM raw.ingest_scope WHERE system = ? AND table_name = ?", [system, table])
        # One row saying what kind of load it was (even one that brought nothing in), one per key or file loaded.
        con.execute(f"INSERT INTO raw.ingest_scope SELECT ?, ?, ?, NULL UNION ALL SELECT ?, ?, ?, * FROM ({loaded[1]})",
                    [system, table, loaded[0]] * 2)
        for sql, params in also:
            con.execute(sql, params)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("DROP TABLE IF EXISTS _staged; DROP TABLE IF EXISTS _quarantined; DROP TABLE IF EXISTS _first_seen")
    rows = scalar(con, f"SELECT count(*) FROM {target}")
    quarantined = scalar(
        con, "SELECT count(*) FROM raw.quarantine WHERE system = ? AND table_name = ?", [system, table]
    )
    return IngestResult(table=table, rows=rows, quarantined=quarantined)


def _watermark(con: duckdb.DuckDBPyConnection, system: str, table: str, marker: str,
               columns: dict[str, str]) -> dt.datetime | None:
    """The table's watermark, if its last load kept one for this marker and its raw copy has the columns the
    source has now (a column added at the source needs every row read again)."""
    held = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'raw' "
                       "AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()
    if held != list(columns.items()):
        return None
    return scalar(con, "SELECT watermark FROM raw.watermarks WHERE system = ? AND table_name = ? AND marker = ?",
                  [system, table, marker])


def _changed_since(column: sa.Column, since: dt.datetime) -> sa.ColumnElement[bool]:
    """Rows whose marker is at or after `since`, or that no watermark can place: a NULL marker, or text not
    shaped like an ISO timestamp (compared as text, it could sort anywhere; such a row is quarantined)."""
    return sa.or_(column.is_(None), column >= since.strftime(MARKER_FORMAT), column.not_like("____-__-__%"))


class SourceSchemaError(RuntimeError):
    """A source table lacks a column the project's source schema (pipelines/sources/schema.py) declares."""


def check_source_columns(engine: sa.Engine, system: str, table: sa.Table, marker: str | None = None) -> None:
    """Refuse, before reading anything, a source table that lacks a declared column, naming it and what to do: the
    driver's own error ("no such column") names neither the system nor the fix. One catalogue query."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table.name):
        raise SourceSchemaError(f"the {system} source has no table {table.name!r} (declared in "
                                "pipelines/sources/schema.py): check its URL and the database it points at")
    found = {c["name"] for c in inspector.get_columns(table.name)}
    missing = [c.name for c in table.columns if c.name not in found]
    if not missing:
        return
    advice = ""
    if marker in missing:
        # an operator's message, not SQL run here: the statement is an example to adapt
        example = f"ALTER TABLE {table.name} ADD COLUMN {marker} TIMESTAMP DEFAULT CURRENT_TIMESTAMP"
        advice = (f" '{marker}' is the change marker policies/datasets.yaml declares for '{table.name}': add it to "
                  f"the source (a timestamp its applications set on every insert and update, e.g. {example}, plus an "
                  "update trigger); push-back stamps it too.")
    names = ", ".join(map(repr, missing))
    raise SourceSchemaError(f"the {system} source's table {table.name!r} has no column {names}, which "
                            f"pipelines/sources/schema.py declares: nothing was read.{advice}")


def ingest_sql_table(con: duckdb.DuckDBPyConnection, engine: sa.Engine, system: str, table: sa.Table,
                     fields: QuarantineFields | None = None, *, marker: str | None = None, full: bool = False,
                     now: dt.datetime | None = None, margin: dt.timedelta = SAFETY_MARGIN,
                     add_to_scope: bool = False) -> IngestResult:
    """One SQL source table into `raw.<table>`; `fields`: what a quarantined row keeps; `add_to_scope`: see
    `load_typed`.

    Without a `marker` (policies: `change_marker`), with `full`, or on the first load, a full copy. Otherwise an
    incremental one: the rows whose marker is at or after the watermark less `margin` (clocks and transactions
    overlap: a row committed late can carry an earlier time), plus a key-only read of the table to find the rows
    deleted at the source; the watermark (latest marker read, never past `now`) is committed with the rows.
    """
    check_source_columns(engine, system, table, marker)
    con.execute(QUARANTINE_DDL)
    columns = {c.name: duckdb_type(c) for c in table.columns}
    key = [c.name for c in table.primary_key.columns]
    previous = None if full or marker is None else _watermark(con, system, table.name, marker, columns)
    if previous is None:
        rows, keys = read_sql_table(engine, table), None
    else:
        keys = read_sql_table(engine, table, columns=list(table.primary_key.columns))
        rows = read_sql_table(engine, table, where=_changed_since(table.c[marker], previous - margin))
    con.register("_source_rows", rows)
    try:
        also: list[tuple[str, list[object]]] = [
            ("DELETE FROM raw.watermarks WHERE system = ? AND table_name = ?", [system, table.name])]
        watermark = None
        if marker is not None:
            latest = scalar(con, f"SELECT max(TRY_CAST({ident(marker)} AS TIMESTAMP)) FROM _source_rows")
            cap = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
            watermark = max([w for w in (previous, latest and min(latest, cap)) if w is not None], default=None)
            if watermark is not None:
                also.append(("INSERT INTO raw.watermarks VALUES (?, ?, ?, ?)",
                             [system, table.name, marker, watermark]))
        counts: dict[str, int] = {}
        if keys is not None:
            con.register("_source_keys", keys)
            counts = _key_changes(con, system, table.name, key, columns)
        result = load_typed(
            con, "_source_rows" if keys is None else "_changed_rows", system=system, table=table.name,
            columns=columns, required=[c.name for c in table.columns if c.primary_key or c.info.get("required")],
            key=key, fields=fields, replace_keys=None if keys is None else "_scope_keys", also=also,
            add_to_scope=add_to_scope,
        )
    finally:
        if keys is not None:
            con.execute("DROP TABLE IF EXISTS _changed_rows; DROP TABLE IF EXISTS _scope_keys")
            con.unregister("_source_keys")
        con.unregister("_source_rows")
    return replace(result, read=rows.num_rows, full=keys is None,
                   new=counts.get("new", 0), changed=counts.get("changed", 0),
                   deleted=counts.get("deleted", 0), watermark=watermark)


def _key_changes(con: duckdb.DuckDBPyConnection, system: str, table: str, key: list[str],
                 columns: dict[str, str]) -> dict[str, int]:
    """What the rows read (`_source_rows`) and the key-only read (`_source_keys`) change in `raw.<table>`:
    `_changed_rows`, the rows read that are not already in raw as they are (read again inside the safety margin);
    `_scope_keys`, their keys and those of the rows the warehouse holds (in raw or in quarantine) that are gone
    from the source. Returns how many rows are new, changed and deleted."""
    typed = ", ".join(f"TRY_CAST({ident(c)} AS {t}) AS {ident(c)}" for c, t in columns.items())
    record_key = record_key_sql(key)
    read_keys = ", ".join(f"TRY_CAST({ident(k)} AS {columns[k]}) AS {ident(k)}" for k in key)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _unchanged AS SELECT {record_key} AS record_key FROM "
                f"(SELECT {typed} FROM _source_rows INTERSECT SELECT r.* FROM raw.{ident(table)} r "
                f"SEMI JOIN (SELECT {read_keys} FROM _source_rows) USING ({', '.join(ident(k) for k in key)}))")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _changed_rows AS SELECT * FROM _source_rows "
                f"WHERE {record_key} NOT IN (SELECT record_key FROM _unchanged)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _held AS SELECT {record_key} AS record_key FROM raw.{ident(table)} "
                "UNION SELECT record_key FROM raw.quarantine WHERE system = ? AND table_name = ?", [system, table])
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _scope_keys AS "
        f"SELECT DISTINCT {record_key} AS record_key, true AS read FROM _changed_rows UNION ALL "
        f"SELECT record_key, false FROM _held h WHERE NOT EXISTS "
        f"(SELECT 1 FROM _source_keys s WHERE {record_key_sql(key, 's')} = h.record_key)")
    new, changed, deleted = con.execute(
        "SELECT count(*) FILTER (WHERE read AND NOT held), count(*) FILTER (WHERE read AND held), "
        "count(*) FILTER (WHERE NOT read) FROM (SELECT s.read, h.record_key IS NOT NULL AS held "
        "FROM _scope_keys s LEFT JOIN _held h USING (record_key))").fetchall()[0]
    con.execute("DROP TABLE _held; DROP TABLE _unchanged")
    return {"new": new, "changed": changed, "deleted": deleted}


def file_problem(path: str, columns: Collection[str]) -> str | None:
    """Why a Parquet file cannot be read as the declared columns (corrupt, truncated, missing or extra column),
    naming the file and the column; None when it can."""
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        return f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})"
    missing = [c for c in columns if c not in names]
    extra = [c for c in names if c not in columns]
    if missing or extra:
        return "; ".join([*(f"{path}: missing column {c}" for c in missing),
                          *(f"{path}: unexpected column {c}" for c in extra)])
    return None


def _loaded_elsewhere(con: duckdb.DuckDBPyConnection, table: str, prefix: str) -> list[str]:
    """Files `raw.<table>` or its quarantine holds rows of that are not under `prefix`: the log was read from
    another folder (moved, remounted, a copied site). Its files there are the same files, so their rows go before
    the new paths load, or every page view would be counted twice."""
    held = f"SELECT DISTINCT source_file AS f FROM raw.{ident(table)} UNION " if table_exists(con, "raw", table) else ""
    return [f for (f,) in con.execute(
        f"SELECT f FROM ({held}SELECT DISTINCT record->>'source_file' AS f FROM raw.quarantine "
        "WHERE system = 'navigation' AND table_name = ?) WHERE f IS NOT NULL AND NOT starts_with(f, ?)",
        [table, prefix]).fetchall()]


def ingest_parquet(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    *,
    table: str,
    columns: dict[str, str],
    required: list[str],
    reread: Collection[str] = (),
    fields: QuarantineFields | None = None,
    add_to_scope: bool = False,
) -> IngestResult:
    """Incremental copy of a folder of Parquet files: only new, rewritten or removed files are handled.

    Rows keep the file they came from (`source_file`), so a rewritten file replaces exactly its rows.
    Files listed in `reread` are read again even when unchanged (an explicit re-materialisation).
    """
    con.execute(QUARANTINE_DDL)
    prefix = str(folder) + "/"
    stats = {str(f): f.stat() for f in sorted(folder.rglob("*.parquet"))} if folder.exists() else {}
    seen = {
        p: (s, m)
        for p, s, m in con.execute(
            "SELECT path, size, mtime_ns FROM raw.ingested_files WHERE starts_with(path, ?)", [prefix]
        ).fetchall()
    }
    forced = set(reread)
    changed = [p for p, st in stats.items() if p in forced or seen.get(p) != (st.st_size, st.st_mtime_ns)]
    stale = sorted(set(changed) | (set(seen) - set(stats)) | set(_loaded_elsewhere(con, table, prefix)))
    # A bad file is set aside (its earlier rows go too: the file as it is now is what the source holds) and
    # tried again every run until it reads; every other file still goes in.
    bad = {p: problem for p in changed if (problem := file_problem(p, columns)) is not None}
    changed = [p for p in changed if p not in bad]
    # The table's bad files are listed afresh, those found under an earlier folder of the log included (moved:
    # they are not bad files of the source any more).
    con.execute("DELETE FROM raw.quarantine_files WHERE table_name = ? OR starts_with(path, ?)", [table, prefix])
    if bad:
        con.executemany("INSERT INTO raw.quarantine_files (path, size, mtime_ns, reason, quarantined_at, table_name) "
                        "VALUES (?, ?, ?, ?, now(), ?)",
                        [[p, stats[p].st_size, stats[p].st_mtime_ns, reason, table] for p, reason in bad.items()])
    text_cols = ", ".join(f"CAST({ident(c)} AS VARCHAR) AS {ident(c)}" for c in columns)
    source = (
        f"(SELECT {text_cols}, filename AS source_file FROM read_parquet({list_literal(changed)}, filename = true))"
        if changed
        else f"(SELECT {', '.join(f'NULL::VARCHAR AS {ident(c)}' for c in columns)}, NULL::VARCHAR AS source_file "
        "WHERE false)"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW _parquet_rows AS SELECT * FROM {source}")
    result = load_typed(
        con, "_parquet_rows", system="navigation", table=table, columns={**columns, "source_file": "VARCHAR"},
        required=required, key=[], replace_files=stale, fields=fields, add_to_scope=add_to_scope,
    )
    con.execute("DELETE FROM raw.ingested_files WHERE list_contains(?, path)", [stale])
    if changed:
        manifest = pa.table({
            "path": changed,
            "size": [stats[p].st_size for p in changed],
            "mtime_ns": [stats[p].st_mtime_ns for p in changed],
        })
        con.register("_manifest", manifest)
        con.execute(
            "INSERT INTO raw.ingested_files (path, size, mtime_ns, ingested_at) "
            "SELECT path, size, mtime_ns, now() FROM _manifest"
        )
        con.unregister("_manifest")
    return replace(result, replaced_files=tuple(stale), quarantined_files=bad)


def navigation_columns(schema: pa.Schema) -> dict[str, str]:
    mapping = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.timestamp("us"): "TIMESTAMP"}
    return {f.name: mapping.get(f.type, "VARCHAR") for f in schema}

