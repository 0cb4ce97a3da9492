"""Analytics follows its purpose: rows enter the analysts' file only while the purpose of their source data is
active (whole days: D kept, D + 1 gone), and care acts only as categories unless an art. 9 condition is stated."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from pipelines.orchestration import settings
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.pseudo.purposes import PurposeMismatch, check_purposes
from tests.test_analytics_publish import AS_OF, build_warehouse, member_email, publish, read, token

DAY = dt.timedelta(days=1)


@pytest.fixture
def policy():
    return load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")


@pytest.fixture
def warehouse(tmp_path):
    return build_warehouse(tmp_path / "warehouse.duckdb")


def _sql(warehouse, statement: str, params: list | None = None) -> None:
    with duckdb.connect(str(warehouse)) as con:
        con.execute(statement, params or [])


def test_members_leave_the_statistics_the_day_after_their_membership_ends(warehouse, tmp_path, policy):
    # Statistics: active P0D from membership_end, so the end day itself is the last day of use.
    ends = {20: AS_OF - DAY, 21: AS_OF, 22: AS_OF + DAY, 23: AS_OF - 400 * DAY}
    for member, end in ends.items():
        _sql(warehouse, "UPDATE raw.contracts SET end_date = ? WHERE member_id = ?", [end, member])
    # Member 24 ended one contract long ago but has another running: still a member.
    _sql(warehouse, "UPDATE raw.contracts SET end_date = ? WHERE member_id = 24", [AS_OF - 400 * DAY])
    _sql(warehouse, "INSERT INTO raw.contracts (contract_id, member_id, start_date, status) "
                    "VALUES (1000, 24, DATE '2025-09-01', 'active')")
    # A contract moved to the restricted archive still dates the end of membership.
    _sql(warehouse, "CREATE SCHEMA archive; CREATE TABLE archive.contracts AS SELECT * FROM raw.contracts "
                    "WHERE member_id = 25; DELETE FROM raw.contracts WHERE member_id = 25")
    _sql(warehouse, "UPDATE archive.contracts SET end_date = ?", [AS_OF - 30 * DAY])
    analytics = tmp_path / "analytics.duckdb"
    report = publish(warehouse, analytics, policy)
    tokens = {r[0] for r in read(analytics, "SELECT member_token FROM members_pseudo")}
    for member in (21, 22, 24):
        assert token("statistics", str(member)) in tokens, member
    for member in (20, 23, 25):
        assert token("statistics", str(member)) not in tokens, member
    # The same people leave the aggregates: 3 reimbursements and at most 1 answer each.
    assert report.tables["reimbursement_stats"].kanon.rows_in == 3 * (150 - 1 - 3)


def test_page_views_leave_the_statistics_after_the_audience_period(warehouse, tmp_path, policy):
    # audience_analytics: P25M from the visit, the last day kept whole.
    first_kept = dt.date(AS_OF.year - 2, AS_OF.month - 1, AS_OF.day)  # AS_OF - 25 months: its last day
    kept, gone = [f"v0{i}" for i in range(30, 36)], [f"v0{i}" for i in range(40, 46)]  # enough for k = 5
    for visitors, day in ((kept, first_kept), (gone, first_kept - DAY)):
        _sql(warehouse, "UPDATE raw.navigation_events SET ts = ? WHERE list_contains(?, visitor_id)",
             [dt.datetime.combine(day, dt.time(23, 0)), visitors])
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    published = {r[0] for r in read(analytics, "SELECT DISTINCT visitor_token FROM navigation_pseudo")}
    assert {token("statistics", v) for v in kept} <= published
    assert not {token("statistics", v) for v in gone} & published


def test_marketing_audience_follows_the_prospecting_and_member_marketing_periods(warehouse, tmp_path, policy):
    # prospecting: P3Y from collection or last inbound contact; communication_marketing: P3Y from membership end.
    _sql(warehouse, "UPDATE raw.prospects SET collected_at = TIMESTAMP '2023-11-27 10:00' WHERE prospect_id = 5")
    _sql(warehouse, "UPDATE raw.prospects SET collected_at = TIMESTAMP '2023-11-26 10:00' WHERE prospect_id = 6")
    _sql(warehouse, "UPDATE raw.contracts SET end_date = DATE '2023-11-26' WHERE member_id = 4")
    _sql(warehouse, "UPDATE raw.contracts SET end_date = DATE '2023-11-27' WHERE member_id = 5")
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    audience = {r[0] for r in read(analytics, "SELECT contact_token FROM marketing_audience")}
    assert token("marketing", "prospect5@exemple.fr") in audience
    assert token("marketing", "prospect6@exemple.fr") not in audience
    assert token("marketing", member_email(5)) in audience
    assert token("marketing", member_email(4)) not in audience


def test_care_acts_reach_the_statistics_as_categories_only(warehouse, tmp_path, policy):
    _sql(warehouse, "UPDATE raw.reimbursements SET act_code = CASE WHEN reimbursement_id % 10 = 0 THEN 'PSY' "
                    "WHEN reimbursement_id % 10 = 1 THEN 'G' ELSE 'CONTR' END")
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    columns = {r[0] for r in read(analytics, "SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'reimbursement_stats'")}
    assert "act_category" in columns and "act_code" not in columns
    categories = {r[0] for r in read(analytics, "SELECT DISTINCT act_category FROM reimbursement_stats")}
    assert categories <= {"consultation", "pharmacie"}
    assert not categories & {"PSY", "CONTR", "G"}


def test_act_code_is_refused_unless_the_purpose_states_an_art9_condition(policy):
    purposes = load_policy(settings.policies_dir())
    stats = policy.tables["reimbursement_stats"]
    detailed = stats.model_copy(update={"columns": tuple(
        c.model_copy(update={"name": "act_code", "source": "act_code"}) if c.name == "act_category" else c
        for c in stats.columns)})
    with_code = policy.model_copy(update={"tables": {**policy.tables, "reimbursement_stats": detailed}})
    with pytest.raises(PurposeMismatch, match=r"art\. 9"):
        check_purposes(purposes, with_code)
    statistics = purposes.purpose("statistics")
    stated = statistics.model_copy(update={"legal_basis": statistics.legal_basis.model_copy(
        update={"article_9": "9(2)(j)"})})
    purposes_file = purposes.purposes_file.model_copy(update={"purposes": [
        stated if p.key == "statistics" else p for p in purposes.purposes]})
    check_purposes(type(purposes)(purposes_file, purposes.datasets_file, purposes.recipients_file), with_code)


def test_a_table_naming_an_undefined_purpose_is_refused(policy):
    members = policy.tables["members_pseudo"].model_copy(update={"purposes": ("statistique",)})
    wrong = policy.model_copy(update={"tables": {**policy.tables, "members_pseudo": members}})
    with pytest.raises(PurposeMismatch, match="statistique"):
        check_purposes(load_policy(settings.policies_dir()), wrong)


def test_a_table_naming_no_purpose_is_refused(policy):
    members = policy.tables["members_pseudo"].model_copy(update={"purposes": ()})
    wrong = policy.model_copy(update={"tables": {**policy.tables, "members_pseudo": members}})
    with pytest.raises(PurposeMismatch, match=r"members_pseudo\.purposes"):
        check_purposes(load_policy(settings.policies_dir()), wrong)


def test_a_page_view_ends_on_the_date_its_row_shows_not_on_an_older_fact_kept(warehouse, tmp_path, policy):
    # Retention keeps a dated fact per page view (retention.clock_events); while the row is held, its own date
    # times it. Here every fact is older than the audience period, but only some rows are.
    old = dt.datetime.combine(AS_OF - dt.timedelta(days=800), dt.time(9))
    _sql(warehouse, "CREATE SCHEMA retention")
    _sql(warehouse, "CREATE TABLE retention.clock_events AS SELECT 'navigation_visit' AS clock_name, "
         "NULL::VARCHAR AS clock_subject_type, CAST(event_id AS VARCHAR) AS clock_key, ?::TIMESTAMP AS clock "
         "FROM raw.navigation_events", [old])
    gone = [f"v0{i}" for i in range(40, 46)]
    _sql(warehouse, "UPDATE raw.navigation_events SET ts = ? WHERE list_contains(?, visitor_id)", [old, gone])
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    published = {r[0] for r in read(analytics, "SELECT DISTINCT visitor_token FROM navigation_pseudo")}
    assert {token("statistics", f"v0{i}") for i in range(30, 36)} <= published
    assert not {token("statistics", v) for v in gone} & published
