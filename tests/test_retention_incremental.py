"""The incremental retention ledger leaves the warehouse and the sources exactly as a full recompute does.

The generated test world after its first night (tests.conftest `first_night`: the nightly job through Dagster in
process; its ledger is full, there is none before), then two copies of it live the same nights through the same
job: one with the incremental ledger and ingest (the default), one as the weekly full recompute runs
(`full_recompute`: the ledger re-evaluates every record, the SQL sources are copied whole) every night. Each copy
runs in turn at the path the first night ran at, so the paths the warehouse records are the same. Before each night
the same day of changes reaches both sources (new members, ended contracts, page views, prospects), with rights
requests (erasure, objection, restriction: person-wide flags change) and a new prospect sharing a member's e-mail
(an identity link joins them); the first of them follows the first night's backlog of erasures (records that left
their subjects, dropped without re-evaluating them: pipelines.retention.scope); the last night jumps weeks ahead,
across many retention boundaries (records come due). After every night the two warehouses are compared table by
table, column by column, and so are the sources.

Bookkeeping that may differ: when the pipeline did something (tests.test_nightly.RUN_TIME_COLUMNS, the change
markers push-back stamps and the ingest watermarks read from them, the navigation files' times), and the
`as_of` of ledger rows, which says when the row was last evaluated (the incremental ledger leaves unchanged
subjects' rows as they were).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest

from assets.retention import LEDGER_KEY
from pipelines.definitions import defs
from pipelines.demo.__main__ import run_job
from pipelines.demo.changes import day_of_changes, verified_requests
from pipelines.orchestration.runs import AS_OF_TAG, PARIS
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.policy.preview import preview
from pipelines.retention import ledger
from pipelines.retention.ledger import build_ledger
from pipelines.rights import process as rights_process
from sensors.schedules import nightly_schedule, weekly_full_recompute_schedule
from tests.conftest import FIRST_NIGHT, TEST_AS_OF, FirstNight, point_at
from tests.test_nightly import RUN_TIME_COLUMNS, RUN_TIME_TABLES

SEED = 11  # of the days of changes
NIGHTS = (TEST_AS_OF + dt.timedelta(days=1), TEST_AS_OF + dt.timedelta(days=50))  # after the first
# ledger rows: the night that last evaluated them; navigation files: when and how (bytes) they were written
BOOKKEEPING = {("retention", t, "as_of") for t in ("record_status", "ledger", "column_status")} | {
    ("raw", "ingested_files", "mtime_ns"), ("raw", "ingested_files", "size")}
# the change marker push-back stamps on the rows it changes (the wall clock), and the watermarks read from it
CHANGE_MARKERS = {"updated_at"}
INCREMENTAL_SLICE = 500  # records per slice of the incremental ledger: a few slices per night in the test world


def _wall_clock(night: dt.date) -> SimpleNamespace:
    """`dt` for the rights stage, whose decisions carry the wall clock's time (an objection's date times the
    prospect's suppression): the night's 00:30 UTC, the same in both worlds."""

    class Night(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:
            return dt.datetime.combine(night, dt.time(0, 30), dt.UTC).astimezone(tz)

    return SimpleNamespace(UTC=dt.UTC, date=dt.date, datetime=Night)


@pytest.fixture
def worlds(tmp_path: Path, first_night: FirstNight, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two copies of the site after its first night, each under its own folder while the other one runs at the
    path the first night ran at."""
    # the first night had no ledger before it: it evaluated every record
    assert _ledger_path(first_night.result).startswith("full: no previous")
    point_at(monkeypatch, first_night.site)
    for name in ("incremental", "full"):
        shutil.copytree(first_night.pristine, tmp_path / name)
    return {"incremental": tmp_path / "incremental", "full": tmp_path / "full"}


def _ledger_path(result: dg.ExecuteInProcessResult) -> str:
    """What the run's ledger step says it did (full or incremental, and its scope)."""
    [ledger] = [e.materialization for e in result.get_asset_materialization_events()
                if e.materialization.asset_key == LEDGER_KEY]
    return ledger.metadata["ledger_path"].value


