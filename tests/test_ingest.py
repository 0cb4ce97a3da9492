"""Ingestion and identity resolution, as real Dagster materialisations over generated SQLite / PostgreSQL sources."""

import sqlite3

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from assets.identity import person_links
from assets.ingest import cookie_consents, ingest_members, ingest_prospects, navigation_events
from pipelines.normalise import normalise_email
from pipelines.sources.schema import member_metadata, prospect_metadata

INGEST = [ingest_members, ingest_prospects, navigation_events, cookie_consents, person_links]


def _materialize(sandbox) -> dg.ExecuteInProcessResult:
    result = dg.materialize(INGEST, resources=sandbox.resources())
    assert result.success
    return result


def _source_counts(sandbox) -> dict[str, int]:
    counts = {}
    for db, metadata in (("members.db", member_metadata), ("prospects.db", prospect_metadata)):
        with sqlite3.connect(sandbox.sources / db) as con:
            for table in metadata.sorted_tables:
                counts[table.name] = con.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0]
    return counts


def _row_count_metadata(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    return {
        m.asset_key.path[-1]: m.metadata["dagster/row_count"].value
        for m in result.get_asset_materialization_events()
        for m in [m.materialization]
        if "dagster/row_count" in m.metadata
    }


def test_every_source_row_is_either_in_raw_or_quarantined_with_a_reason(sandbox):
    result = _materialize(sandbox)
    source = _source_counts(sandbox)
    reported = _row_count_metadata(result)
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        quarantined = dict(con.execute("SELECT table_name, count(*) FROM raw.quarantine GROUP BY 1").fetchall())
        for table, n in source.items():
            raw = con.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0]
            assert raw + quarantined.get(table, 0) == n, table
            assert reported[table] == raw
        reasons = [r for (r,) in con.execute("SELECT DISTINCT reason FROM raw.quarantine").fetchall()]
        birth_type = con.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'members' AND column_name = 'birth_date'"
        ).fetchone()[0]
    assert birth_type == "DATE"
    assert any("bad date in birth_date" in r for r in reasons)
    assert any("missing member_id" in r for r in reasons)
    assert any("missing visitor_id" in r for r in reasons)


