"""Rights requests end to end on generated sources (SQLite and PostgreSQL): each right ends as the law says,
nothing happens before identity is verified, unmatched requests wait for a human, the audit log verifies."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines.audit import AuditLog, verify
from pipelines.identity import resolve_identities
from pipelines.policy.load import load_policy
from pipelines.pushback.notices import read_notices
from pipelines.refresh import ingest_all
from pipelines.rights.intake import TERMINAL_STATES
from pipelines.rights.process import RightsOutcome, deadline_summary, process_rights
from pipelines.sources.schema import (
    SQL_SYSTEMS,
)
from tests.conftest import TEST_AS_OF, core_context, identity_rules, retention_night

NOW = dt.datetime.combine(TEST_AS_OF, dt.time(12))


@dataclass
class World:
    root: Path
    engines: dict[str, sa.Engine]
    links: dict[str, dict[str, list[str]]] | None = None  # person_id -> node_type -> values, before the run

    @property
    def navigation(self) -> Path:
        return self.root / "sources" / "navigation"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.root / "audit.jsonl")

    def ingest(self) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            ingest_all(con, self.engines, self.navigation, load_policy(Path("policies")))
            resolve_identities(con, identity_rules())

    def process(self) -> RightsOutcome:
        with duckdb.connect(str(self.warehouse)) as con:
            ctx = core_context(self.root, load_policy(Path("policies")), self.navigation, self.audit.path)
            return process_rights(con, ctx, members=self.engines["members"], prospects=self.engines["prospects"],
                                  now=NOW)

    def wh(self, sql: str, params: list | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def src(self, system: str, sql: str, **params: object) -> list[tuple]:
        with self.engines[system].connect() as con:
            return [tuple(r) for r in con.execute(sa.text(sql), params)]

    def request(self, request_type: str) -> dict[str, object]:
        """The generated request of that type the run acted on, and the person's identity links."""
        rows = self.wh("SELECT request_id, person_id, state, reason FROM rights.requests WHERE request_type = ? "
                       "AND NOT needs_human AND identity_verified_at IS NOT NULL ORDER BY request_id LIMIT 1",
                       [request_type])
        request_id, person_id, state, reason = rows[0]
        return {"request_id": request_id, "person_id": person_id, "state": state, "reason": reason,
                "nodes": self.links[person_id]}


def _copy_sql_sources(sqlite_dir: Path, urls: dict[str, str]) -> dict[str, sa.Engine]:
    engines = {}
    for system, url in urls.items():
        metadata = SQL_SYSTEMS[system]
        source, target = sa.create_engine(f"sqlite:///{sqlite_dir / (system + '.db')}"), sa.create_engine(url)
        metadata.create_all(target)
        with source.connect() as read, target.begin() as write:
            for table in metadata.sorted_tables:
                rows = [dict(r) for r in read.execute(sa.select(table)).mappings()]
                if rows:
                    write.execute(table.insert(), rows)
                pk = next(iter(table.primary_key.columns)).name
                # explicit keys were inserted: move the serial on, as a live PostgreSQL source would have it
                write.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk}'), "
                                      f"coalesce((SELECT max({pk}) FROM {table.name}), 0) + 1, false)"))
        source.dispose()
        engines[system] = target
    return engines


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, sandbox) -> World:
    if request.param == "postgres":
        make_pg_url = request.getfixturevalue("make_pg_url")
        engines = _copy_sql_sources(sandbox.sources, {s: make_pg_url() for s in SQL_SYSTEMS})
    else:
        engines = {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}") for s in SQL_SYSTEMS}
    w = World(sandbox.root, engines)
    w.ingest()
    w.links = {}
    for person_id, node_type, value in w.wh("SELECT person_id, node_type, node_value FROM identity.person_links"):
        w.links.setdefault(person_id, {}).setdefault(node_type, []).append(value)
    yield w
    for engine in engines.values():
        engine.dispose()


def _ids(nodes: dict[str, list[str]], kind: str) -> str:
    return ", ".join(nodes.get(kind, [])) or "NULL"