def _night(world: Path, night: dt.date, full: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    """The nightly job on `world`, moved to the path SEM_DATA_DIR names for the run; what its ledger step says
    it did. The incremental ledger computes its scope in slices of INCREMENTAL_SLICE records, the full one whole."""
    monkeypatch.setattr(rights_process, "dt", _wall_clock(night))
    active = Path(os.environ["SEM_DATA_DIR"])
    world.rename(active)
    try:
        with monkeypatch.context() as mp:
            mp.setenv("SEM_LEDGER_SLICE_RECORDS", str(10**9 if full else INCREMENTAL_SLICE))
            result = run_job(night, full_recompute=full)
    finally:
        active.rename(world)
    assert result.success
    return _ledger_path(result)


def _day_of_changes(sources: Path, night: dt.date, k: int) -> None:
    """What happened the day before `night`, the same at both worlds."""
    day = night - dt.timedelta(days=1)
    day_of_changes(sources, day, seed=SEED)
    if k == 0:  # rights requests of members, verified that day (erasures and objections among them)
        verified_requests(sources, day, 6, seed=SEED)
    if k == 1:  # a restriction; a new prospect with a member's e-mail: identity joins them
        with sqlite3.connect(sources / "members.db") as con:
            member, email = con.execute("SELECT member_id, email FROM members WHERE email IS NOT NULL "
                                        "ORDER BY member_id LIMIT 1 OFFSET 20").fetchone()
            con.execute("INSERT INTO rights_requests (request_id, member_id, request_type, received_at, "
                        "identity_verified_at, details, status) SELECT max(request_id) + 1, ?, 'restriction', ?, ?, "
                        "'{}', 'received' FROM rights_requests",
                        [member + 1, f"{day} 09:00:00", f"{day} 10:00:00"])
        with sqlite3.connect(sources / "prospects.db") as con:
            con.execute("INSERT INTO prospects (prospect_id, first_name, last_name, email, lead_source, "
                        "collected_at, last_inbound_contact_at, marketing_consent) SELECT max(prospect_id) + 1, "
                        "'Jeanne', 'Martin', ?, 'web_form', ?, ?, true FROM prospects",
                        [email, f"{day} 11:00:00", f"{day} 11:00:00"])


def _differences(a: Path, b: Path) -> dict[str, tuple[int, int, list]]:
    """Per table of either warehouse: rows only in `a`, rows only in `b` (bookkeeping columns left out), and a
    few of them; tables that agree are left out."""
    found = {}
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{a}' AS a (READ_ONLY); ATTACH '{b}' AS b (READ_ONLY)")
        tables = con.execute("SELECT DISTINCT table_schema, table_name FROM information_schema.tables "
                             "WHERE table_catalog IN ('a', 'b') AND table_type = 'BASE TABLE' ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            if f"{schema}.{table}" in RUN_TIME_TABLES | {"raw.watermarks"}:
                continue
            columns = {db: {c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? AND table_schema = ? "
                "AND table_name = ?", [db, schema, table]).fetchall()} for db in ("a", "b")}
            if columns["a"] != columns["b"]:
                found[f"{schema}.{table}"] = (0, 0, [columns["a"] ^ columns["b"]])
                continue
            kept = sorted(c for c in columns["a"]
                          if c not in RUN_TIME_COLUMNS | CHANGE_MARKERS and (schema, table, c) not in BOOKKEEPING)
            cols = ", ".join(f'"{c}"' for c in kept)
            side = {db: f'SELECT {cols} FROM {db}."{schema}"."{table}"' for db in ("a", "b")}
            only_a = con.execute(f"{side['a']} EXCEPT ALL {side['b']}").fetchall()
            only_b = con.execute(f"{side['b']} EXCEPT ALL {side['a']}").fetchall()
            if only_a or only_b:
                found[f"{schema}.{table}"] = (len(only_a), len(only_b), (only_a + only_b)[:4])
    return found


def _source_rows(sources: Path) -> dict[str, list]:
    """Every row of the SQL sources (but when push-back applied it) and the navigation files' rows."""
    rows: dict[str, list] = {}
    for db in ("members.db", "prospects.db"):
        with sqlite3.connect(sources / db) as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
                columns = [c[1] for c in con.execute(f'PRAGMA table_info("{table}")')
                           if c[1] not in RUN_TIME_COLUMNS | CHANGE_MARKERS]
                cols = ", ".join(f'"{c}"' for c in columns)
                rows[f"{db}:{table}"] = sorted(map(repr, con.execute(f'SELECT {cols} FROM "{table}"')))
    with duckdb.connect() as con:
        for folder in ("events", "consents"):
            rows[folder] = sorted(map(repr, con.execute(
                f"SELECT * EXCLUDE (filename) FROM read_parquet('{sources}/navigation/{folder}/**/*.parquet', "
                "filename = true, union_by_name = true)").fetchall()))
    return rows


@pytest.mark.xdist_group(FIRST_NIGHT)
def test_incremental_ledger_gives_the_warehouse_of_a_full_recompute_night_after_night(worlds, monkeypatch):
    paths = {}
    for k, night in enumerate(NIGHTS):
        for root in worlds.values():
            _day_of_changes(root / "sources", night, k)
        paths[night] = {name: _night(root, night, name == "full", monkeypatch) for name, root in worlds.items()}
        differences = _differences(worlds["incremental"] / "warehouse.duckdb", worlds["full"] / "warehouse.duckdb")
        assert not differences, (night, paths[night], differences)
        sources = {name: _source_rows(root / "sources") for name, root in worlds.items()}
        assert sources["incremental"] == sources["full"], night

    # Each path ran as asked, and the incremental one had every kind of scope to cover, in slices.
    assert all(p["full"] == "full: full recompute requested" for p in paths.values())
    assert all(p["incremental"].startswith("incremental: ") for p in paths.values())
    assert all(int(re.findall(r"computed in (\d+) slices", p["incremental"])[0]) > 1 for p in paths.values()), paths
    scopes = [dict(re.findall(r"(due|changed|flags) (\d+)", p["incremental"])) for p in paths.values()]
    assert all(any(int(s[part]) for s in scopes) for part in ("due", "changed", "flags")), scopes
    # the first night's erasures left the sources: the night after drops them without re-evaluating their subjects
    dropped = int(re.findall(r"(\d+) ended records dropped", paths[NIGHTS[0]]["incremental"])[0])
    assert dropped > 0, paths[NIGHTS[0]]


@pytest.mark.xdist_group(FIRST_NIGHT)
def test_a_full_ledger_computed_in_slices_is_the_ledger_computed_whole(first_night, tmp_path):
    """Slices of subjects (by hash) each stage their rows before the next is computed; what lands is what one
    computation gives, in every column. Re-run on the first night's own day, after its retention was applied,
    both give back the first night's ledger: the members it erased are no longer found and their decisions
    stay, the survey answers it anonymised out of their member are found under no member."""
    policy = load_policy(PROJECT_ROOT / "policies")
    plans = {}
    for name, slice_records in (("whole", 10**9), ("sliced", 2_000)):
        shutil.copy(first_night.pristine / "warehouse.duckdb", tmp_path / f"{name}.duckdb")
        with duckdb.connect(str(tmp_path / f"{name}.duckdb")) as con:
            plans[name] = build_ledger(con, policy, TEST_AS_OF, full=True, slice_records=slice_records)
    assert plans["whole"].slices == 1 and plans["sliced"].slices >= 4, plans
    with duckdb.connect() as con:
        for name in ("whole", "sliced"):
            con.execute(f"ATTACH '{tmp_path / name}.duckdb' AS {name} (READ_ONLY)")
        con.execute(f"ATTACH '{first_night.pristine / 'warehouse.duckdb'}' AS night (READ_ONLY)")
        tables = {db: con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = "
                                  "'retention' ORDER BY 1", [db]).fetchall() for db in ("whole", "sliced", "night")}
        assert tables["whole"] == tables["sliced"] == tables["night"]  # no staging table left behind
        for (table,) in tables["night"]:
            for a, b in (("whole", "night"), ("night", "whole"), ("sliced", "night"), ("night", "sliced")):
                only = con.execute(f"SELECT * FROM {a}.retention.{table} EXCEPT ALL "
                                   f"SELECT * FROM {b}.retention.{table} LIMIT 3").fetchall()
                assert not only, (table, a, b, only)
        erased = con.execute("SELECT count(*) FROM sliced.retention.record_status WHERE dataset = 'members' AND "
                             "status = 'to_erase' AND record_key NOT IN (SELECT CAST(member_id AS VARCHAR) FROM "
                             "sliced.raw.members)").fetchall()[0][0]
    assert erased > 0


