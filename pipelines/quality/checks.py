"""Data checks on the warehouse and the analytics file: DuckDB selects what GX needs, GX validates it.

DuckDB hands GX only the columns an expectation reads (keys, e-mails, the year of each date, the active
ledger rows), so checks stay fast on large tables. A raw table is checked on the rows its last load brought in,
in bounded batches; key uniqueness, which needs the whole table, is SQL over it. Every function returns
SuiteOutcome(s) with counts and masked examples; none returns or logs a raw value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from pipelines.duck import scalar
from pipelines.ingest import read_sql_table, record_key_sql
from pipelines.quality.gx_runner import (
    MAX_EXAMPLES,
    ExpectationOutcome,
    SuiteOutcome,
    combine,
    outcomes_by,
    run_suite,
)
from pipelines.quality.masking import mask_value
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

# Rows handed to GX at a time, and source keys per read of the source's date text.
BATCH_ROWS = 200_000
SOURCE_KEYS_PER_READ = 5_000
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


def _scope(con: duckdb.DuckDBPyConnection, spec: RawTableSpec) -> tuple[str, str]:
    """What the last load of `raw.<table>` brought in (raw.ingest_scope, pipelines.ingest), as a condition on the
    table's rows (alias `r`), and its kind: 'all' (a full copy, or no record of the load), 'keys' (the rows new or
    changed at the source), 'files' (the rows of the navigation files read)."""
    table = "ingest_scope"
    recorded = scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw' "
                      "AND table_name = ?", [table])
    kinds = [k for (k,) in con.execute(
        "SELECT DISTINCT scope FROM raw.ingest_scope WHERE system = ? AND table_name = ?",
        [spec.system, spec.table]).fetchall()] if recorded else []
    items = (f"(SELECT item FROM raw.ingest_scope WHERE system = {literal(spec.system)} "
             f"AND table_name = {literal(spec.table)})")
    if kinds == ["keys"]:
        return "keys", f"({record_key_sql(list(spec.keys), 'r')}) IN {items}"
    if kinds == ["files"]:
        return "files", f"r.source_file IN {items}"
    return "all", "true"


def _duplicated_keys(con: duckdb.DuckDBPyConnection, spec: RawTableSpec, scope: str) -> ExpectationOutcome:
    """Keys unique over the whole table, in SQL: the keys of the rows in scope that occur more than once in the
    table (a duplicate among rows out of scope was reported by the check of the load that brought the later of
    them). Counted like GX: every row holding a duplicated key."""
    keys = ", ".join(ident(k) for k in spec.keys)
    table = f"raw.{ident(spec.table)}"
    probed = f"SELECT {keys} FROM {table} r WHERE {scope}"
    checked, unexpected, examples = con.execute(
        f"SELECT (SELECT count(*) FROM {table} r WHERE {scope}), coalesce(sum(n), 0), "
        f"list(k ORDER BY k)[1:{MAX_EXAMPLES}] FROM (SELECT concat_ws('|', {keys}) AS k, count(*) AS n "
        f"FROM {table} WHERE ({keys}) IN ({probed}) AND {' AND '.join(f'{ident(k)} IS NOT NULL' for k in spec.keys)} "
        f"GROUP BY {keys} HAVING count(*) > 1)").fetchall()[0]
    return ExpectationOutcome(label=f"{'+'.join(spec.keys)} unique", success=not unexpected,
                              element_count=checked, unexpected_count=int(unexpected),
                              examples=[mask_value(v) for v in examples or []])


def _source_text(engine: sa.Engine, spec: RawTableSpec, keys: list[str] | None) -> pa.Table:
    """Key and date columns of the source rows as text (all rows, or those of `keys`), read in chunks of keys."""
    table = SQL_SYSTEMS[spec.system].tables[spec.table]
    columns = [table.c[c] for c in (*spec.keys, *spec.temporal)]
    if keys is None:
        return read_sql_table(engine, table, columns=columns)
    [key] = [table.c[k] for k in spec.keys]
    values = [key.type.python_type(v) for v in keys]
    return pa.concat_tables([
        read_sql_table(engine, table, columns=columns, where=key.in_(values[i:i + SOURCE_KEYS_PER_READ]))
        for i in range(0, max(len(values), 1), SOURCE_KEYS_PER_READ)])


def check_raw_table(
    con: duckdb.DuckDBPyConnection, spec: RawTableSpec, source_engine: sa.Engine | None = None,
    batch_rows: int = BATCH_ROWS,
) -> SuiteOutcome:
    """Run the raw-table suite on the rows of `raw.<table>` its last load brought in (all of them after a full
    copy), `batch_rows` at a time: the table never goes whole into pandas. Key uniqueness is checked in SQL over
    the whole table. With `source_engine`, dates are also compared to the source text (of the same rows)."""
    kind, scope = _scope(con, spec)
    years = [f"year(r.{ident(c)}) AS {ident(c + YEAR_SUFFIX)}" for c in spec.temporal]
    columns = [f"r.{ident(c)}" for c in dict.fromkeys([*spec.keys, *spec.required, *spec.emails])]
    query = f"SELECT {', '.join(columns + years)} FROM raw.{ident(spec.table)} r WHERE {scope}"
    compared = source_engine is not None and spec.system in SQL_SYSTEMS and bool(spec.temporal)
    if compared:
        keys = None
        if kind != "all":
            keys = [k for (k,) in con.execute(f"SELECT CAST(r.{ident(spec.keys[0])} AS VARCHAR) "
                                              f"FROM raw.{ident(spec.table)} r WHERE {scope}").fetchall()]
        con.register("_source_text", _source_text(source_engine, spec, keys))
        on = " AND ".join(f"CAST(r.{ident(k)} AS VARCHAR) = s.{ident(k)}" for k in spec.keys)
        flags = ", ".join(f"coalesce(length(trim(s.{ident(c)})), 0) > 0 AS {ident(c + HAD_TEXT_SUFFIX)}"
                          for c in spec.temporal)
        query = f"SELECT r.*, {flags} FROM ({query}) r JOIN _source_text s ON {on}"
    suite = raw_table_suite(spec.table, spec.keys, spec.required, spec.emails, spec.temporal, compared,
                            unique=False)
    try:
        unique = _duplicated_keys(con, spec, scope)
        reader = con.sql(query).to_arrow_reader(batch_rows)
        outcomes = [run_suite(batch.to_pandas(), suite) for batch in reader if batch.num_rows]
    finally:
        if compared:
            con.unregister("_source_text")
    return combine(suite.name, [SuiteOutcome(suite.name, 0, [unique]), *outcomes])


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

    A pattern is a property of a value, so GX sees each column's distinct values (counts are distinct values), all
    columns stacked in one frame and validated at once (pipelines.quality.suites.analytics_identifier_suite); one
    outcome per column. Values that are whole 64-hex tokens are left out in SQL: none of the patterns can match
    inside one (no "@", dot, space or "+", and no word boundary between hex characters), and on large tables they
    are most of the data.
    """
    with duckdb.connect(str(path), read_only=True) as con:
        columns = _analytics_columns(con)
        text = columns[columns["data_type"] == "VARCHAR"]
        pairs = list(text[["table_name", "column_name"]].itertuples(index=False))
        distinct = [
            f"SELECT DISTINCT {literal(f'{table}.{column}')} AS column_ref, {ident(column)} AS value "
            f"FROM {ident(table)} WHERE NOT regexp_full_match({ident(column)}, {literal(TOKEN_FULL_MATCH)})"
            for table, column in pairs
        ]
        frame = (con.sql(" UNION ALL ".join(distinct)).df() if distinct
                 else pd.DataFrame({"column_ref": [], "value": []}))
    return outcomes_by(frame, analytics_identifier_suite(), "column_ref", "value", [f"{t}.{c}" for t, c in pairs])


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
