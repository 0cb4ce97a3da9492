"""The pipeline's own records under their declared periods (policies/own_records.yaml): raw.quarantine minimised
and let go after its period or with its erased person, access bundles and transfer deliveries reduced to their
proof, art. 19 notices losing their token, raw.quarantine_resolved and transfers.delivered_rows forgotten; each at
D - 1, D and D + 1 of its period."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from assets.own_records import own_records_retention
from pipelines.audit import AUDIT_DOMAIN, AuditLog, verify
from pipelines.ingest import load_typed, quarantine_fields
from pipelines.orchestration import settings
from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
)
from pipelines.policy.load import load_policy
from pipelines.policy.own_records import load_own_records_policy
from pipelines.pseudo.keys import KeyProvider
from pipelines.purge import AUDIT_ACTION, PROOF, purge_own_records
from pipelines.transfers import DELETION, ERASURE_NOTICE, SENT, STATE_DDL
from tests.conftest import TEST_KEY_HEX, core_context

DAY = dt.timedelta(days=1)
MEMBER_COLUMNS = {"member_id": "BIGINT", "first_name": "VARCHAR", "email": "VARCHAR", "postal_code": "VARCHAR",
                  "birth_date": "DATE", "iban": "VARCHAR", "created_at": "TIMESTAMP"}
REIMBURSEMENT_COLUMNS = {"reimbursement_id": "BIGINT", "member_id": "BIGINT", "care_date": "DATE",
                         "act_code": "VARCHAR", "amount_eur": "DOUBLE"}


@pytest.fixture
def policy():
    return load_policy(settings.policies_dir())


@pytest.fixture
def rules():
    return load_own_records_policy(settings.policies_dir())


def _members_source(con, rows: list[tuple]) -> str:
    con.execute("CREATE OR REPLACE TABLE src_members (member_id VARCHAR, first_name VARCHAR, email VARCHAR, "
                "postal_code VARCHAR, birth_date VARCHAR, iban VARCHAR, created_at VARCHAR)")
    con.executemany("INSERT INTO src_members VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    return "src_members"


def _ingest_members(con, policy, rows: list[tuple]):
    return load_typed(con, _members_source(con, rows), system="members", table="members", columns=MEMBER_COLUMNS,
                      required=["member_id"], key=["member_id"], fields=quarantine_fields(policy, "members"))


BAD_MEMBER = ("42", "Camille", "camille@example.fr", "75011", "1999-02-30", "FR7630006000011234567890189",
              "2026-01-01 10:00:00")
GOOD_MEMBER = ("43", "Louis", "louis@example.fr", "69003", "2001-05-04", "FR7630006000011234567890190",
               "2026-01-01 10:00:00")


def _quarantine(con) -> list[tuple]:
    return con.execute("SELECT table_name, record_key, reason, record::VARCHAR, fix::VARCHAR, quarantined_at, "
                       "restricted FROM raw.quarantine ORDER BY ALL").fetchall()


def test_quarantine_keeps_the_key_the_reason_and_the_fix_only(policy):
    with duckdb.connect() as con:
        _ingest_members(con, policy, [BAD_MEMBER, GOOD_MEMBER])
        con.execute("CREATE TABLE src_r (reimbursement_id VARCHAR, member_id VARCHAR, care_date VARCHAR, "
                    "act_code VARCHAR, amount_eur VARCHAR, paid_at VARCHAR)")
        con.execute("INSERT INTO src_r VALUES ('7', '43', '2026-13-01', 'PSY', '50.0', '2026-10-01 10:00:00')")
        load_typed(con, "src_r", system="members", table="reimbursements",
                   columns={**REIMBURSEMENT_COLUMNS, "paid_at": "TIMESTAMP"},
                   required=["reimbursement_id", "member_id"], key=["reimbursement_id"],
                   fields=quarantine_fields(policy, "reimbursements"))
        member, claim = _quarantine(con)
    assert member[1:3] == ("42", "bad date in birth_date")
    # What identifies no one (a system date) is kept to handle the row; the direct identifier to fix is masked.
    assert json.loads(member[3]) == {"member_id": "42", "created_at": "2026-01-01 10:00:00"}
    assert json.loads(member[4]) == {"birth_date": "…2-30"}
    for value in ("Camille", "camille@", "FR76", "75011"):
        assert value not in member[3] + member[4]
    assert claim[1:3] == ("7", "bad date in care_date")
    # The payment date stays: the claim's retention runs from it, quarantined or not.
    assert json.loads(claim[3]) == {"reimbursement_id": "7", "member_id": "43", "paid_at": "2026-10-01 10:00:00",
                                    "amount_eur": "50.0"}
    assert json.loads(claim[4]) == {"care_date": "2026-13-01"}
    assert "PSY" not in claim[3] + claim[4], "no care act: health data is not needed to fix a date"


def test_a_quarantined_rights_request_keeps_what_answering_it_needs_not_the_email_or_details(policy):
    with duckdb.connect() as con:
        con.execute("CREATE TABLE src_q (request_id VARCHAR, member_id VARCHAR, email VARCHAR, "
                    "request_type VARCHAR, received_at VARCHAR, details VARCHAR, status VARCHAR)")
        con.execute("INSERT INTO src_q VALUES ('5', '42', 'camille@example.fr', 'erasure', '2026-02-30', "
                    "'{\"note\": \"Camille Martin\"}', 'received')")
        load_typed(con, "src_q", system="members", table="rights_requests",
                   columns={"request_id": "BIGINT", "member_id": "BIGINT", "email": "VARCHAR",
                            "request_type": "VARCHAR", "received_at": "TIMESTAMP", "details": "VARCHAR",
                            "status": "VARCHAR"},
                   required=["request_id"], key=["request_id"], fields=quarantine_fields(policy, "rights_requests"))
        [(_, _, reason, record, fix, _, _)] = _quarantine(con)
    assert reason == "bad timestamp in received_at"
    assert json.loads(record) == {"request_id": "5", "member_id": "42", "request_type": "erasure",
                                  "status": "received"}
    assert json.loads(fix) == {"received_at": "2026-02-30"}
    assert "camille" not in record + fix and "Martin" not in record + fix


def _context(tmp_path: Path, policy):
    """The core's inputs: exports and outbox under tmp_path, the audit log tmp_path/audit.jsonl."""
    return core_context(tmp_path, policy, tmp_path / "navigation", tmp_path / "audit.jsonl")


