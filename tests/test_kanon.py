"""k-anonymity: generalisation then suppression, people (not rows) per class, aggregates, policy errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from pipelines.orchestration import settings
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.loader import PolicyError
from pipelines.pseudo.kanon import anonymise
from pipelines.pseudo.policy import PseudonymisationPolicy, TablePolicy, load_pseudonymisation_policy

PARAMS = {"as_of": dt.date(2026, 11, 27)}


def _rows_table(**overrides) -> TablePolicy:
    spec = {
        "kind": "rows", "domain": "statistics", "description": "test", "subject": "person",
        "columns": [
            {"name": "person", "role": "pseudonym", "source": "pid", "normalise": "id", "description": "token"},
            {"name": "age_band", "role": "quasi_identifier", "source": "birth_date",
             "levels": ["age_band:5", "age_band:20", "suppress"], "description": "age"},
            {"name": "departement", "role": "quasi_identifier", "source": "postal_code",
             "levels": ["departement", "postal_zone", "suppress"], "description": "area"},
            {"name": "status", "role": "attribute", "source": "status", "description": "status"},
        ],
    }
    return TablePolicy.model_validate(spec | overrides)


def _base(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> str:
    con.register("frame", frame)
    con.execute("CREATE OR REPLACE TEMP TABLE base AS SELECT * FROM frame")
    return "base"


def _people(n: int, postal_code, birth_year) -> pd.DataFrame:
    return pd.DataFrame({
        "pid": [f"p{i}" for i in range(n)],
        "person": [f"t{i}" for i in range(n)],
        "birth_date": [dt.date(birth_year(i), 6, 1) for i in range(n)],
        "postal_code": [postal_code(i) for i in range(n)],
        "status": ["active"] * n,
    })


def test_generalises_until_small_classes_are_rare_then_suppresses_them() -> None:
    con = duckdb.connect()
    # 60 people in 12 départements of the same postal zone, ages spread over 20 years: at the finest
    # levels almost every class is under k.
    frame = _people(60, lambda i: f"{75 + i % 12:02d}001", lambda i: 1986 + i % 20)
    report = anonymise(con, _base(con, frame), "out", _rows_table(), 5, 0.05, PARAMS)
    classes = con.execute(
        "SELECT count(DISTINCT person) FROM out GROUP BY age_band, departement"
    ).fetchall()
    assert min(n for (n,) in classes) >= 5
    assert report.achieved_k >= 5
    assert report.levels["departement"] != "departement" or report.levels["age_band"] != "age_band:5"
    assert report.rows_suppressed <= 0.05 * 60
    assert con.execute("SELECT count(*) FROM out").fetchall()[0][0] == 60 - report.rows_suppressed
    assert 0 < report.generalisation_loss <= 1


def test_class_size_counts_people_not_rows() -> None:
    con = duckdb.connect()
    crowd = _people(20, lambda i: "75001", lambda i: 2000)
    # One person with 30 rows alone in Lyon: 30 rows, but a class of one.
    loner = pd.concat([_people(1, lambda i: "69001", lambda i: 2000).assign(pid="lone", person="lone")] * 30)
    table = _rows_table(columns=[
        {"name": "person", "role": "pseudonym", "source": "pid", "normalise": "id", "description": "token"},
        {"name": "departement", "role": "quasi_identifier", "source": "postal_code", "levels": ["departement"],
         "description": "area"},
    ])
    report = anonymise(con, _base(con, pd.concat([crowd, loner])), "out", table, 5, 0.0, PARAMS)
    assert con.execute("SELECT count(*) FROM out WHERE person = 'lone'").fetchall()[0][0] == 0
    assert report.rows_suppressed == 30
    assert report.achieved_k == 20


def test_aggregate_cells_under_k_are_suppressed() -> None:
    con = duckdb.connect()
    frame = pd.DataFrame({
        "member_id": [1, 2, 3, 4, 5, 6, 6, 6, 7],
        "act": ["C", "C", "C", "C", "C", "PHAR", "PHAR", "PHAR", "PHAR"],
        "care_date": [dt.date(2025, 3, 1)] * 9,
        "amount": [10.0] * 9,
    })
    table = TablePolicy.model_validate({
        "kind": "aggregate", "domain": "statistics", "description": "t", "subject": "members",
        "columns": [
            {"name": "month", "role": "quasi_identifier", "source": "care_date", "levels": ["month"],
             "description": "m"},
            {"name": "act", "role": "attribute", "source": "act", "description": "a"},
            {"name": "members", "role": "measure", "source": "member_id", "aggregate": "count_distinct",
             "description": "n"},
            {"name": "amount", "role": "measure", "source": "amount", "aggregate": "sum", "description": "s"},
        ],
    })
    report = anonymise(con, _base(con, frame), "out", table, 5, 1.0, PARAMS)
    # The PHAR cell has 4 rows but only 2 members: suppressed, although 4 rows would look fine.
    assert con.execute("SELECT month, act, members, amount FROM out").fetchall() == [("2025-03", "C", 5, 50.0)]
    assert report.rows_suppressed == 4
    assert report.achieved_k == 5


@pytest.mark.parametrize(
    ("mutate", "key", "message"),
    [
        (lambda p: p.replace('["age_band:5", "age_band:10"', '["age_band:five", "age_band:10"'),
         "tables.members_pseudo.columns.1.levels", "int parameter"),
        (lambda p: p.replace("levels: [departement, postal_zone", "levels: [county, postal_zone"),
         "tables.members_pseudo.columns.3.levels", "unknown generalisation level 'county'"),
        (lambda p: p.replace("subject: member_token", "subject: status"),
         "tables.members_pseudo", "subject"),
        (lambda p: p.replace("default_k: 5", "default_k: 1"), "default_k", "greater than or equal to 2"),
    ],
)
def test_bad_policy_is_refused_with_key_and_reason(tmp_path: Path, mutate, key: str, message: str) -> None:
    text = (settings.policies_dir() / "pseudonymisation.yaml").read_text()
    bad = tmp_path / "pseudonymisation.yaml"
    bad.write_text(mutate(text))
    assert bad.read_text() != text
    with pytest.raises(PolicyError) as err:
        load_pseudonymisation_policy(bad)
    assert key in str(err.value).replace("[", ".").replace("]", "")
    assert message in str(err.value)


def test_shipped_policy_declares_k_and_identifiers() -> None:
    policy: PseudonymisationPolicy = load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")
    assert all(policy.k_of(name) >= 5 for name in policy.tables)
    assert {"email", "phone", "birth_date", "iban"} <= set(policy.direct_identifiers["members"])
    assert policy.direct_identifiers["navigation_events"] == ("ip_address",)
