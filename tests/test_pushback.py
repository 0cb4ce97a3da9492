"""Push-back to SQLite and PostgreSQL sources and to the navigation Parquet logs: end state, idempotence,
re-read confirmation, art. 19 outbox, and a real SIGKILL in the middle of a batch."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines.audit import AuditLog, verify
from pipelines.bench.pushback import erasure_targets, seed_members, seed_prospects
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.pushback import apply_decisions, make_targets
from pipelines.pushback.navigation import MANIFEST_NAME
from pipelines.pushback.notices import notice_rules, read_notices
from pipelines.sources.schema import NAVIGATION_EVENT_SCHEMA, member_metadata, prospect_metadata

NOW = dt.datetime(2026, 11, 1, 12, 0, 0)
PEOPLE = 40


RULES = notice_rules(load_policy(PROJECT_ROOT / "policies"))


def plain_token(value: str) -> str:
    return "t-" + value


NOTICES = {"notice_rules": RULES, "tokenise": plain_token}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """A factory of fresh, empty database URLs on the parametrised backend."""
    if request.param == "postgres":
        make_pg_url = request.getfixturevalue("make_pg_url")
        return lambda name: make_pg_url()
    return lambda name: f"sqlite:///{tmp_path / name}.db"


@pytest.fixture
def sources(make_url: Callable[[str], str]) -> tuple[sa.Engine, sa.Engine]:
    members, prospects = sa.create_engine(make_url("members")), sa.create_engine(make_url("prospects"))
    seed_members(members, PEOPLE)
    seed_prospects(prospects, PEOPLE)
    yield members, prospects
    members.dispose()
    prospects.dispose()


def dump(engine: sa.Engine, metadata: sa.MetaData) -> dict[str, list[tuple]]:
    """Every row of every table (schema tables and push-back bookkeeping), in primary-key order; not the change
    markers, the source's clock when push-back wrote the row."""
    reflected = sa.MetaData()
    reflected.reflect(engine)
    with engine.connect() as con:
        return {
            name: [tuple(r) for r in con.execute(sa.select(*(c for c in t.c if c.name != "updated_at"))
                                                 .order_by(*t.primary_key.columns or t.c))]
            for name, t in reflected.tables.items()
            if name in metadata.tables or name == "privacy_applied_decisions"
        }


def count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as con:
        return con.execute(sa.text(sql)).scalar_one()


def test_erasure_removes_the_people_everywhere_and_nobody_else(sources, tmp_path):
    members, _ = sources
    before = count(members, "SELECT count(*) FROM contracts")
    report = apply_decisions(erasure_targets([3, 7, 10]), members=members, outbox_dir=tmp_path,
                             tokenise=plain_token, now=NOW, notice_rules=RULES)
    assert report.ok and sorted(report.confirmed) == ["erase:10", "erase:3", "erase:7"]
    for table in ("members", "contracts", "reimbursements", "interactions", "accounting_entries"):
        assert count(members, f"SELECT count(*) FROM {table} WHERE member_id IN (3, 7, 10)") == 0
    assert count(members, "SELECT count(*) FROM contracts") == before - 3 * 3
    assert count(members, "SELECT count(*) FROM members") == PEOPLE - 3
    assert count(members, "SELECT sum(rows_affected) FROM privacy_applied_decisions") == report.rows_affected[
        "members"] == 3 * (1 + 8 * 3)


def test_a_run_finishing_a_killed_runs_decisions_audits_each_confirmation_once(sources, tmp_path):
    """The killed run appended its confirmations and died before forgetting its recorded targets; the next run
    pushes them again (carried over) and must not log the same confirmation twice, while a decision new to it
    is still audited."""
    members, _ = sources
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    apply_decisions(erasure_targets([1, 2]), members=members, outbox_dir=tmp_path, audit=log, **NOTICES)
    apply_decisions(erasure_targets([1, 2, 3]), members=members, outbox_dir=tmp_path, audit=log,
                    carried_over=["erase:1", "erase:2"], **NOTICES)
    entries = [json.loads(line) for line in log.path.read_text().splitlines()]
    confirmed = sorted(e["decision_id"] for e in entries if e["action"] == "pushback.confirmed")
    assert confirmed == ["erase:1", "erase:2", "erase:3"]
    assert verify(log.path).ok