def _aged(con, quarantined_at: dt.datetime) -> None:
    con.execute("UPDATE raw.quarantine SET quarantined_at = ?", [quarantined_at])


@pytest.mark.parametrize(("offset", "kept"), [(-1, True), (0, True), (1, False)])
def test_the_fix_goes_the_day_after_its_period_and_does_not_come_back(tmp_path, policy, rules, offset, kept):
    first = dt.datetime(2026, 10, 2, 10, 0)
    last_day = dt.date(2026, 11, 1)  # P30D from 2 October: kept through 1 November
    audit = AuditLog(tmp_path / "audit.jsonl")
    with duckdb.connect() as con:
        _ingest_members(con, policy, [BAD_MEMBER])
        _aged(con, first)
        _ingest_members(con, policy, [BAD_MEMBER, GOOD_MEMBER])  # the source still holds it
        assert [r[5] for r in _quarantine(con)] == [first], "re-quarantined: the first time is kept"
        report = purge_own_records(con, _context(tmp_path, policy), rules, last_day + offset * DAY)
        [(_, key, reason, record, fix, _, _)] = _quarantine(con)
        assert (key, reason, json.loads(record)["member_id"]) == ("42", "bad date in birth_date", "42")
        assert (fix is not None) is kept
        assert report.quarantine_fix_cleared == (0 if kept else 1)
        _ingest_members(con, policy, [BAD_MEMBER, GOOD_MEMBER])
        assert (_quarantine(con)[0][4] is not None) is kept, "a cleared fix does not come back with the next ingest"
        if not kept:
            [entry] = [json.loads(line) for line in audit.path.read_text().splitlines()]
            assert entry["action"] == AUDIT_ACTION and entry["details"]["quarantine_fix_cleared"] == 1
        _ingest_members(con, policy, [GOOD_MEMBER])  # fixed at the source: gone from the quarantine
        assert _quarantine(con) == []
        assert con.execute("SELECT record_key, reason, quarantined_at FROM raw.quarantine_resolved").fetchall() == [
            ("42", "bad date in birth_date", first)]  # its key, reason and dates only


def _resolved(con) -> list[tuple]:
    return con.execute("SELECT record_key, reason FROM raw.quarantine_resolved ORDER BY ALL").fetchall()


