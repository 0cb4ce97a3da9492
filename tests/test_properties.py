"""Property-based tests (hypothesis): the SQL module round-trips any string, normalisation and tokens keep one
person one token per domain and domains apart, and retention never erases a record a purpose or a hold keeps."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import duckdb
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import sqltext
from pipelines.ingest import duckdb_type
from pipelines.normalise import (
    WHITESPACE,
    email_sql,
    id_sql,
    lower,
    normalise_email,
    normalise_id,
    normalise_phone,
    phone_sql,
)
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.policy.models import duration_parts
from pipelines.pseudo.keys import derive_domain_key
from pipelines.pseudo.tokens import tokenise_series
from pipelines.retention.ledger import build_ledger
from pipelines.sources.schema import SQL_SYSTEMS

# Any text DuckDB can store: every code point but the UTF-16 surrogates, which no UTF-8 string holds.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the SQL module

@FAST
@given(TEXT)
def test_any_string_round_trips_as_a_literal(value):
    with duckdb.connect() as con:
        assert con.execute(f"SELECT {sqltext.literal(value)}").fetchall() == [(value,)]


@FAST
@given(TEXT.filter(bool), TEXT)
def test_any_name_round_trips_as_an_identifier_and_any_value_as_a_condition(name, value):
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE {sqltext.ident(name)} ({sqltext.ident(name)} VARCHAR)")
        con.execute(f"INSERT INTO {sqltext.ident(name)} VALUES (?), ('other')", [value])
        assert con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal").fetchall() \
            == [(name, name)]
        found = con.execute(f"SELECT count(*) FROM {sqltext.ident(name)} "
                            f"WHERE {sqltext.condition(name, 'equals', value)}").fetchall()[0][0]
        assert found == (2 if value == "other" else 1)


# ---------------------------------------------------------------- normalisation and tokens

MASTER = bytes.fromhex("5a" * 32)
# Text as it arrives: any code point, with a good share of the white space and controls trimming must agree on.
TYPED = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(WHITESPACE), max_size=40)
PADDING = st.text(st.sampled_from(WHITESPACE), max_size=3)


@FAST
@given(st.lists(TYPED, min_size=1, max_size=20))
def test_python_and_sql_normalise_every_string_alike(values):
    with duckdb.connect() as con:
        con.register("typed", pd.DataFrame({"v": pd.Series(values, dtype=object)}))
        rows = con.execute(f"SELECT {email_sql('v')}, {phone_sql('v')}, {id_sql('v')} FROM typed").fetchall()
    assert rows == [(normalise_email(v), normalise_phone(v), normalise_id(v)) for v in values]


def _spellings(draw, text: str) -> str:
    """The same value as people type it: letters in either case, white space around."""
    cased = "".join(c.upper() if draw(st.booleans()) and lower(c.upper()) == lower(c) else c for c in text)
    return draw(PADDING) + cased + draw(PADDING)


@st.composite
def email_spellings(draw) -> tuple[str, str, str]:
    address = normalise_email(draw(TYPED.filter(normalise_email)))
    return address, _spellings(draw, address), _spellings(draw, address)


@st.composite
def phone_spellings(draw) -> tuple[str, str, str]:
    """A French mobile number written national, international with 00, and +33 (0) with separators."""
    digits = draw(st.from_regex(r"[67][0-9]{8}", fullmatch=True))
    sep = draw(st.sampled_from(["", " ", ".", "-"]))
    pairs = sep.join(digits[i:i + 2] for i in range(1, 9, 2))
    national, international = f"0{digits[0]}{sep}{pairs}", f"0033 {digits[0]}{sep}{pairs}"
    return (f"+33{digits}", draw(PADDING) + national + draw(PADDING), draw(PADDING) + international,
            f"+33 (0){digits}" + draw(PADDING))


# Record and cookie ids: any text that is not white space only (white space around is trimmed).
IDS = TYPED.filter(normalise_id)


def _reference(domain: str, value: str) -> str:
    return hmac.new(derive_domain_key(MASTER, domain, 1), value.encode(), hashlib.sha256).hexdigest()


@FAST
@given(email_spellings())
def test_every_spelling_of_an_email_is_one_token_equal_to_the_reference(spellings):
    address, *typed = spellings
    assert {normalise_email(t) for t in typed} == {address}
    tokens = tokenise_series(pd.Series(typed), "email", derive_domain_key(MASTER, "statistics", 1))
    assert set(tokens) == {_reference("statistics", address)}


@FAST
@given(phone_spellings())
def test_every_spelling_of_a_phone_is_one_token_equal_to_the_reference(spellings):
    e164, *typed = spellings
    assert {normalise_phone(t) for t in typed} == {e164}
    tokens = tokenise_series(pd.Series(typed), "phone", derive_domain_key(MASTER, "marketing", 1))
    assert set(tokens) == {_reference("marketing", e164)}


@FAST
@given(st.lists(IDS, min_size=1, max_size=20, unique_by=normalise_id),
       st.sampled_from([("statistics", "marketing"), ("statistics", "audit"), ("marketing", "audit")]))
def test_tokens_of_two_domains_never_meet(values, domains):
    first, second = (tokenise_series(pd.Series(values), "id", derive_domain_key(MASTER, d, 1)) for d in domains)
    assert set(first).isdisjoint(second)
    # ids are trimmed (pipelines.normalise), then keyed as they are
    assert first.tolist() == [_reference(domains[0], normalise_id(v)) for v in values]


# ---------------------------------------------------------------- retention keeps what a purpose or hold keeps

POLICY = load_policy(PROJECT_ROOT / "policies")
TABLES = {t.name: t for t in SQL_SYSTEMS["members"].sorted_tables}


def _add(years: int, months: int, days: int, day: dt.date) -> dt.date:
    """Calendar arithmetic as the ledger's (DuckDB INTERVAL: 29 Feb + 1 year is 28 Feb)."""
    month = day.month - 1 + months + 12 * years
    year, month = day.year + month // 12, month % 12 + 1
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month, d) + dt.timedelta(days=days)
        except ValueError:
            continue
    raise AssertionError(day)