def test_each_right_ends_as_the_law_says(world: World):
    outcome = world.process()
    assert not outcome.decisions_failed

    erasure = world.request("erasure")
    members = _ids(erasure["nodes"], "member")
    assert erasure["state"] == "confirmed" and "legal obligation" in erasure["reason"]
    for table in ("members", "contracts", "reimbursements", "interactions", "accounting_entries"):
        assert world.src("members", f"SELECT count(*) FROM {table} WHERE member_id IN ({members})") == [(0,)]
        assert world.wh(f"SELECT count(*) FROM raw.{table} WHERE member_id IN ({members})") == [(0,)]
    # the legal obligation keeps the accounting entries, only in the restricted archive
    assert world.wh(f"SELECT count(*) FROM archive.accounting_entries WHERE member_id IN ({members})")[0][0] > 0
    # and the person is told what was kept, where and why (art. 17(3)(b))
    answer = json.loads((world.root / "exports" / str(erasure["request_id"]) / "erasure-answer.json").read_text())
    kept = {k["data"]: k for k in answer["kept"]}
    assert "accounting_entries" in kept and "legal obligation" in kept["accounting_entries"]["why"]
    assert "restricted archive" in kept["accounting_entries"]["where"] and kept["accounting_entries"]["rows"] > 0
    events = pq.read_table(world.navigation / "events").to_pylist()
    assert not [e for e in events if e["visitor_id"] in erasure["nodes"].get("visitor", [])]
    assert world.wh("SELECT count(*) FROM identity.person_links WHERE person_id = ?", [erasure["person_id"]]) == [(0,)]

    rectification = world.request("rectification")
    wanted = json.loads(world.src("members", "SELECT details FROM rights_requests WHERE request_id = :r",
                                  r=rectification["request_id"])[0][0])
    assert rectification["state"] == "confirmed"
    assert set(world.src("members", "SELECT phone, city FROM members WHERE member_id IN ("
                         f"{_ids(rectification['nodes'], 'member')})")) == {(wanted["phone"], wanted["city"])}

    restriction = world.request("restriction")
    flagged_by = world.src("members", "SELECT DISTINCT restriction_decision_id FROM members WHERE member_id IN ("
                           f"{_ids(restriction['nodes'], 'member')})")
    assert flagged_by == [(f"rights:{restriction['request_id']}:restriction",)]

    objector = world.request("objection_prospecting")
    nodes = objector["nodes"]
    assert world.src("prospects", f"SELECT count(*) FROM campaign_selections WHERE member_id IN "
                     f"({_ids(nodes, 'member')}) OR prospect_id IN ({_ids(nodes, 'prospect')})") == [(0,)]
    hashes = {hashlib.sha256(v.encode()).hexdigest() for v in nodes.get("email", []) + nodes.get("phone", [])}
    assert hashes and hashes <= {r[0] for r in world.src("prospects", "SELECT contact_hash FROM suppression_list")}
    assert {r[0] for r in world.src("members", "SELECT marketing_consent FROM members WHERE member_id IN "
                                    f"({_ids(nodes, 'member')})")} <= {False}

    objection = world.request("objection")
    assert world.wh("SELECT purpose FROM rights.objections WHERE person_id = ?", [objection["person_id"]]) == [
        ("satisfaction_surveys",)]
    reasons = dict(world.wh("SELECT person_id, reason FROM rights.exclusions"))
    assert reasons[erasure["person_id"]] == "erased"
    assert reasons[restriction["person_id"]] == "restricted"
    assert reasons[objector["person_id"]] == "objection_prospecting"
    assert reasons[objection["person_id"]] == "objection"

    access = world.request("access")
    bundle = json.loads((world.root / "exports" / str(access["request_id"]) / "bundle.json").read_text())
    assert access["state"] == "answered"
    member_rows = bundle["tables"]["source.members.members"]["rows"]
    assert {str(r["member_id"]) for r in member_rows} == set(access["nodes"]["member"])
    assert {p["purpose"] for p in bundle["tables"]["source.members.members"]["purposes"]} >= {"membership"}
    assert (world.root / "exports" / str(access["request_id"]) / "source.members.contracts.csv").exists()