@pytest.mark.parametrize(("offset", "kept"), [(-1, True), (0, True), (1, False)])
def test_a_resolved_entry_keeps_key_reason_and_dates_for_its_period_then_goes(tmp_path, policy, rules, offset,
                                                                                kept):
    fixed = dt.date(2026, 10, 2)
    last_day = dt.date(2026, 11, 1)  # resolved_keep P30D from the day ingest found the row fixed or gone
    with duckdb.connect() as con:
        _ingest_members(con, policy, [BAD_MEMBER, ("44", *BAD_MEMBER[1:])])
        _ingest_members(con, policy, [GOOD_MEMBER])  # 42 fixed, 44 gone from the source
        con.execute("UPDATE raw.quarantine_resolved SET resolved_on = ?", [fixed])
        assert _quarantine(con) == [] and _resolved(con) == [("42", "bad date in birth_date"),
                                                             ("44", "bad date in birth_date")]
        report = purge_own_records(con, _context(tmp_path, policy), rules, last_day + offset * DAY)
        assert report.quarantine_resolved_removed == (0 if kept else 2)
        assert len(_resolved(con)) == (2 if kept else 0)
        _ingest_members(con, policy, [BAD_MEMBER])  # broken again: quarantined, no longer resolved
        assert [r[1] for r in _quarantine(con)] == ["42"] and [k for k, _ in _resolved(con)] == (
            ["44"] if kept else [])


def test_erasure_and_restriction_of_a_person_reach_their_quarantined_rows(tmp_path, policy, rules):
    other = ("44", *BAD_MEMBER[1:])
    with duckdb.connect() as con:
        _ingest_members(con, policy, [BAD_MEMBER, other])
        con.execute("ALTER TABLE raw.members ADD COLUMN restricted_at TIMESTAMP; "
                    "CREATE TABLE raw.prospects (prospect_id BIGINT, restricted_at TIMESTAMP); "
                    "CREATE SCHEMA identity; CREATE SCHEMA rights; "
                    "CREATE TABLE identity.person_links AS SELECT * FROM (VALUES ('p42', 'member', '42'), "
                    "('p44', 'member', '44')) t(person_id, node_type, node_value); "
                    "CREATE TABLE rights.exclusions AS SELECT * FROM (VALUES ('p42', 'erased', DATE '2026-11-01'), "
                    "('p44', 'restricted', DATE '2026-11-01')) t(person_id, reason, since)")
        report = purge_own_records(con, _context(tmp_path, policy), rules, dt.date(2026, 11, 2))
        assert [(r[1], r[6]) for r in _quarantine(con)] == [("44", True)]
        assert (report.quarantine_erased, report.quarantine_restricted) == (1, 1)
        con.execute("INSERT INTO raw.quarantine_resolved VALUES ('members', 'members', '42', 'bad', NULL, "
                    "DATE '2026-11-02'), ('members', 'members', '44', 'bad', NULL, DATE '2026-11-02')")
        con.execute("DELETE FROM rights.exclusions WHERE person_id = 'p44'")  # the restriction is lifted
        purge_own_records(con, _context(tmp_path, policy), rules, dt.date(2026, 11, 3))
        assert [(r[1], r[6]) for r in _quarantine(con)] == [("44", False)]
        assert _resolved(con) == [("44", "bad")]  # the erased person's resolved entry went at once


def _bundle(exports: Path, request_id: int, generated_at: str) -> Path:
    folder = exports / str(request_id)
    folder.mkdir(parents=True)
    (folder / "source.members.members.csv").write_text("member_id,iban\n42,FR7630006000011234567890189\n")
    (folder / "bundle.json").write_text(json.dumps({"request_id": request_id, "generated_at": generated_at,
                                                    "tables": {"x": {"rows": [{"iban": "FR76300060000112"}]}}}))
    return folder


def _delivery(outbox: Path, day: dt.date) -> Path:
    folder = outbox / "transfers" / "morocco_complaints_provider" / day.isoformat()
    folder.mkdir(parents=True)
    (folder / "requests_complaints__interactions.csv").write_text("interaction_id,body\n10,mon remboursement\n")
    (folder / "deletions.csv").write_text("dataset,key_column,key_value,instruction\ninteractions,interaction_id,9,x\n")
    (folder / "manifest.json").write_text(json.dumps({"as_of": day.isoformat(), "files": []}))
    return folder


