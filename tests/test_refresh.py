"""Re-reading what push-back changed (pipelines/refresh.py): the nightly's rights stage leaves the ledger to the
retention step that follows it, and ends in the same warehouse as when it built the ledger itself."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import sqlalchemy as sa

from pipelines.identity import resolve_identities
from pipelines.ingest import quarantine_fields
from pipelines.navigation import NAVIGATION_TABLES, ingest_navigation_table, mark_mirrored
from pipelines.policy.load import load_policy
from pipelines.policy.models import Policy
from pipelines.refresh import ingest_all, refresh_from_sources
from pipelines.retention.apply import apply_retention
from pipelines.retention.ledger import build_ledger
from pipelines.rights.process import process_rights
from pipelines.sources.schema import SQL_SYSTEMS
from tests.conftest import TEST_AS_OF, core_context
from tests.test_nightly import _duckdb_snapshot, _sources_snapshot

NOW = dt.datetime.combine(TEST_AS_OF, dt.time(12))


def _rights_then_ledger(root: Path, generated_sources: Path, refresh_ledger: bool) -> tuple[dict, dict]:
    """ingest -> identity -> rights (push-back and re-read) -> ledger, as the nightly orders them."""
    shutil.rmtree(root, ignore_errors=True)
    sources = root / "sources"
    shutil.copytree(generated_sources, sources)
    policy = load_policy(Path("policies"))
    engines = {s: sa.create_engine(f"sqlite:///{sources / (s + '.db')}") for s in SQL_SYSTEMS}
    with duckdb.connect(str(root / "warehouse.duckdb")) as con:
        ingest_all(con, engines, sources / "navigation", policy)
        resolve_identities(con, policy.datasets_file.identity)
        ctx = core_context(root, policy, sources / "navigation")
        outcome = process_rights(con, ctx, members=engines["members"], prospects=engines["prospects"], now=NOW,
                                 as_of=TEST_AS_OF, refresh_ledger=refresh_ledger)
        assert outcome.decisions_confirmed > 0  # push-back changed the sources: there was something to re-read
        build_ledger(con, policy, TEST_AS_OF)
    for engine in engines.values():
        engine.dispose()
    return _duckdb_snapshot(root / "warehouse.duckdb"), _sources_snapshot(sources)


def test_leaving_the_ledger_to_the_step_after_gives_the_same_warehouse_and_sources(tmp_path, generated_sources):
    # Same folder both times: the warehouse's file manifest names the navigation files by path.
    built_twice = _rights_then_ledger(tmp_path / "run", generated_sources, refresh_ledger=True)
    built_once = _rights_then_ledger(tmp_path / "run", generated_sources, refresh_ledger=False)
    (warehouse_once, sources_once), (warehouse_twice, sources_twice) = built_once, built_twice
    # The file manifest holds the modification times push-back's rewrites of the navigation log set: its rows
    # are compared by count; every other table by content.
    assert warehouse_once.pop("raw.ingested_files")[0] == warehouse_twice.pop("raw.ingested_files")[0]
    assert warehouse_once == warehouse_twice
    assert sources_once == sources_twice


def _navigation_rows(warehouse: Path) -> dict[str, list[tuple]]:
    """The navigation tables and their quarantined rows (times of quarantine left out), sorted."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        found = {table: sorted(con.execute(f"SELECT * FROM raw.{table}").fetchall(), key=repr)
                 for table in NAVIGATION_TABLES}
        found["quarantine"] = sorted(con.execute(
            "SELECT table_name, record_key, reason, CAST(record AS VARCHAR) FROM raw.quarantine "
            "WHERE system = 'navigation'").fetchall(), key=repr)
    return found


def _ingested(sandbox) -> tuple[Policy, Path, dict[str, sa.Engine]]:
    """The sandbox's sources copied into its warehouse: the policy, the navigation log and the SQL engines."""
    policy = load_policy(Path("policies"))
    navigation = sandbox.sources / "navigation"
    engines = {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}") for s in SQL_SYSTEMS}
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, navigation, policy)
    return policy, navigation, engines


def test_navigation_files_push_back_rewrote_are_recorded_not_read_again_and_hold_what_a_fresh_read_finds(
        sandbox, tmp_path):
    policy, navigation, engines = _ingested(sandbox)
    with duckdb.connect(str(sandbox.warehouse)) as con:
        resolve_identities(con, policy.datasets_file.identity)
        build_ledger(con, policy, TEST_AS_OF)
        outcome = apply_retention(con, core_context(sandbox.root, policy, navigation), TEST_AS_OF,
                                  members=engines["members"], prospects=engines["prospects"])
        assert not outcome.decisions_failed
        refresh_from_sources(con, outcome.touched, engines=engines, navigation_dir=navigation, policy=policy,
                             as_of=TEST_AS_OF)
        # the first night's backlog rewrote day files, recorded as rewritten without reading them again
        assert len(outcome.mirrored) > 10
        # nothing left for the next ingest to read
        assert all(ingest_navigation_table(con, navigation, table).replaced_files == () for table in NAVIGATION_TABLES)
    for engine in engines.values():
        engine.dispose()
    assert _navigation_rows(sandbox.warehouse) == _navigation_rows(_fresh_read(navigation, policy, tmp_path))