def _last_day_kept(end: dt.date) -> dt.date:
    """Last day any purpose of a member's record keeps it, from the policy (every one runs from membership end)."""
    last = end
    for purpose in POLICY.dataset("members").purposes:
        rule = POLICY.rule_for(purpose, "members")
        assert rule.clock == "membership_end"
        y1, m1, d1 = duration_parts(rule.active)
        y2, m2, d2 = duration_parts(rule.archive)
        last = max(last, _add(y2, m2, d2, _add(y1, m1, d1, end)))
    return last


def _create(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    columns = TABLES[table].columns
    con.execute(f"CREATE TABLE raw.{sqltext.ident(table)} ("
                + ", ".join(f"{sqltext.ident(c.name)} {duckdb_type(c)}" for c in columns) + ")")
    for row in rows:
        con.execute(f"INSERT INTO raw.{sqltext.ident(table)} ({', '.join(sqltext.ident(k) for k in row)}) "
                    f"VALUES ({', '.join('?' for _ in row)})", list(row.values()))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(end=st.none() | st.dates(dt.date(2012, 1, 1), dt.date(2026, 10, 31)),
       as_of=st.dates(dt.date(2018, 1, 1), dt.date(2032, 12, 31)),
       case=st.sampled_from([None, "open", "closed"]))
def test_a_member_is_never_erased_while_a_purpose_or_a_hold_keeps_them(end, as_of, case):
    with duckdb.connect() as con:
        con.execute("CREATE SCHEMA raw")
        _create(con, "members", [{"member_id": 1, "first_name": "A", "created_at": dt.datetime(2010, 9, 1)}])
        _create(con, "contracts", [{"contract_id": 1, "member_id": 1, "start_date": dt.date(2010, 9, 1),
                                    "end_date": end, "status": "active" if end is None else "terminated"}])
        _create(con, "litigation_cases", [] if case is None else [
            {"case_id": 1, "member_id": 1, "opened_at": dt.datetime(2011, 1, 1), "status": case}])
        build_ledger(con, POLICY, as_of)
        [(status,)] = con.execute("SELECT status FROM retention.record_status WHERE dataset = 'members'").fetchall()
    kept_by_purpose = end is None or as_of <= _last_day_kept(end)
    held = case == "open"
    erased = status in ("to_erase", "to_anonymise")
    assert not (erased and (kept_by_purpose or held)), (status, end, as_of, case)
    assert erased == (not kept_by_purpose and not held), (status, end, as_of, case)
