"""Small DuckDB helpers shared by the stages."""

from __future__ import annotations

from typing import Any

import duckdb


def quote(name: str) -> str:
    """Quote an identifier for DuckDB SQL."""
    return '"' + name.replace('"', '""') + '"'


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """First column of the first row, reading the whole result (DuckDB 2 keeps unread results pending)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None