def _retention_differences(con: duckdb.DuckDBPyConnection, a: str, b: str) -> dict[str, int]:
    """Per retention table of attached databases `a` and `b`, rows in one and not the other, -1 for a table only
    one of them has (tables that agree are left out)."""
    found = {}
    for table, databases in con.execute("SELECT table_name, count(*) FROM duckdb_tables() WHERE schema_name = "
                                        "'retention' AND database_name IN (?, ?) GROUP BY 1 ORDER BY 1",
                                        [a, b]).fetchall():
        if databases == 1:
            found[table] = -1
            continue
        rows = con.execute(f"SELECT count(*) FROM ((SELECT * FROM {a}.retention.{table} EXCEPT ALL SELECT * FROM "
                           f"{b}.retention.{table}) UNION ALL (SELECT * FROM {b}.retention.{table} EXCEPT ALL "
                           f"SELECT * FROM {a}.retention.{table}))").fetchall()[0][0]
        if rows:
            found[table] = rows
    return found


@pytest.mark.xdist_group(FIRST_NIGHT)
def test_a_ledger_that_fails_between_two_slices_leaves_the_last_ledger_and_the_next_run_ends_as_uninterrupted(
        first_night, tmp_path, monkeypatch):
    """Each slice's rows are staged (committed) before the next is computed; only the swap at the end changes
    the ledger. A run failing after two slices (as a kill would leave it: staging tables on disk) leaves the
    last ledger as it was; the next run ends where an uninterrupted one does, and nothing staged stays."""
    policy, night = load_policy(PROJECT_ROOT / "policies"), TEST_AS_OF + dt.timedelta(days=40)
    for name in ("uninterrupted", "failed"):
        shutil.copy(first_night.pristine / "warehouse.duckdb", tmp_path / f"{name}.duckdb")
    with duckdb.connect(str(tmp_path / "uninterrupted.duckdb")) as con:
        assert build_ledger(con, policy, night, full=True, slice_records=2_000).slices >= 4
    staged, stage = [], ledger._stage

    def fail_after_two(*args, **kwargs):
        if len(staged) == 2:
            raise RuntimeError("killed")
        stage(*args, **kwargs)
        staged.append(1)

    with monkeypatch.context() as mp, duckdb.connect(str(tmp_path / "failed.duckdb")) as con:
        mp.setattr(ledger, "_stage", fail_after_two)
        with pytest.raises(RuntimeError, match="killed"):
            build_ledger(con, policy, night, full=True, slice_records=2_000)
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{first_night.pristine / 'warehouse.duckdb'}' AS night (READ_ONLY); "
                    f"ATTACH '{tmp_path / 'failed.duckdb'}' AS failed (READ_ONLY)")
        leftovers = {t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                               "'failed' AND table_name LIKE '%\\_\\_next' ESCAPE '\\'").fetchall()}
        assert leftovers == {"record_status__next", "ledger__next", "column_status__next", "clock_events__next"}
        assert _retention_differences(con, "night", "failed") == dict.fromkeys(leftovers, -1)
    with duckdb.connect(str(tmp_path / "failed.duckdb")) as con:
        build_ledger(con, policy, night, full=True, slice_records=2_000)
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{tmp_path / 'uninterrupted.duckdb'}' AS uninterrupted (READ_ONLY); "
                    f"ATTACH '{tmp_path / 'failed.duckdb'}' AS failed (READ_ONLY); "
                    f"ATTACH '{first_night.pristine / 'warehouse.duckdb'}' AS night (READ_ONLY)")
        assert _retention_differences(con, "uninterrupted", "failed") == {}
        assert _retention_differences(con, "night", "uninterrupted")  # the night's ledger did change something


