"""Ingestion: typed raw copies of the source systems in the warehouse, malformed rows quarantined.

The SQL systems are copied in full each run: push-back deletes and updates rows at the source, and
their `updated_at` does not see deletions, so no watermark there is reliable. The navigation log is
append-only Parquet partitioned by day: only new or rewritten day files are read (a file manifest with
size and mtime is the watermark).

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

from collections.abc import Callable, Collection
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

from pipelines.duck import scalar
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
"""

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
    type, a status); shown = all but direct identifiers."""
    ds = policy.dataset(table)
    kept = [ds.primary_key, *(c.name for c in ds.columns if c.identifying == "key"), *ds.references,
            *(c for clock in policy.clocks.values() if clock.table == table for c in clock.columns),
            *(c for h in policy.datasets_file.legal_holds if h.table == table for c in (h.column, h.until_set) if c),
            *(c.column for entry in ds.row_purposes for c in entry.where),  # which purposes the row serves
            *(c.name for c in ds.columns
              if c.identifying == "none" and not c.category.startswith("user.health_and_medical"))]
    return QuarantineFields(kept=tuple(dict.fromkeys(kept)),
                            shown=tuple(c.name for c in ds.columns if c.identifying != "direct"))


@dataclass(frozen=True)
class IngestResult:
    table: str
    rows: int
    quarantined: int
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


def _text_select(table: sa.Table) -> sa.Select:
    return sa.select(*[sa.cast(c, sa.Text).label(c.name) for c in table.columns])


def _text_schema(table: sa.Table) -> pa.Schema:
    return pa.schema([(c.name, pa.string()) for c in table.columns])


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


def read_sql_table(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000) -> pa.Table:
    """Read a whole source table as text columns (the warehouse does the typing).

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
        return read_sql_table_dbapi(engine, table, batch_size)
    schema = _text_schema(table)
    sqlite = engine.dialect.name == "sqlite"
    connect: Callable[[str], adbc_driver_manager.dbapi.Connection]
    if sqlite:
        connect, options = adbc_driver_sqlite.dbapi.connect, {_SQLITE_BATCH_ROWS: str(batch_size)}
        query = _with_type_sentinel(_text_select(table), schema.names)
    else:
        connect, options = adbc_driver_postgresql.dbapi.connect, {}
        query = _text_select(table)
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


