"""Rights decisions survive real failures: a prospecting database locked by another connection, a
PostgreSQL server stopped in the middle of push-back, a damaged audit log. Each run leaves the decision
pending with its recorded targets and nothing unaudited; the next plain run finishes it, even though the
person no longer resolves through identity, and ends in the state of an uninterrupted run with exactly one
"decided" and one "applied" audit entry per decision."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

import pipelines.pushback as pushback
from pipelines.audit import AuditLog, AuditLogError, verify
from pipelines.policy.load import load_policy
from pipelines.pushback.notices import read_notices
from pipelines.sources.schema import SQL_SYSTEMS
from pipelines.sources.throwaway_pg import find_pg_bin, start_cluster
from tests.conftest import TEST_KEY_HEX
from tests.test_refresh import _fresh_read, _navigation_rows
from tests.test_rights import World, _copy_sql_sources

# wall-clock bookkeeping of the sources, not part of what a run decides
SKIPPED_TABLES = ("privacy_decision_staging", "privacy_decision_effects")


def _plain(row: tuple) -> str:
    """A row as SQLite and PostgreSQL both give it (booleans as 0/1, dates and times as text)."""
    return repr(tuple(int(v) if isinstance(v, bool) else v if v is None or isinstance(v, int | float | str)
                      else str(v) for v in row))


def fingerprint(world: World) -> dict[str, object]:
    """Everything a rights run changes: the three sources, the warehouse's rights, raw, archive and identity
    tables, and the art. 19 notices (not raw.ingest_scope: what the last load read, for the quality checks, is
    bookkeeping that differs between a run and its re-run by design; nor the sources' `updated_at` markers)."""
    print_ = {}
    for system, engine in world.engines.items():
        tables = sa.inspect(engine).get_table_names()
        with engine.connect() as con:
            for table in sorted(set(tables) - set(SKIPPED_TABLES)):
                # change markers are the source's clock when push-back ran: a re-run stamps its own time
                marked = [c["name"] for c in sa.inspect(engine).get_columns(table) if c["name"] != "updated_at"]
                columns = ("decision_id, table_name, rows_affected" if table == "privacy_applied_decisions"
                           else ", ".join(marked))
                rows = con.execute(sa.text(f"SELECT {columns} FROM {table}")).fetchall()
                print_[f"{system}.{table}"] = sorted(map(_plain, rows))
    with duckdb.connect() as con:
        for folder in ("events", "consents"):
            print_[folder] = sorted(map(repr, con.sql(
                f"SELECT * FROM read_parquet('{world.navigation / folder}/**/*.parquet', hive_partitioning = false)"
            ).fetchall()))
    for sql in ("SELECT * EXCLUDE (state_changed_at) FROM rights.requests",
                "SELECT * EXCLUDE (decided_at, closed_at) FROM rights.decisions",
                "SELECT * FROM rights.decision_targets", "SELECT * FROM rights.exclusions",
                "SELECT * FROM identity.person_links"):
        print_[sql] = sorted(map(repr, world.wh(sql)))
    for schema, table in world.wh("SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name IN ('raw', "
                                  "'archive') AND table_name NOT IN ('quarantine', 'ingested_files', 'ingest_scope')"):
        print_[f"{schema}.{table}"] = world.wh(f'SELECT count(*) FROM {schema}."{table}"')
    print_["notices"] = sorted(json.dumps({k: v for k, v in n.items() if k != "created_at"}, sort_keys=True)
                               for n in read_notices(world.root / "outbox"))
    return print_


def audit_trail(world: World) -> Counter:
    return Counter((e["action"], e["decision_id"]) for e in map(json.loads, (world.root / "audit.jsonl").open())
                   if e["action"] in ("rights.decided", "rights.applied"))


def assert_each_decision_audited_once(world: World) -> None:
    trail = audit_trail(world)
    decisions = world.wh("SELECT decision_id, status FROM rights.decisions WHERE status IN ('decided', 'applied')")
    assert decisions and all(s == "applied" for _, s in decisions)
    for decision_id, _ in decisions:
        assert trail[("rights.decided", decision_id)] == 1 and trail[("rights.applied", decision_id)] == 1
    assert verify(world.root / "audit.jsonl").ok


# the uninterrupted run below is computed once, by the one worker that runs this file's tests
pytestmark = pytest.mark.xdist_group("rights_failures")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, generated_sources: Path) -> dict[str, object]:
    """The fingerprint of one plain run over the generated sources, nothing failing."""
    root = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(generated_sources, root / "sources")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
        world = World(root, {s: sa.create_engine(f"sqlite:///{root / 'sources' / (s + '.db')}")
                             for s in SQL_SYSTEMS})
        world.ingest()
        world.process()
        assert_each_decision_audited_once(world)
        return fingerprint(world)


