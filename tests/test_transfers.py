"""Transfers outside the EU: the Morocco complaints and Monaco settlement extracts, as the policy allows them."""

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
from pipelines import settings
from pipelines.audit import AuditLog, verify
from pipelines.policy.load import load_policy
from pipelines.policy.resource import PoliciesResource
from pipelines.resources import ComplianceStoreResource, WarehouseResource
from pipelines.transfers import MANIFEST, NotATransferError, build_transfer, transfer_recipients

AS_OF = dt.date(2026, 11, 1)
MOROCCO = "morocco_complaints_provider"
MONACO = "monaco_health_professionals"


def _warehouse(path: Path) -> Path:
    """Members 1-5: 2 restricted at the source, 3 erased (rights.exclusions), 4 objected to prospecting only."""
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA raw; CREATE SCHEMA identity; CREATE SCHEMA rights")
        con.execute(
            "CREATE TABLE raw.members AS SELECT i AS member_id, 'Mme' AS civility, 'Prénom' || i AS first_name, "
            "'Nom' || i AS last_name, 'm' || i || '@example.fr' AS email, '060000000' || i AS phone, "
            "i || ' rue des Lilas' AS street, '75001' AS postal_code, 'Paris' AS city, "
            "DATE '2003-01-01' AS birth_date, "
            "'FR76' || i AS iban, CASE WHEN i = 2 THEN TIMESTAMP '2026-10-01' END AS restricted_at "
            "FROM range(1, 6) t(i)"
        )
        con.execute("CREATE TABLE raw.prospects (prospect_id BIGINT, restricted_at TIMESTAMP)")
        con.execute(
            "CREATE TABLE raw.interactions AS SELECT * FROM (VALUES "
            f"(10, 1, 'complaint', 'phone', '{MOROCCO}', 'rembt', 'x', TIMESTAMP '2026-10-02', NULL::TIMESTAMP), "
            f"(11, 2, 'complaint', 'email', '{MOROCCO}', 'retard', 'x', TIMESTAMP '2026-10-03', NULL), "
            f"(12, 3, 'complaint', 'email', '{MOROCCO}', 'retard', 'x', TIMESTAMP '2026-10-04', NULL), "
            f"(13, 4, 'complaint', 'mail', '{MOROCCO}', 'carte', 'x', TIMESTAMP '2026-10-05', NULL), "
            "(14, 5, 'request', 'mail', 'sem', 'attestation', 'x', TIMESTAMP '2026-10-06', NULL)"
            ") t(interaction_id, member_id, kind, channel, handled_by, subject, body, created_at, closed_at)"
        )
        con.execute(
            "CREATE TABLE raw.reimbursements AS SELECT * FROM (VALUES "
            "(20, 1, DATE '2026-09-01', 'C', 'Consultation', 30.0, 21.0, 'Dr A', 'MC', TIMESTAMP '2026-09-10'), "
            "(21, 5, DATE '2026-09-02', 'C', 'Consultation', 30.0, 21.0, 'Dr B', 'MC', TIMESTAMP '2026-09-11'), "
            "(22, 2, DATE '2026-09-03', 'C', 'Consultation', 30.0, 21.0, 'Dr C', 'MC', TIMESTAMP '2026-09-12'), "
            "(23, 4, DATE '2026-09-04', 'C', 'Consultation', 30.0, 21.0, 'Dr D', 'FR', TIMESTAMP '2026-09-13')"
            ") t(reimbursement_id, member_id, care_date, act_code, act_label, amount_eur, reimbursed_eur, "
            "professional_name, professional_country, paid_at)"
        )
        con.execute(
            "CREATE TABLE identity.person_links AS SELECT 'p' || i AS person_id, 'member' AS node_type, "
            "CAST(i AS VARCHAR) AS node_value FROM range(1, 6) t(i)"
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


@pytest.fixture
def policy():
    return load_policy(settings.policies_dir())


def _build(tmp_path: Path, policy, recipient: str):
    warehouse = _warehouse(tmp_path / "warehouse.duckdb")
    audit = AuditLog(tmp_path / "audit.jsonl")
    with duckdb.connect(str(warehouse)) as con:
        return build_transfer(con, policy, recipient, tmp_path / "outbox", AS_OF, audit), audit


def _allowed(policy, recipient: str) -> dict[str, list[str]]:
    r = next(r for r in policy.recipients if r.key == recipient)
    return {f"{d.purpose}__{d.dataset}.csv": d.columns for d in r.receives}


def test_every_transfer_the_policy_declares_has_an_extract_asset():
    declared = {r.key for r in transfer_recipients(load_policy(settings.policies_dir()))}
    assert declared == set(TRANSFER_RECIPIENTS) == {MOROCCO, MONACO}


def test_morocco_extract_has_only_allowed_columns_and_no_restricted_or_erased_person(tmp_path, policy):
    report, _ = _build(tmp_path, policy, MOROCCO)
    allowed = _allowed(policy, MOROCCO)
    assert {f.file for f in report.files} == set(allowed)
    header, complaints = _read(report.folder / "requests_complaints__interactions.csv")
    assert header == allowed["requests_complaints__interactions.csv"]
    assert "handled_by" not in header
    # 2 is restricted, 3 erased, 14 is handled in France; 4 only objected to prospecting.
    assert sorted(r["interaction_id"] for r in complaints) == ["10", "13"]
    header, people = _read(report.folder / "requests_complaints__members.csv")
    assert header == allowed["requests_complaints__members.csv"]
    assert not {"street", "birth_date", "iban"} & set(header)
    assert sorted(r["member_id"] for r in people) == ["1", "4"]


def test_monaco_extract_covers_only_monaco_settlements_and_their_members(tmp_path, policy):
    report, _ = _build(tmp_path, policy, MONACO)
    header, settlements = _read(report.folder / "reimbursements__reimbursements.csv")
    assert header == _allowed(policy, MONACO)["reimbursements__reimbursements.csv"]
    assert "professional_name" not in header
    assert sorted(r["reimbursement_id"] for r in settlements) == ["20", "21"]
    _, people = _read(report.folder / "reimbursements__members.csv")
    assert sorted(r["member_id"] for r in people) == ["1", "5"]


def test_extract_is_manifested_audited_with_its_safeguard_and_leaves_no_temp_file(tmp_path, policy):
    report, audit = _build(tmp_path, policy, MOROCCO)
    manifest = json.loads((report.folder / MANIFEST).read_text())
    for entry in manifest["files"]:
        assert hashlib.sha256((report.folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert "2021/914" in manifest["mechanism"]
    assert not [p for p in report.folder.iterdir() if p.name.startswith(".")]
    [entry] = [json.loads(line) for line in audit.path.read_text().splitlines()]
    assert entry["action"] == "transfer.outside_eu"
    assert entry["details"]["recipient"] == MOROCCO and entry["details"]["country"] == "MA"
    assert entry["details"]["safeguards"] == manifest["safeguards"]
    assert "Prénom1" not in audit.path.read_text()
    assert verify(audit.path).ok


def test_columns_follow_the_policy_file(tmp_path):
    folder = tmp_path / "policies"
    shutil.copytree(settings.policies_dir(), folder)
    recipients = yaml.safe_load((folder / "recipients.yaml").read_text())
    morocco = next(r for r in recipients["recipients"] if r["key"] == MOROCCO)
    members = next(d for d in morocco["receives"] if d["dataset"] == "members")
    members["columns"] = ["member_id", "last_name"]
    (folder / "recipients.yaml").write_text(yaml.safe_dump(recipients, allow_unicode=True))
    report, _ = _build(tmp_path, load_policy(folder), MOROCCO)
    header, _ = _read(report.folder / "requests_complaints__members.csv")
    assert header == ["member_id", "last_name"]


def test_a_recipient_inside_the_eu_gets_no_transfer_extract(tmp_path, policy):
    with pytest.raises(NotATransferError):
        _build(tmp_path, policy, "mailing_processor")


def test_transfer_assets_materialise_into_the_compliance_outbox(tmp_path):
    warehouse = _warehouse(tmp_path / "warehouse.duckdb")
    result = dg.materialize(
        transfer_assets,
        resources={
            "warehouse": WarehouseResource(path=str(warehouse)),
            "compliance": ComplianceStoreResource(data_dir=str(tmp_path)),
            "policies": PoliciesResource(),
        },
        run_config={"ops": {a.node_def.name: {"config": {"as_of": AS_OF.isoformat()}} for a in transfer_assets}},
    )
    assert result.success
    rows = {
        m.asset_key.path[-1]: m.materialization.metadata["dagster/row_count"].value
        for m in result.get_asset_materialization_events()
    }
    assert rows == {f"transfer_{MOROCCO}": 4, f"transfer_{MONACO}": 4}
    assert (tmp_path / "outbox" / "transfers" / MONACO / AS_OF.isoformat() / MANIFEST).exists()
    assert verify(tmp_path / "audit" / "audit.jsonl").ok
