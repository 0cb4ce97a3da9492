"""Ingestion: typed raw copies of the source systems in the warehouse, malformed rows quarantined.

The SQL systems are copied in full each run: push-back deletes and updates rows at the source, and
their `updated_at` does not see deletions, so no watermark there is reliable. The navigation log is
append-only Parquet partitioned by day: only new or rewritten day files are read (a file manifest with
size and mtime is the watermark).

Every value is read as text and cast in DuckDB with TRY_CAST, so a value that breaks the declared
schema (schema.py) sends its row to `raw.quarantine` with the reason instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from pipelines.duck import quote, scalar

QUARANTINE_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE TABLE IF NOT EXISTS raw.quarantine (
    system VARCHAR, table_name VARCHAR, record_key VARCHAR, reason VARCHAR, record JSON,
    quarantined_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS raw.ingested_files (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, ingested_at TIMESTAMP
);
"""

_SA_TO_DUCKDB = {sa.Integer: "BIGINT", sa.Float: "DOUBLE", sa.Boolean: "BOOLEAN"}


@dataclass(frozen=True)
class IngestResult:
    table: str
    rows: int
    quarantined: int
    # Incremental loads: the files whose rows were (re)loaded or dropped by this call.
    replaced_files: tuple[str, ...] = ()


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


def read_sql_table(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000) -> pa.Table:
    """Read a whole source table as text columns (the warehouse does the typing).

    The DB-API hands rows over as Python tuples whatever we do; they are turned into Arrow in batches and
    every later step is SQL in DuckDB.
    """
    query = sa.select(*[sa.cast(c, sa.Text).label(c.name) for c in table.columns])
    names = [c.name for c in table.columns]
    batches: list[pa.RecordBatch] = []
    with engine.connect() as con:
        result = con.execution_options(stream_results=True).execute(query)
        while rows := result.fetchmany(batch_size):
            columns = list(zip(*rows, strict=True))
            batches.append(pa.record_batch([pa.array(col, type=pa.string()) for col in columns], names=names))
    schema = pa.schema([(n, pa.string()) for n in names])
    return pa.Table.from_batches(batches, schema=schema)


def _problems_sql(columns: dict[str, str], required: list[str], key: list[str], source: str) -> str:
    """One SQL expression listing everything wrong with a row ('' when nothing is)."""
    checks = [f"CASE WHEN {quote(c)} IS NULL THEN 'missing {c}' END" for c in required]
    checks += [
        f"CASE WHEN {quote(c)} IS NOT NULL AND TRY_CAST({quote(c)} AS {t}) IS NULL THEN 'bad {t.lower()} in {c}' END"
        for c, t in columns.items()
        if t != "VARCHAR"
    ]
    if key:
        partition = ", ".join(quote(k) for k in key)
        checks.append(f"CASE WHEN count(*) OVER (PARTITION BY {partition}) > 1 THEN 'duplicate key' END")
    return f"SELECT *, concat_ws('; ', {', '.join(checks)}) AS _problems FROM {source}"


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
) -> IngestResult:
    """Cast `source` (a relation of text columns) into `raw.<table>`, quarantining bad rows.

    Without `replace_files` the table is replaced whole; with it, only the rows whose `source_file` is
    listed are replaced (incremental loads). One transaction: a crash leaves the previous state.
    """
    target = f"raw.{quote(table)}"
    con.execute(QUARANTINE_DDL)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _staged AS {_problems_sql(columns, required, key, source)}")
    typed = ", ".join(f"TRY_CAST({quote(c)} AS {t}) AS {quote(c)}" for c, t in columns.items())
    key_expr = " || '|' || ".join(f"coalesce(CAST({quote(k)} AS VARCHAR), '∅')" for k in key) or "NULL"
    record = ", ".join(f"{quote(c)} := {quote(c)}" for c in columns)
    con.execute("BEGIN TRANSACTION")
    try:
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
            f"INSERT INTO raw.quarantine SELECT ?, ?, {key_expr}, _problems, to_json(struct_pack({record})), "
            "now() FROM _staged WHERE _problems <> ''",
            [system, table],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.execute("DROP TABLE IF EXISTS _staged")
    rows = scalar(con, f"SELECT count(*) FROM {target}")
    quarantined = scalar(
        con, "SELECT count(*) FROM raw.quarantine WHERE system = ? AND table_name = ?", [system, table]
    )
    return IngestResult(table=table, rows=rows, quarantined=quarantined)


def ingest_sql_table(con: duckdb.DuckDBPyConnection, engine: sa.Engine, system: str, table: sa.Table) -> IngestResult:
    """Full copy of one SQL source table into `raw.<table>`."""
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
        )
    finally:
        con.unregister("_source_rows")


def ingest_parquet(
    con: duckdb.DuckDBPyConnection,
    folder: Path,
    *,
    table: str,
    columns: dict[str, str],
    required: list[str],
    reread: Collection[str] = (),
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
    text_cols = ", ".join(f"CAST({quote(c)} AS VARCHAR) AS {quote(c)}" for c in columns)
    source = (
        f"(SELECT {text_cols}, filename AS source_file FROM read_parquet({_sql_list(changed)}, filename = true))"
        if changed
        else f"(SELECT {', '.join(f'NULL::VARCHAR AS {quote(c)}' for c in columns)}, NULL::VARCHAR AS source_file "
        "WHERE false)"
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW _parquet_rows AS SELECT * FROM {source}")
    result = load_typed(
        con, "_parquet_rows", system="navigation", table=table, columns={**columns, "source_file": "VARCHAR"},
        required=required, key=[], replace_files=stale,
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
    return replace(result, replaced_files=tuple(stale))


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def navigation_columns(schema: pa.Schema) -> dict[str, str]:
    mapping = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.timestamp("us"): "TIMESTAMP"}
    return {f.name: mapping.get(f.type, "VARCHAR") for f in schema}