def test_second_run_changes_nothing_and_applies_nothing_twice(sources, tmp_path):
    members, prospects = sources
    targets = pa.concat_tables([erasure_targets([1, 2]), make_targets([
        {"decision_id": "restrict:5", "system": "members", "table_name": "members", "key_column": "member_id",
         "key_value": "5", "action": "restrict"},
        {"decision_id": "suppress:9", "system": "prospects", "table_name": "suppression_list",
         "key_column": "contact_hash", "key_value": "ab" * 32, "action": "suppress",
         "payload": {"channel": "email", "source_request_id": "9"}},
    ])])
    first = apply_decisions(targets, members=members, prospects=prospects, outbox_dir=tmp_path,
                            tokenise=plain_token, now=NOW, notice_rules=RULES)
    state = (dump(members, member_metadata), dump(prospects, prospect_metadata))
    second = apply_decisions(targets, members=members, prospects=prospects, outbox_dir=tmp_path,
                             tokenise=plain_token, now=NOW + dt.timedelta(days=1), notice_rules=RULES)
    assert first.skipped == [] and sorted(second.skipped) == sorted(first.confirmed)
    assert second.applied == {"members": [], "prospects": []} and second.ok
    assert (dump(members, member_metadata), dump(prospects, prospect_metadata)) == state
    assert count(prospects, "SELECT count(*) FROM suppression_list") == 1


def test_restrict_lift_anonymise_rectify_and_suppress_end_states(sources, tmp_path):
    members, prospects = sources

    def target(decision: str, key: str, action: str, payload: object = None, **kw: str) -> dict[str, object]:
        return {"decision_id": decision, "system": kw.get("system", "members"),
                "table_name": kw.get("table", "members"), "key_column": kw.get("column", "member_id"),
                "key_value": key, "action": action, "payload": payload}

    apply_decisions(make_targets([
        target("r4", "4", "restrict"), target("r6", "6", "restrict"),
        target("a8", "8", "anonymise", ["email", "phone"]),
        target("c9", "9", "rectify", {"email": "corrected@example.org", "establishment_id": 3}),
        target("s11", "cd" * 32, "suppress", {"channel": "phone", "objected_at": "2026-10-30 09:00:00"},
               system="prospects", table="suppression_list", column="contact_hash"),
        target("s11", "11", "erase", system="prospects", table="campaign_selections", column="prospect_id"),
    ]), members=members, prospects=prospects, outbox_dir=tmp_path, tokenise=plain_token, now=NOW, notice_rules=RULES)
    lifted = apply_decisions(make_targets([target("l6", "6", "lift_restriction")]), members=members,
                             outbox_dir=tmp_path, tokenise=plain_token, now=NOW, notice_rules=RULES)
    assert lifted.confirmed == ["l6"]
    with members.connect() as con:
        rows = {r.member_id: r for r in con.execute(sa.text(
            "SELECT member_id, email, phone, first_name, establishment_id, restricted_at, restriction_decision_id"
            " FROM members WHERE member_id IN (4, 6, 8, 9)"))}
    assert (rows[4].restricted_at, rows[4].restriction_decision_id) == ("2026-11-01 12:00:00", "r4")
    assert (rows[6].restricted_at, rows[6].restriction_decision_id) == (None, None)
    assert (rows[8].email, rows[8].phone, rows[8].first_name) == (None, None, "Prenom8")
    assert (rows[9].email, rows[9].establishment_id) == ("corrected@example.org", 3)
    with prospects.connect() as con:
        assert con.execute(sa.text("SELECT contact_hash, channel, objected_at FROM suppression_list")).all() == [
            ("cd" * 32, "phone", "2026-10-30 09:00:00")]
        assert con.execute(sa.text("SELECT count(*) FROM campaign_selections WHERE prospect_id = 11")).scalar() == 0


