"""The demo generator: deterministic output, the edge cases the privacy pipeline relies on, PostgreSQL copy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from faker import Faker

from pipelines.demo import _columns
from pipelines.demo.generate import RIGHTS_TYPES, generate
from pipelines.normalise import normalise_email, normalise_phone
from pipelines.sources.copy import copy_sql_system
from pipelines.sources.schema import SQL_SYSTEMS, member_metadata, prospect_metadata
from tests.conftest import TEST_AS_OF, TEST_MEMBERS

SEED = 7  # the seed of the shared `generated_sources` fixture


@contextmanager
def _db(sources: Path, system: str) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(sources / f"{system}.db")) as con:
        yield con


def _rows(sources: Path, system: str, sql: str) -> list[tuple]:
    with _db(sources, system) as con:
        return con.execute(sql).fetchall()


def _one(sources: Path, system: str, sql: str) -> object:
    return _rows(sources, system, sql)[0][0]


def _digests(sources: Path) -> dict[str, str]:
    """Content hash of every table of every system, independent of physical row order."""
    digests = {}
    for system, metadata in SQL_SYSTEMS.items():
        for table in metadata.tables:
            rows = sorted(map(repr, _rows(sources, system, f"SELECT * FROM {table}")))
            digests[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    for name in ("events", "consents"):
        table = pq.read_table(sources / "navigation" / name)
        digests[name] = hashlib.sha256(repr(sorted(map(repr, table.to_pylist()))).encode()).hexdigest()
    return digests


def _is_iso_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _events(sources: Path):
    return pq.read_table(sources / "navigation" / "events")


def test_same_seed_and_date_give_the_same_sources_in_one_or_two_processes(generated_sources, tmp_path):
    again = generate(tmp_path / "again", members=TEST_MEMBERS, seed=SEED, as_of=TEST_AS_OF, parallel=True)
    expected = _digests(generated_sources)
    assert _digests(tmp_path / "again") == expected
    assert again["members"] == TEST_MEMBERS
    assert again["navigation_events"] == _events(generated_sources).num_rows

    generate(tmp_path / "other", members=TEST_MEMBERS, seed=SEED + 1, as_of=TEST_AS_OF)
    other = _digests(tmp_path / "other")
    assert other["members"] != expected["members"]
    assert other["events"] != expected["events"]


def test_regenerating_into_the_same_folder_replaces_the_previous_output(tmp_path):
    first = generate(tmp_path, members=60, seed=1, as_of=TEST_AS_OF)
    second = generate(tmp_path, members=40, seed=1, as_of=TEST_AS_OF)
    assert _one(tmp_path, "members", "SELECT count(*) FROM members") == 40 == second["members"]
    assert _events(tmp_path).num_rows == second["navigation_events"] < first["navigation_events"]


def test_nothing_is_dated_on_or_after_the_reference_date(generated_sources):
    as_of = TEST_AS_OF.isoformat()
    for system, metadata in SQL_SYSTEMS.items():
        for table in metadata.sorted_tables:
            for column in table.columns:
                if column.name.endswith(("_at", "_date")):
                    latest = _one(
                        generated_sources, system,
                        f"SELECT max({column.name}) FROM {table.name} WHERE {column.name} GLOB '[12][0-9][0-9][0-9]-*'",
                    )
                    assert latest is None or latest < as_of, (table.name, column.name, latest)
    midnight = dt.datetime.combine(TEST_AS_OF, dt.time())
    assert pc.max(_events(generated_sources)["ts"]).as_py() < midnight
    consents = pq.read_table(generated_sources / "navigation" / "consents")
    assert pc.max(consents["consented_at"]).as_py() < midnight


def test_memberships_ended_at_every_age_and_the_member_system_edge_cases(generated_sources):
    src = generated_sources
    ended_years_ago = [
        age for (age,) in _rows(src, "members", f"""
            SELECT DISTINCT CAST((julianday('{TEST_AS_OF}') - julianday(end_date)) / 365.25 AS INTEGER)
            FROM contracts WHERE status IN ('terminated', 'radiated')""")
    ]
    assert set(range(12)) <= set(ended_years_ago), "terminated contracts of every age, 0 to 11+ years"
    assert _one(src, "members", "SELECT count(*) FROM contracts WHERE status = 'active' AND end_date IS NULL") > 0
    assert _one(src, "members", "SELECT count(*) FROM contracts WHERE status = 'active' AND end_date IS NOT NULL") == 0
    assert _one(src, "members", "SELECT count(*) FROM contracts WHERE status = 'radiated'") > 0

    statuses = dict(_rows(src, "members", "SELECT status, count(*) FROM litigation_cases GROUP BY status"))
    assert statuses["open"] >= 2 and statuses["closed"] >= 2
    assert _one(src, "members", "SELECT count(*) FROM litigation_cases WHERE status = 'open' "
                                "AND final_decision_at IS NOT NULL") == 0
    assert _one(src, "members", "SELECT count(*) FROM contributions WHERE paid_at IS NULL") > 0
    assert _one(src, "members", "SELECT count(*) FROM debt_recoveries WHERE sued") > 0
    assert _one(src, "members", "SELECT count(*) FROM debt_recoveries d JOIN contributions c USING (contribution_id) "
                                "WHERE c.paid_at IS NOT NULL") == 0, "only unpaid contributions are recovered"
    assert _one(src, "members", "SELECT count(*) FROM reimbursements WHERE professional_country = 'MC'") > 0
    assert _one(src, "members", "SELECT count(*) FROM interactions "
                                "WHERE kind = 'complaint' AND handled_by = 'morocco_complaints_provider'") > 0
    kinds = {k for (k,) in _rows(src, "members", "SELECT DISTINCT kind FROM interactions")}
    assert kinds == {"request", "complaint", "correspondence", "documentation_request", "comment"}
    assert _one(src, "members", "SELECT min(fiscal_year) FROM accounting_entries") <= TEST_AS_OF.year - 10
    assert _one(src, "members", "SELECT count(*) FROM id_documents WHERE reason = 'rights_request'") > 0


def test_civility_agrees_with_the_first_name(generated_sources):
    person = next(p for p in Faker("fr_FR").get_providers() if hasattr(p, "first_names_male"))
    rows = _rows(generated_sources, "members", "SELECT civility, first_name FROM members")
    assert {c for c, _ in rows} == {"M.", "Mme"}
    assert all(name in person.first_names_male for c, name in rows if c == "M.")
    assert all(name in person.first_names_female for c, name in rows if c == "Mme")


def test_malformed_rows_are_planted_for_quarantine(generated_sources):
    src = generated_sources
    assert sum(not _is_iso_date(b) for (b,) in _rows(src, "members", "SELECT birth_date FROM members")) >= 3
    assert _one(src, "members", "SELECT count(*) FROM reimbursements WHERE member_id IS NULL") >= 3
    assert _one(src, "members", "SELECT count(*) FROM reimbursements WHERE care_date = 'N/A'") >= 3
    assert _events(src)["visitor_id"].null_count >= 3


def test_rights_requests_cover_every_right_and_the_hard_cases(generated_sources):
    src = generated_sources
    members_by_email = {
        normalise_email(e): m for m, e in _rows(src, "members", "SELECT member_id, email FROM members") if e
    }
    requests = _rows(src, "members", "SELECT request_type, member_id, email, received_at, identity_verified_at, "
                                     "details, status FROM rights_requests")
    assert {r[0] for r in requests} == set(RIGHTS_TYPES)
    assert {r[6] for r in requests} == {"received"}
    assert any(r[4] is None for r in requests), "some identities are not verified yet"
    by_email_only = [r for r in requests if r[1] is None]
    messy_matches = [
        r for r in by_email_only if r[2] != normalise_email(r[2]) and normalise_email(r[2]) in members_by_email
    ]
    assert messy_matches, "hand-typed e-mails that normalise to a member's e-mail"
    assert 1 <= sum(normalise_email(r[2]) not in members_by_email for r in by_email_only) <= 2
    ages = [(TEST_AS_OF - dt.date.fromisoformat(r[3][:10])).days for r in requests]
    assert max(ages) > 30 and min(ages) >= 1 and max(ages) <= 45, "some requests are already overdue"
    details = {r[0]: json.loads(r[5]) for r in requests}
    assert set(details["rectification"]) == {"phone", "city"}
    assert details["objection"] == {"purposes": ["satisfaction_surveys"]}
    held = _one(src, "members", "SELECT count(*) FROM rights_requests r JOIN litigation_cases l USING (member_id) "
                                "WHERE r.request_type = 'erasure' AND l.status = 'open'")
    assert held >= 1, "an erasure request from a member under a legal hold"


def test_prospects_include_members_duplicates_and_messy_contacts(generated_sources):
    src = generated_sources
    members = _rows(src, "members", "SELECT email, phone FROM members")
    member_emails = {normalise_email(e) for e, _ in members if e}
    member_phones = {normalise_phone(p) for _, p in members if p}
    prospects = _rows(src, "prospects", "SELECT email, phone, last_inbound_contact_at, collected_at, "
                                        "marketing_consent FROM prospects")
    assert len(prospects) == 2 * TEST_MEMBERS
    emails = [normalise_email(r[0]) for r in prospects]
    converted = sum(e in member_emails for e in emails)
    assert 0.12 * len(prospects) <= converted <= 0.18 * len(prospects)
    assert sum(normalise_phone(r[1]) in member_phones for r in prospects if r[1]) > 0.1 * len(prospects)
    assert len(emails) - len(set(emails)) >= 3, "the same person entered twice"
    assert any(r[0] != normalise_email(r[0]) for r in prospects), "messy casing and spaces"
    phones = [r[1] for r in prospects if r[1]]
    formats = {"spaced": r"0\d( \d\d){4}", "compact": r"0\d{9}", "international": r"\+33 \d( \d\d){4}",
               "trunk": r"\+33 \(0\)\d( \d\d){4}"}
    for name, pattern in formats.items():
        assert any(re.fullmatch(pattern, p) for p in phones), name
    assert all(normalise_phone(p) for p in phones), "every phone format normalises"
    assert any(r[2] is None for r in prospects)
    three_years = [(TEST_AS_OF - dt.date.fromisoformat(r[2][:10])).days for r in prospects if r[2]]
    assert any(abs(days - 3 * 365) <= 3 for days in three_years), "inbound contacts right at the 3-year horizon"
    assert min(dt.date.fromisoformat(r[3][:10]) for r in prospects) < TEST_AS_OF.replace(year=TEST_AS_OF.year - 5)
    assert {bool(r[4]) for r in prospects} == {True, False}


def test_suppression_list_hashes_normalised_prospect_contacts(generated_sources):
    src = generated_sources
    contacts = set()
    for email, phone in _rows(src, "prospects", "SELECT email, phone FROM prospects WHERE NOT marketing_consent"):
        contacts |= {normalise_email(email), normalise_phone(phone)} - {None}
    hashes = {hashlib.sha256(c.encode()).hexdigest() for c in contacts}
    listed = _rows(src, "prospects", "SELECT contact_hash, channel FROM suppression_list")
    assert len(listed) >= 5
    assert all(h in hashes for h, _ in listed)
    assert {c for _, c in listed} == {"email", "phone"}


def test_navigation_has_logged_in_members_and_visitors_without_consent(generated_sources):
    events = _events(generated_sources)
    files = sorted((generated_sources / "navigation" / "events").glob("day=*/part-0.parquet"))
    assert len(files) > 800, "one file per day over the last ~30 months"
    logged_in = events["member_id"].null_count
    assert 0.2 < 1 - logged_in / events.num_rows < 0.4

    consents = pq.read_table(generated_sources / "navigation" / "consents").to_pylist()
    latest: dict[str, tuple] = {}
    for row in sorted(consents, key=lambda r: r["consented_at"]):
        latest[row["visitor_id"]] = row
    visitors = set(pc.unique(events["visitor_id"].drop_null()).to_pylist())
    without = sum(v not in latest or not latest[v]["analytics"] for v in visitors)
    assert 0.15 < without / len(visitors) < 0.4
    assert any(v not in latest for v in visitors) and any(not r["analytics"] for r in latest.values())


@pytest.mark.postgres
def test_copy_to_postgresql_keeps_every_row(generated_sources, pg_url):
    counts = {}
    for system, metadata in (("members", member_metadata), ("prospects", prospect_metadata)):
        counts |= copy_sql_system(f"sqlite:///{generated_sources / system}.db", pg_url, metadata)
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as con:
            for system, metadata in SQL_SYSTEMS.items():
                for table in metadata.tables:
                    expected = _one(generated_sources, system, f"SELECT count(*) FROM {table}")
                    assert con.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() == expected
                    assert counts[table] == expected
            copied = con.execute(sa.text("SELECT * FROM rights_requests ORDER BY request_id")).fetchall()
            assert [tuple(r) for r in copied] == _rows(generated_sources, "members",
                                                       "SELECT * FROM rights_requests ORDER BY request_id")
            assert con.execute(sa.text("SELECT count(*) FROM members WHERE marketing_consent")).scalar_one() > 0
            # The copied system keeps working: a new row gets the next id.
            new_id = con.execute(sa.text("INSERT INTO suppression_list (contact_hash) VALUES ('x') "
                                         "RETURNING suppression_id")).scalar_one()
            assert new_id == counts["suppression_list"] + 1
    finally:
        engine.dispose()


def test_ids_beyond_what_32_bit_offsets_hold_come_out_as_large_strings_with_the_same_values(monkeypatch):
    # The reference workload's 67 million page view ids are 2.4 GB of text; a small limit stands in for 2 GiB.
    ids = _columns.random_uuids(np.random.default_rng(3), 1000)
    monkeypatch.setattr(_columns, "MAX_STRING_BYTES", 36 * 999)
    large = _columns.random_uuids(np.random.default_rng(3), 1000)
    assert ids.type == pa.string() and large.type == pa.large_string()
    assert large.to_pylist() == ids.to_pylist() and len(set(ids.to_pylist())) == 1000
    large.validate(full=True)
