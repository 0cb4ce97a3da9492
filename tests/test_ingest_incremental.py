"""Incremental ingest of the SQL sources (change markers + key reconciliation): whatever changed at the source,
by its applications or by push-back, raw.<table> and its quarantine end as a full copy would leave them."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa

from assets.ingest import ingest_members
from pipelines.demo.changes import day_of_changes
from pipelines.identity import resolve_identities
from pipelines.ingest import SAFETY_MARGIN, SourceSchemaError, change_marker, ingest_sql_table, quarantine_fields
from pipelines.policy.load import load_policy
from pipelines.quality.checks import check_raw_table, raw_table_specs
from pipelines.refresh import ingest_all
from pipelines.rights.process import process_rights
from pipelines.sources.schema import SQL_SYSTEMS
from tests.conftest import TEST_AS_OF, core_context

POLICY = load_policy(Path("policies"))
MEMBERS = SQL_SYSTEMS["members"].tables["members"]
REQUESTS = SQL_SYSTEMS["members"].tables["rights_requests"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def source(request, sandbox):
    return sandbox if request.param == "sqlite" else request.getfixturevalue("pg_sandbox")


def _engines(source) -> dict[str, sa.Engine]:
    return {"members": sa.create_engine(source.members_url), "prospects": sa.create_engine(source.prospects_url)}


def _state(con: duckdb.DuckDBPyConnection, system: str, table: str) -> tuple[list, list]:
    """raw.<table> and its quarantine (but the time each row was first quarantined), sorted."""
    rows = con.execute(f'SELECT * FROM raw."{table}" ORDER BY ALL').fetchall()
    quarantined = con.execute(
        "SELECT record_key, reason, CAST(record AS VARCHAR), CAST(fix AS VARCHAR) FROM raw.quarantine "
        "WHERE system = ? AND table_name = ? ORDER BY ALL", [system, table]).fetchall()
    return rows, quarantined


def _full_copy(engine: sa.Engine, system: str, table: str) -> tuple[list, list]:
    with duckdb.connect() as con:
        ingest_sql_table(con, engine, system, SQL_SYSTEMS[system].tables[table], quarantine_fields(POLICY, table))
        return _state(con, system, table)


def _assert_like_full_copies(warehouse: Path, engines: dict[str, sa.Engine], systems=tuple(SQL_SYSTEMS)) -> None:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for system in systems:
            for table in SQL_SYSTEMS[system].sorted_tables:
                (rows, quarantined), (full_rows, full_quarantined) = (
                    _state(con, system, table.name), _full_copy(engines[system], system, table.name))
                # the differing rows only: a whole-table diff is unreadable
                assert set(rows) ^ set(full_rows) == set() and len(rows) == len(full_rows), table.name
                assert quarantined == full_quarantined, table.name


def _clock(offset: dt.timedelta = dt.timedelta()) -> str:
    return (dt.datetime.now(dt.UTC) + offset).strftime("%Y-%m-%d %H:%M:%S")


def _materialize_members(source, full: bool = False) -> dict[str, dict]:
    config = {"ops": {"ingest_members": {"config": {"full_reread": full}}}}
    result = dg.materialize([ingest_members], resources=source.resources(), run_config=config)
    assert result.success
    return {e.materialization.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_changed_new_deleted_skewed_and_unmarked_rows_end_as_a_full_copy(source):
    engines = _engines(source)
    first = _materialize_members(source)
    assert first["members"]["load"] == "full copy"
    with duckdb.connect(str(source.warehouse), read_only=True) as con:
        watermark = con.execute("SELECT watermark FROM raw.watermarks WHERE table_name = 'members'").fetchone()[0]
    skewed = (watermark - SAFETY_MARGIN / 2).strftime("%Y-%m-%d %H:%M:%S")  # written late, with an earlier time
    with engines["members"].begin() as con:
        last = con.execute(sa.select(sa.func.max(MEMBERS.c.member_id))).scalar_one()
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 5).values(city="Changed", updated_at=_clock()))
        con.execute(MEMBERS.insert().values(member_id=last + 1, last_name="New", city="Lyon", updated_at=_clock()))
        con.execute(MEMBERS.delete().where(MEMBERS.c.member_id == 6))
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 8).values(city="Skewed", updated_at=skewed))
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 9).values(city="Unmarked", updated_at=None))
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 10).values(birth_date="31/02/1999",
                                                                             updated_at=_clock()))
    second = _materialize_members(source)["members"]
    assert second["load"] == "incremental"
    assert (second["rows_new"], second["rows_deleted"]) == (1, 1)
    assert second["rows_changed"] >= 4 and second["rows_read"] < 20  # the changes, not the population
    _assert_like_full_copies(source.warehouse, engines, ("members",))
    with duckdb.connect(str(source.warehouse), read_only=True) as con:
        assert con.execute("SELECT reason FROM raw.quarantine WHERE table_name = 'members' AND record_key = '10'"
                           ).fetchone()[0] == "bad date in birth_date"

    with engines["members"].begin() as con:  # the malformed row fixed at the source
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 10).values(birth_date="1999-02-28",
                                                                             updated_at=_clock()))
    _materialize_members(source)
    _assert_like_full_copies(source.warehouse, engines, ("members",))
    with duckdb.connect(str(source.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.quarantine_resolved WHERE table_name = 'members' "
                           "AND record_key = '10'").fetchone()[0] == 1
    assert _materialize_members(source, full=True)["members"]["load"] == "full copy"
    _assert_like_full_copies(source.warehouse, engines, ("members",))


def test_rows_push_back_changed_are_mirrored_like_a_full_copy(sandbox):
    engines = _engines(sandbox)
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, sandbox.sources / "navigation", POLICY)
        resolve_identities(con, POLICY.datasets_file.identity)
        outcome = process_rights(con, core_context(sandbox.root, POLICY, sandbox.sources / "navigation"),
                                 members=engines["members"], prospects=engines["prospects"],
                                 now=dt.datetime.combine(TEST_AS_OF, dt.time(12)), as_of=TEST_AS_OF)
        assert outcome.decisions_confirmed > 0  # erasures, anonymisations, suppressions at the sources
    _assert_like_full_copies(sandbox.warehouse, engines)


_KILLED_INGEST = """
    import os, sys
    import duckdb, sqlalchemy as sa
    import pipelines.ingest as ingest
    from pipelines.policy.load import load_policy
    from pipelines.refresh import ingest_all

    real = ingest.load_typed

    def dying(con, source, **kw):  # killed inside the transaction that merges the rows and moves the watermark
        if kw["table"] == "members":
            con.create_function("die", lambda: os._exit(9), [], "BIGINT", side_effects=True)
            kw["also"] = [*kw["also"], ("SELECT die()", [])]
        return real(con, source, **kw)

    ingest.load_typed = dying
    members, prospects, navigation, warehouse = sys.argv[1:]
    engines = {"members": sa.create_engine(members), "prospects": sa.create_engine(prospects)}
    ingest_all(duckdb.connect(warehouse), engines, navigation, load_policy(ingest.Path("policies")))
