"""Small DuckDB helpers shared by the stages."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from pipelines.private import private_dir


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """First column of the first row, reading the whole result (DuckDB 2 keeps unread results pending)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists in the connection's current database."""
    # duckdb_tables()/duckdb_views() rather than information_schema.tables: 1.2 ms instead of 2.2 (the ledger asks
    # a few hundred times a night)
    return bool(scalar(con, "SELECT count(*) FROM (SELECT schema_name, table_name, database_name FROM duckdb_tables() "
                            "UNION ALL SELECT schema_name, view_name, database_name FROM duckdb_views()) "
                            "WHERE database_name = current_database() AND schema_name = ? AND table_name = ?",
                       [schema, table]))


# Half the machine, not DuckDB's 80 %: room for the Arrow tables the same process builds. A fixed 4 GB cap made
# the first night's full ledger at 100,000 members fail out of memory (DuckDB cannot spill every operator), so a
# smaller cap is an operator's choice (SEM_DUCKDB_MEMORY_LIMIT), measured first.
DEFAULT_MEMORY_LIMIT = "50%"


class WarehouseBusy(RuntimeError):
    """Another process held the warehouse for longer than the run may wait."""


_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>\S+) \(PID (?P<pid>\d+)\)")


def holder_of(error: duckdb.Error) -> str:
    """Who holds the lock, from DuckDB's message ("python3.11, PID 4242"), or "another process"."""
    match = _HOLDER.search(str(error))
    return f"{Path(match['program']).name}, PID {match['pid']}" if match else "another process"


def connect_warehouse(
    path: Path,
    read_only: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    *,
    lock_timeout_s: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse with DuckDB's memory capped at `memory_limit` (the resource passes
    SEM_DUCKDB_MEMORY_LIMIT), waiting with back-off (1 s, doubling, at most 30 s) up to `lock_timeout_s` while
    another process holds it; then `WarehouseBusy` says who holds it and what to do.

    DuckDB's own default (80 %) left too little beside the Arrow tables the same process builds: a 1 M-member
    retention pass was killed out of memory. Past its limit DuckDB spills to a temporary folder beside the file
    (`<file>.tmp`, inside the warehouse's 0700 folder).
    """
    waited, delay = 0.0, 1.0
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config={"memory_limit": memory_limit})
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            if waited >= lock_timeout_s:
                raise WarehouseBusy(
                    f"{path} is held by {holder_of(exc)} (waited {waited:.0f} s of {lock_timeout_s:.0f} s). The "
                    "warehouse is the pipeline's own file: close that program (an analyst reads "
                    "data/analytics.duckdb instead), or raise SEM_WAREHOUSE_LOCK_TIMEOUT, then run again."
                ) from exc
            pause = min(delay, 30.0, lock_timeout_s - waited)
            sleep(pause)
            waited, delay = waited + pause, delay * 2


def connect_memory(spill_dir: Path | None = None, memory_limit: str = DEFAULT_MEMORY_LIMIT
                   ) -> duckdb.DuckDBPyConnection:
    """An in-memory connection for work on files and Arrow tables (push-back's reads of the navigation logs,
    access bundles, tokens, the analysts' file), capped like the warehouse's. Past its cap it spills into
    `spill_dir`, created 0700, or, without one, fails: DuckDB's own default spills into `.tmp` under whatever the
    working directory is (the project folder, for a run started there), with the umask's modes, and lets memory
    grow to 80 % of the machine. Personal data never lands in a folder nobody chose."""
    spill = "" if spill_dir is None else str(private_dir(spill_dir))  # "": DuckDB spills nowhere
    return duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill})


@contextmanager
def scratch(shared: duckdb.DuckDBPyConnection | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for work on Arrow tables and files, closed after: a cursor of `shared` when the caller has one
    (the warehouse's: its temp tables and memory count against the one budget and spill folder the process already
    has), else `connect_memory()`. Two DuckDB instances each capped at the budget could together take twice it:
    under a 4 GB cap the first night's push-back held 3.8 GB beside the warehouse's 4 GB."""
    con = shared.cursor() if shared is not None else connect_memory()
    try:
        yield con
    finally:
        con.close()