def _purge(tmp_path, policy, rules, as_of: dt.date):
    with duckdb.connect() as con:
        return purge_own_records(con, _context(tmp_path, policy), rules, as_of)


def test_an_access_bundle_keeps_its_data_through_its_last_day_then_only_its_proof(tmp_path, policy, rules):
    folder = _bundle(tmp_path / "exports", 17, "2026-09-01T10:00:00+00:00")  # P2M: kept through 1 November
    csv_hash = hashlib.sha256((folder / "source.members.members.csv").read_bytes()).hexdigest()
    for day in (dt.date(2026, 10, 31), dt.date(2026, 11, 1)):
        assert _purge(tmp_path, policy, rules, day).exports_data_deleted == 0
        assert (folder / "bundle.json").exists()
    report = _purge(tmp_path, policy, rules, dt.date(2026, 11, 2))
    assert report.exports_data_deleted == 1
    assert sorted(p.name for p in folder.iterdir()) == [PROOF]
    proof = json.loads((folder / PROOF).read_text())
    assert proof["generated_at"] == "2026-09-01" and proof["data_deleted_on"] == "2026-11-02"
    assert {"file": "source.members.members.csv", "sha256": csv_hash} in [
        {k: f[k] for k in ("file", "sha256")} for f in proof["files"]]
    assert "FR76" not in (folder / PROOF).read_text()
    assert _purge(tmp_path, policy, rules, dt.date(2026, 11, 3)).changed() is False, "nothing twice"
    assert _purge(tmp_path, policy, rules, dt.date(2031, 9, 1)).exports_proofs_removed == 0  # P5Y: last day
    assert _purge(tmp_path, policy, rules, dt.date(2031, 9, 2)).exports_proofs_removed == 1
    assert not folder.exists()
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["details"]["as_of"] for e in entries] == ["2026-11-02", "2031-09-02"]
    assert verify(tmp_path / "audit.jsonl").ok


def test_a_bundle_half_purged_by_a_killed_run_keeps_the_proof_of_every_file(tmp_path, policy, rules):
    folder = _bundle(tmp_path / "exports", 18, "2026-09-01T10:00:00+00:00")
    _purge(tmp_path, policy, rules, dt.date(2026, 11, 2))
    proof = (folder / PROOF).read_text()
    (folder / "bundle.json").write_text("{}")  # as if the kill came between the proof and the deletions
    _purge(tmp_path, policy, rules, dt.date(2026, 11, 3))
    assert (folder / PROOF).read_text() == proof and sorted(p.name for p in folder.iterdir()) == [PROOF]


@pytest.mark.parametrize(("as_of", "files"), [
    (dt.date(2026, 10, 31), ["deletions.csv", "manifest.json", "requests_complaints__interactions.csv"]),
    (dt.date(2026, 11, 1), ["deletions.csv", "manifest.json", "requests_complaints__interactions.csv"]),
    (dt.date(2026, 11, 2), ["manifest.json"]),
])
def test_a_transfer_delivery_keeps_only_its_manifest_after_its_period(tmp_path, policy, rules, as_of, files):
    folder = _delivery(tmp_path / "outbox", dt.date(2026, 10, 1))  # P1M: kept through 1 November
    _purge(tmp_path, policy, rules, as_of)
    assert sorted(p.name for p in folder.iterdir()) == files


def test_a_transfer_manifest_goes_after_its_proof_period(tmp_path, policy, rules):
    folder = _delivery(tmp_path / "outbox", dt.date(2026, 10, 1))
    assert _purge(tmp_path, policy, rules, dt.date(2031, 10, 1)).extracts_proofs_removed == 0
    assert _purge(tmp_path, policy, rules, dt.date(2031, 10, 2)).extracts_proofs_removed == 1
    assert not folder.exists()


