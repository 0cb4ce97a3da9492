"""The shipped policy loads; each kind of bad policy file is refused at load naming file, key and problem."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy, source_columns
from pipelines.policy.loader import PolicyError
from pipelines.policy.register import render_register

POLICIES = PROJECT_ROOT / "policies"


def _policy_copy(tmp_path: Path, file: str, change: Callable[[dict], None]) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    data = yaml.safe_load((folder / file).read_text())
    change(data)
    (folder / file).write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    return folder


def _dataset(data: dict, name: str) -> dict:
    return next(d for d in data["datasets"] if d["name"] == name)


def _refused(folder: Path) -> PolicyError:
    with pytest.raises(PolicyError) as err:
        load_policy(folder)
    return err.value


def test_shipped_policy_has_the_thirteen_purposes_and_maps_every_source_table():
    policy = load_policy(POLICIES)
    assert len(policy.purposes) == 13
    assert {(d.system, d.name) for d in policy.datasets} == set(source_columns())
    assert all(p.retention.legal_source for p in policy.purposes)
    # deletion order follows the declared references: children before their parent
    order = policy.deletion_order("members")
    assert order.index("debt_recoveries") < order.index("contributions") < order.index("members")
    assert order.index("members") < order.index("establishments")


def test_malformed_yaml_is_refused_with_file_and_line(tmp_path: Path):
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "recipients.yaml").write_text("version: 1\nrecipients:\n  - key: a\n   name: [\n")
    error = _refused(folder)
    assert error.file.endswith("recipients.yaml") and error.line == 4 and "malformed YAML" in error.problem


def test_unknown_data_category_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "datasets.yaml",
                          lambda d: _dataset(d, "members")["columns"][4].update(category="user.contact.e_mail"))
    error = _refused(folder)
    assert error.file.endswith("datasets.yaml")
    assert error.key == "datasets[1].columns[4].category"
    assert "unknown data category 'user.contact.e_mail'" in error.problem


def test_purpose_without_duration_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "purposes.yaml", lambda d: d["purposes"][11]["retention"].pop("active"))
    error = _refused(folder)
    assert error.file.endswith("purposes.yaml") and error.key == "purposes[11].retention.active"
    assert "Field required" in error.problem and error.line is not None


def test_duration_that_is_not_iso_8601_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "purposes.yaml", lambda d: d["purposes"][0]["retention"].update(archive="2 ans"))
    error = _refused(folder)
    assert error.key == "purposes[0].retention.archive" and "ISO-8601" in error.problem


def test_source_column_mapped_to_nothing_is_refused(tmp_path: Path):
    def drop_iban(data: dict) -> None:
        members = _dataset(data, "members")
        members["columns"] = [c for c in members["columns"] if c["name"] != "iban"]
        members["rectifiable"] = [c for c in members["rectifiable"] if c != "iban"]

    error = _refused(_policy_copy(tmp_path, "datasets.yaml", drop_iban))
    assert error.key == "datasets[1].columns" and "'iban'" in error.problem and "mapped to nothing" in error.problem


def test_rectifiable_names_only_person_data_columns(tmp_path: Path):
    error = _refused(_policy_copy(tmp_path, "datasets.yaml",
                                  lambda d: _dataset(d, "members")["rectifiable"].append("restricted_at")))
    assert error.key == "datasets[1]" and "'restricted_at'" in error.problem and "rectifiable" in error.problem


def test_column_with_a_category_but_no_purpose_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "datasets.yaml", lambda d: _dataset(d, "members")["columns"][4].pop("purposes"))
    error = _refused(folder)
    assert error.key == "datasets[1].columns[4]" and "serves no purpose" in error.problem


def test_column_not_in_the_source_schema_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "datasets.yaml", lambda d: _dataset(d, "prospects")["columns"].append(
        {"name": "nickname", "category": "user.name", "identifying": "direct", "purposes": ["prospecting"]}))
    error = _refused(folder)
    assert error.key == "datasets[12].columns[13].name"
    assert "'nickname' does not exist in prospects.prospects" in error.problem


@pytest.mark.parametrize(("dataset", "marker", "problem"), [
    ("members", "updated", "'updated' is not a column of this dataset"),
    ("members", "birth_date", "'birth_date' is not a timestamp column"),
    ("navigation_events", "ts", "the navigation log has no change marker"),
])
def test_a_change_marker_that_cannot_mark_changes_is_refused(tmp_path: Path, dataset, marker, problem):
    folder = _policy_copy(tmp_path, "datasets.yaml", lambda d: _dataset(d, dataset).update(change_marker=marker))
    error = _refused(folder)
    assert error.key.endswith(".change_marker") and problem in error.problem
    assert error.file.endswith("datasets.yaml")


def test_purpose_referenced_but_not_defined_is_refused(tmp_path: Path):
    folder = _policy_copy(tmp_path, "datasets.yaml",
                          lambda d: _dataset(d, "members")["columns"][3]["purposes"].append("loyalty_programme"))
    error = _refused(folder)
    assert error.key == "datasets[1].columns[3].purposes[3]"
    assert "'loyalty_programme' is not defined in purposes.yaml" in error.problem


def test_recipient_outside_the_eu_without_safeguard_is_refused(tmp_path: Path):
    def drop_transfer(data: dict) -> None:
        next(r for r in data["recipients"] if r["key"] == "morocco_complaints_provider").pop("transfer")

    error = _refused(_policy_copy(tmp_path, "recipients.yaml", drop_transfer))
    assert error.file.endswith("recipients.yaml") and "MA" in error.problem and "safeguard" in error.problem


@pytest.mark.parametrize(("purposes", "problem"), [
    (["statistics"], "'statistics' is served by no column of id_documents"),
    (["requests_complaints", "membership"], "a row meeting none would serve no purpose"),
])
def test_row_purposes_name_served_purposes_and_leave_some_to_the_other_rows(tmp_path: Path, purposes, problem):
    folder = _policy_copy(tmp_path, "datasets.yaml",
                          lambda d: _dataset(d, "id_documents")["row_purposes"][0].update(purposes=purposes))
    error = _refused(folder)
    assert error.key.startswith("datasets[3].row_purposes") and problem in error.problem


def test_register_lists_purposes_transfers_and_erasure_limits():
    policy = load_policy(POLICIES)
    text = render_register(policy)
    assert all(f"## {i}. {p.name}" in text for i, p in enumerate(policy.purposes, 1))
    assert "2021/914, module 2" in text and "| MA | non |" in text
    assert "49(1)(b)" in text and "| MC | non |" in text
    assert "| prospecting | prospects | 3 an(s) après" in text
    assert "| audience_analytics | cookie_consents | 13 mois après" in text
    assert "jours entiers: le dernier jour de la durée est conservé en entier; l'effacement a lieu le lendemain" in text
    # column-level retention: what leaves a kept record with the purposes it served
    assert "| members | birth_date, establishment_id, activity, iban | membership |" in text
    assert "| navigation_events | ip_address | risk_control |" in text
    # row-level: the ID copy of a rights request serves the request only, and goes once it is handled
    assert "| id_documents | reason equals rights_request | requests_complaints |" in text
    assert "| requests_complaints | id_documents | aucune après" in text