def _fresh_read(navigation: Path, policy: Policy, folder: Path) -> Path:
    """A new warehouse holding only the navigation log as it now is."""
    fresh = folder / "fresh.duckdb"
    with duckdb.connect(str(fresh)) as con:
        for table in NAVIGATION_TABLES:
            ingest_navigation_table(con, navigation, table, fields=quarantine_fields(policy, table))
    return fresh


def test_navigation_files_a_rights_erasure_rewrote_are_recorded_not_read_again_and_hold_what_a_fresh_read_finds(
        sandbox, tmp_path):
    policy, navigation, engines = _ingested(sandbox)
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        # a member one of whose page views was set aside (no visitor id), and the two members with most page views
        set_aside, set_aside_file = con.execute(
            "SELECT CAST(record->>'member_id' AS BIGINT), record->>'source_file' FROM raw.quarantine "
            "WHERE system = 'navigation' AND table_name = 'navigation_events' AND record->>'member_id' IS NOT NULL "
            "ORDER BY 1 LIMIT 1").fetchall()[0]
        viewers = [m for (m,) in con.execute(
            "SELECT member_id FROM raw.navigation_events WHERE member_id IS NOT NULL AND member_id <> ? "
            "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 2", [set_aside]).fetchall()]
    with engines["members"].begin() as src:
        for request_id, member in enumerate([set_aside, *viewers], start=9801):
            src.execute(sa.text(  # stamped with its change marker, as the source does
                "INSERT INTO rights_requests (request_id, member_id, request_type, received_at, identity_verified_at, "
                "status, updated_at) VALUES (:r, :m, 'erasure', :at, :at, 'received', :at)"),
                {"r": request_id, "m": member, "at": str(NOW - dt.timedelta(hours=1))})
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, navigation, policy)
        resolve_identities(con, policy.datasets_file.identity)
        outcome = process_rights(con, core_context(sandbox.root, policy, navigation), members=engines["members"],
                                 prospects=engines["prospects"], now=NOW, as_of=TEST_AS_OF)
        assert not outcome.decisions_failed
        # carried out for all three (one is left to a human as well, for records near the person)
        assert con.execute("SELECT count(*) FROM rights.decisions WHERE request_id >= 9801 AND status = 'applied'"
                           ).fetchall() == [(3,)]
        # the erased people's day files were rewritten and recorded as such, but for the one whose set-aside row
        # went: read again, so its quarantine copy goes too
        assert len(outcome.mirrored) > 10 and set_aside_file not in outcome.mirrored
        assert all(ingest_navigation_table(con, navigation, table).replaced_files == () for table in NAVIGATION_TABLES)
        assert con.execute("SELECT count(*) FROM raw.quarantine WHERE record->>'member_id' = ?",
                           [str(set_aside)]).fetchall() == [(0,)]
    for engine in engines.values():
        engine.dispose()
    assert _navigation_rows(sandbox.warehouse) == _navigation_rows(_fresh_read(navigation, policy, tmp_path))


def test_only_files_the_warehouse_had_as_they_were_before_the_rewrite_are_recorded(tmp_path):
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        con.execute("CREATE SCHEMA raw; CREATE TABLE raw.ingested_files (path VARCHAR, size BIGINT, mtime_ns BIGINT, "
                    "ingested_at TIMESTAMP)")
        con.execute("INSERT INTO raw.ingested_files VALUES ('a', 10, 1, NULL), ('b', 10, 1, NULL), "
                    "('c', 10, 1, NULL)")
        rewritten = {"a": ((10, 1), (8, 2)),  # as ingested, then rewritten: recorded at its new size and time
                     "b": ((12, 5), (9, 6)),  # grew at the source since it was ingested: left to the next read
                     "c": ((10, 1), (7, 2)),  # holds quarantined rows: left to the next read
                     "d": ((10, 1), (7, 2))}  # never ingested
        assert mark_mirrored(con, rewritten, skip={"c"}) == ["a"]
        assert con.execute("SELECT path, size, mtime_ns FROM raw.ingested_files ORDER BY path").fetchall() == [
            ("a", 8, 2), ("b", 10, 1), ("c", 10, 1)]

