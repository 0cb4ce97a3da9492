"""Checks on an analytics file (a candidate before publication, or the published one), all set-based.

- no direct identifier: every value of every column, as text, is semi-joined against every value of the
  warehouse's direct-identifier columns listed in the policy (trimmed, lower-case) and every normalised
  e-mail and E.164 phone of the identity graph; values shaped like an e-mail or IPv4 address are refused;
- k-anonymity: each table's smallest class (row tables) or cell (aggregates) has at least k people, and
  every class of a row table meets the table's l-diversity rules;
- release figures (not a publication check: an asset check that warns): the catalogue's per-table release
  report within the policy's thresholds and the table's suppression budget;
- catalogue: every published table and column is described in `catalogue`, and nothing else is there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.duck import connect_memory
from pipelines.normalise import trim_sql
from pipelines.pseudo.kanon import achieved_k_sql, class_columns, classes_sql
from pipelines.pseudo.policy import PseudonymisationPolicy
from pipelines.sqltext import ident, literal

CATALOGUE = "catalogue"
# Shapes that are identifiers whatever table they came from.
IDENTIFIER_PATTERNS = {
    "e-mail address": r"[^@\s]+@[^@\s]+\.[a-z]{2,}",
    "IPv4 address": r"(^|[^0-9.])([0-9]{1,3}\.){3}[0-9]{1,3}($|[^0-9.])",
}


@contextmanager
def attached(analytics: Path, warehouse: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """In-memory connection with the analytics file as `pub` (and the warehouse as `wh`), read-only."""
    con = connect_memory()
    try:
        con.execute(f"ATTACH {literal(analytics)} AS pub (READ_ONLY)")
        if warehouse is not None:
            con.execute(f"ATTACH {literal(warehouse)} AS wh (READ_ONLY)")
        yield con
    finally:
        con.close()


def published_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'pub' "
        "ORDER BY table_name, column_index"
    ).fetchall()


def identifier_leaks(con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy) -> list[str]:
    """Columns of `pub` holding a warehouse identifier value or an identifier-shaped value."""
    sources = [
        f"SELECT CAST({ident(column)} AS VARCHAR) AS v FROM wh.raw.{ident(table)}"
        for table, columns in policy.direct_identifiers.items()
        for column in columns
    ]
    # Each distinct value of a column once, with the rows holding it: a page path or a month repeats on
    # millions of rows, and normalising and matching it once per row is most of the check's work.
    values = " UNION ALL ".join(
        f"SELECT {literal(t)} AS table_name, {literal(c)} AS column_name, lower({trim_sql('v')}) AS v, n "
        f"FROM (SELECT CAST({ident(c)} AS VARCHAR) AS v, count(*) AS n FROM pub.main.{ident(t)} GROUP BY ALL)"
        for t, c in published_columns(con)
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _published_values AS {values}")
    # The warehouse's identifier values (millions: an IP address per page view) are matched against the
    # published ones, not collected into a set of their own first.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _identifiers AS
        SELECT DISTINCT p.v FROM (
            SELECT lower({trim_sql('v')}) AS v FROM ({' UNION ALL '.join(sources)})
            UNION ALL
            SELECT node_value FROM wh.identity.person_links WHERE node_type IN ('email', 'phone')
        ) i JOIN (SELECT DISTINCT v FROM _published_values) p ON p.v = i.v
        WHERE p.v <> ''
        """
    )
    shapes = " OR ".join(f"regexp_matches(v, {literal(p)})" for p in IDENTIFIER_PATTERNS.values())
    rows = con.execute(
        f"""
        SELECT table_name, column_name,
               coalesce(sum(n) FILTER (WHERE v IN (SELECT v FROM _identifiers)), 0) AS identifier_values,
               coalesce(sum(n) FILTER (WHERE {shapes}), 0) AS identifier_shaped
        FROM _published_values GROUP BY ALL HAVING identifier_values > 0 OR identifier_shaped > 0
        ORDER BY ALL
        """
    ).fetchall()
    return [
        f"{t}.{c}: {hits} value(s) of a source identifier column, {shaped} shaped like an identifier"
        for t, c, hits, shaped in rows
    ]