@pytest.mark.xdist_group(FIRST_NIGHT)
def test_a_policy_preview_computed_in_slices_counts_what_the_whole_computation_counts(first_night, tmp_path):
    """Shorter audience analytics (25 -> 13 months) and longer prospecting (3 -> 4 years), previewed on the
    warehouse after the first night, read-only: the same counts, purpose by purpose, whole or in slices."""
    policy = load_policy(PROJECT_ROOT / "policies")
    text = (PROJECT_ROOT / "policies" / "purposes.yaml").read_text()
    clocks = ("\n      clock: navigation_visit", "\n      clock: prospect_last_contact")
    for old, new in (("version: 1", "version: 2"), (f"active: P25M{clocks[0]}", f"active: P13M{clocks[0]}"),
                     (f"active: P3Y{clocks[1]}", f"active: P4Y{clocks[1]}")):
        assert old in text
        text = text.replace(old, new, 1)
    (tmp_path / "proposed").mkdir()
    (tmp_path / "proposed" / "purposes.yaml").write_text(text)
    proposed = load_policy(tmp_path / "proposed", fallback=PROJECT_ROOT / "policies")
    with duckdb.connect(str(first_night.pristine / "warehouse.duckdb"), read_only=True) as con:
        tables = {n: preview(policy, proposed, con, TEST_AS_OF, slice_records=n).to_pylist() for n in (10**9, 2_000)}
    whole, sliced = tables.values()
    assert sliced == whole
    counted = {(r["purpose"], r["status_proposed"]): r["records"] for r in whole}
    assert counted[("audience_analytics", "to_erase")] > 1000 and counted[("prospecting", "active")] > 0, whole