def test_notices_lose_their_token_after_a_year_and_go_after_five(tmp_path, policy, rules):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    notices = [{"notice_id": f"n{i}", "recipient": "mailing_processor", "decision_id": "d", "action": "erase",
                "subject_token": "ab" * 32, "article": "GDPR art. 19", "created_at": created}
               for i, created in enumerate(["2025-11-01T10:00:00+00:00", "2025-11-02T10:00:00+00:00"])]
    (outbox / "notices.jsonl").write_text("".join(json.dumps(n) + "\n" for n in notices))

    def read() -> list[dict]:
        return [json.loads(line) for line in (outbox / "notices.jsonl").read_text().splitlines()]

    report = _purge(tmp_path, policy, rules, dt.date(2026, 11, 2))  # P1Y: the first kept through 1 November
    assert report.notice_tokens_removed == 1
    assert [n["subject_token"] for n in read()] == [None, "ab" * 32]
    assert read()[0]["token_removed_on"] == "2026-11-02" and read()[0]["notice_id"] == "n0"
    assert _purge(tmp_path, policy, rules, dt.date(2030, 11, 2)).notices_removed == 1
    assert [n["notice_id"] for n in read()] == ["n1"]


def test_the_nightly_asset_reports_counts_and_audits(tmp_path, monkeypatch):
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
    _bundle(tmp_path / "exports", 19, "2026-09-01T10:00:00+00:00")
    _delivery(tmp_path / "outbox", dt.date(2026, 10, 1))
    warehouse = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(warehouse)).close()
    result = dg.materialize(
        [own_records_retention],
        resources={"warehouse": WarehouseResource(path=str(warehouse)),
                   "compliance": ComplianceStoreResource(data_dir=str(tmp_path)), "policies": PoliciesResource(),
                   "pseudonymisation_key": PseudonymisationKeyResource(),
                   "navigation": NavigationSourceResource(path=str(tmp_path / "navigation"))},
        run_config={"ops": {own_records_retention.node_def.name: {"config": {"as_of": "2026-11-02"}}}},
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (metadata["exports_data_deleted"], metadata["extracts_data_deleted"]) == (1, 1)
    assert metadata["periods"]["quarantine"] == {"keep": "P30D", "proof_keep": None}
    assert metadata["periods"]["quarantine_resolved"] == {"keep": "P30D", "proof_keep": None}
    audit = tmp_path / "audit" / "audit.jsonl"
    assert [json.loads(line)["action"] for line in audit.read_text().splitlines()] == [AUDIT_ACTION]
    # written with the audit key like every other stage's entries (the chain verifies with it)
    assert verify(audit, key=KeyProvider(bytes.fromhex(TEST_KEY_HEX)).domain_key(AUDIT_DOMAIN)).ok


def _deliveries(con, lines: list[tuple[str, str, str]]) -> None:
    """transfers.delivered_rows lines (day, complaint id, action) to the Morocco provider, as build_transfer
    writes them; complaints 1 to 4 are still held by SEM, 5 was erased."""
    con.execute(STATE_DDL)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw; CREATE OR REPLACE TABLE raw.interactions AS "
                "SELECT range AS interaction_id FROM range(1, 5)")
    con.executemany("INSERT INTO transfers.delivered_rows VALUES ('morocco_complaints_provider', ?, "
                    "'requests_complaints__interactions', ?, 'member', '7', 'h', ?)", lines)


@pytest.mark.parametrize(("offset", "kept"), [(-1, True), (0, True), (1, False)])
def test_what_a_recipient_was_sent_is_forgotten_after_its_period_never_while_it_holds_it(tmp_path, policy, rules,
                                                                                        offset, kept):
    sent, later = dt.date(2024, 11, 1), dt.date(2025, 3, 1)
    last_day = dt.date(2026, 11, 1)  # delivered_rows keep P2Y from the delivery of 1 November 2024
    with duckdb.connect() as con:
        _deliveries(con, [(sent, "1", SENT), (sent, "2", SENT), (later, "2", SENT),  # 2 changed and sent again
                          (sent, "3", SENT), (later, "3", DELETION),  # 3 left the purpose: deletion instruction
                          (sent, "5", SENT), (later, "5", ERASURE_NOTICE)])  # 5 erased at SEM, recipient told
        report = purge_own_records(con, _context(tmp_path, policy), rules, last_day + offset * DAY)
        left = con.execute("SELECT record_key, as_of, action FROM transfers.delivered_rows ORDER BY ALL").fetchall()
    held = [("1", sent, SENT), ("2", later, SENT), ("3", later, DELETION)]  # what the recipient holds, or the last
    history = [("2", sent, SENT), ("3", sent, SENT)]
    assert left == sorted(held + (history if kept else []))
    assert report.delivered_rows_removed == 2 + (0 if kept else 2)  # the erased record's lines went at once
