"""Transfers outside the EU: the Morocco complaints and Monaco settlement deliveries, as the policy allows them,
sent once (only new or changed rows within the recipient's purpose), with deletion instructions, art. 19 notices
and no duplicate delivery or audit entry on a re-run."""

import csv
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from assets.transfers import TRANSFER_RECIPIENTS, transfer_assets
from pipelines.audit import AUDIT_DOMAIN, AuditLog, subject_token, verify
from pipelines.ingest import duckdb_type
from pipelines.orchestration import settings
from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
)
from pipelines.policy.load import load_policy
from pipelines.pseudo.keys import KeyProvider
from pipelines.pushback.notices import read_notices
from pipelines.sources.schema import SQL_SYSTEMS
from pipelines.transfers import (
    DELETIONS,
    MANIFEST,
    DeliveryOrderError,
    NotATransferError,
    build_transfer,
    transfer_recipients,
)
from tests.conftest import TEST_KEY_HEX, core_context

AS_OF = dt.date(2026, 11, 1)
DAY = dt.timedelta(days=1)
MOROCCO = "morocco_complaints_provider"
MONACO = "monaco_health_professionals"


def _tokenise(value: str) -> str:
    """The keyed subject token the core's context gives (audit domain of the test key)."""
    return subject_token(value, KeyProvider(bytes.fromhex(TEST_KEY_HEX)).domain_key(AUDIT_DOMAIN))


def _warehouse(path: Path) -> Path:
    """Members 1-6: 2 restricted at the source, 3 erased (rights.exclusions), 4 objected to prospecting only."""
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA raw; CREATE SCHEMA identity; CREATE SCHEMA rights")
        for metadata in SQL_SYSTEMS.values():  # every source table, empty, as ingest types it
            for table in metadata.sorted_tables:
                columns = ", ".join(f'"{c.name}" {duckdb_type(c)}' for c in table.columns)
                con.execute(f'CREATE TABLE raw."{table.name}" ({columns})')
        con.execute(
            "INSERT INTO raw.members BY NAME SELECT i AS member_id, 'Mme' AS civility, 'Prénom' || i AS first_name, "
            "'Nom' || i AS last_name, 'm' || i || '@example.fr' AS email, '060000000' || i AS phone, "
            "i || ' rue des Lilas' AS street, '75001' AS postal_code, 'Paris' AS city, "
            "DATE '2003-01-01' AS birth_date, "
            "'FR76' || i AS iban, CASE WHEN i = 2 THEN TIMESTAMP '2026-10-01' END AS restricted_at "
            "FROM range(1, 7) t(i)"
        )
        # 15: a complaint handled in Morocco but closed in 2019: out of the provider's purpose, never sent.
        con.execute(
            "INSERT INTO raw.interactions BY NAME SELECT * FROM (VALUES "
            f"(10, 1, 'complaint', 'phone', '{MOROCCO}', 'rembt', 'x', TIMESTAMP '2026-10-02', NULL::TIMESTAMP), "
            f"(11, 2, 'complaint', 'email', '{MOROCCO}', 'retard', 'x', TIMESTAMP '2026-10-03', NULL), "
            f"(12, 3, 'complaint', 'email', '{MOROCCO}', 'retard', 'x', TIMESTAMP '2026-10-04', NULL), "
            f"(13, 4, 'complaint', 'mail', '{MOROCCO}', 'carte', 'x', TIMESTAMP '2026-10-05', NULL), "
            "(14, 5, 'request', 'mail', 'sem', 'attestation', 'x', TIMESTAMP '2026-10-06', NULL), "
            f"(15, 6, 'complaint', 'phone', '{MOROCCO}', 'ancien', 'x', TIMESTAMP '2019-01-06', "
            "TIMESTAMP '2019-02-01')"
            ") t(interaction_id, member_id, kind, channel, handled_by, subject, body, created_at, closed_at)"
        )
        # 20 unpaid, 21 paid on the day: within the settlement purpose; 24 paid in 2019: not any more.
        con.execute(
            "INSERT INTO raw.reimbursements BY NAME SELECT * FROM (VALUES "
            "(20, 1, DATE '2026-09-01', 'C', 'Consultation', 30.0, 21.0, 'Dr A', 'MC', NULL::TIMESTAMP), "
            f"(21, 5, DATE '2026-09-02', 'C', 'Consultation', 30.0, 21.0, 'Dr B', 'MC', TIMESTAMP '{AS_OF} 10:00'), "
            "(22, 2, DATE '2026-09-03', 'C', 'Consultation', 30.0, 21.0, 'Dr C', 'MC', NULL), "
            "(23, 4, DATE '2026-09-04', 'C', 'Consultation', 30.0, 21.0, 'Dr D', 'FR', NULL), "
            "(24, 6, DATE '2019-09-04', 'C', 'Consultation', 30.0, 21.0, 'Dr E', 'MC', TIMESTAMP '2019-09-13')"
            ") t(reimbursement_id, member_id, care_date, act_code, act_label, amount_eur, reimbursed_eur, "
            "professional_name, professional_country, paid_at)"
        )
        con.execute(
            "CREATE TABLE identity.person_links AS SELECT 'p' || i AS person_id, 'member' AS node_type, "
            "CAST(i AS VARCHAR) AS node_value FROM range(1, 7) t(i)"
        )
        con.execute(
            "CREATE TABLE rights.exclusions AS SELECT * FROM (VALUES ('p3', 'erased', DATE '2026-10-20'), "
            "('p4', 'objection_prospecting', DATE '2026-10-21')) t(person_id, reason, since)"
        )
    return path


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _ids(folder: Path, file: str, column: str) -> list[str]:
    return sorted(r[column] for r in _read(folder / file)[1])