def test_sunday_night_is_the_nightly_run_with_a_full_ledger_and_runs_once():
    sunday = dt.datetime(2026, 11, 29, 1, 30, tzinfo=PARIS)
    context = dg.build_schedule_context(scheduled_execution_time=sunday, repository_def=defs.get_repository_def())
    assert not nightly_schedule.evaluate_tick(context).run_requests
    [request] = weekly_full_recompute_schedule.evaluate_tick(context).run_requests
    assert request.tags[AS_OF_TAG] == "2026-11-29" and request.run_key == "nightly-2026-11-29"
    assert request.run_config["ops"][LEDGER_KEY.to_python_identifier()]["config"] == {
        "as_of": "2026-11-29", "full_recompute": True}
    # and the SQL sources copied whole, whatever their change markers say
    assert {op: request.run_config["ops"][op]["config"] for op in ("ingest_members", "ingest_prospects")} == {
        "ingest_members": {"full_reread": True}, "ingest_prospects": {"full_reread": True}}
    assert weekly_full_recompute_schedule.execution_timezone == "Europe/Paris"
    # the other nights, the ledger is incremental
    monday = dg.build_schedule_context(scheduled_execution_time=sunday + dt.timedelta(days=1),
                                       repository_def=defs.get_repository_def())
    [request] = nightly_schedule.evaluate_tick(monday).run_requests
    assert request.run_config["ops"][LEDGER_KEY.to_python_identifier()]["config"] == {"as_of": "2026-11-30"}
    assert "ingest_members" not in request.run_config["ops"]
