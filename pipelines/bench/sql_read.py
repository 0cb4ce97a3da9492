"""Benchmark: read every SQL source table as text through ADBC (Arrow from C) vs the DB-API (Python tuples).

    bench_sql_sources(members, workdir) -> dict   # generated SQLite sources, then a PostgreSQL copy of them
    bench_sql_read(urls) -> dict

`urls` maps each SQL system to its SQLAlchemy URL. Both readers run in the same call over the same tables;
only reading is timed (the DuckDB load after it is the same for both), and the number of tables on which
the two returned identical Arrow tables is reported beside the timings.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import sqlalchemy as sa

from pipelines.ingest import read_sql_table, read_sql_table_dbapi
from pipelines.sources.schema import SQL_SYSTEMS


def bench_sql_sources(members: int, workdir: Path) -> dict:
    """Both readers on the SQLite sources under `workdir` (generated if absent) and on a throw-away PostgreSQL."""
    from pipelines.demo.generate import generate
    from pipelines.sources.copy import copy_sql_system
    from pipelines.sources.throwaway_pg import start_cluster

    sources = workdir / "sources"
    if not sources.exists():
        generate(sources, members=members, seed=1, as_of=dt.date.today())
    sqlite_urls = {system: f"sqlite:///{sources / (system + '.db')}" for system in SQL_SYSTEMS}
    report = {"members": members, "sqlite": bench_sql_read(sqlite_urls)}
    cluster = start_cluster()
    try:
        pg_urls = {system: cluster.create_database() for system in SQL_SYSTEMS}
        for system, metadata in SQL_SYSTEMS.items():
            copy_sql_system(sqlite_urls[system], pg_urls[system], metadata)
        report["postgresql"] = bench_sql_read(pg_urls)
    finally:
        cluster.stop()
    return report


def bench_sql_read(urls: dict[str, str]) -> dict:
    seconds = {"adbc": 0.0, "dbapi": 0.0}
    rows = tables = identical = 0
    for system, metadata in SQL_SYSTEMS.items():
        engine = sa.create_engine(urls[system])
        try:
            for table in metadata.sorted_tables:
                started = time.perf_counter()
                through_adbc = read_sql_table(engine, table)
                seconds["adbc"] += time.perf_counter() - started
                started = time.perf_counter()
                through_dbapi = read_sql_table_dbapi(engine, table)
                seconds["dbapi"] += time.perf_counter() - started
                rows += through_adbc.num_rows
                tables += 1
                identical += through_adbc.equals(through_dbapi)
        finally:
            engine.dispose()
    return {
        "tables": tables,
        "rows": rows,
        "dbapi_seconds": round(seconds["dbapi"], 1),
        "adbc_seconds": round(seconds["adbc"], 1),
        "identical_tables": identical,
    }