def test_navigation_ingest_reads_only_new_or_rewritten_day_files(sandbox):
    _materialize(sandbox)
    day_files = sorted((sandbox.sources / "navigation" / "events").rglob("*.parquet"))
    victim = day_files[len(day_files) // 2]
    table = pq.read_table(victim)
    pq.write_table(table.slice(0, 1), victim)  # a push-back-style rewrite keeps one event of that day

    result = dg.materialize([navigation_events], resources=sandbox.resources())
    assert result.success
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        from_victim = con.execute(
            "SELECT count(*) FROM raw.navigation_events WHERE source_file = ?", [str(victim)]
        ).fetchone()[0]
        total = con.execute("SELECT count(*) FROM raw.navigation_events").fetchone()[0]
        in_files = sum(pq.read_metadata(f).num_rows for f in day_files)
        quarantined = con.execute(
            "SELECT count(*) FROM raw.quarantine WHERE table_name = 'navigation_events'"
        ).fetchone()[0]
    assert from_victim == 1 - (1 if table.slice(0, 1).column("visitor_id")[0].as_py() is None else 0)
    assert total + quarantined == in_files


def _days(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Partition → metadata of every navigation_events materialisation a run recorded."""
    return {
        e.materialization.partition: e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == navigation_events.key
    }


def test_a_day_run_rereads_its_day_and_records_every_changed_day_on_its_own_partition(sandbox):
    events_dir = sandbox.sources / "navigation" / "events"
    day_dirs = sorted(events_dir.iterdir())
    days = [d.name.removeprefix("day=") for d in day_dirs]
    last, rewritten, removed = days[-1], days[len(days) // 2], days[len(days) // 3]

    def run() -> dict[str, dict]:
        result = dg.materialize([navigation_events], resources=sandbox.resources(), partition_key=last)
        assert result.success
        return _days(result)

    first = run()  # empty warehouse: every day of the log is brought in, each recorded on its own day
    assert set(first) == set(days)
    assert first[last]["days_caught_up"].value == len(days) - 1
    assert first[rewritten]["ingested_as"].value == "caught up"

    second = run()  # in sync: only the run's own day, read again
    assert set(second) == {last}
    assert second[last]["days_caught_up"].value == 0
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        in_warehouse = con.execute(
            "SELECT count(*) FROM raw.navigation_events WHERE source_file LIKE ?", [f"%/day={last}/%"]
        ).fetchone()[0]
    assert second[last]["dagster/row_count"].value == in_warehouse > 0

    # A backfill of a range of days from the UI is one run (single-run backfill policy) re-reading them.
    backfill = dg.materialize([navigation_events], resources=sandbox.resources(), tags={
        "dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[2],
    })
    assert backfill.success and set(_days(backfill)) == set(days[:3])

    victim = next((events_dir / f"day={rewritten}").glob("*.parquet"))
    pq.write_table(pq.read_table(victim).slice(0, 1), victim)
    for f in (events_dir / f"day={removed}").glob("*.parquet"):
        f.unlink()
    third = run()
    assert set(third) == {last, rewritten, removed}
    assert third[removed]["dagster/row_count"].value == 0
    assert third[removed]["day_file"].value.startswith("absent")
    assert third[rewritten]["dagster/row_count"].value + third[rewritten]["quarantined_in_day"].value == 1
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        left = con.execute(
            "SELECT count(*) FROM raw.navigation_events WHERE source_file LIKE ?", [f"%/day={removed}/%"]
        ).fetchone()[0]
    assert left == 0


def test_identity_links_a_person_across_member_prospect_and_visitor_records(sandbox):
    _materialize(sandbox)
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        members = con.execute("SELECT member_id, email FROM raw.members").fetchall()
        prospects = con.execute("SELECT prospect_id, email FROM raw.prospects").fetchall()
        links = con.execute("SELECT person_id, node_type, node_value FROM identity.person_links").fetchall()
        logged_in = con.execute(
            "SELECT DISTINCT visitor_id, member_id FROM raw.navigation_events WHERE member_id IS NOT NULL LIMIT 50"
        ).fetchall()
    emails = [normalise_email(e) for _, e in members]
    # an address several members hold (a shared mailbox) joins no one: identity flags it instead
    member_emails = {normalise_email(e): mid for mid, e in members if normalise_email(e)
                     and emails.count(normalise_email(e)) == 1}
    shared = [(pid, member_emails[normalise_email(e)]) for pid, e in prospects if normalise_email(e) in member_emails]
    person = {(t, v): p for p, t, v in links}
    assert shared, "the generator makes some prospects become members"
    for prospect_id, member_id in shared:
        assert person[("prospect", str(prospect_id))] == person[("member", str(member_id))]
    assert logged_in
    for visitor_id, member_id in logged_in:
        assert person[("visitor", visitor_id)] == person[("member", str(member_id))]
    assert all("@" not in p and "+" not in p for p in set(person.values())), "person ids carry no identifier"


def test_ingest_twice_gives_the_same_warehouse(sandbox):
    _materialize(sandbox)
    snapshot = "SELECT count(*), sum(hash(m)) FROM raw.members m"
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        first = con.execute(snapshot).fetchone(), con.execute("SELECT count(*) FROM raw.quarantine").fetchone()
    _materialize(sandbox)
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        second = con.execute(snapshot).fetchone(), con.execute("SELECT count(*) FROM raw.quarantine").fetchone()
    assert first == second


@pytest.mark.postgres
def test_postgresql_sources_ingest_like_sqlite(sandbox, pg_sandbox, tmp_path):
    sqlite_result = _materialize(sandbox)
    expected = _row_count_metadata(sqlite_result)
    pg_sandbox.root = tmp_path / "pg"
    pg_sandbox.root.mkdir()
    (pg_sandbox.root / "sources").symlink_to(sandbox.sources, target_is_directory=True)
    pg_result = _materialize(pg_sandbox)
    assert _row_count_metadata(pg_result) == expected
    with duckdb.connect(str(pg_sandbox.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT reason) FROM raw.quarantine").fetchone()[0] >= 3