def _entries(audit: AuditLog) -> list[dict]:
    if not audit.path.exists():
        return []
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


@pytest.fixture
def policy():
    return load_policy(settings.policies_dir())


class World:
    """One warehouse, outbox and audit log, delivered day after day."""

    def __init__(self, tmp_path: Path, policy) -> None:
        self.root, self.policy = tmp_path, policy
        self.warehouse = _warehouse(tmp_path / "warehouse.duckdb")
        self.outbox = tmp_path / "outbox"
        self.audit = AuditLog(tmp_path / "audit.jsonl")

    @property
    def ctx(self):
        return core_context(self.root, self.policy, self.root / "navigation", self.audit.path)

    def sql(self, statement: str) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            con.execute(statement)

    def deliver(self, recipient: str, as_of: dt.date = AS_OF):
        with duckdb.connect(str(self.warehouse)) as con:
            return build_transfer(con, self.ctx, recipient, as_of)


@pytest.fixture
def world(tmp_path, policy) -> World:
    return World(tmp_path, policy)


def _allowed(policy, recipient: str) -> dict[str, list[str]]:
    r = next(r for r in policy.recipients if r.key == recipient)
    return {f"{d.purpose}__{d.dataset}.csv": d.columns for d in r.receives}


def test_every_transfer_the_policy_declares_has_an_extract_asset():
    declared = {r.key for r in transfer_recipients(load_policy(settings.policies_dir()))}
    assert declared == set(TRANSFER_RECIPIENTS) == {MOROCCO, MONACO}


def test_morocco_gets_open_complaints_only_allowed_columns_and_no_restricted_or_erased_person(world, policy):
    report = world.deliver(MOROCCO)
    allowed = _allowed(policy, MOROCCO)
    assert {f.file for f in report.files} == set(allowed)
    header, complaints = _read(report.folder / "requests_complaints__interactions.csv")
    assert header == allowed["requests_complaints__interactions.csv"]
    assert "handled_by" not in header
    # 2 is restricted, 3 erased, 14 is handled in France, 15 closed in 2019; 4 only objected to prospecting.
    assert sorted(r["interaction_id"] for r in complaints) == ["10", "13"]
    header, people = _read(report.folder / "requests_complaints__members.csv")
    assert header == allowed["requests_complaints__members.csv"]
    assert not {"street", "birth_date", "iban"} & set(header)
    assert sorted(r["member_id"] for r in people) == ["1", "4"]