def test_confirmation_reports_a_decision_whose_effect_is_not_in_the_source(sources, tmp_path):
    members, _ = sources
    apply_decisions(erasure_targets([12]), members=members, outbox_dir=tmp_path, **NOTICES)
    with members.begin() as con:  # e.g. a legacy import brings the person back
        con.execute(sa.text("INSERT INTO members (member_id, email) VALUES (12, 'back@example.org')"))
    report = apply_decisions(erasure_targets([12]), members=members, outbox_dir=tmp_path, **NOTICES)
    assert report.skipped == ["erase:12"]
    assert list(report.failed) == ["erase:12"] and "members" in report.failed["erase:12"]


def test_recipients_get_one_art19_notice_without_identifiers(sources, tmp_path):
    members, _ = sources
    # seed: interactions of members 7, 14, ... are handled in Morocco; reimbursements of 10, 20, ... in Monaco
    for _ in range(2):
        apply_decisions(erasure_targets([7, 10, 11]), members=members, outbox_dir=tmp_path,
                        tokenise=plain_token, notice_rules=RULES)
    notices = read_notices(tmp_path)
    # policies/recipients.yaml: the mailing processor receives every member's contact details
    assert sorted((n["recipient"], n["decision_id"]) for n in notices) == [
        ("mailing_processor", "erase:10"), ("mailing_processor", "erase:11"), ("mailing_processor", "erase:7"),
        ("monaco_health_professionals", "erase:10"), ("morocco_complaints_provider", "erase:7")]
    assert all(n["subject_token"].startswith("t-member:") for n in notices)
    assert "@" not in (tmp_path / "notices.jsonl").read_text()


def test_unknown_action_or_column_is_refused_before_touching_the_source(sources, tmp_path):
    members, _ = sources
    state = dump(members, member_metadata)
    bad = [{"decision_id": "x", "system": "members", "table_name": "members", "key_column": "member_id",
            "key_value": "1", "action": "anonymise", "payload": ["no_such_column"]}]
    with pytest.raises(ValueError, match="no_such_column"):
        apply_decisions(make_targets(bad), members=members, outbox_dir=tmp_path, **NOTICES)
    with pytest.raises(ValueError, match="unknown action"):
        apply_decisions(make_targets([{**bad[0], "action": "shred"}]), members=members, outbox_dir=tmp_path, **NOTICES)
    assert dump(members, member_metadata) == state


# --- navigation logs ----------------------------------------------------------------------------------

def write_navigation(root: Path, days: int = 3, per_day: int = 20) -> None:
    for day in range(days):
        folder = root / "events" / f"day=2026-10-0{day + 1}"
        folder.mkdir(parents=True)
        n = per_day
        table = pa.table({
            "event_id": [f"e{day}-{i}" for i in range(n)],
            "visitor_id": [f"v{i % 5}" for i in range(n)],
            "member_id": pa.array([i % 5 if i % 5 else None for i in range(n)], pa.int64()),
            "ts": pa.array([dt.datetime(2026, 10, day + 1, 10, i) for i in range(n)], pa.timestamp("us")),
            "url": ["/"] * n, "referrer": [None] * n, "ip_address": [f"10.0.0.{i}" for i in range(n)],
            "user_agent": ["ua"] * n, "city": ["Paris"] * n, "latitude": [48.8] * n, "longitude": [2.3] * n,
        }, schema=NAVIGATION_EVENT_SCHEMA)
        pq.write_table(table, folder / "part-0.parquet")


def read_events(root: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted((root / "events").rglob("*.parquet")))


