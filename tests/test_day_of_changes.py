"""A day of changes (pipelines/demo/changes.py): what the bench's following nights ingest, well-formed and dated."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.demo.changes import day_of_changes, verified_requests
from pipelines.sources.schema import NAVIGATION_EVENT_SCHEMA
from tests.conftest import TEST_AS_OF


def _one(path: Path, sql: str) -> object:
    with closing(sqlite3.connect(path)) as con:
        return con.execute(sql).fetchone()[0]


def test_a_day_of_changes_touches_each_source_on_that_day_and_ingests_without_quarantine(
        tmp_path, generated_sources):
    from pipelines.orchestration.resources import SqlSourceResource
    from pipelines.orchestration.settings import PROJECT_ROOT
    from pipelines.policy.load import load_policy
    from pipelines.refresh import ingest_all

    sources = tmp_path / "sources"
    shutil.copytree(generated_sources, sources)
    day = TEST_AS_OF
    counts = day_of_changes(sources, day, seed=3)
    members, prospects = sources / "members.db", sources / "prospects.db"
    text = day.isoformat()
    assert _one(members, f"SELECT count(*) FROM members WHERE created_at LIKE '{text}%'") == counts["members"] >= 1
    assert _one(members, f"SELECT count(*) FROM contracts WHERE start_date = '{text}' AND end_date IS NULL") \
        == counts["members"]
    assert _one(members, f"SELECT count(*) FROM contracts WHERE end_date = '{text}'") == counts["memberships_ended"]
    assert _one(members, f"SELECT count(*) FROM rights_requests WHERE identity_verified_at LIKE '{text}%'") \
        == counts["rights_requests"]
    assert _one(prospects, f"SELECT count(*) FROM prospects WHERE collected_at LIKE '{text}%'") \
        == counts["prospects_collected"]
    events = pq.read_table(sources / "navigation" / "events" / f"day={text}")
    assert events.num_rows == counts["navigation_events"]
    assert events.select(NAVIGATION_EVENT_SCHEMA.names).schema.names == NAVIGATION_EVENT_SCHEMA.names
    assert {d.isoformat() for d in pc.unique(pc.cast(events["ts"], "date32")).to_pylist()} == {text}

    # The same day again on a fresh copy gives the same changes.
    again = tmp_path / "again"
    shutil.copytree(generated_sources, again)
    assert day_of_changes(again, day, seed=3) == counts
    assert verified_requests(sources, day + dt.timedelta(days=1), 5) != []

    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        engines = {s: SqlSourceResource(system=s, url=f"sqlite:///{sources / (s + '.db')}").engine()
                   for s in ("members", "prospects")}
        ingest_all(con, engines, sources / "navigation", load_policy(PROJECT_ROOT / "policies"))
        quarantined_today = con.execute(
            "SELECT count(*) FROM raw.quarantine WHERE record::VARCHAR LIKE ?", [f"%{text}%"]).fetchone()[0]
        assert quarantined_today == 0
        assert con.execute("SELECT count(*) FROM raw.navigation_events WHERE CAST(ts AS DATE) = ?",
                           [day]).fetchone()[0] == counts["navigation_events"]