def read_sql_table_dbapi(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000) -> pa.Table:
    """`read_sql_table` through the engine's DB-API driver: any dialect, but rows cross as Python tuples.

    It serves the dialects without an ADBC driver here (and the URLs `adbc_uri` leaves out); tests compare
    the ADBC readers against it.
    """
    names = [c.name for c in table.columns]
    batches: list[pa.RecordBatch] = []
    with engine.connect() as con:
        result = con.execution_options(stream_results=True).execute(_text_select(table))
        while rows := result.fetchmany(batch_size):
            columns = list(zip(*rows, strict=True))
            batches.append(pa.record_batch([pa.array(col, type=pa.string()) for col in columns], names=names))
    return pa.Table.from_batches(batches, schema=_text_schema(table))


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
    fields: QuarantineFields | None = None,
) -> IngestResult:
    """Cast `source` (a relation of text columns) into `raw.<table>`, quarantining bad rows (minimised).

    Without `replace_files` the table is replaced whole; with it, only the rows whose `source_file` is
    listed are replaced (incremental loads). One transaction: a crash leaves the previous state.
    """
    target = f"raw.{ident(table)}"
    con.execute(QUARANTINE_DDL)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _staged AS {_problems_sql(columns, required, key, source)}")
    typed = ", ".join(f"TRY_CAST({ident(c)} AS {t}) AS {ident(c)}" for c, t in columns.items())
    key_expr = " || '|' || ".join(f"coalesce(CAST({ident(k)} AS VARCHAR), '∅')" for k in key) or "NULL"
    record, fix = _quarantine_sql(columns, key, fields)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _quarantined AS SELECT ?::VARCHAR AS system, ?::VARCHAR AS table_name, "
        f"{key_expr} AS record_key, _problems AS reason, {record} AS record, {fix} AS fix "
        "FROM _staged WHERE _problems <> ''",
        [system, table],
    )
    con.execute("BEGIN TRANSACTION")
    try:
        # The rows this call replaces: when each was first quarantined, whether its fix was cleared.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _first_seen AS SELECT record_key, reason, CAST(record AS VARCHAR) AS record, "
            "min(quarantined_at) AS quarantined_at, min(fix_cleared_on) AS fix_cleared_on FROM raw.quarantine "
            "WHERE system = ? AND table_name = ? "
            + ("" if replace_files is None else "AND list_contains(?, record->>'source_file') ")
            + "GROUP BY ALL",
            [system, table] if replace_files is None else [system, table, replace_files],
        )
        # Rows no longer malformed (fixed, or gone from the source): only their key, reason and dates are kept,
        # in raw.quarantine_resolved, for the period policies/own_records.yaml declares (pipelines.purge).
        con.execute(
            "INSERT INTO raw.quarantine_resolved SELECT ?, ?, record_key, min(reason), min(quarantined_at), "
            "current_date FROM _first_seen f WHERE NOT EXISTS (SELECT 1 FROM _quarantined q "
            "WHERE q.record_key IS NOT DISTINCT FROM f.record_key) GROUP BY record_key", [system, table])
        con.execute("DELETE FROM raw.quarantine_resolved WHERE system = ? AND table_name = ? AND record_key IN "
                    "(SELECT record_key FROM _quarantined)", [system, table])  # broken again: not resolved
        if replace_files is None:
            con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT {typed} FROM _staged WHERE _problems = ''")
            con.execute("DELETE FROM raw.quarantine WHERE system = ? AND table_name = ?", [system, table])
        else:
            con.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT {typed} FROM _staged WHERE false")
            con.execute(f"DELETE FROM {target} WHERE list_contains(?, source_file)", [replace_files])
            con.execute(
                "DELETE FROM raw.quarantine WHERE system = ? AND table_name = ? "
                "AND list_contains(?, record->>'source_file')",
                [system, table, replace_files],
            )
            con.execute(f"INSERT INTO {target} SELECT {typed} FROM _staged WHERE _problems = ''")
        con.execute(
            "INSERT INTO raw.quarantine (system, table_name, record_key, reason, record, fix, quarantined_at, "
            "fix_cleared_on) SELECT q.system, q.table_name, q.record_key, q.reason, q.record, "
            "CASE WHEN f.fix_cleared_on IS NULL THEN q.fix END, coalesce(f.quarantined_at, now()), f.fix_cleared_on "
            "FROM _quarantined q LEFT JOIN _first_seen f ON f.record_key IS NOT DISTINCT FROM q.record_key "
            "AND f.reason = q.reason AND f.record IS NOT DISTINCT FROM CAST(q.record AS VARCHAR)"
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("DROP TABLE IF EXISTS _staged; DROP TABLE IF EXISTS _quarantined; DROP TABLE IF EXISTS _first_seen")
    rows = scalar(con, f"SELECT count(*) FROM {target}")
    quarantined = scalar(
        con, "SELECT count(*) FROM raw.quarantine WHERE system = ? AND table_name = ?", [system, table]
    )
    return IngestResult(table=table, rows=rows, quarantined=quarantined)


def ingest_sql_table(con: duckdb.DuckDBPyConnection, engine: sa.Engine, system: str, table: sa.Table,
                     fields: QuarantineFields | None = None) -> IngestResult:
    """Full copy of one SQL source table into `raw.<table>`; `fields`: what a quarantined row keeps."""
    arrow = read_sql_table(engine, table)
    con.register("_source_rows", arrow)
    try:
        return load_typed(
            con,
            "_source_rows",
            system=system,
            table=table.name,
            columns={c.name: duckdb_type(c) for c in table.columns},
            required=[c.name for c in table.columns if c.primary_key or c.info.get("required")],
            key=[c.name for c in table.primary_key.columns],
            fields=fields,
        )
    finally:
        con.unregister("_source_rows")


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


def ingest_parquet(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    *,
    table: str,
    columns: dict[str, str],
    required: list[str],
    reread: Collection[str] = (),
    fields: QuarantineFields | None = None,
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
    stale = sorted(set(changed) | (set(seen) - set(stats)))
    # A bad file is set aside (its earlier rows go too: the file as it is now is what the source holds) and
    # tried again every run until it reads; every other file still goes in.
    bad = {p: problem for p in changed if (problem := file_problem(p, columns)) is not None}
    changed = [p for p in changed if p not in bad]
    con.execute("DELETE FROM raw.quarantine_files WHERE starts_with(path, ?)", [prefix])
    if bad:
        con.executemany("INSERT INTO raw.quarantine_files VALUES (?, ?, ?, ?, now())",
                        [[p, stats[p].st_size, stats[p].st_mtime_ns, reason] for p, reason in bad.items()])
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
        required=required, key=[], replace_files=stale, fields=fields,
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

