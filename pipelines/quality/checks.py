"""Data checks on the warehouse and the analytics file: DuckDB selects what GX needs, GX validates it.

DuckDB hands GX only the columns an expectation reads (keys, e-mails, the year of each date, the active
ledger rows), so checks stay fast on large tables. Every function returns SuiteOutcome(s) with counts and
masked examples; none returns or logs a raw value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import sqlalchemy as sa

from pipelines.quality.gx_runner import SuiteOutcome, run_suite
from pipelines.quality.patterns import TOKEN_PATTERN
from pipelines.quality.suites import (
    HAD_TEXT_SUFFIX,
    YEAR_SUFFIX,
    analytics_catalogue_suite,
    analytics_identifier_suite,
    analytics_token_suite,
    ledger_suite,
    raw_table_suite,
)
from pipelines.sources.schema import (
    COOKIE_CONSENT_SCHEMA,
    NAVIGATION_EVENT_SCHEMA,
    NAVIGATION_REQUIRED,
    SQL_SYSTEMS,
)
from pipelines.sqltext import ident, literal

CATALOGUE_TABLE = "catalogue"
PSEUDONYM_ROLE = "pseudonym"
TOKEN_FULL_MATCH = TOKEN_PATTERN.removeprefix("^").removesuffix("$")  # for DuckDB's regexp_full_match


class MissingCatalogueError(RuntimeError):
    """The analytics file has no catalogue table."""


@dataclass(frozen=True)
class RawTableSpec:
    """What the raw-table suite checks in `raw.<table>`, derived from the source schema."""

    table: str
    system: str
    keys: tuple[str, ...]
    required: tuple[str, ...]
    emails: tuple[str, ...]
    temporal: tuple[str, ...]


def _is_temporal(name: str) -> bool:
    return name.endswith(("_date", "_at")) or name == "ts"


def raw_table_specs() -> list[RawTableSpec]:
    """One spec per raw table of the warehouse contract (SQL systems, navigation events, cookie consents)."""
    specs = [
        RawTableSpec(
            table=table.name,
            system=system,
            keys=tuple(c.name for c in table.primary_key.columns),
            required=tuple(c.name for c in table.columns if c.info.get("required") and not c.primary_key),
            emails=tuple(c.name for c in table.columns if c.name == "email"),
            temporal=tuple(c.name for c in table.columns if _is_temporal(c.name)),
        )
        for system, metadata in SQL_SYSTEMS.items()
        for table in metadata.sorted_tables
    ]
    for table, schema, key in (
        ("navigation_events", NAVIGATION_EVENT_SCHEMA, "event_id"),
        ("cookie_consents", COOKIE_CONSENT_SCHEMA, "consent_id"),
    ):
        names = schema.names
        specs.append(
            RawTableSpec(
                table=table,
                system="navigation",
                keys=(key,),
                required=tuple(c for c in NAVIGATION_REQUIRED if c in names and c != key),
                emails=(),
                temporal=tuple(c for c in names if _is_temporal(c)),
            )
        )
    return specs


def _source_text_flags(engine: sa.Engine, system: str, spec: RawTableSpec) -> pd.DataFrame:
    """Per source row: its key and, for each date column, whether the source held non-blank text."""
    table = SQL_SYSTEMS[system].tables[spec.table]
    flags = [
        sa.func.coalesce(sa.func.length(sa.func.trim(sa.cast(table.c[c], sa.Text))), 0).label(c + HAD_TEXT_SUFFIX)
        for c in spec.temporal
    ]
    with engine.connect() as con:
        frame = pd.read_sql(sa.select(*[table.c[k] for k in spec.keys], *flags), con)
    for column in spec.temporal:
        frame[column + HAD_TEXT_SUFFIX] = frame[column + HAD_TEXT_SUFFIX] > 0
    return frame


def check_raw_table(
    con: duckdb.DuckDBPyConnection, spec: RawTableSpec, source_engine: sa.Engine | None = None
) -> SuiteOutcome:
    """Run the raw-table suite on `raw.<table>`; with `source_engine`, also compare dates to the source text."""
    years = [f"year({ident(c)}) AS {ident(c + YEAR_SUFFIX)}" for c in spec.temporal]
    columns = [ident(c) for c in dict.fromkeys([*spec.keys, *spec.required, *spec.emails])]
    query = f"SELECT {', '.join(columns + years)} FROM raw.{ident(spec.table)}"
    compared = source_engine is not None and spec.system in SQL_SYSTEMS and bool(spec.temporal)
    if compared:
        flags = _source_text_flags(source_engine, spec.system, spec)
        con.register("_source_flags", flags)
        try:
            on = " AND ".join(f"r.{ident(k)} = s.{ident(k)}" for k in spec.keys)
            flag_cols = ", ".join(f"s.{ident(c + HAD_TEXT_SUFFIX)}" for c in spec.temporal)
            frame = con.sql(f"SELECT r.*, {flag_cols} FROM ({query}) r JOIN _source_flags s ON {on}").df()
        finally:
            con.unregister("_source_flags")
    else:
        frame = con.sql(query).df()
    suite = raw_table_suite(spec.table, spec.keys, spec.required, spec.emails, spec.temporal, compared)
    return run_suite(frame, suite)


def check_ledger(con: duckdb.DuckDBPyConnection, as_of: date) -> SuiteOutcome:
    """No row of retention.ledger still `active` after its active_until, as of `as_of`."""
    frame = con.execute(
        "SELECT subject_id, purpose, datediff('day', ?::DATE, active_until::DATE) AS days_left_active "
        "FROM retention.ledger WHERE status = 'active'",
        [as_of],
    ).df()
    return run_suite(frame, ledger_suite())


def _analytics_columns(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.sql(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
    ).df()


def _catalogue_frame(con: duckdb.DuckDBPyConnection, columns: pd.DataFrame) -> pd.DataFrame:
    """One row per published column: its catalogue role (null if missing) and whether it looks like a token."""
    published = columns[columns["table_name"] != CATALOGUE_TABLE]
    text = published[published["data_type"] == "VARCHAR"]
    looks_like_token = set()
    for table, group in text.groupby("table_name"):
        tests = ", ".join(
            f"count({ident(c)}) > 0 AND count(*) FILTER "
            f"(WHERE NOT regexp_full_match({ident(c)}, {literal(TOKEN_FULL_MATCH)})) = 0"
            for c in group["column_name"]
        )
        flags = con.execute(f"SELECT {tests} FROM {ident(table)}").fetchall()[0]
        looks_like_token |= {(table, c) for c, flag in zip(group["column_name"], flags, strict=True) if flag}
    catalogue = con.sql(f"SELECT table_name, column_name, role FROM {ident(CATALOGUE_TABLE)}").df()
    frame = published[["table_name", "column_name"]].merge(catalogue, on=["table_name", "column_name"], how="left")
    pairs = list(zip(frame["table_name"], frame["column_name"], strict=True))
    frame["looks_like_token"] = [pair in looks_like_token for pair in pairs]
    frame["column_ref"] = [f"{t}.{c}" for t, c in pairs]
    return frame


def check_analytics_identifiers(path: Path) -> list[SuiteOutcome]:
    """No e-mail, phone, IPv4 or French postal address in any text column of any analytics table.

    A pattern is a property of a value, so GX sees each column's distinct values (counts are distinct values).
    Values that are whole 64-hex tokens are left out in SQL: none of the patterns can match inside one (no
    "@", dot, space or "+", and no word boundary between hex characters), and on large tables they are most
    of the data.
    """
    with duckdb.connect(str(path), read_only=True) as con:
        columns = _analytics_columns(con)
        text = columns[columns["data_type"] == "VARCHAR"]
        outcomes = []
        for table, column in text[["table_name", "column_name"]].itertuples(index=False):
            frame = con.sql(
                f"SELECT DISTINCT {ident(column)} FROM {ident(table)} "
                f"WHERE NOT regexp_full_match({ident(column)}, {literal(TOKEN_FULL_MATCH)})"
            ).df()
            outcomes.append(run_suite(frame, analytics_identifier_suite(str(table), [column])))
    return outcomes


def check_analytics_tokens(path: Path) -> list[SuiteOutcome]:
    """Pseudonym columns are 64 lowercase hex; every column is catalogued; token-like columns as pseudonyms.

    A file without its catalogue table fails: analysts could not tell tokens from attributes.
    """
    with duckdb.connect(str(path), read_only=True) as con:
        columns = _analytics_columns(con)
        if CATALOGUE_TABLE not in set(columns["table_name"]):
            raise MissingCatalogueError(f"the analytics file has no `{CATALOGUE_TABLE}` table")
        pseudonyms = con.execute(
            f"SELECT table_name, column_name FROM {ident(CATALOGUE_TABLE)} WHERE role = ?", [PSEUDONYM_ROLE]
        ).df()
        outcomes = []
        for table, group in pseudonyms.groupby("table_name", sort=True):
            names = group["column_name"].tolist()
            frame = con.sql(f"SELECT {', '.join(ident(c) for c in names)} FROM {ident(table)}").df()
            outcomes.append(run_suite(frame, analytics_token_suite(str(table), names)))
        outcomes.append(run_suite(_catalogue_frame(con, columns), analytics_catalogue_suite()))
    return outcomes
