"""Re-reading what push-back changed (pipelines/refresh.py): the nightly's rights stage leaves the ledger to the
retention step that follows it, and ends in the same warehouse as when it built the ledger itself."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import sqlalchemy as sa

from pipelines.identity import resolve_identities
from pipelines.policy.load import load_policy
from pipelines.refresh import ingest_all
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
