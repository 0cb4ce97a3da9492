"""Habilitations: the archive opens only for an allowed role with a reason, read-only, and every opening is logged."""

import json
from pathlib import Path

import duckdb
import pytest

from pipelines.access import AccessDenied, can_read, load_roles, open_analytics, open_archive
from pipelines.audit import AuditLog, verify
from pipelines.orchestration import settings
from pipelines.policy.loader import PolicyError

ROLES = settings.policies_dir() / "roles.yaml"


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA raw; CREATE SCHEMA archive")
        con.execute("CREATE TABLE raw.members AS SELECT 1 AS member_id, 'active' AS state")
        con.execute("CREATE TABLE archive.accounting_entries AS SELECT 7 AS entry_id, 2019 AS fiscal_year")
    return path


@pytest.fixture
def audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl")


def _entries(audit: AuditLog) -> list[dict]:
    if not audit.path.exists():
        return []
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_policy_roles_give_analysts_only_the_analytics_file():
    roles = load_roles(ROLES)
    assert {r.key for r in roles.roles} >= {"data_engineer", "analyst", "dpo", "complaints_provider"}
    stores = ("warehouse", "archive", "analytics", "audit_log", "outbox")
    assert [s for s in stores if can_read(roles, "analyst", s)] == ["analytics"]
    assert can_read(roles, "dpo", "archive") and not can_read(roles, "data_engineer", "archive")
    assert can_read(roles, "complaints_provider", "outbox", recipient="morocco_complaints_provider")
    assert not can_read(roles, "complaints_provider", "outbox", recipient="monaco_health_professionals")


def test_dpo_with_a_reason_reads_the_archive_read_only_and_the_access_is_logged(warehouse, audit):
    con = open_archive("dpo", "Réquisition judiciaire n° 2026-114", actor="dpo.sil", warehouse_path=warehouse,
                       roles=load_roles(ROLES), audit=audit)
    assert con.execute("SELECT entry_id, fiscal_year FROM accounting_entries").fetchall() == [(7, 2019)]
    with pytest.raises(duckdb.Error):
        con.execute("DELETE FROM accounting_entries")
    with pytest.raises(duckdb.Error):
        con.execute(f"ATTACH '{warehouse}' AS again")
    con.close()
    [entry] = _entries(audit)
    assert entry["action"] == "archive.read"
    assert entry["actor"] == "dpo.sil"
    assert entry["reason"] == "Réquisition judiciaire n° 2026-114"
    assert entry["details"]["tables"] == ["accounting_entries"]
    assert verify(audit.path).ok


@pytest.mark.parametrize(("role", "reason"), [("analyst", "étude"), ("data_engineer", "debug"), ("dpo", "  ")])
def test_archive_refused_without_the_right_or_a_reason_and_nothing_is_read(warehouse, audit, role, reason):
    with pytest.raises(AccessDenied):
        open_archive(role, reason, warehouse_path=warehouse, roles=load_roles(ROLES), audit=audit)
    assert _entries(audit) == []


def test_unknown_role_is_refused(warehouse, audit):
    with pytest.raises(AccessDenied, match="unknown role"):
        open_archive("intern", "curiosité", warehouse_path=warehouse, roles=load_roles(ROLES), audit=audit)


def test_analytics_door_is_for_analysts_not_complaints_provider(tmp_path):
    path = tmp_path / "analytics.duckdb"
    duckdb.connect(str(path)).close()
    with open_analytics("analyst", analytics_path=path, roles=load_roles(ROLES)) as con:
        assert con.execute("SELECT 1").fetchall() == [(1,)]
    with pytest.raises(AccessDenied):
        open_analytics("complaints_provider", analytics_path=path, roles=load_roles(ROLES))


def test_a_bad_roles_file_is_refused_with_its_key(tmp_path):
    text = (settings.policies_dir() / "roles.yaml").read_text()
    bad = tmp_path / "roles.yaml"
    bad.write_text(text.replace("reads: [analytics]", "reads: [analytics, archives]", 1))
    with pytest.raises(PolicyError, match=r"roles\[2\]\.reads"):
        load_roles(bad)