"""


def test_a_run_killed_between_read_and_commit_is_caught_up_by_the_next(sandbox, tmp_path):
    engines = _engines(sandbox)
    navigation = sandbox.sources / "navigation"
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, navigation, POLICY)
        before = con.execute("SELECT * FROM raw.watermarks WHERE table_name = 'members'").fetchall()
    with engines["members"].begin() as con:
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 5).values(city="Changed", updated_at=_clock()))
        con.execute(MEMBERS.delete().where(MEMBERS.c.member_id == 6))
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED_INGEST))
    killed = subprocess.run([sys.executable, str(script), sandbox.members_url, sandbox.prospects_url,
                             str(navigation), str(sandbox.warehouse)], cwd=Path.cwd(), capture_output=True)
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    with duckdb.connect(str(sandbox.warehouse)) as con:
        assert con.execute("SELECT * FROM raw.watermarks WHERE table_name = 'members'").fetchall() == before
        assert con.execute("SELECT count(*) FROM raw.members WHERE member_id = 6").fetchone()[0] == 1
        ingest_all(con, engines, navigation, POLICY)
    _assert_like_full_copies(sandbox.warehouse, engines)


def test_a_table_without_marker_is_copied_whole_and_a_marker_is_policy_data():
    assert change_marker(POLICY, "campaigns") is None
    assert change_marker(POLICY, "members") == "updated_at"


def test_rows_the_rights_stage_changes_are_read_by_the_next_incremental_ingest_whatever_its_clock(source, tmp_path):
    """Push-back (erasures, anonymisations, restrictions, suppressions) and the rights pipeline's status
    mirroring (rights_requests.status, handled_at) stamp the rows they change with the source's own clock, not the
    time the stage was run with: a stage run with a `now` long before the last watermark is still read by the
    next night's incremental ingest, which reads only what changed; a request deleted at the source leaves raw."""
    engines = _engines(source)
    navigation = source.sources / "navigation"
    with engines["members"].begin() as con:  # the member system's last write: the watermark is its clock's now
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 5).values(city="Changed", updated_at=_clock()))
    with duckdb.connect(str(source.warehouse)) as con:
        ingest_all(con, engines, navigation, POLICY)
        watermark = con.execute("SELECT watermark FROM raw.watermarks WHERE table_name = 'members'").fetchone()[0]
    now = dt.datetime.combine(TEST_AS_OF, dt.time(12))
    assert now < watermark - SAFETY_MARGIN
    statuses = sa.select(REQUESTS.c.request_id, REQUESTS.c.status, REQUESTS.c.handled_at)
    with engines["members"].connect() as con:
        before = set(con.execute(statuses).all())
    # the rights stage runs on a copy of the warehouse: its own refresh re-reads what it wrote into the copy only
    stage = tmp_path / "stage.duckdb"
    shutil.copy(source.warehouse, stage)
    with duckdb.connect(str(stage)) as con:
        resolve_identities(con, POLICY.datasets_file.identity)
        outcome = process_rights(con, core_context(source.root, POLICY, navigation), members=engines["members"],
                                 prospects=engines["prospects"], now=now, as_of=TEST_AS_OF)
    assert outcome.decisions_confirmed > 0  # erasures, anonymisations, suppressions at the sources
    with engines["members"].begin() as con:
        gone = con.execute(sa.select(sa.func.min(REQUESTS.c.request_id))).scalar_one()
        con.execute(REQUESTS.delete().where(REQUESTS.c.request_id == gone))
        mirrored = {row for row in set(con.execute(statuses).all()) - before if row[0] != gone}
        total = con.execute(sa.select(sa.func.count()).select_from(REQUESTS)).scalar_one()
    assert mirrored  # requests decided, confirmed, answered: their status changed at the source

    with duckdb.connect(str(source.warehouse)) as con:
        night = ingest_sql_table(con, engines["members"], "members", REQUESTS,
                                 quarantine_fields(POLICY, "rights_requests"), marker="updated_at")
        assert (night.full, night.deleted) == (False, 1)
        assert len(mirrored) <= night.read < total  # the mirrored rows, not the table
        ingest_all(con, engines, navigation, POLICY)
    _assert_like_full_copies(source.warehouse, engines)