def test_requests_wait_for_identity_and_for_a_human_when_unmatched(world: World):
    waiting = world.src("members", "SELECT request_id, member_id FROM rights_requests "
                        "WHERE identity_verified_at IS NULL AND member_id IS NOT NULL")
    before = {m: world.src("members", "SELECT * FROM members WHERE member_id = :m", m=m) for _, m in waiting}
    world.process()
    states = dict(world.wh("SELECT request_id, state FROM rights.requests"))
    assert waiting and all(states[r] == "received" for r, _ in waiting)
    assert {m: world.src("members", "SELECT * FROM members WHERE member_id = :m", m=m) for _, m in waiting} == before
    assert world.wh("SELECT count(*) FROM rights.decisions WHERE request_id IN "
                    f"({', '.join(str(r) for r, _ in waiting)})") == [(0,)]
    flagged = world.wh("SELECT state, reason FROM rights.requests WHERE needs_human")
    assert flagged and all(s == "needs_human" and "no record" in r for s, r in flagged)

    # once the identity proof is checked, the next run executes the request
    request_id = waiting[0][0]
    with world.engines["members"].begin() as con:  # the member system stamps its change marker, as on any update
        con.execute(sa.text("UPDATE rights_requests SET identity_verified_at = '2026-11-01 09:00:00', "
                            "updated_at = :now WHERE request_id = :r"),
                    {"r": request_id, "now": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")})
    world.ingest()
    world.process()
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = ?", [request_id])[0][0] in (
        "confirmed", "answered", "refused")


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # backend-neutral: SQLite suffices
def test_audit_and_source_status_follow_and_a_rerun_changes_nothing(world: World):
    world.process()
    log = world.root / "audit.jsonl"
    entries = log.read_text()
    assert verify(log).ok
    assert "@" not in entries and "member:" not in entries  # tokens only, no e-mail or raw member id
    erasure = world.request("erasure")
    trail = [e for e in map(json.loads, entries.splitlines())
             if e["details"].get("request_id") == erasure["request_id"]]
    assert [e["action"] for e in trail] == ["rights.received", "rights.verified", "rights.decided", "rights.applied",
                                            "rights.confirmed"]
    assert "legal obligation" in trail[-1]["reason"] and len({e["subject_token"] for e in trail}) == 1
    statuses = dict(world.src("members", "SELECT request_id, status FROM rights_requests"))
    assert statuses == dict(world.wh("SELECT request_id, state FROM rights.requests"))
    # the day a request ended is recorded at the source, once (it times what only served the request)
    handled = dict(world.src("members", "SELECT request_id, handled_at FROM rights_requests"))
    assert {r for r, day in handled.items() if day} == {r for r, s in statuses.items() if s in TERMINAL_STATES}
    assert set(handled.values()) - {None} == {NOW.date().isoformat()}
    notices = read_notices(world.root / "outbox")

    world.ingest()
    second = world.process()
    assert second.decisions_failed == {} and second.bundles == []
    assert log.read_text() == entries  # no state changed, nothing new to audit
    assert read_notices(world.root / "outbox") == notices
    assert dict(world.src("members", "SELECT request_id, handled_at FROM rights_requests")) == handled


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # backend-neutral: SQLite suffices
def test_the_id_copy_of_a_handled_request_goes_the_day_after_and_the_verification_stays(world: World):
    """policies/: an ID copy sent with a rights request serves that request only (requests_complaints, P0D from
    rights_request_handled): kept through the day the request is handled, deleted at the source and in the
    warehouse the next day, unless the person is restricted or held; the verification date stays."""
    world.process()
    policy = load_policy(Path("policies"))
    copies = "SELECT document_id FROM id_documents WHERE reason = 'rights_request'"
    handled = {d for (d,) in world.src("members", copies + " AND request_id IN (SELECT request_id FROM "
                                                          "rights_requests WHERE handled_at IS NOT NULL)")}
    verified = world.src("members", "SELECT request_id, identity_verified_at FROM rights_requests ORDER BY 1")
    assert handled
    for night in (NOW.date(), NOW.date() + dt.timedelta(days=1)):
        world.ingest()
        retention_night(world.warehouse, world.root, policy, world.navigation, world.engines, night)
        suspended = {int(k) for (k,) in world.wh("SELECT record_key FROM retention.record_status WHERE dataset = "
                                                  "'id_documents' AND status IN ('restricted', 'legal_hold')")}
        left = {d for (d,) in world.src("members", copies)} & handled
        assert left == (handled if night == NOW.date() else handled & suspended), night
        assert left - suspended or night > NOW.date()
    assert world.src("members", "SELECT request_id, identity_verified_at FROM rights_requests ORDER BY 1") == verified
    assert not {d for (d,) in world.wh("SELECT document_id FROM raw.id_documents UNION ALL "
                                        "SELECT document_id FROM archive.id_documents")} & (handled - suspended)


def test_rights_assets_materialise_with_deadline_metadata(sandbox):
    from assets.rights import every_rights_decision_confirmed, no_overdue_rights_request, rights_requests

    world = World(sandbox.root, {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}")
                                 for s in SQL_SYSTEMS})
    world.ingest()
    result = dg.materialize([rights_requests, no_overdue_rights_request, every_rights_decision_confirmed],
                            resources=sandbox.resources(), raise_on_error=True)
    assert result.success
    metadata = result.asset_materializations_for_node("rights_requests")[0].metadata
    by_state = metadata["by_state"].value
    assert by_state.get("confirmed", 0) > 0 and metadata["needs_human"].value == 2
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["every_rights_decision_confirmed"] is True
    assert checks["no_overdue_rights_request"] is (metadata["overdue"].value == 0)


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # backend-neutral: SQLite suffices
def test_overdue_and_due_soon_requests_are_counted(world: World):
    late, soon, awaiting_id = 9001, 9002, 9003
    with world.engines["members"].begin() as con:
        con.execute(sa.text("INSERT INTO rights_requests (request_id, email, request_type, received_at, "
                            "identity_verified_at, status) VALUES (:r, 'late@example.org', 'access', :at, :ok, "
                            "'received')"),
                    [{"r": late, "at": "2026-09-20 10:00:00", "ok": "2026-09-21 10:00:00"},
                     {"r": soon, "at": "2026-10-05 10:00:00", "ok": "2026-10-06 10:00:00"},
                     {"r": awaiting_id, "at": "2026-09-01 10:00:00", "ok": None}])
    world.ingest()
    outcome = world.process()
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        summary = deadline_summary(con, TEST_AS_OF)
    assert late in summary["overdue_request_ids"] and soon not in summary["overdue_request_ids"]
    # asking for the identity proof suspends the clock: not late, counted apart
    assert awaiting_id not in summary["overdue_request_ids"] and summary["awaiting_identity"] >= 1
    assert summary["due_within_7_days"] >= 1 and outcome.overdue == summary["overdue"]


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # backend-neutral: SQLite suffices
def test_portability_gives_what_the_person_provided_per_source(world: World):
    member = world.src("members", "SELECT member_id FROM members ORDER BY member_id LIMIT 1 OFFSET 20")[0][0]
    with world.engines["members"].begin() as con:
        con.execute(sa.text("INSERT INTO rights_requests (request_id, member_id, request_type, received_at, "
                            "identity_verified_at, status) VALUES (9401, :m, 'portability', '2026-10-20 09:00:00', "
                            "'2026-10-21 09:00:00', 'received')"), {"m": member})
    world.ingest()
    outcome = world.process()
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = 9401") == [("answered",)]
    bundle = json.loads((world.root / "exports" / "9401" / "bundle.json").read_text())
    assert bundle["kind"].startswith("portability") and outcome.bundles
    assert all(location.startswith("source.") for location in bundle["tables"])  # per source, no warehouse copy
    members = bundle["tables"]["source.members.members"]["rows"]
    assert [r["member_id"] for r in members] == [member]
    # what the person gave under the contract, not the system's bookkeeping nor data kept for other bases
    assert {"email", "phone", "iban"} <= set(members[0]) and not {"created_at", "restricted_at"} & set(members[0])
    assert "source.members.litigation_cases" not in bundle["tables"]