def _erasure_reaching_prospects(world: World) -> tuple[int, list[str]]:
    """The generated verified erasure and its person's prospect ids (the case of the issue)."""
    request_id, person_id = world.wh(
        "SELECT r.request_id, l.person_id FROM raw.rights_requests r JOIN identity.person_links l "
        "ON l.node_type = 'member' AND l.node_value = CAST(r.member_id AS VARCHAR) "
        "WHERE r.request_type = 'erasure' AND r.identity_verified_at IS NOT NULL ORDER BY 1 LIMIT 1")[0]
    prospects = [v for (v,) in world.wh("SELECT node_value FROM identity.person_links WHERE person_id = ? "
                                        "AND node_type = 'prospect'", [person_id])]
    assert prospects, "the generated erasure must reach a prospect record"
    return request_id, prospects


def _fails_during_pushback_then_finishes(world: World, uninterrupted: dict[str, object], break_source,
                                         repair) -> None:
    """Break the prospecting platform once the member system committed and the navigation log is being
    rewritten; check what is left pending; repair; re-run; compare with the uninterrupted run."""
    world.ingest()
    request_id, prospect_ids = _erasure_reaching_prospects(world)
    original = pushback._checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pushback, "_checkpoint", lambda name: break_source() if name == "navigation_file" else None)
        first = world.process()
    assert pushback._checkpoint is original
    decision = f"rights:{request_id}:erasure"
    assert decision in first.decisions_failed and "prospects unavailable" in first.decisions_failed[decision]
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = ?", [request_id]) == [("executed",)]
    assert world.wh("SELECT status FROM rights.decisions WHERE decision_id = ?", [decision]) == [("decided",)]
    assert world.src("members", "SELECT count(*) FROM members WHERE member_id IN (SELECT member_id FROM "
                     "rights_requests WHERE request_id = :r)", r=request_id) == [(0,)]  # committed at its source
    trail = audit_trail(world)
    assert trail[("rights.decided", decision)] == 1 and trail[("rights.applied", decision)] == 0
    # the navigation log lost the person's page views, but the warehouse did not erase them (the decision is not
    # carried out): the rewritten files are read again, not recorded as mirrored, and raw holds what they hold
    assert first.mirrored == []
    assert _navigation_rows(world.warehouse) == _navigation_rows(
        _fresh_read(world.navigation, load_policy(Path("policies")), world.root))
    repair()
    assert world.src("prospects", f"SELECT count(*) FROM prospects WHERE prospect_id IN ({', '.join(prospect_ids)})"
                     ) == [(len(prospect_ids),)]

    world.ingest()  # the member is gone at its source: the person no longer resolves through identity
    second = world.process()
    assert not second.decisions_failed
    assert world.src("prospects", f"SELECT count(*) FROM prospects WHERE prospect_id IN ({', '.join(prospect_ids)})"
                     ) == [(0,)]
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = ?", [request_id]) == [("confirmed",)]
    assert_each_decision_audited_once(world)
    assert fingerprint(world) == uninterrupted


def test_prospecting_database_locked_during_pushback(sandbox, uninterrupted):
    paths = {s: sandbox.sources / f"{s}.db" for s in SQL_SYSTEMS}
    # a short busy timeout: the lock below is held for the whole run, waiting longer changes nothing
    world = World(sandbox.root, {s: sa.create_engine(f"sqlite:///{p}", connect_args={"timeout": 0.2})
                                 for s, p in paths.items()})
    holder = sqlite3.connect(paths["prospects"], isolation_level=None)

    def lock() -> None:
        if not holder.in_transaction:
            holder.execute("BEGIN EXCLUSIVE")  # another program holding the prospecting database

    _fails_during_pushback_then_finishes(world, uninterrupted, lock, lambda: holder.execute("ROLLBACK"))
    holder.close()