def _raw_check(con: duckdb.DuckDBPyConnection, table: str, engine: sa.Engine | None):
    return check_raw_table(con, next(s for s in raw_table_specs() if s.table == table), engine)


def test_raw_checks_look_at_the_rows_the_load_brought_in_and_keys_over_the_whole_table(sandbox):
    engines = _engines(sandbox)
    navigation = sandbox.sources / "navigation"
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, navigation, POLICY)
        everything = con.execute("SELECT count(*) FROM raw.members").fetchone()[0]
        assert _raw_check(con, "members", engines["members"]).row_count == everything
        ingest_all(con, engines, navigation, POLICY)  # a quiet night: nothing new to check
        quiet = _raw_check(con, "members", engines["members"])
        assert (quiet.row_count, quiet.success) == (0, True)
        assert _raw_check(con, "navigation_events", None).row_count == 0
    started = _clock()
    with engines["members"].begin() as con:
        con.execute(MEMBERS.update().where(MEMBERS.c.member_id == 5).values(email="jean dupont@gmail",
                                                                            updated_at=_clock()))
    day_of_changes(sandbox.sources, TEST_AS_OF, seed=3)
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, navigation, POLICY)
        members = _raw_check(con, "members", engines["members"])
        # the changed member, the day's new members and those whose membership ended
        assert members.row_count == con.execute("SELECT count(*) FROM raw.members WHERE updated_at >= ?",
                                                [started]).fetchone()[0] > 1
        assert {o.label: o.unexpected_count for o in members.failed} == {"email well formed": 1}
        events = _raw_check(con, "navigation_events", None)
        assert events.row_count == con.execute("SELECT count(*) FROM raw.navigation_events "
                                               "WHERE CAST(ts AS DATE) = ?", [TEST_AS_OF]).fetchone()[0] > 0
        # a duplicate key that the load brought in is found, though the other row of the pair is older
        con.execute("INSERT INTO raw.members SELECT * REPLACE (CAST(1 AS BIGINT) AS member_id) FROM raw.members "
                    "WHERE member_id = 5")
        con.execute("DELETE FROM raw.members WHERE member_id = 5 AND member_id <> 1")
        con.execute("INSERT INTO raw.ingest_scope VALUES ('members', 'members', 'keys', '1')")
        duplicated = _raw_check(con, "members", None)
        assert {o.label: o.unexpected_count for o in duplicated.failed}["member_id unique"] == 2