def navigation_targets() -> pa.Table:
    return make_targets([
        {"decision_id": "nav-erase", "system": "navigation", "table_name": "navigation_events",
         "key_column": "visitor_id", "key_value": "v1", "action": "erase"},
        {"decision_id": "nav-anon", "system": "navigation", "table_name": "navigation_events",
         "key_column": "member_id", "key_value": "2", "action": "anonymise",
         "payload": ["ip_address", "city", "latitude", "longitude"]},
    ])


def test_navigation_files_are_rewritten_and_recorded_once(tmp_path):
    root = tmp_path / "navigation"
    write_navigation(root)
    report = apply_decisions(navigation_targets(), navigation_dir=root, outbox_dir=tmp_path, **NOTICES)
    events = read_events(root).to_pylist()
    assert report.ok and report.rows_affected["navigation"] == 3 * 4 + 3 * 4
    assert not [e for e in events if e["visitor_id"] == "v1"]
    assert {(e["ip_address"], e["city"]) for e in events if e["member_id"] == 2} == {(None, None)}
    assert {e["city"] for e in events if e["member_id"] != 2} == {"Paris"}
    assert set(json.loads((root / MANIFEST_NAME).read_text())["decisions"]) == {"nav-erase", "nav-anon"}
    assert read_events(root).schema == NAVIGATION_EVENT_SCHEMA
    assert not list(root.rglob("*.tmp"))
    mtimes = {f: f.stat().st_mtime_ns for f in root.rglob("*.parquet")}
    again = apply_decisions(navigation_targets(), navigation_dir=root, outbox_dir=tmp_path, **NOTICES)
    assert again.applied == {"navigation": []} and again.ok
    assert {f: f.stat().st_mtime_ns for f in root.rglob("*.parquet")} == mtimes
    # policies/recipients.yaml: the audience processor is told of erasures of the visitors it received, and of
    # the anonymisation of the page views of a member logged in (the member is the events' second subject)
    assert sorted((n["recipient"], n["decision_id"], n["subject_token"]) for n in read_notices(tmp_path)) == [
        ("web_analytics_processor", "nav-anon", "t-member:2"), ("web_analytics_processor", "nav-erase", "t-visitor:v1")]



@pytest.mark.parametrize("files_at_once", [1, 2, 64])
def test_targets_read_from_a_warehouse_table_reach_every_file_whatever_the_files_rewritten_at_once(
        tmp_path, monkeypatch, files_at_once):
    """Retention hands push-back the name of the warehouse table its targets are recorded in (tens of millions of
    page views the first night at 1,000,000 members), and the files are rewritten a few at a time, each with only
    its own keys: every file still gets every decision, counted once, with the right notices."""
    import duckdb

    monkeypatch.setattr("pipelines.pushback.navigation.FILES_AT_ONCE", files_at_once)
    root = tmp_path / "navigation"
    write_navigation(root, days=5)
    warehouse = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    warehouse.register("given", navigation_targets())
    warehouse.execute("CREATE SCHEMA retention; CREATE TABLE retention.owed AS SELECT * FROM given")
    warehouse.unregister("given")
    report = apply_decisions("retention.owed", navigation_dir=root, outbox_dir=tmp_path, shared=warehouse, **NOTICES)
    events = read_events(root).to_pylist()
    assert report.ok and sorted(report.confirmed) == ["nav-anon", "nav-erase"]
    assert report.rows_affected["navigation"] == 5 * 4 + 5 * 4 and len(report.rewritten) == 5
    assert report.touched == {("navigation", "navigation_events")}
    assert len(events) == 5 * 16 and not [e for e in events if e["visitor_id"] == "v1"]
    assert {(e["ip_address"], e["city"]) for e in events if e["member_id"] == 2} == {(None, None)}
    assert {e["city"] for e in events if e["member_id"] != 2} == {"Paris"}
    assert read_events(root).schema == NAVIGATION_EVENT_SCHEMA
    assert sorted((n["recipient"], n["decision_id"], n["subject_token"]) for n in read_notices(tmp_path)) == [
        ("web_analytics_processor", "nav-anon", "t-member:2"), ("web_analytics_processor", "nav-erase", "t-visitor:v1")]
    # push-back's own tables were temporary: nothing of it is left in the warehouse file
    assert warehouse.execute("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE NOT temporary "
                             "ORDER BY 1").fetchall() == [("retention.owed",)]