def test_monaco_gets_settlements_within_their_purpose_and_their_members(world, policy):
    report = world.deliver(MONACO)
    header, settlements = _read(report.folder / "reimbursements__reimbursements.csv")
    assert header == _allowed(policy, MONACO)["reimbursements__reimbursements.csv"]
    assert "professional_name" not in header
    # 22: restricted member; 23: France; 24: settled in 2019.
    assert sorted(r["reimbursement_id"] for r in settlements) == ["20", "21"]
    assert _ids(report.folder, "reimbursements__members.csv", "member_id") == ["1", "5"]


def test_extract_is_manifested_audited_with_its_safeguard_and_leaves_no_temp_file(world):
    report = world.deliver(MOROCCO)
    manifest = json.loads((report.folder / MANIFEST).read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((report.folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert "2021/914" in manifest["mechanism"]
    assert not [p for p in report.folder.iterdir() if p.name.startswith(".")]
    [entry] = _entries(world.audit)
    assert entry["action"] == "transfer.outside_eu"
    assert entry["details"]["recipient"] == MOROCCO and entry["details"]["country"] == "MA"
    assert entry["details"]["safeguards"] == manifest["safeguards"]
    assert "Prénom1" not in world.audit.path.read_text()
    assert verify(world.audit.path).ok
    with duckdb.connect(str(world.warehouse)) as con:
        recorded = con.execute("SELECT as_of, rows_sent, mechanism FROM transfers.deliveries").fetchall()
    assert recorded == [(AS_OF, 4, manifest["mechanism"])]


def test_next_day_sends_only_new_or_changed_rows_and_nothing_when_nothing_changed(world):
    world.deliver(MOROCCO)
    quiet = world.deliver(MOROCCO, AS_OF + DAY)
    assert quiet.folder is None and quiet.rows_sent == 0 and quiet.held_rows == 4
    assert len(_entries(world.audit)) == 1, "nothing transferred, nothing audited"
    world.sql("UPDATE raw.members SET email = 'nouvelle@example.fr' WHERE member_id = 4")
    world.sql(f"INSERT INTO raw.interactions VALUES (16, 5, 'complaint', 'phone', '{MOROCCO}', 'devis', 'x', "
              f"TIMESTAMP '{AS_OF + DAY} 09:00', NULL, TIMESTAMP '{AS_OF + DAY} 09:00')")
    report = world.deliver(MOROCCO, AS_OF + 2 * DAY)
    assert _ids(report.folder, "requests_complaints__interactions.csv", "interaction_id") == ["16"]
    assert _ids(report.folder, "requests_complaints__members.csv", "member_id") == ["4", "5"]
    assert json.loads((report.folder / MANIFEST).read_text())["previous_delivery"] == AS_OF.isoformat()
    assert [e["details"]["as_of"] for e in _entries(world.audit)] == [AS_OF.isoformat(), (AS_OF + 2 * DAY).isoformat()]


def test_a_closure_sends_one_deletion_instruction_for_the_complaint_and_its_member(world):
    world.deliver(MOROCCO)
    closed = AS_OF + DAY
    world.sql(f"UPDATE raw.interactions SET closed_at = TIMESTAMP '{closed} 11:00' WHERE interaction_id = 10")
    report = world.deliver(MOROCCO, closed + DAY)
    assert report.rows_sent == 0 and report.deletions == 2
    _, deletions = _read(report.folder / DELETIONS)
    assert sorted((d["dataset"], d["key_value"]) for d in deletions) == [("interactions", "10"), ("members", "1")]
    assert all("28(3)(g)" in d["instruction"] for d in deletions)
    assert "body" not in deletions[0]
    again = world.deliver(MOROCCO, closed + 2 * DAY)
    assert again.deletions == 0 and again.folder is None and again.held_rows == 2


def test_monaco_declares_no_deletion_instruction_and_a_settled_claim_is_simply_not_sent_again(world):
    world.deliver(MONACO)
    world.sql(f"UPDATE raw.reimbursements SET paid_at = TIMESTAMP '{AS_OF + DAY} 08:00' WHERE reimbursement_id = 20")
    world.deliver(MONACO, AS_OF + DAY)  # the payment itself is a change the professional is told
    later = world.deliver(MONACO, AS_OF + 3 * DAY)
    assert later.deletions == 0 and later.folder is None


def test_a_person_erased_or_restricted_after_a_delivery_gets_one_art19_notice_to_that_recipient(world):
    world.deliver(MOROCCO)
    world.sql("DELETE FROM raw.interactions WHERE member_id = 1; DELETE FROM raw.members WHERE member_id = 1")
    world.sql("UPDATE raw.members SET restricted_at = TIMESTAMP '2026-11-01 12:00' WHERE member_id = 4")
    report = world.deliver(MOROCCO, AS_OF + DAY)
    assert report.rows_sent == 0 and report.deletions == 0 and report.notices == 2
    notices = read_notices(world.outbox)
    assert sorted((n["recipient"], n["action"], n["subject_token"]) for n in notices) == sorted(
        [(MOROCCO, "erase", _tokenise("member:1")), (MOROCCO, "restrict", _tokenise("member:4"))])
    assert all(n["article"] == "GDPR art. 19" for n in notices)
    world.deliver(MOROCCO, AS_OF + 2 * DAY)
    assert len(read_notices(world.outbox)) == 2, "said once"
    # Lifting the restriction makes the person's open complaint due again.
    world.sql("UPDATE raw.members SET restricted_at = NULL WHERE member_id = 4")
    lifted = world.deliver(MOROCCO, AS_OF + 3 * DAY)
    assert _ids(lifted.folder, "requests_complaints__interactions.csv", "interaction_id") == ["13"]


def test_a_rerun_of_the_same_day_delivers_and_audits_nothing_twice(world):
    first = world.deliver(MOROCCO)
    before = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    world.sql("UPDATE raw.members SET email = 'autre@example.fr' WHERE member_id = 1")  # changed in between
    second = world.deliver(MOROCCO)
    assert second.already_delivered and not second.audited
    assert {p.name: p.read_bytes() for p in first.folder.iterdir()} == before
    assert len(_entries(world.audit)) == 1
    with duckdb.connect(str(world.warehouse)) as con:
        assert con.execute("SELECT count(*) FROM transfers.deliveries").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM transfers.delivered_rows").fetchall() == [(4,)]
    assert world.deliver(MOROCCO, AS_OF + DAY).rows_sent == 1, "the change goes with the next day"


def test_a_run_killed_after_recording_but_before_auditing_is_audited_once_by_the_rerun(world, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(AuditLog, "append", killed)
        with pytest.raises(KeyboardInterrupt):
            world.deliver(MOROCCO)
    assert _entries(world.audit) == []
    rerun = world.deliver(MOROCCO)
    assert rerun.already_delivered and rerun.audited
    assert world.deliver(MOROCCO).audited is False
    [entry] = _entries(world.audit)
    assert entry["details"]["delivery_id"] == f"transfer:{MOROCCO}:{AS_OF}"


def test_a_run_killed_after_writing_files_but_before_recording_rewrites_the_same_delivery(world, monkeypatch):
    import pipelines.transfers as transfers

    real = transfers._write_files

    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(transfers, "_write_files", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            world.deliver(MOROCCO)
    rerun = world.deliver(MOROCCO)
    assert not rerun.already_delivered and rerun.rows_sent == 4
    assert len(_entries(world.audit)) == 1
    with duckdb.connect(str(world.warehouse)) as con:
        assert con.execute("SELECT count(*) FROM transfers.delivered_rows").fetchall() == [(4,)]


def test_an_earlier_day_cannot_be_delivered_after_a_later_one(world):
    world.deliver(MOROCCO, AS_OF + DAY)
    with pytest.raises(DeliveryOrderError, match="deltas only go forward"):
        world.deliver(MOROCCO)


def test_columns_follow_the_policy_file(tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(settings.policies_dir(), folder)
    recipients = yaml.safe_load((folder / "recipients.yaml").read_text())
    morocco = next(r for r in recipients["recipients"] if r["key"] == MOROCCO)
    members = next(d for d in morocco["receives"] if d["dataset"] == "members")
    members["columns"] = ["member_id", "last_name"]
    (folder / "recipients.yaml").write_text(yaml.safe_dump(recipients, allow_unicode=True))
    report = World(tmp_path, load_policy(folder)).deliver(MOROCCO)
    header, _ = _read(report.folder / "requests_complaints__members.csv")
    assert header == ["member_id", "last_name"]


def test_a_recipient_inside_the_eu_gets_no_transfer_extract(world):
    with pytest.raises(NotATransferError):
        world.deliver("mailing_processor")


def test_transfer_assets_materialise_into_the_compliance_outbox_once_per_day(tmp_path, monkeypatch):
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
    warehouse = _warehouse(tmp_path / "warehouse.duckdb")

    def materialise() -> dict[str, dict]:
        result = dg.materialize(
            transfer_assets,
            resources={
                "warehouse": WarehouseResource(path=str(warehouse)),
                "compliance": ComplianceStoreResource(data_dir=str(tmp_path)),
                "policies": PoliciesResource(),
                "pseudonymisation_key": PseudonymisationKeyResource(),
                "navigation": NavigationSourceResource(path=str(tmp_path / "navigation")),
            },
            run_config={"ops": {a.node_def.name: {"config": {"as_of": AS_OF.isoformat()}} for a in transfer_assets}},
        )
        assert result.success
        return {m.asset_key.path[-1]: {k: v.value for k, v in m.materialization.metadata.items()}
                for m in result.get_asset_materialization_events()}

    first = materialise()
    assert {k: v["dagster/row_count"] for k, v in first.items()} == {f"transfer_{MOROCCO}": 4,
                                                                    f"transfer_{MONACO}": 4}
    assert (tmp_path / "outbox" / "transfers" / MONACO / AS_OF.isoformat() / MANIFEST).exists()
    second = materialise()
    assert all(v["already_delivered"] for v in second.values())
    audit = tmp_path / "audit" / "audit.jsonl"
    assert [json.loads(line)["action"] for line in audit.read_text().splitlines()] == ["transfer.outside_eu"] * 2
    assert verify(audit).ok


def test_a_transfer_decides_its_rows_from_the_ledger_of_its_own_datasets_with_the_same_result(
        tmp_path, generated_sources, policy):
    """A delivery computes the purposes of the datasets it sends only (not the population): their rows, purpose
    statuses and record statuses are exactly those the whole ledger gives them."""
    import sqlalchemy as sa

    from pipelines.identity import resolve_identities
    from pipelines.refresh import ingest_all
    from pipelines.retention.ledger import compute
    from tests.conftest import TEST_AS_OF

    sources = generated_sources
    engines = {s: sa.create_engine(f"sqlite:///{sources / (s + '.db')}") for s in SQL_SYSTEMS}
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        ingest_all(con, engines, sources / "navigation", policy)
        resolve_identities(con, policy.datasets_file.identity)
        compute(con, policy, TEST_AS_OF, prefix="_whole")
        for recipient in transfer_recipients(policy):
            datasets = sorted({d.dataset for d in recipient.receives})
            compute(con, policy, TEST_AS_OF, prefix="_some", datasets=datasets)
            for table in ("purposes", "records"):
                whole = con.execute(f"SELECT * FROM _whole_{table} WHERE list_contains(?, dataset) ORDER BY ALL",
                                    [datasets]).fetchall()
                some = con.execute(f"SELECT * FROM _some_{table} ORDER BY ALL").fetchall()
                assert whole and some == whole, (recipient.key, table)
            assert {d for (d,) in con.execute("SELECT DISTINCT dataset FROM _some_records").fetchall()} <= set(datasets)
