"""Environment settings an operator sets reach the connections they are meant for."""

import stat
from pathlib import Path

import duckdb
import pytest

from pipelines.duck import connect_scratch
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


def test_scratch_connections_are_capped_and_spill_into_a_private_folder(tmp_path: Path):
    """The analysts' file is built in an in-memory connection: past its cap, DuckDB must spill into a folder only
    the owner can read (its default is `.tmp` in the working directory, with the umask's modes)."""
    spill = tmp_path / "data" / ".analytics.duckdb.spill"
    with connect_scratch(spill, "1GB") as con:
        assert con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')"
                           ).fetchall()[0] == ("953.6 MiB", str(spill))
        # a table larger than the cap: it is built, its blocks offloaded into the private folder
        con.execute("SET memory_limit = '64MB'")
        con.execute("CREATE TEMP TABLE big AS SELECT x, md5(x::VARCHAR) AS h FROM range(3000000) t(x)")
        assert con.execute("SELECT count(*), sum(x) FROM big").fetchall()[0] == (3000000, sum(range(3000000)))
        files = [Path(p) for (p,) in con.execute("SELECT path FROM duckdb_temporary_files()").fetchall()]
        assert files and all(f.parent == spill for f in files)
        assert stat.S_IMODE(spill.stat().st_mode) == 0o700
