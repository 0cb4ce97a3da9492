"""The analysts' file: content, exclusions, tokens, checks, atomic publication and key rotation."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from pipelines.identity import resolve_identities
from pipelines.orchestration import settings
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.pseudo import tables
from pipelines.pseudo.checks import validate_analytics_file
from pipelines.pseudo.keys import derive_domain_key
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.pseudo.publish import PublicationRefused, publish_analytics
from tests.conftest import identity_rules

AS_OF = dt.date(2026, 11, 27)
MASTER = bytes.fromhex("a1" * 32)
N_MEMBERS = 150
RESTRICTED_MEMBER = 7
SUPPRESSED_MEMBER = 2  # its e-mail hash is on the suppression list
POSTAL_CODES = ["75011", "75005", "69003", "13001", "20090"]


def member_email(i: int) -> str:
    return f"membre{i}@exemple.fr"


def build_warehouse(path: Path) -> Path:
    """A small warehouse with the raw tables the analytics file reads, and the identity graph."""
    ids = range(1, N_MEMBERS + 1)
    members = pd.DataFrame({
        "member_id": list(ids),
        "civility": ["M." if i % 2 else "Mme" for i in ids],
        "first_name": [f"Prenom{i}" for i in ids],
        "last_name": [f"Nomdefamille{i}" for i in ids],
        "email": [f"  Membre{i}@Exemple.FR " for i in ids],
        "phone": [f"06 {i:08d}" for i in ids],
        "street": [f"{i} rue des Lilas" for i in ids],
        "postal_code": [POSTAL_CODES[i % len(POSTAL_CODES)] for i in ids],
        "city": ["Paris"] * N_MEMBERS,
        "birth_date": [dt.date(2000 + i % 5, 1 + i % 12, 1 + i % 27) for i in ids],
        "establishment_id": [1 + i % 3 for i in ids],
        "activity": ["student"] * N_MEMBERS,
        "iban": [f"FR76{i:023d}" for i in ids],
        "marketing_consent": [i % 3 != 0 for i in ids],
        "restricted_at": [pd.Timestamp("2026-10-01") if i == RESTRICTED_MEMBER else pd.NaT for i in ids],
    })
    establishments = pd.DataFrame({
        "establishment_id": [1, 2, 3],
        "name": ["Université de Paris", "Université Lyon 2", "École de commerce"],
        "kind": ["university", "university", "school"],
        "street": ["1 place du Panthéon", "2 quai Claude Bernard", "3 rue du Port"],
        "postal_code": ["75005", "69007", "13002"],
    })
    contracts = pd.DataFrame({
        "contract_id": list(ids),
        "member_id": list(ids),
        "start_date": [dt.date(2020 + i % 3, 9, 1) for i in ids],
        "status": ["active" if i % 4 else "terminated" for i in ids],
        "end_date": [None] * N_MEMBERS,  # memberships still running: within the statistics purpose
    }).astype({"end_date": "datetime64[us]"})
    reimbursements = pd.DataFrame([
        {"reimbursement_id": i * 10 + j, "member_id": i, "care_date": dt.date(2025, 1 + j, 10),
         "act_code": "C" if j else "PHAR", "amount_eur": 25.0, "reimbursed_eur": 17.5,
         "professional_name": f"Docteur{i % 9}", "professional_country": "FR"}
        for i in ids for j in range(3)
    ])
    surveys = pd.DataFrame([
        {"answer_id": i, "member_id": i, "survey": "satisfaction-2025",
         "answered_at": pd.Timestamp("2025-06-01 10:00"), "score": i % 11, "comment": f"merci, {i}"}
        for i in ids if i % 2
    ])
    prospects = pd.DataFrame({
        "prospect_id": list(range(1, 41)),
        "first_name": [f"Prospectprenom{i}" for i in range(1, 41)],
        "last_name": [f"Prospectnom{i}" for i in range(1, 41)],
        # Prospect 1 is member 1 (same e-mail, other formatting).
        "email": [member_email(1).upper() if i == 1 else f"prospect{i}@exemple.fr" for i in range(1, 41)],
        "phone": [f"07{i:08d}" for i in range(1, 41)],
        "marketing_consent": [True] * 40,
        "collected_at": [pd.Timestamp("2026-06-01")] * 40,  # within the 3 years of prospecting
        "last_inbound_contact_at": [pd.NaT] * 40,
        "restricted_at": [pd.NaT] * 40,
    })
    suppression = pd.DataFrame({
        "suppression_id": [1],
        "contact_hash": [hashlib.sha256(member_email(SUPPRESSED_MEMBER).encode()).hexdigest()],
        "channel": ["email"],
    })
    visitors = [f"v{i:03d}" for i in range(1, 61)]
    events = pd.DataFrame([
        {"event_id": f"{v}-{d}", "visitor_id": v,
         "member_id": RESTRICTED_MEMBER if v == "v005" else (int(v[1:]) if v < "v020" else None),
         "ts": pd.Timestamp("2026-11-20 09:00") + pd.Timedelta(hours=d),
         "url": f"https://www.mutuelle-sem.fr/{'garanties' if d % 2 else 'contact'}?email={v}@exemple.fr&x=1",
         "ip_address": f"10.0.{int(v[1:])}.{d + 1}", "user_agent": "Mozilla/5.0",
         "latitude": 48.85, "longitude": 2.35}
        for v in visitors for d in range(4)
    ]).astype({"member_id": "Int64"})
    consents = pd.DataFrame(
        [{"visitor_id": v, "consented_at": pd.Timestamp("2026-11-01"), "analytics": v != "v003"} for v in visitors]
        # v004 accepted, then withdrew: its latest choice wins.
        + [{"visitor_id": "v004", "consented_at": pd.Timestamp("2026-11-15"), "analytics": False}]
    )
    documents = pd.DataFrame({"document_id": [1], "member_id": [1], "doc_number": ["12AB34567"]})
    requests = pd.DataFrame({"request_id": [1], "member_id": [9], "email": [member_email(9)]})
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA raw")
    frames = {
        "members": members, "establishments": establishments, "contracts": contracts,
        "reimbursements": reimbursements, "survey_answers": surveys, "prospects": prospects,
        "suppression_list": suppression, "navigation_events": events, "cookie_consents": consents,
        "id_documents": documents, "rights_requests": requests,
    }
    for name, frame in frames.items():
        con.register("frame", frame)
        con.execute(f"CREATE TABLE raw.{name} AS SELECT * FROM frame")
        con.unregister("frame")
    resolve_identities(con, identity_rules())
    con.close()
    return path


def add_exclusions(warehouse: Path, rows: list[tuple[str, str, str]]) -> None:
    """rights.exclusions rows as the rights stage writes them: (node_type, node_value, reason)."""
    con = duckdb.connect(str(warehouse))
    con.execute("CREATE SCHEMA IF NOT EXISTS rights")
    con.execute("CREATE TABLE IF NOT EXISTS rights.exclusions (person_id VARCHAR, reason VARCHAR, since TIMESTAMP)")
    for node_type, node_value, reason in rows:
        con.execute(
            "INSERT INTO rights.exclusions SELECT person_id, ?, TIMESTAMP '2026-11-01' FROM identity.person_links "
            "WHERE node_type = ? AND node_value = ?",
            [reason, node_type, node_value],
        )
    con.close()


def keys(version: int = 1) -> dict[str, bytes]:
    return {d: derive_domain_key(MASTER, d, version) for d in ("statistics", "marketing")}


def token(domain: str, value: str, version: int = 1) -> str:
    return hmac.new(derive_domain_key(MASTER, domain, version), value.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return build_warehouse(tmp_path / "warehouse.duckdb")


@pytest.fixture
def policy():
    return load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")


def publish(warehouse: Path, analytics: Path, policy, version: int = 1):
    return publish_analytics(warehouse, analytics, policy, keys(version), version, AS_OF,
                             load_policy(settings.policies_dir()))


def read(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_published_file_has_every_table_k_anonymous_and_catalogued(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    report = publish(warehouse, analytics, policy)
    names = {r[0] for r in read(analytics, "SELECT table_name FROM duckdb_tables()")}
    assert names == {*policy.tables, "catalogue"}
    assert validate_analytics_file(analytics, warehouse, policy) == {
        "no_direct_identifiers": [], "k_anonymity": [], "catalogue_complete": []
    }
    for name, table_report in report.tables.items():
        assert table_report.rows > 0, name
        assert table_report.kanon.achieved_k >= policy.k_of(name), name
    catalogue = read(analytics, "SELECT role, token_domain, key_version, k FROM catalogue "
                                "WHERE table_name = 'members_pseudo' AND column_name = 'member_token'")
    assert catalogue == [("pseudonym", "statistics", 1, 5)]
    # The search's outcome is in the catalogue: the chosen node's loss, its suppressed rows, the runner-ups.
    kanon = report.tables["members_pseudo"].kanon
    searched = read(analytics, "SELECT DISTINCT loss_measure, information_loss, rows_suppressed, "
                               "json_array_length(runner_up_nodes) FROM catalogue WHERE table_name = 'members_pseudo'")
    assert searched == [("ncp", kanon.generalisation_loss, kanon.rows_suppressed, len(kanon.runner_ups))]
    assert all(r.loss >= kanon.generalisation_loss for r in kanon.runner_ups)
    # Every class of members_pseudo holds at least 5 members on the declared quasi-identifiers.
    smallest = read(analytics, "SELECT min(n) FROM (SELECT count(*) AS n FROM members_pseudo "
                               "GROUP BY age_band, civility, departement, establishment, cohort)")
    assert smallest[0][0] >= 5


def test_tokens_follow_the_documented_scheme_and_domains_do_not_join(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    member_tokens = {r[0] for r in read(analytics, "SELECT member_token FROM members_pseudo")}
    audience = {r[0] for r in read(analytics, "SELECT contact_token FROM marketing_audience")}
    assert token("statistics", "1") in member_tokens
    assert token("marketing", member_email(1)) in audience
    assert token("statistics", member_email(1)) not in audience
    assert not member_tokens & audience


def test_restricted_objecting_and_erased_people_are_absent(warehouse, tmp_path, policy) -> None:
    add_exclusions(warehouse, [("member", "9", "objection"), ("member", "10", "erased"),
                               ("member", "11", "restricted"), ("prospect", "3", "objection_prospecting")])
    analytics = tmp_path / "analytics.duckdb"
    report = publish(warehouse, analytics, policy)
    member_tokens = {r[0] for r in read(analytics, "SELECT member_token FROM members_pseudo")}
    for member in (RESTRICTED_MEMBER, 9, 10, 11):
        assert token("statistics", str(member)) not in member_tokens
    assert len(member_tokens) > N_MEMBERS * 0.9
    audience = {r[0] for r in read(analytics, "SELECT contact_token FROM marketing_audience")}
    for member in (RESTRICTED_MEMBER, 9, 10, 11):
        assert token("marketing", member_email(member)) not in audience
        assert token("marketing", f"+336{member:08d}") not in audience
    assert token("marketing", "prospect3@exemple.fr") not in audience
    # Member 9 browsed as visitor v009: the whole person is gone from navigation as well.
    visitors = {r[0] for r in read(analytics, "SELECT DISTINCT visitor_token FROM navigation_pseudo")}
    assert token("statistics", "v009") not in visitors
    assert token("statistics", "v005") not in visitors  # logged in as the restricted member
    # Every excluded member's reimbursements are gone from the statistics.
    total = read(analytics, "SELECT sum(reimbursements) FROM reimbursement_stats")[0][0]
    assert total <= 3 * (N_MEMBERS - 4)
    assert report.excluded["objection"] >= 1


def test_marketing_audience_needs_consent_and_no_suppression(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    audience = {r[0] for r in read(analytics, "SELECT contact_token FROM marketing_audience")}
    assert token("marketing", member_email(4)) in audience
    assert token("marketing", member_email(3)) not in audience  # no marketing consent
    assert token("marketing", member_email(SUPPRESSED_MEMBER)) not in audience  # on the suppression list
    assert token("marketing", "+33700000005") in audience  # a prospect's phone, E.164


def test_navigation_keeps_consenting_visitors_and_page_paths_only(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    visitors = {r[0] for r in read(analytics, "SELECT DISTINCT visitor_token FROM navigation_pseudo")}
    assert token("statistics", "v030") in visitors
    assert token("statistics", "v003") not in visitors  # never consented
    assert token("statistics", "v004") not in visitors  # withdrew consent
    assert read(analytics, "SELECT DISTINCT page, day, area FROM navigation_pseudo ORDER BY ALL") == [
        ("/contact", "2026-11-20", "48.50,2.00"),  # south-west corner of the 0.5-degree cell
        ("/garanties", "2026-11-20", "48.50,2.00"),
    ]


def test_a_leaking_build_is_refused_and_the_published_file_stays(warehouse, tmp_path, policy, monkeypatch) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    before = analytics.read_bytes()
    # A builder bug that publishes e-mails as an attribute (quasi-identifiers would be generalised away).
    leaking = tables.members_base("statistics").replace("coalesce(c.status, 'none') AS status", "m.email AS status")
    monkeypatch.setitem(tables.BUILDERS, "members_pseudo", lambda domain: leaking)
    with pytest.raises(PublicationRefused) as refused:
        publish(warehouse, analytics, policy)
    assert "members_pseudo.status" in str(refused.value)
    assert "membre" not in str(refused.value)  # the report names columns, never values
    assert analytics.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytics.duckdb", "warehouse.duckdb"]


def test_a_leaked_name_is_counted_on_every_row_holding_it(warehouse, tmp_path, policy, monkeypatch) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    members = read(analytics, "SELECT count(*) FROM members_pseudo")[0][0]
    # A last name has no identifier shape: only the match against the warehouse's values finds it.
    leaking = tables.members_base("statistics").replace("coalesce(c.status, 'none') AS status",
                                                         "m.last_name AS status")
    monkeypatch.setitem(tables.BUILDERS, "members_pseudo", lambda domain: leaking)
    with pytest.raises(PublicationRefused) as refused:
        publish(warehouse, analytics, policy)
    assert refused.value.problems == {"no_direct_identifiers": [
        f"members_pseudo.status: {members} value(s) of a source identifier column, 0 shaped like an identifier"]}


def test_checks_catch_an_uncatalogued_column_and_a_small_class(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    with duckdb.connect(str(analytics)) as con:
        con.execute("ALTER TABLE members_pseudo ADD COLUMN note VARCHAR")
        con.execute("INSERT INTO members_pseudo (member_token, age_band, civility, departement, establishment, "
                    "cohort, status) VALUES ('ab', '90-94', 'M.', '2A', 'x', '1999', 'active')")
    problems = validate_analytics_file(analytics, warehouse, policy)
    assert problems["catalogue_complete"] == ["members_pseudo.note: published but not in the catalogue"]
    assert problems["k_anonymity"] == ["members_pseudo: a class has 1 people, k = 5"]
    assert problems["no_direct_identifiers"] == []


def test_a_candidate_left_by_a_killed_run_is_cleaned_up(warehouse, tmp_path, policy) -> None:
    stale = tmp_path / ".analytics.duckdb.0123abcd.building"
    stale.write_bytes(b"half-written")
    publish(warehouse, tmp_path / "analytics.duckdb", policy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analytics.duckdb", "warehouse.duckdb"]


def test_reader_holding_the_old_file_neither_blocks_nor_sees_a_partial_table(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy)
    reader = duckdb.connect(str(analytics), read_only=True)
    old_rows = reader.execute("SELECT count(*) FROM members_pseudo").fetchall()[0][0]
    add_exclusions(warehouse, [("member", str(i), "objection") for i in range(20, 60)])
    publish(warehouse, analytics, policy)
    # The analyst still reads the complete old snapshot while the new one is in place.
    assert reader.execute("SELECT count(*) FROM members_pseudo").fetchall()[0][0] == old_rows
    reader.close()
    assert read(analytics, "SELECT count(*) FROM members_pseudo")[0][0] < old_rows


def test_key_rotation_retokenises_everything_and_records_the_version(warehouse, tmp_path, policy) -> None:
    analytics = tmp_path / "analytics.duckdb"
    publish(warehouse, analytics, policy, version=1)
    v1 = {r[0] for r in read(analytics, "SELECT member_token FROM members_pseudo")}
    publish(warehouse, analytics, policy, version=2)
    v2 = {r[0] for r in read(analytics, "SELECT member_token FROM members_pseudo")}
    assert v1 and v2 and not v1 & v2
    assert token("statistics", "1", version=2) in v2
    versions = read(analytics, "SELECT table_name, key_version FROM catalogue GROUP BY ALL ORDER BY ALL")
    assert dict(versions) == {"marketing_audience": 2, "members_pseudo": 2, "navigation_pseudo": 2,
                              "reimbursement_stats": None, "survey_stats": None, "audience_daily": None,
                              "audience_weekly_area": None}