def test_a_new_decision_on_rows_that_already_hold_nothing_leaves_their_files_alone_and_is_confirmed(tmp_path):
    """A quarantined page view out of a purpose is sent to the source again each night (its quarantine copy cannot
    show the values are gone): a file whose every row to change already holds nothing is not rewritten."""
    root = tmp_path / "navigation"
    write_navigation(root)
    apply_decisions(navigation_targets(), navigation_dir=root, outbox_dir=tmp_path, **NOTICES)
    mtimes = {f: f.stat().st_mtime_ns for f in root.rglob("*.parquet")}
    tomorrow = make_targets([
        {"decision_id": "nav-anon-again", "system": "navigation", "table_name": "navigation_events",
         "key_column": "member_id", "key_value": "2", "action": "anonymise", "payload": ["ip_address", "city"]},
        {"decision_id": "nav-anon-day-1", "system": "navigation", "table_name": "navigation_events",
         "key_column": "event_id", "key_value": "e0-3", "action": "anonymise", "payload": ["user_agent"]}])
    report = apply_decisions(tomorrow, navigation_dir=root, outbox_dir=tmp_path, **NOTICES)
    assert report.ok and sorted(report.confirmed) == ["nav-anon-again", "nav-anon-day-1"]
    changed = [f.parent.name for f in root.rglob("*.parquet") if f.stat().st_mtime_ns != mtimes[f]]
    assert changed == ["day=2026-10-01"]
    assert list(report.rewritten) == [str(root / "events" / "day=2026-10-01" / "part-0.parquet")]
    assert [e["user_agent"] for e in read_events(root).to_pylist() if e["event_id"] == "e0-3"] == [None]

def test_a_page_view_of_an_erased_visitor_written_during_the_push_back_is_found_by_the_re_read(tmp_path):
    """The re-read skips the files that held none of a decision's rows and have not changed since: one the website
    writes to meanwhile, here a day without the visitor until then, is read again, so the erasure is not confirmed
    while the new page view is there."""
    root = tmp_path / "navigation"
    write_navigation(root)
    quiet_day = root / "events" / "day=2026-10-09" / "part-0.parquet"
    quiet_day.parent.mkdir(parents=True)
    rows = pq.read_table(root / "events" / "day=2026-10-01" / "part-0.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([r for r in rows if r["visitor_id"] != "v1"], NAVIGATION_EVENT_SCHEMA),
                   quiet_day)
    erase = navigation_targets().slice(0, 1)

    def website_writes(point: str) -> None:
        if point == "navigation_file" and len(pq.read_table(quiet_day)) < len(rows):
            pq.write_table(pa.Table.from_pylist(rows, NAVIGATION_EVENT_SCHEMA), quiet_day)

    report = apply_decisions(erase, navigation_dir=root, outbox_dir=tmp_path, checkpoint=website_writes, **NOTICES)
    assert list(report.failed) == ["nav-erase"]
    assert [e["event_id"] for e in read_events(root).to_pylist() if e["visitor_id"] == "v1"] == ["e0-1", "e0-6",
                                                                                                 "e0-11", "e0-16"]
    assert apply_decisions(erase, navigation_dir=root, outbox_dir=tmp_path, **NOTICES).failed == {
        "nav-erase": "effect not found on re-reading navigation"}


# --- crash test: a real SIGKILL inside the transaction, then a re-run ---------------------------------

