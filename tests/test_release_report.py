"""Utility and risk report of a release: risks, distinct values kept, analyst query errors, thresholds."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pandas as pd

from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.pseudo.checks import release_problems
from pipelines.pseudo.kanon import anonymise
from pipelines.pseudo.policy import ReportPolicy, TablePolicy, load_pseudonymisation_policy
from pipelines.pseudo.report import measure_release

PARAMS = {"as_of": dt.date(2026, 11, 27)}
TABLE = TablePolicy.model_validate({
    "kind": "rows", "domain": "statistics", "description": "members", "subject": "member_token",
    "columns": [
        {"name": "member_token", "role": "pseudonym", "source": "member_id", "normalise": "id",
         "description": "token"},
        {"name": "departement", "role": "quasi_identifier", "source": "postal_code",
         "levels": ["departement", "suppress"], "description": "d"},
        {"name": "age_band", "role": "quasi_identifier", "source": "birth_date", "levels": ["age_band:5"],
         "description": "a"},
        {"name": "cohort", "role": "quasi_identifier", "source": "membership_start", "levels": ["month"],
         "description": "c"},
    ],
})


def _members(postal_codes: list[str]) -> pd.DataFrame:
    n = len(postal_codes)
    return pd.DataFrame({
        "member_id": range(n), "member_token": [f"t{i}" for i in range(n)], "postal_code": postal_codes,
        "birth_date": [dt.date(2000, 1, 1)] * n, "membership_start": [dt.date(2025, 1, 15)] * n,
    })


def test_report_gives_risks_kept_values_and_query_errors_as_numbers() -> None:
    con = duckdb.connect()
    # Published: Paris 20 and Lyon 10; the 2 Marseille members are suppressed (within a 10 % budget).
    base = _members(["75001"] * 20 + ["69001"] * 10 + ["13001"] * 2)
    # Five more Lyon members objected: outside the file, but among whom a journalist's target could be.
    population = pd.concat([base, _members(["69002"] * 5).assign(member_id=range(100, 105))])
    con.register("b", base)
    con.register("p", population)
    con.execute("CREATE TEMP TABLE base AS SELECT * FROM b")
    con.execute("CREATE TEMP TABLE pop AS SELECT * FROM p")
    kanon = anonymise(con, "base", "out", TABLE, 5, 0.1, PARAMS)
    report = measure_release(con, "members_pseudo", TABLE, kanon, "out", "base", "pop",
                             ReportPolicy(small_class=15), PARAMS)
    assert kanon.levels["departement"] == "departement" and report.rows_suppressed == 2
    assert report.prosecutor_max == 0.1  # Lyon's class of 10
    assert report.prosecutor_avg == round((20 / 20 + 10 / 10) / 30, 4)
    assert report.journalist_max == round(1 / 15, 4)  # Lyon has 15 members in the population
    assert report.journalist_avg == round((20 / 20 + 10 / 15) / 30, 4)
    assert report.small_class_share == round(10 / 30, 4)
    assert report.distinct_kept == {"departement": [2, 3], "age_band": [1, 1], "cohort": [1, 1]}
    # Marseille is unanswered (100 % off), Paris and Lyon exact; the other queries miss 2 of 32 members.
    per_dep = report.queries["members per departement"]
    assert (per_dep.answered_share, per_dep.mean_relative_error) == (round(2 / 3, 4), round(1 / 3, 4))
    assert report.queries["members per cohort month"].mean_relative_error == round(2 / 32, 4)
    assert report.quasi_identifiers_fully_suppressed == 0


def test_release_check_names_each_figure_beyond_its_threshold() -> None:
    policy = load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")
    fine = {"suppression_ratio": 0.01, "prosecutor_max": 0.2, "queries": {"q": {"mean_relative_error": 0.1}}}
    reports = dict.fromkeys(policy.tables, fine) | {
        "members_pseudo": fine | {"suppression_ratio": 0.06},
        "survey_stats": fine | {"prosecutor_max": 0.5},
        "audience_daily": fine | {"queries": {"visitors per day": {"mean_relative_error": 0.9}}},
    }
    con = duckdb.connect()
    con.execute("ATTACH ':memory:' AS pub")
    con.execute("CREATE TABLE pub.main.catalogue (table_name VARCHAR, release_report JSON)")
    con.executemany("INSERT INTO pub.main.catalogue VALUES (?, ?)", [(t, json.dumps(r)) for t, r in reports.items()])
    assert release_problems(con, policy) == [
        "members_pseudo: 6.00% of rows suppressed, budget 5.00%",
        "audience_daily: query 'visitors per day' is off by 90.0% on average (threshold 50%)",
        "survey_stats: prosecutor risk 0.5 > 0.2",
    ]
    con.execute("DELETE FROM pub.main.catalogue WHERE table_name = 'survey_stats'")
    assert "survey_stats: no release report in the catalogue" in release_problems(con, policy)
