"""Crafted policy files cannot reach SQL: names are refused at load, values are literals, filters are structured.

Through the real loader (`load_policy`), the real preview asset run by Dagster, the real rights run and the
real transfer extract; plus the load-time bounds (durations, direct identifiers).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa
import yaml

from assets.compliance_register import policy_change_preview
from pipelines.identity import resolve_identities
from pipelines.orchestration.resources import ComplianceStoreResource, PoliciesResource, WarehouseResource
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.policy.loader import PolicyError
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.refresh import ingest_all
from pipelines.rights.process import process_rights
from pipelines.sources.schema import SQL_SYSTEMS
from tests.conftest import TEST_AS_OF, core_context, identity_rules
from tests.test_transfers import MOROCCO, World

POLICIES = PROJECT_ROOT / "policies"


def _copy(tmp_path: Path, file: str, change: Callable[[dict], None], folder: str = "policies") -> Path:
    target = tmp_path / folder
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("proposed"))
    data = yaml.safe_load((target / file).read_text())
    change(data)
    (target / file).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return target


def _refused(folder: Path) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        load_policy(folder)
    return err.value


def _dataset(data: dict, name: str) -> dict:
    return next(d for d in data["datasets"] if d["name"] == name)


def _recipient(data: dict, key: str) -> dict:
    return next(r for r in data["recipients"] if r["key"] == key)


def _leaking_clock(leak: Path) -> Callable[[dict], None]:
    """A clock whose key would, pasted into `CREATE TEMP TABLE _ret_clock_<key> AS …`, copy members to a file."""
    key = (f"x AS SELECT 1; COPY (SELECT first_name, email, iban FROM raw.members) TO '{leak}' (FORMAT csv); "
           "CREATE TEMP TABLE _y")

    def change(data: dict) -> None:
        data["clocks"][key] = {"description": "crafted", "table": "members", "columns": ["created_at"],
                               "per": "record"}
    return change


def test_a_crafted_clock_key_is_refused_by_the_loader_naming_file_and_key(tmp_path):
    error = _refused(_copy(tmp_path, "datasets.yaml", _leaking_clock(tmp_path / "leak.csv")))
    assert error.file.endswith("datasets.yaml") and error.key.startswith("clocks.x AS SELECT 1;")
    assert "should match pattern" in error.problem and error.line is not None


def test_the_preview_job_on_a_crafted_proposal_fails_and_copies_nothing(tmp_path, sandbox):
    engines = {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}") for s in SQL_SYSTEMS}
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, sandbox.sources / "navigation", load_policy(PROJECT_ROOT / "policies"))
    leak = tmp_path / "leak.csv"
    proposed = _copy(tmp_path, "datasets.yaml", _leaking_clock(leak), folder="proposed")
    result = dg.materialize(
        [policy_change_preview],
        resources={"warehouse": WarehouseResource(path=str(sandbox.warehouse)), "policies": PoliciesResource(),
                   "compliance": ComplianceStoreResource(data_dir=str(tmp_path / "compliance"))},
        run_config={"ops": {"compliance__policy_change_preview": {
            "config": {"proposed_dir": str(proposed), "as_of": TEST_AS_OF.isoformat()}}}},
        raise_on_error=False,
    )
    assert not leak.exists()  # the unvalidated key ran its COPY on the read-only connection
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.error
    assert error.cause.cls_name == "PolicyError" and "proposed/datasets.yaml:" in error.cause.message
    assert ": clocks.x AS SELECT 1" in error.cause.message
    with duckdb.connect(str(sandbox.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM raw.members").fetchall()[0][0] > 0


@pytest.mark.parametrize("name", ["members; DROP TABLE raw.members", 'iban" FROM raw.members --', "Members"])
def test_table_and_column_names_outside_the_pattern_are_refused(tmp_path, name):
    def change(data: dict) -> None:
        data["clocks"]["membership_end"]["columns"] = [name]
    error = _refused(_copy(tmp_path, "datasets.yaml", change))
    assert error.file.endswith("datasets.yaml") and error.key == "clocks.membership_end.columns[0]"


def test_a_quote_in_a_legal_hold_value_is_a_literal_and_holds_the_person_through_erasure(tmp_path, sandbox):
    """`en cours d'instruction` broke every rights run; now the member whose case has that status and who asks
    for erasure keeps the case in the restricted archive under the legal-claims reason."""
    status = "en cours d'instruction"
    policies = _copy(tmp_path, "datasets.yaml", lambda d: d["legal_holds"][0].update(value=status))
    policy = load_policy(policies)
    engine = sa.create_engine(f"sqlite:///{sandbox.sources / 'members.db'}")
    with engine.begin() as con:
        member_id, email = con.execute(sa.text(
            "SELECT member_id, email FROM members WHERE member_id NOT IN "
            "(SELECT member_id FROM rights_requests WHERE member_id IS NOT NULL) "
            "AND email NOT IN (SELECT email FROM rights_requests WHERE email IS NOT NULL) "
            "AND member_id NOT IN (SELECT member_id FROM litigation_cases) ORDER BY member_id LIMIT 1")).one()
        con.execute(sa.text("INSERT INTO litigation_cases (case_id, member_id, opened_at, status, subject) VALUES "
                            "(999001, :m, '2026-09-01 09:00:00', :s, 'impayés')"), {"m": member_id, "s": status})
        con.execute(sa.text(
            "INSERT INTO rights_requests (request_id, member_id, email, request_type, received_at, "
            "identity_verified_at, details, status) VALUES (999001, :m, :e, 'erasure', '2026-10-20 10:00:00', "
            "'2026-10-21 10:00:00', '{}', 'received')"), {"m": member_id, "e": email})
    engines = {"members": engine, "prospects": sa.create_engine(f"sqlite:///{sandbox.sources / 'prospects.db'}")}
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, sandbox.sources / "navigation", policy)
        resolve_identities(con, identity_rules())
        outcome = process_rights(
            con, core_context(tmp_path, policy, sandbox.sources / "navigation"), members=engines["members"],
            prospects=engines["prospects"], now=dt.datetime.combine(TEST_AS_OF, dt.time(12)))
        assert not outcome.decisions_failed
        [(state, reason)] = con.execute(
            "SELECT state, reason FROM rights.requests WHERE request_id = 999001").fetchall()
        kept = con.execute("SELECT status FROM archive.litigation_cases WHERE case_id = 999001").fetchall()
    assert state == "confirmed" and "legal claims" in reason
    assert kept == [(status,)]


def test_a_sql_transfer_condition_is_refused_at_load(tmp_path):
    def change(data: dict) -> None:
        disclosure = _recipient(data, MOROCCO)["receives"][0]
        del disclosure["where"]
        disclosure["condition"] = "handled_by = 'morocco_complaints_provider' OR true"
    error = _refused(_copy(tmp_path, "recipients.yaml", change))
    assert error.file.endswith("recipients.yaml") and error.key.endswith("receives[0].condition")


def test_an_or_true_value_in_a_transfer_filter_is_compared_as_text_and_grows_nothing(tmp_path):
    def change(data: dict) -> None:
        _recipient(data, MOROCCO)["receives"][0]["where"] = [
            {"column": "handled_by", "operator": "in",
             "value": ["morocco_complaints_provider' OR true OR 'a' = 'a", "nobody"]}]
    for name in ("shipped", "crafted"):
        (tmp_path / name).mkdir()
    shipped = World(tmp_path / "shipped", load_policy(POLICIES)).deliver(MOROCCO)
    crafted = World(tmp_path / "crafted", load_policy(_copy(tmp_path, "recipients.yaml", change))).deliver(MOROCCO)
    assert shipped.rows_sent > 0  # the same warehouse does hold Morocco complaints
    assert crafted.rows_sent == 0 and crafted.folder is None


def test_a_transfer_filter_on_an_undeclared_column_is_refused(tmp_path):
    def change(data: dict) -> None:
        _recipient(data, MOROCCO)["receives"][0]["where"][0]["column"] = "country"
    error = _refused(_copy(tmp_path, "recipients.yaml", change))
    assert error.file.endswith("recipients.yaml") and error.key.endswith("receives[0].where[0].column")


@pytest.mark.parametrize(("archive", "accepted"), [
    ("P100Y", True), ("P1200M", True), ("P36525D", True),
    ("P100Y1D", False), ("P1201M", False), ("P36526D", False), ("P99999Y", False),
])
def test_durations_beyond_a_hundred_years_are_refused(tmp_path, archive, accepted):
    folder = _copy(tmp_path, "purposes.yaml", lambda d: d["purposes"][0]["retention"].update(archive=archive))
    if accepted:
        assert load_policy(folder).purposes[0].retention.archive == archive
        return
    error = _refused(folder)
    assert error.file.endswith("purposes.yaml") and error.key == "purposes[0].retention.archive"
    assert "100 years" in error.problem


def test_a_direct_identifier_cannot_be_downgraded_in_datasets(tmp_path):
    def change(data: dict) -> None:
        iban = next(c for c in _dataset(data, "members")["columns"] if c["name"] == "iban")
        iban["identifying"] = "quasi"
    error = _refused(_copy(tmp_path, "datasets.yaml", change))
    assert error.file.endswith("datasets.yaml") and error.key.endswith(".identifying")
    assert "members.iban is a direct identifier" in error.problem


def test_a_direct_identifier_cannot_leave_the_pseudonymisation_identifier_list(tmp_path):
    folder = _copy(tmp_path, "pseudonymisation.yaml",
                   lambda d: d["direct_identifiers"]["members"].remove("iban"))
    with pytest.raises(PolicyError) as err:
        load_pseudonymisation_policy(folder / "pseudonymisation.yaml")
    assert err.value.file.endswith("pseudonymisation.yaml") and err.value.key == "direct_identifiers.members"
    assert "iban" in err.value.problem and err.value.line is not None
    assert load_pseudonymisation_policy(POLICIES / "pseudonymisation.yaml").direct_identifiers["members"]
