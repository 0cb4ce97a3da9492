"""A warehouse held by another process: the run waits with back-off, then fails saying who holds it and what to
do; once the holder lets go, the wait ends and the connection opens."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from pipelines.duck import WarehouseBusy, connect_warehouse


def _hold(path: Path, read_only: bool) -> subprocess.Popen:
    """Another process (an analyst's session) holding the file until its stdin closes."""
    script = textwrap.dedent(f"""
        import duckdb, sys
        con = duckdb.connect({str(path)!r}, read_only={read_only})
        print("holding", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    return path


def test_a_held_warehouse_is_waited_for_then_refused_naming_the_holder(warehouse):
    holder = _hold(warehouse, read_only=True)
    pauses: list[float] = []
    try:
        with pytest.raises(WarehouseBusy) as err:
            connect_warehouse(warehouse, lock_timeout_s=10, sleep=pauses.append)
    finally:
        holder.communicate("")
    assert pauses == [1, 2, 4, 3]  # back-off, doubling, cut at the limit
    message = str(err.value)
    assert f"PID {holder.pid}" in message and "python" in message
    assert "data/analytics.duckdb" in message and "SEM_WAREHOUSE_LOCK_TIMEOUT" in message


def test_the_wait_ends_when_the_holder_lets_go(warehouse):
    holder = _hold(warehouse, read_only=True)
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        holder.communicate("")  # the analyst closes the session during the first pause

    con = connect_warehouse(warehouse, lock_timeout_s=60, sleep=pause)
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    assert pauses == [1]


def test_without_a_wait_the_refusal_is_immediate(warehouse):
    holder = _hold(warehouse, read_only=False)
    try:
        with pytest.raises(WarehouseBusy, match="waited 0 s"):
            connect_warehouse(warehouse, read_only=True, sleep=lambda s: pytest.fail("must not wait"))
    finally:
        holder.communicate("")