def test_a_source_lacking_the_declared_change_marker_is_refused_naming_table_column_and_fix(source, tmp_path):
    """A source that predates the change marker (rights_requests got `updated_at` late) is refused before
    anything is read, with the table, the column and the way out; the warehouse keeps what it had."""
    engine = _engines(source)["members"]
    with engine.begin() as db:
        db.execute(sa.text("ALTER TABLE rights_requests DROP COLUMN updated_at"))
    warehouse = tmp_path / "wh.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        with pytest.raises(SourceSchemaError) as refused:
            ingest_sql_table(con, engine, "members", REQUESTS, quarantine_fields(POLICY, "rights_requests"),
                             marker=change_marker(POLICY, "rights_requests"))
        assert "raw" not in {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    message = str(refused.value)
    assert "'rights_requests' has no column 'updated_at'" in message and "members source" in message
    assert "change marker policies/datasets.yaml declares" in message and "ADD COLUMN updated_at" in message


def test_a_source_lacking_a_declared_table_is_refused_naming_system_and_table(source, tmp_path):
    """A URL pointing at the wrong database (or a table not yet created) is refused before anything is read."""
    engine = _engines(source)["members"]
    with engine.begin() as db:
        db.execute(sa.text("DROP TABLE rights_requests"))
    with duckdb.connect(str(tmp_path / "wh.duckdb")) as con:
        with pytest.raises(SourceSchemaError) as refused:
            ingest_sql_table(con, engine, "members", REQUESTS, quarantine_fields(POLICY, "rights_requests"),
                             marker=change_marker(POLICY, "rights_requests"))
        assert "raw" not in {s for (s,) in con.execute("SELECT schema_name FROM duckdb_schemas()").fetchall()}
    assert "the members source has no table 'rights_requests'" in str(refused.value)