def k_anonymity_problems(con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy) -> list[str]:
    tables = {t for t, _ in published_columns(con)}
    problems = []
    for name, table in policy.tables.items():
        if name not in tables:
            problems.append(f"{name}: table missing from the analytics file")
            continue
        achieved = con.execute(achieved_k_sql(f"pub.main.{ident(name)}", table)).fetchall()[0][0]
        if achieved is not None and achieved < policy.k_of(name):
            problems.append(f"{name}: a class has {achieved} people, k = {policy.k_of(name)}")
        if table.l_diversity:
            keys = [ident(c.name) for c in class_columns(table)]
            classes = classes_sql(f"pub.main.{ident(name)}", keys, ident(table.subject), 1, table)
            uniform = con.execute(f"SELECT coalesce(sum(_rows), 0) FROM ({classes}) WHERE _small").fetchall()[0][0]
            if uniform:
                rules = ", ".join(f"{r.column} {r.measure} l={r.l}" for r in table.l_diversity)
                problems.append(f"{name}: {uniform} row(s) in classes not diverse enough ({rules})")
    return problems


def release_problems(con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy) -> list[str]:
    """Release figures (catalogue `release_report`) beyond the policy's thresholds or a table's budget."""
    reports = dict(con.execute(f"SELECT DISTINCT table_name, release_report FROM pub.main.{CATALOGUE}").fetchall())
    rules, problems = policy.report, []
    for name in policy.tables:
        if name not in reports:
            problems.append(f"{name}: no release report in the catalogue")
            continue
        report = json.loads(reports[name])
        if report["suppression_ratio"] > policy.suppression_budget(name):
            problems.append(f"{name}: {report['suppression_ratio']:.2%} of rows suppressed, budget "
                            f"{policy.suppression_budget(name):.2%}")
        if report["prosecutor_max"] > rules.max_prosecutor_risk:
            problems.append(f"{name}: prosecutor risk {report['prosecutor_max']} > {rules.max_prosecutor_risk}")
        for query, error in report["queries"].items():
            if error["mean_relative_error"] > rules.max_query_error:
                problems.append(f"{name}: query '{query}' is off by {error['mean_relative_error']:.1%} on average "
                                f"(threshold {rules.max_query_error:.0%})")
    return problems


def catalogue_problems(con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy) -> list[str]:
    published = {(t, c) for t, c in published_columns(con) if t != CATALOGUE}
    if not any(t == CATALOGUE for t, _ in published_columns(con)):
        return ["the catalogue table is missing"]
    described = set(con.execute(f"SELECT table_name, column_name FROM pub.main.{CATALOGUE}").fetchall())
    declared = {(name, c.name) for name, table in policy.tables.items() for c in table.columns}
    return (
        [f"{t}.{c}: published but not in the catalogue" for t, c in sorted(published - described)]
        + [f"{t}.{c}: in the catalogue but not published" for t, c in sorted(described - published)]
        + [f"{t}.{c}: declared in the policy but not catalogued" for t, c in sorted(declared - described)]
    )


CHECKS: dict[str, Callable[[duckdb.DuckDBPyConnection, PseudonymisationPolicy], list[str]]] = {
    "no_direct_identifiers": identifier_leaks,
    "k_anonymity": k_anonymity_problems,
    "catalogue_complete": catalogue_problems,
}


def validate_analytics_file(
    analytics: Path, warehouse: Path, policy: PseudonymisationPolicy, checks: tuple[str, ...] = tuple(CHECKS)
) -> dict[str, list[str]]:
    """Problems per check (empty lists = the file may be published)."""
    with attached(analytics, warehouse) as con:
        return {name: CHECKS[name](con, policy) for name in checks}