CRASH_BATCH = 300
RUNNER = """
import datetime as dt, sys, time
from pathlib import Path
import pyarrow as pa
import sqlalchemy as sa
from pipelines.audit import AuditLog, verify
from pipelines.bench.pushback import erasure_targets
from pipelines.policy.models import Condition
from pipelines.pushback import NoticeRule, apply_decisions, make_targets
members_url, nav_dir, outbox = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
n, pause_at, marker = int(sys.argv[4]), sys.argv[5], Path(sys.argv[6])


def pause(name):  # the crash point hook: signal the test, then wait there, inside the transaction, to be killed
    if name == pause_at:
        marker.touch()
        while True:
            time.sleep(60)


restrict = make_targets([{"decision_id": f"restrict:{m}", "system": "members", "table_name": "members",
                          "key_column": "member_id", "key_value": str(m), "action": "restrict"}
                         for m in range(n + 1, n + 21)])
nav = make_targets([{"decision_id": f"erase:{m}", "system": "navigation", "table_name": "navigation_events",
                     "key_column": "member_id", "key_value": str(m), "action": "erase"} for m in (1, 3)])
targets = pa.concat_tables([erasure_targets(range(1, n + 1)), restrict, nav])
morocco = NoticeRule("morocco_complaints_provider", "members", "member_id", "interactions", ("erase",),
                     (Condition(column="handled_by", value="morocco_complaints_provider"),))
audience = NoticeRule("web_analytics_processor", "navigation", "member_id", "navigation_events", ("erase",), ())
report = apply_decisions(targets, members=sa.create_engine(members_url), navigation_dir=nav_dir,
                         outbox_dir=outbox, tokenise=lambda v: "t-" + v, notice_rules=[morocco, audience],
                         now=dt.datetime(2026, 11, 1, 12), checkpoint=pause)
assert report.ok, report.failed
print(len(report.confirmed))
"""