@pytest.mark.parametrize("world", ["sqlite"], indirect=True)  # backend-neutral: SQLite suffices
def test_an_access_bundle_holds_every_page_view_the_log_holds_on_the_person(world: World):
    """Only the day files that can hold the person are read (the log is tens of millions of page views at scale):
    the bundle still has every page view of theirs in the log, those the warehouse copied and those of a file
    written since the last ingest."""
    member, visitor = world.wh("SELECT member_id, visitor_id FROM raw.navigation_events WHERE member_id IS NOT NULL "
                               "ORDER BY event_id LIMIT 1")[0]
    with world.engines["members"].begin() as con:
        con.execute(sa.text("INSERT INTO rights_requests (request_id, member_id, request_type, received_at, "
                            "identity_verified_at, status) VALUES (9402, :m, 'access', '2026-10-20 09:00:00', "
                            "'2026-10-21 09:00:00', 'received')"), {"m": member})
    world.ingest()
    # a page view logged after the ingest, in a file the warehouse has not seen
    day = sorted((world.navigation / "events").glob("day=*"))[-1]
    known = pq.read_table(next(day.glob("*.parquet")))
    late = known.slice(0, 1).to_pylist()[0] | {"event_id": "late-event", "member_id": member, "visitor_id": visitor}
    pq.write_table(pa.Table.from_pylist([late], schema=known.schema), day / "part-late.parquet")

    world.process()
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = 9402") == [("answered",)]
    bundle = json.loads((world.root / "exports" / "9402" / "bundle.json").read_text())
    person = world.wh("SELECT person_id FROM rights.requests WHERE request_id = 9402")[0][0]
    visitors, members = set(world.links[person].get("visitor", [])), set(world.links[person].get("member", []))
    logged = {e["event_id"] for e in pq.read_table(world.navigation / "events").to_pylist()
              if e["visitor_id"] in visitors or str(e["member_id"]) in members}
    found = {r["event_id"] for r in bundle["tables"]["source.navigation.navigation_events"]["rows"]}
    assert "late-event" in found and found == logged
