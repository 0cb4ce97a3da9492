"""Environment settings an operator sets reach the connections they are meant for."""

from pathlib import Path

import duckdb
import pytest

from pipelines.orchestration.resources import WarehouseResource


def _memory_limit(warehouse: WarehouseResource) -> str:
    with warehouse.connect() as con:
        return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_warehouse_connections_cap_duckdb_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    warehouse = WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("SEM_DUCKDB_MEMORY_LIMIT", "1GB")
    assert _memory_limit(warehouse) == "953.6 MiB"  # DuckDB shows 10^9 bytes in binary units
    monkeypatch.delenv("SEM_DUCKDB_MEMORY_LIMIT")
    default = _memory_limit(warehouse)
    with duckdb.connect() as plain:
        duckdb_default = plain.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert default != duckdb_default  # half the machine, not DuckDB's 80 %
