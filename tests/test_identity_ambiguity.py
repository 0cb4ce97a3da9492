"""Identity never merges two people by accident (SQLite and PostgreSQL sources): siblings on one family phone
and two members sharing a mailbox stay two people; a prospect with a member's e-mail typed differently is that
member. A right for one sibling acts on that sibling's records only and flags the rest for a human."""

from __future__ import annotations

import datetime as dt
import hashlib

import duckdb
import sqlalchemy as sa

from pipelines.normalise import normalise_email, normalise_phone
from tests import test_rights
from tests.test_rights import World, deadline_summary

world = test_rights.world  # the same fixture: SQLite and PostgreSQL sources


def _person(world: World, node_type: str, value: object) -> str:
    return world.wh("SELECT person_id FROM identity.person_links WHERE node_type = ? AND node_value = ?",
                    [node_type, str(value)])[0][0]


def test_shared_contacts_never_merge_and_rights_stay_with_the_requester(world: World):
    (phone_2, phone_3), (mail_4, mail_5) = (
        [r[0] for r in world.src("members", f"SELECT {c} FROM members WHERE member_id IN ({ids}) ORDER BY member_id")]
        for c, ids in (("phone", "2, 3"), ("email", "4, 5")))
    assert normalise_phone(phone_2) == normalise_phone(phone_3) and normalise_email(mail_4) == normalise_email(mail_5)
    assert _person(world, "member", 2) != _person(world, "member", 3)  # siblings on the family phone
    assert _person(world, "member", 4) != _person(world, "member", 5)  # one mailbox, two members
    # the prospect planted with the legal-hold erasure member's e-mail, typed differently, is that member
    typed = world.wh("SELECT p.prospect_id, m.member_id FROM raw.prospects p JOIN raw.members m "
                     "ON lower(trim(p.email)) = lower(trim(m.email)) AND p.email <> m.email")
    assert typed and all(_person(world, "prospect", p) == _person(world, "member", m) for p, m in typed)

    sibling_rows = {t: world.src("members", f"SELECT count(*) FROM {t} WHERE member_id = 3")
                    for t in ("members", "contracts", "reimbursements")}
    prospects_on_family_phone = [r[0] for r in world.src("prospects", "SELECT prospect_id, phone FROM prospects")
                                 if normalise_phone(r[1]) == normalise_phone(phone_2)]
    # one run: the erasure of one sibling, the objection to prospecting of the other, an access by a shared e-mail
    _request(world, {"r": 9301, "m": 2, "e": None, "t": "erasure"},
             {"r": 9302, "m": 3, "e": None, "t": "objection_prospecting"},
             {"r": 9303, "m": None, "e": mail_5.upper(), "t": "access"})
    states = _states(world)
    # carried out on the requester's records, then waiting for a human for the rest: counted by the deadline check
    assert states[9301][0] == "needs_human" and "left for a human" in states[9301][1]
    assert world.wh("SELECT status FROM rights.decisions WHERE decision_id = 'rights:9301:erasure'") == [("applied",)]
    assert world.src("members", "SELECT status FROM rights_requests WHERE request_id = 9301") == [("needs_human",)]
    assert world.wh("SELECT count(*) FROM rights.exclusions WHERE reason = 'erased' AND person_id = "
                    "(SELECT person_id FROM rights.requests WHERE request_id = 9301)") == [(1,)]
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        assert 9301 in deadline_summary(con, dt.date(2026, 12, 1))["overdue_request_ids"]  # due 20 November
    assert world.src("members", "SELECT count(*) FROM members WHERE member_id = 2") == [(0,)]
    # the sibling keeps every record; the erasure never targeted the prospects of the family phone
    assert {t: world.src("members", f"SELECT count(*) FROM {t} WHERE member_id = 3") for t in sibling_rows} == \
        sibling_rows
    erased = {(t, k) for t, k in world.wh("SELECT table_name, key_value FROM rights.decision_targets "
                                          "WHERE decision_id = 'rights:9301:erasure'")}
    assert ("members", "2") in erased and ("members", "3") not in erased
    assert prospects_on_family_phone and not {("prospects", str(p)) for p in prospects_on_family_phone} & erased
    # objection to prospecting of the sibling: their own contacts suppressed, not the phone the family shares
    assert states[9302][0] == "needs_human" and "left for a human" in states[9302][1]  # the family phone
    suppressed = {r[0] for r in world.src("prospects", "SELECT contact_hash FROM suppression_list")}
    assert hashlib.sha256(normalise_phone(phone_3).encode()).hexdigest() not in suppressed
    own = world.src("members", "SELECT email FROM members WHERE member_id = 3")[0][0]
    assert hashlib.sha256(normalise_email(own).encode()).hexdigest() in suppressed
    # an e-mail two members share names nobody for sure
    assert states[9303][0] == "needs_human" and "several people" in states[9303][1]

    # the next run leaves it with the human (nothing decided or pushed again); the human closes it at the source
    entries = world.audit.path.read_text()
    world.ingest()
    world.process()
    assert _states(world)[9301][0] == "needs_human" and world.audit.path.read_text() == entries
    with world.engines["members"].begin() as con:  # the member system stamps its change marker on any update
        con.execute(sa.text("UPDATE rights_requests SET status = 'confirmed', updated_at = :now "
                            "WHERE request_id = 9301"), {"now": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")})
    world.ingest()
    world.process()
    assert _states(world)[9301][0] == "confirmed"
    assert world.wh("SELECT count(*) FROM rights.exclusions WHERE reason = 'erased'")[0][0] >= 1


def _request(world: World, *rows: dict[str, object]) -> None:
    with world.engines["members"].begin() as con:
        con.execute(sa.text("INSERT INTO rights_requests (request_id, member_id, email, request_type, received_at, "
                            "identity_verified_at, status) VALUES (:r, :m, :e, :t, '2026-10-20 09:00:00', "
                            "'2026-10-21 09:00:00', 'received')"), list(rows))
    world.ingest()
    world.process()


def _states(world: World) -> dict[int, tuple[str, str]]:
    return {r: (s, reason) for r, s, reason in world.wh(
        "SELECT request_id, state, reason FROM rights.requests WHERE request_id > 9300")}