@pytest.mark.postgres
def test_postgres_server_stopped_during_pushback(sandbox, uninterrupted):
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries are not installed")
    cluster = start_cluster()  # its own server: this test stops it
    try:
        engines = {"members": sa.create_engine(f"sqlite:///{sandbox.sources / 'members.db'}"),
                   **_copy_sql_sources(sandbox.sources, {"prospects": cluster.create_database()})}
        world = World(sandbox.root, engines)

        def stop() -> None:
            if "down" not in stopped:
                stopped.add("down")
                cluster.halt()

        stopped: set[str] = set()
        _fails_during_pushback_then_finishes(world, uninterrupted, stop, cluster.resume)
        for engine in engines.values():
            engine.dispose()
    finally:
        cluster.stop()


def test_damaged_audit_log_stops_the_run_before_any_source_change(sandbox, uninterrupted):
    world = World(sandbox.root, {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}")
                                 for s in SQL_SYSTEMS})
    world.ingest()
    log = sandbox.root / "audit.jsonl"
    AuditLog(log).extend([{"action": "test.earlier"}, {"action": "test.earlier"}])
    intact = log.read_bytes()
    log.write_bytes(intact[:-40])  # the last line cut
    sources = {s: sorted(world.src(s, "SELECT * FROM members" if s == "members" else "SELECT * FROM prospects"))
               for s in SQL_SYSTEMS}
    with pytest.raises(AuditLogError, match="last line is not a whole entry"):  # nothing appended, nothing pushed
        world.process()
    assert {s: sorted(world.src(s, "SELECT * FROM members" if s == "members" else "SELECT * FROM prospects"))
            for s in SQL_SYSTEMS} == sources
    assert "privacy_applied_decisions" not in sa.inspect(world.engines["members"]).get_table_names()
    assert world.wh("SELECT count(*) FROM rights.decisions WHERE status = 'decided'")[0][0] > 0
    assert world.wh("SELECT count(*) FROM rights.audit_outbox")[0][0] > 0

    log.write_bytes(intact)  # the operator restores the log
    world.ingest()
    world.process()
    assert_each_decision_audited_once(world)
    assert fingerprint(world) == uninterrupted


KILLED_RUN = """
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from pipelines import pushback
from pipelines.sources.schema import SQL_SYSTEMS
from tests.test_rights import World

root, marker = Path(sys.argv[1]), Path(sys.argv[2])


def pause(name):  # the crash point hook: signal the test, then wait in the navigation rewrite to be killed
    if name == "navigation_file":
        marker.touch()
        while True:
            time.sleep(60)


pushback._checkpoint = pause
World(root, {s: sa.create_engine(f"sqlite:///{root / 'sources' / (s + '.db')}") for s in SQL_SYSTEMS}).process()
"""


def test_run_killed_after_the_member_system_committed_is_finished_by_the_next(sandbox, uninterrupted):
    """SIGKILL while the navigation log is rewritten: the member system has committed, the prospecting
    platform has not; the plain re-run ends as the uninterrupted run."""
    world = World(sandbox.root, {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}")
                                 for s in SQL_SYSTEMS})
    world.ingest()
    request_id, prospect_ids = _erasure_reaching_prospects(world)
    marker = sandbox.root / "paused"
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(sandbox.root), str(marker)],
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the run never reached the navigation rewrite"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert world.src("members", "SELECT count(*) FROM members WHERE member_id IN (SELECT member_id FROM "
                     "rights_requests WHERE request_id = :r)", r=request_id) == [(0,)]
    assert world.src("prospects", f"SELECT count(*) FROM prospects WHERE prospect_id IN ({', '.join(prospect_ids)})"
                     ) == [(len(prospect_ids),)]
    decision = f"rights:{request_id}:erasure"
    assert audit_trail(world)[("rights.decided", decision)] == 1  # audited before any source changed

    world.ingest()  # the member is gone: the person no longer resolves through identity
    world.process()
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = ?", [request_id]) == [("confirmed",)]
    assert_each_decision_audited_once(world)
    assert fingerprint(world) == uninterrupted
