"""A corrupt, truncated or wrongly shaped navigation day file is set aside with its path and reason; every other
day still goes in, the file is read once it is fixed, and the asset check names it."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from assets.ingest import navigation_events, navigation_files_readable
from pipelines.navigation import ingest_navigation_table
from pipelines.orchestration.resources import NavigationSourceResource, PoliciesResource, WarehouseResource
from tests.test_pushback import write_navigation

GOOD, CORRUPT, TRUNCATED, MISSING, EXTRA = (f"2026-10-0{d}" for d in range(1, 6))


def _file(root: Path, day: str) -> Path:
    return root / "events" / f"day={day}" / "part-0.parquet"


def _damaged_log(root: Path) -> None:
    write_navigation(root, days=5, per_day=10)
    _file(root, CORRUPT).write_bytes(b"this is not parquet at all")
    good = _file(root, TRUNCATED).read_bytes()
    _file(root, TRUNCATED).write_bytes(good[: len(good) // 2])
    pq.write_table(pq.read_table(_file(root, MISSING)).drop_columns(["url"]), _file(root, MISSING))
    table = pq.read_table(_file(root, EXTRA))
    pq.write_table(table.append_column("shoe_size", table["event_id"]), _file(root, EXTRA))


def _quarantined(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT path, reason FROM raw.quarantine_files").fetchall())


def test_bad_files_are_set_aside_with_their_reason_and_the_other_days_go_in(tmp_path):
    root = tmp_path / "navigation"
    _damaged_log(root)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        result = ingest_navigation_table(con, root, "navigation_events")
        assert result.rows == 10  # the one good day
        bad = _quarantined(con)
        assert set(bad) == {str(_file(root, d)) for d in (CORRUPT, TRUNCATED, MISSING, EXTRA)}
        assert "not a readable Parquet file" in bad[str(_file(root, CORRUPT))]
        assert "not a readable Parquet file" in bad[str(_file(root, TRUNCATED))]
        assert bad[str(_file(root, MISSING))] == f"{_file(root, MISSING)}: missing column url"
        assert bad[str(_file(root, EXTRA))] == f"{_file(root, EXTRA)}: unexpected column shoe_size"
        assert result.quarantined_files == bad

        # Unchanged bad files stay aside; a fixed file is read on the next run and leaves the list.
        write_navigation(tmp_path / "fresh", days=2, per_day=10)
        _file(root, CORRUPT).write_bytes(_file(tmp_path / "fresh", CORRUPT).read_bytes())
        again = ingest_navigation_table(con, root, "navigation_events")
        assert again.rows == 20
        assert str(_file(root, CORRUPT)) not in _quarantined(con) and len(_quarantined(con)) == 3


def test_the_asset_run_succeeds_and_its_check_lists_the_bad_files(tmp_path):
    root = tmp_path / "navigation"
    _damaged_log(root)
    result = dg.materialize(
        [navigation_events, navigation_files_readable], partition_key=GOOD,
        resources={"warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
                   "navigation": NavigationSourceResource(path=str(root)), "policies": PoliciesResource()},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("raw__navigation_events")[-1].metadata
    assert len(metadata["files_quarantined"].value) == 4
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["files_quarantined"].value == 4
    assert str(_file(root, MISSING)) in check.metadata["files"].value


def test_a_log_read_from_a_new_folder_replaces_the_rows_of_the_old_one(tmp_path):
    """The log moved (remounted, a copied site): its files under the new folder are the same files, so the rows
    and quarantined rows read from the old folder go, and no page view is counted twice."""
    old, new = tmp_path / "old" / "navigation", tmp_path / "new" / "navigation"
    write_navigation(old, days=3, per_day=10)
    day = pq.read_table(_file(old, GOOD))
    ts = day["ts"].to_pylist()
    ts[0] = None  # one malformed page view, quarantined
    pq.write_table(day.set_column(day.schema.get_field_index("ts"), "ts", pa.array(ts, day["ts"].type)),
                   _file(old, GOOD))
    _file(old, CORRUPT).write_bytes(b"this is not parquet at all")  # a bad file, set aside
    shutil.copytree(old, new)

    def state(con: duckdb.DuckDBPyConnection) -> tuple:
        return (con.execute("SELECT event_id, source_file FROM raw.navigation_events ORDER BY ALL").fetchall(),
                con.execute("SELECT record_key, record->>'source_file' FROM raw.quarantine ORDER BY ALL").fetchall())

    with duckdb.connect(str(tmp_path / "moved.duckdb")) as con:
        ingest_navigation_table(con, old, "navigation_events")
        rows, quarantined = state(con)
        assert len(rows) == 19 and len(quarantined) == 1 and list(_quarantined(con)) == [str(_file(old, CORRUPT))]
        ingest_navigation_table(con, new, "navigation_events")
        moved = state(con)
        # the bad file is listed where the log is now, once (the asset check names what to fix)
        assert list(_quarantined(con)) == [str(_file(new, CORRUPT))]
        files = {p for (p,) in con.execute("SELECT path FROM raw.ingested_files").fetchall()}
    with duckdb.connect(str(tmp_path / "fresh.duckdb")) as con:
        ingest_navigation_table(con, new, "navigation_events")
        assert moved == state(con)  # as if the log had always been there
    assert all(str(new) in f for f in files) and len(files) == 2  # the bad file is read again once it changes
