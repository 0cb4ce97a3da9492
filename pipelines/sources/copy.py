"""Copy one SQL source system (every table of its SQLAlchemy metadata) into PostgreSQL, fast.

Tests and the benchmark use it to put the generated SQLite sources into a real PostgreSQL: the destination
tables are dropped and re-created from the metadata, rows are read in batches, turned into Arrow columns and
streamed with COPY as CSV (no row-by-row INSERT), and serial sequences are moved past the copied ids so the
systems can keep inserting rows afterwards.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

_BATCH_ROWS = 200_000
# Every non-null value is quoted, so an empty string stays an empty string and only null is unquoted.
_CSV_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")


def _arrow_type(column: sa.Column) -> pa.DataType:
    if isinstance(column.type, sa.Boolean):
        return pa.bool_()
    if isinstance(column.type, sa.Integer):
        return pa.int64()
    if isinstance(column.type, sa.Float):
        return pa.float64()
    return pa.string()


def _csv_batch(table: sa.Table, rows: list[sa.Row]) -> bytes:
    columns = zip(*rows, strict=True)
    batch = pa.table(
        [pa.array(values, _arrow_type(col)) for col, values in zip(table.columns, columns, strict=True)],
        names=[c.name for c in table.columns],
    )
    out = io.BytesIO()
    pacsv.write_csv(batch, out, _CSV_OPTIONS)
    return out.getvalue()


def _reset_sequence(conn: sa.Connection, table: sa.Table) -> None:
    """Move the serial sequence of a single integer primary key past the copied ids."""
    keys = list(table.primary_key.columns)
    if len(keys) != 1 or not isinstance(keys[0].type, sa.Integer):
        return
    conn.execute(
        sa.text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column), COALESCE(max({keys[0].name}), 1), "
            f"max({keys[0].name}) IS NOT NULL) FROM {table.name}"
        ),
        {"table": table.name, "column": keys[0].name},
    )


def copy_sql_system(src_url: str, dst_url: str, metadata: sa.MetaData) -> dict[str, int]:
    """Replace the tables of `metadata` in the PostgreSQL `dst_url` with the rows of `src_url`; rows per table."""
    source, destination = sa.create_engine(src_url), sa.create_engine(dst_url)
    if destination.dialect.name != "postgresql":
        raise ValueError(f"copy_sql_system writes to PostgreSQL, not {destination.dialect.name}")
    counts: dict[str, int] = {}
    try:
        metadata.drop_all(destination)
        metadata.create_all(destination)
        with source.connect() as read, destination.begin() as write:
            cursor = write.connection.driver_connection.cursor()
            for table in metadata.sorted_tables:
                names = ", ".join(c.name for c in table.columns)
                result = read.execution_options(yield_per=_BATCH_ROWS).execute(sa.select(table))
                counts[table.name] = 0
                with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN (FORMAT csv)") as copy:
                    for rows in result.partitions():
                        copy.write(_csv_batch(table, rows))
                        counts[table.name] += len(rows)
                _reset_sequence(write, table)
    finally:
        source.dispose()
        destination.dispose()
    return counts