def run_pushback(members_url: str, root: Path, pause_at: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, members_url, str(root / "navigation"), str(root / "outbox"),
         str(CRASH_BATCH), pause_at or "", str(root / "paused")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err


def kill_when_paused(process: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the push-back never reached its pause point"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    marker.unlink()


@pytest.mark.parametrize(("make_url", "pause_at"), [
    ("sqlite", "after:contracts"), ("sqlite", "navigation_file"),
    pytest.param("postgres", "after:contracts", marks=pytest.mark.postgres),
], indirect=["make_url"])
def test_killed_run_resumes_to_the_same_end_state(make_url, tmp_path, pause_at):
    state = {}
    for label, kill in (("reference", False), ("crashed", True)):
        root = tmp_path / label
        write_navigation(root / "navigation", days=3, per_day=20)
        url = make_url(f"members_{label}")
        engine = sa.create_engine(url)
        seed_members(engine, CRASH_BATCH + 40)
        if kill:
            process = run_pushback(url, root, pause_at)
            kill_when_paused(process, root / "paused")
            if pause_at.startswith("after:"):  # the kill landed inside the open transaction: nothing applied
                assert count(engine, "SELECT count(*) FROM members") == CRASH_BATCH + 40
        finish(run_pushback(url, root))
        # the navigation manifest records what each decision changed, also when a killed run changed part of it
        manifest = {d: (e["rows_affected"], e["table_name"])
                    for d, e in json.loads((root / "navigation" / MANIFEST_NAME).read_text())["decisions"].items()}
        state[label] = (dump(engine, member_metadata), read_events(root / "navigation").to_pylist(),
                        sorted(n["notice_id"] for n in read_notices(root / "outbox")), manifest,
                        sorted(p.name for p in (root / "navigation").iterdir() if p.is_file()))
        engine.dispose()
    assert state["crashed"] == state["reference"]
    applied = state["crashed"][0]["privacy_applied_decisions"]
    assert len(applied) == CRASH_BATCH + 20
    assert all(rows == 25 for decision, _, _, rows in applied if decision.startswith("erase:"))


@pytest.mark.postgres
def test_benchmark_erases_the_same_people_both_ways(pg_url):
    from pipelines.bench.pushback import bench_pushback

    result = bench_pushback(pg_url, n_people=30)
    assert (result["people_erased"], result["confirmed"], result["rows_deleted"]) == (30, 30, 30 * 25)


def test_staging_loads_every_target_in_bounded_chunks(make_url: Callable[[str], str]):
    # A nightly pass at 1 M members stages ~13 M targets: they go in chunk by chunk, all of them, once.
    from pipelines.pushback.sql import STAGING_COLUMNS, ensure_bookkeeping, load_staging, staging

    engine = sa.create_engine(make_url("staging"))
    ensure_bookkeeping(engine)
    n = 25
    targets = pa.table({
        "decision_id": [f"retention:{i % 4}" for i in range(n)], "table_name": ["members"] * n,
        "key_column": ["member_id"] * n, "key_value": [str(i) for i in range(n)], "action": ["erase"] * n,
        "payload": [None] * n, "columns_key": [""] * n,
    })
    assert set(targets.column_names) | {"batch_id"} == set(STAGING_COLUMNS)
    with engine.begin() as con:
        load_staging(con, targets, "b1", chunk_rows=7)
        staged = con.execute(sa.select(staging.c.key_value, staging.c.decision_id)
                             .where(staging.c.batch_id == "b1")).all()
    assert sorted(staged, key=lambda r: int(r[0])) == [(str(i), f"retention:{i % 4}") for i in range(n)]
    engine.dispose()


def test_each_target_keeps_its_own_columns_in_a_batch_of_hundreds_of_thousands():
    """Push-back works out the columns an anonymise or rectify target names once per distinct payload and sets
    them on the rows by lookup: each row of a large mixed batch must get its own, in its own order."""
    from pipelines.duck import connect_memory
    from pipelines.pushback.targets import PREPARED, prepare

    payloads = [None, '["email", "phone"]', '{"phone": "0600000000"}', '["last_name"]']
    actions = ["erase", "anonymise", "rectify", "anonymise"]
    expected = ["", "email,phone", "phone", "last_name"]
    n = 300_000
    targets = pa.table({
        "decision_id": [f"d{i % 97}" for i in range(n)], "system": ["members"] * n,
        "table_name": ["members"] * n, "key_column": ["member_id"] * n, "key_value": [str(i) for i in range(n)],
        "action": [actions[i % 4] for i in range(n)], "payload": [payloads[i % 4] for i in range(n)]})
    con = connect_memory()
    con.register("given", targets)
    prepare(con, "given")
    prepared = con.sql(f"SELECT key_value, columns_key FROM {PREPARED} ORDER BY key_value::INTEGER").fetchall()
    assert prepared == [(str(i), expected[i % 4]) for i in range(n)]


def test_a_notice_already_in_the_outbox_is_not_written_again_whatever_the_line_looks_like(tmp_path):
    """The outbox is read back for the ids of the notices it holds (cut from each line as push-back writes it): one
    written another way (compact JSON, keys in another order, as a tool rewriting the file would) still counts."""
    from pipelines.pushback.notices import read_notices, write_notices

    found = [{"recipient": "mailing_processor", "decision_id": f"erase:{i}", "action": "erase",
              "key_column": "member_id", "key_value": str(i)} for i in range(4)]
    assert write_notices(tmp_path, found[:2], lambda v: f"t-{v}") == 2
    rewritten = [json.dumps(dict(reversed(list(n.items()))), separators=(",", ":")) for n in read_notices(tmp_path)]
    (tmp_path / "notices.jsonl").write_text("\n".join(rewritten) + "\n\n")
    assert write_notices(tmp_path, found, lambda v: f"t-{v}") == 2
    assert write_notices(tmp_path, found, lambda v: f"t-{v}") == 0
    assert sorted(n["decision_id"] for n in read_notices(tmp_path)) == [f"erase:{i}" for i in range(4)]
