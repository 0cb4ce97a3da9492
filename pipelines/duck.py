"""Small DuckDB helpers shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """First column of the first row, reading the whole result (DuckDB 2 keeps unread results pending)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def connect_warehouse(path: Path, read_only: bool = False, memory_limit: str = "50%") -> duckdb.DuckDBPyConnection:
    """Open the warehouse with DuckDB's memory capped at `memory_limit` (the resource passes SEM_DUCKDB_MEMORY_LIMIT).

    DuckDB's own default (80 %) left too little beside the Arrow tables the same process builds: a 1 M-member
    retention pass was killed out of memory. Past its limit DuckDB spills to a temporary folder beside the file.
    """
    return duckdb.connect(str(path), read_only=read_only, config={"memory_limit": memory_limit})
