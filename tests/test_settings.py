"""Environment settings an operator sets reach the connections they are meant for."""

import ast
import stat
from pathlib import Path

import duckdb
import pytest

from pipelines.duck import connect_memory, connect_warehouse, scratch
from pipelines.orchestration.resources import WarehouseResource
from pipelines.retention.ledger import SLICE_RECORDS
from tests.conftest import parse_source


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


def test_the_ledger_slice_size_an_operator_sets_reaches_the_ledger_steps(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SEM_LEDGER_SLICE_RECORDS", raising=False)
    assert WarehouseResource().resolved_ledger_slice_records == SLICE_RECORDS
    monkeypatch.setenv("SEM_LEDGER_SLICE_RECORDS", "500000")
    assert WarehouseResource().resolved_ledger_slice_records == 500_000
    assert WarehouseResource(ledger_slice_records=1000).resolved_ledger_slice_records == 1000


def test_scratch_connections_are_capped_and_spill_into_a_private_folder(tmp_path: Path):
    """The analysts' file is built in an in-memory connection: past its cap, DuckDB must spill into a folder only
    the owner can read (its default is `.tmp` in the working directory, with the umask's modes)."""
    spill = tmp_path / "data" / ".analytics.duckdb.spill"
    with connect_memory(spill, "1GB") as con:
        assert con.execute("SELECT current_setting('memory_limit'), current_setting('temp_directory')"
                           ).fetchall()[0] == ("953.6 MiB", str(spill))
        # a table larger than the cap: it is built, its blocks offloaded into the private folder
        con.execute("SET memory_limit = '64MB'")
        con.execute("CREATE TEMP TABLE big AS SELECT x, md5(x::VARCHAR) AS h FROM range(3000000) t(x)")
        assert con.execute("SELECT count(*), sum(x) FROM big").fetchall()[0] == (3000000, sum(range(3000000)))
        files = [Path(p) for (p,) in con.execute("SELECT path FROM duckdb_temporary_files()").fetchall()]
        assert files and all(f.parent == spill for f in files)
        assert stat.S_IMODE(spill.stat().st_mode) == 0o700


def test_in_memory_work_past_its_cap_fails_instead_of_spilling_into_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Push-back's reads of the navigation logs, access bundles and tokens run in in-memory connections with no
    spill folder: DuckDB's default would write their rows into `.tmp` under the working directory."""
    monkeypatch.chdir(tmp_path)
    with connect_memory(memory_limit="64MB") as con, pytest.raises(duckdb.OutOfMemoryException):
        con.execute("CREATE TEMP TABLE big AS SELECT x, md5(x::VARCHAR) AS h FROM range(3000000) t(x)")
    assert list(tmp_path.iterdir()) == []
    with duckdb.connect(config={"memory_limit": "64MB"}) as plain:  # what connect_memory is there to prevent
        plain.execute("CREATE TEMP TABLE big AS SELECT x, md5(x::VARCHAR) AS h FROM range(3000000) t(x)")
        assert (tmp_path / ".tmp").exists()  # (DuckDB removes it on close)


def test_scratch_work_beside_the_warehouse_shares_its_budget_and_never_lands_in_the_file(tmp_path: Path):
    """Push-back during the retention stage works in a cursor of the warehouse connection: one DuckDB memory budget
    for the process (a second instance at the same cap could take as much again), its spill folder, and temp
    tables that vanish with the cursor, never tables in the warehouse file."""
    path = tmp_path / "warehouse.duckdb"
    with connect_warehouse(path, memory_limit="64MB") as warehouse:
        with scratch(warehouse) as con:
            assert con.execute("SELECT current_setting('memory_limit'), current_database()").fetchall()[0] == (
                "61.0 MiB", "warehouse")
            # more than the cap: spilled into the warehouse's own temp folder, not a second budget
            con.execute("CREATE TEMP TABLE big AS SELECT x, md5(x::VARCHAR) AS h FROM range(3000000) t(x)")
            assert con.execute("SELECT count(*) FROM big").fetchall()[0][0] == 3000000
            files = [Path(p) for (p,) in con.execute("SELECT path FROM duckdb_temporary_files()").fetchall()]
            assert files and all(f.parent == Path(f"{path}.tmp") for f in files)
        assert warehouse.execute("SELECT count(*) FROM duckdb_tables() WHERE NOT temporary").fetchall()[0][0] == 0
        assert warehouse.execute("SELECT count(*) FROM duckdb_tables()").fetchall()[0][0] == 0  # the cursor's gone


def test_the_core_opens_in_memory_connections_only_through_connect_memory():
    root = Path(__file__).resolve().parents[1] / "pipelines"
    bare = []
    for path in root.rglob("*.py"):
        if path.name == "duck.py" or "demo" in path.parts:  # the generator's data is synthetic
            continue
        for node in ast.walk(parse_source(path)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "duckdb"
                    and not node.args and not any(k.arg == "database" for k in node.keywords)):
                bare.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert bare == []
