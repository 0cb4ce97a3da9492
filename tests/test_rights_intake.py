"""Requests that do not hold together are kept for a human, never confirmed, never dropped: unknown or missing
request type, dates in the future, a malformed date or member id (quarantined by ingestion), details that do
not parse; rectification only of what the policy declares rectifiable, with values the source can hold."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from pipelines.audit import verify
from pipelines.sources.schema import SQL_SYSTEMS
from tests.conftest import TEST_AS_OF
from tests.test_rights import World

VERIFIED = "2026-10-20 10:00:00"
CASES = {  # request_id -> (request_type, received_at, identity_verified_at, details, reason)
    9101: ("Erasure", "2026-10-15 09:00:00", VERIFIED, None, "unknown request type"),
    9102: ("erase_me", "2026-10-15 09:00:00", VERIFIED, None, "unknown request type"),
    9103: (None, "2026-09-01 09:00:00", VERIFIED, None, "no request type"),
    9104: ("erasure", "2027-01-15 09:00:00", "2027-01-16 09:00:00", None, "received in the future"),
    9105: ("erasure", "2026-10-15 09:00:00", "2027-01-16 09:00:00", None, "identity verified in the future"),
    9106: ("erasure", "15/10/2026", VERIFIED, None, "malformed at the source"),
    9107: ("restriction", "2026-10-15 09:00:00", VERIFIED, '{"ground": ', "details are not valid JSON"),
    9108: ("restriction", "2026-10-15 09:00:00", VERIFIED, '["x"]', "details are not a JSON object"),
}


@pytest.fixture
def world(sandbox) -> World:
    engines = {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}") for s in SQL_SYSTEMS}
    yield World(sandbox.root, engines)
    for engine in engines.values():
        engine.dispose()


def test_malformed_requests_wait_for_a_human_and_change_nothing(world: World):
    members = [r[0] for r in world.src("members", "SELECT member_id FROM members WHERE member_id NOT IN "
                                       "(SELECT coalesce(member_id, -1) FROM rights_requests) ORDER BY member_id "
                                       "LIMIT 10")]
    rows = [{"r": r, "t": t, "at": at, "ok": ok, "d": d, "m": members[i]}
            for i, (r, (t, at, ok, d, _)) in enumerate(CASES.items())]
    rows.append({"r": 9109, "t": "erasure", "at": "2026-10-15 09:00:00", "ok": VERIFIED, "d": None, "m": "12a"})
    before = {m: world.src("members", "SELECT * FROM members WHERE member_id = :m", m=m) for m in members}
    with world.engines["members"].begin() as con:
        con.execute(sa.text("INSERT INTO rights_requests (request_id, member_id, request_type, received_at, "
                            "identity_verified_at, details, status) VALUES (:r, :m, :t, :at, :ok, :d, 'received')"),
                    rows)
    world.ingest()
    outcome = world.process()

    kept = {r: (s, reason, nh) for r, s, reason, nh in world.wh(
        "SELECT request_id, state, reason, needs_human FROM rights.requests WHERE request_id > 9100")}
    expected = {r: c[-1] for r, c in CASES.items()} | {9109: "malformed at the source"}
    assert set(kept) == set(expected)  # none dropped, the quarantined ones included
    for request_id, reason in expected.items():
        state, why, needs_human = kept[request_id]
        assert state == "needs_human" and needs_human and reason in why, (request_id, kept[request_id])
    assert world.wh("SELECT count(*) FROM rights.decisions WHERE request_id > 9100") == [(0,)]
    assert {m: world.src("members", "SELECT * FROM members WHERE member_id = :m", m=m) for m in members} == before
    assert dict(world.src("members", "SELECT request_id, status FROM rights_requests WHERE request_id > 9100")) == {
        r: "needs_human" for r in expected}
    # they count for the deadline check: the one received on 1 September is overdue on 1 November
    assert outcome.needs_human >= len(expected) and TEST_AS_OF.isoformat() == "2026-11-01"
    assert outcome.overdue >= 1
    assert verify(world.root / "audit.jsonl").ok

    # once a human fixed the type at the source, the next run executes it
    with world.engines["members"].begin() as con:  # the member system stamps its change marker on any update
        con.execute(sa.text("UPDATE rights_requests SET request_type = 'restriction', updated_at = :now "
                            "WHERE request_id = 9101"),
                    {"now": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")})
    world.ingest()
    world.process()
    assert world.wh("SELECT state FROM rights.requests WHERE request_id = 9101") == [("confirmed",)]
    assert world.src("members", "SELECT restricted_at IS NOT NULL FROM members WHERE member_id = :m",
                     m=members[0]) == [(1,)]


@pytest.mark.parametrize(("details", "field"), [
    ('{"restricted_at": null}', "restricted_at"),  # not rectifiable: it would lift a restriction
    ('{"birth_date": "2001-02-30"}', "birth_date"),  # an impossible date
    ('{"phone": null}', "phone"),  # a required value cannot be rectified away
])
def test_rectification_touches_only_rectifiable_columns_with_valid_values(world: World, details: str, field: str):
    member = world.src("members", "SELECT member_id FROM members WHERE member_id NOT IN "
                       "(SELECT coalesce(member_id, -1) FROM rights_requests) ORDER BY member_id LIMIT 1")[0][0]
    with world.engines["members"].begin() as con:
        con.execute(sa.text("UPDATE members SET restricted_at = '2026-10-01 10:00:00', "
                            "restriction_decision_id = 'rights:1:restriction' WHERE member_id = :m"), {"m": member})
        con.execute(sa.text("INSERT INTO rights_requests (request_id, member_id, request_type, received_at, "
                            "identity_verified_at, details, status) VALUES (9201, :m, 'rectification', "
                            "'2026-10-15 09:00:00', :ok, :d, 'received')"), {"m": member, "ok": VERIFIED, "d": details})
    before = world.src("members", "SELECT * FROM members WHERE member_id = :m", m=member)
    world.ingest()
    world.process()
    state, reason = world.wh("SELECT state, reason FROM rights.requests WHERE request_id = 9201")[0]
    assert state == "refused" and field in reason
    assert world.src("members", "SELECT * FROM members WHERE member_id = :m", m=member) == before
    world.ingest()  # nothing pushed: the member is still there, not in quarantine
    assert world.wh("SELECT count(*) FROM raw.members WHERE member_id = ?", [member]) == [(1,)]
