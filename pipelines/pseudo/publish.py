"""Build the analysts' DuckDB file from the warehouse and publish it atomically (SPEC §3, §6).

The whole file is built under a temporary name in the target's directory, checked (pipelines/pseudo/
checks.py) and only then renamed over the published file with os.replace: an analyst who has the old
file open keeps reading the old, complete file and never blocks the run; a failed build or check leaves
the published file untouched. Domain keys are only ever bound as query parameters (tokens.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from pipelines.duck import DEFAULT_MEMORY_LIMIT, connect_memory
from pipelines.policy.models import Policy
from pipelines.private import make_private, private_dir
from pipelines.pseudo.checks import CATALOGUE, validate_analytics_file
from pipelines.pseudo.kanon import KAnonymityReport, anonymise, runner_ups_json
from pipelines.pseudo.policy import PseudonymisationPolicy, TablePolicy
from pipelines.pseudo.purposes import prepare_purpose_tables
from pipelines.pseudo.report import ReleaseQuality, measure_release
from pipelines.pseudo.tables import BUILDERS, REQUIRED_TABLES, domain_exclusions_sql, exclusions_sql
from pipelines.pseudo.tokens import normalise_sql, tokenise_table
from pipelines.sqltext import ident, literal

POPULATION = "population"


class PublicationRefused(RuntimeError):
    """The candidate file failed a check: nothing was published."""

    def __init__(self, problems: dict[str, list[str]]) -> None:
        self.problems = problems
        lines = [f"{check}: {problem}" for check, found in problems.items() for problem in found]
        super().__init__("analytics file not published:\n" + "\n".join(lines))


@dataclass(frozen=True)
class TableReport:
    rows: int
    kanon: KAnonymityReport
    key_version: int | None
    quality: ReleaseQuality


@dataclass
class PublicationReport:
    path: Path
    key_version: int
    as_of: dt.date
    tables: dict[str, TableReport] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # records and contacts per exclusion reason


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'wh' AND schema_name = ? AND table_name = ?",
        [schema, table],
    ).fetchall()[0][0] > 0


def _prepare(
    con: duckdb.DuckDBPyConnection, name: str, table: TablePolicy, key: bytes | None, bases: dict[str, str]
) -> str:
    """Temp table of the table's base rows with its token columns joined on; returns its name.

    `bases` maps each base query already run to its temp table: the three tables read from the page views
    (navigation_pseudo and the two audiences) share one base, queried once.
    """
    query = BUILDERS[name](table.domain)
    if query not in bases:
        bases[query] = f"_base_{name}"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {bases[query]} AS {query}")
    base = bases[query]
    pseudonyms = table.by_role("pseudonym")
    if not pseudonyms:
        return base
    prepared, joins, tokens = f"_prep_{name}", [], []
    for i, column in enumerate(pseudonyms):
        normalised = normalise_sql(column.normalise, ident(column.source))
        tokenise_table(con, f"_tok_{name}_{i}", f"SELECT {normalised} AS value FROM {base}", key)
        on = normalise_sql(column.normalise, "b." + ident(column.source))
        joins.append(f"JOIN _tok_{name}_{i} t{i} ON t{i}.value = {on}")
        tokens.append(f"t{i}.token AS {ident(column.name)}")
    select = ", ".join(["b.*", *tokens])
    # Inner joins: a row whose pseudonym source normalises to nothing has no person to count, so it goes.
    con.execute(f"CREATE OR REPLACE TEMP TABLE {prepared} AS SELECT {select} FROM {base} b {' '.join(joins)}")
    for i in range(len(pseudonyms)):
        con.execute(f"DROP TABLE _tok_{name}_{i}")
    return prepared


def _write_catalogue(
    con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy, reports: dict[str, TableReport]
) -> None:
    rows = [
        (
            name, column.name, column.role, table.domain if column.role == "pseudonym" else None,
            column.description, reports[name].key_version, policy.k_of(name), table.kind,
            reports[name].kanon.levels.get(column.name, column.aggregate), table.description,
            reports[name].kanon.loss_measure, reports[name].kanon.generalisation_loss,
            reports[name].kanon.rows_suppressed, runner_ups_json(reports[name].kanon),
            json.dumps(reports[name].quality.as_dict()),
        )
        for name, table in policy.tables.items()
        for column in table.columns
    ]
    con.execute(
        f"""
        CREATE TABLE cand.main.{CATALOGUE} (
            table_name VARCHAR, column_name VARCHAR, role VARCHAR, token_domain VARCHAR, description VARCHAR,
            key_version INTEGER, k INTEGER, table_kind VARCHAR, generalisation VARCHAR, table_description VARCHAR,
            loss_measure VARCHAR, information_loss DOUBLE, rows_suppressed BIGINT, runner_up_nodes JSON,
            release_report JSON
        )
        """
    )
    con.executemany(f"INSERT INTO cand.main.{CATALOGUE} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def prepare_builders(con: duckdb.DuckDBPyConnection, policy: PseudonymisationPolicy, as_of: dt.date,
                     purposes: Policy) -> dict[str, int]:
    """Temp tables the table builders (pipelines.pseudo.tables.BUILDERS) read: who is excluded per domain and
    who is past the purposes of each table on `as_of`. Returns the records and contacts excluded per reason."""
    con.execute(exclusions_sql(_table_exists(con, "rights", "exclusions")))
    prepare_purpose_tables(con, purposes, policy, as_of)
    for domain, rules in policy.domains.items():
        con.execute(domain_exclusions_sql(domain, rules.excluded_reasons))
    # The journalist's population: each table's records with nobody excluded (an empty exclusion list).
    con.execute(f"CREATE OR REPLACE TEMP TABLE _excluded_{POPULATION} (node_type VARCHAR, node_value VARCHAR)")
    return dict(con.execute(
        "SELECT reason, count(DISTINCT (node_type, node_value)) FROM _exclusions GROUP BY reason"
    ).fetchall())


def build_candidate(
    con: duckdb.DuckDBPyConnection,
    policy: PseudonymisationPolicy,
    domain_keys: dict[str, bytes],
    key_version: int,
    as_of: dt.date,
    purposes: Policy,
) -> tuple[dict[str, TableReport], dict[str, int]]:
    """Write every policy table and the catalogue into the attached `cand` database; `purposes` (the policy of
    purposes, datasets and recipients) says which rows are still within the purposes of each table."""
    unknown = sorted(set(policy.tables) - set(BUILDERS))
    if unknown:
        raise ValueError(f"no builder for analytics table(s) {unknown}; known: {sorted(BUILDERS)}")
    missing = [f"{schema}.{table}" for schema, table in REQUIRED_TABLES if not _table_exists(con, schema, table)]
    if missing:
        raise ValueError(f"the warehouse lacks {', '.join(missing)}: run ingestion and identity resolution first")
    excluded = prepare_builders(con, policy, as_of, purposes)
    reports, bases = {}, {}
    # Each temp table is dropped once the last table reading it is built: at a million members a base of page
    # views is gigabytes, and the build's memory is capped.
    readers = Counter(BUILDERS[name](table.domain) for name, table in policy.tables.items())
    for name, table in policy.tables.items():
        uses_key = bool(table.by_role("pseudonym"))
        prepared = _prepare(con, name, table, domain_keys[table.domain] if uses_key else None, bases)
        kanon = anonymise(
            con, prepared, f"cand.main.{ident(name)}", table, policy.k_of(name), policy.suppression_budget(name),
            {"as_of": as_of},
        )
        rows = con.execute(f"SELECT count(*) FROM cand.main.{ident(name)}").fetchall()[0][0]
        population = None
        if table.kind == "rows":
            population = f"_pop_{name}"
            con.execute(f"CREATE OR REPLACE TEMP TABLE {population} AS {BUILDERS[name](POPULATION)}")
        quality = measure_release(
            con, name, table, kanon, f"cand.main.{ident(name)}", prepared, population, policy.report,
            {"as_of": as_of},
        )
        reports[name] = TableReport(
            rows=rows, kanon=kanon, key_version=key_version if uses_key else None, quality=quality
        )
        query = BUILDERS[name](table.domain)
        readers[query] -= 1
        done = [population, None if prepared == bases[query] else prepared, None if readers[query] else bases[query]]
        for temp in filter(None, done):
            con.execute(f"DROP TABLE {temp}")
    _write_catalogue(con, policy, reports)
    return reports, excluded


def publish_analytics(
    warehouse: Path,
    analytics: Path,
    policy: PseudonymisationPolicy,
    domain_keys: dict[str, bytes],
    key_version: int,
    as_of: dt.date,
    purposes: Policy,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> PublicationReport:
    """Build, check and atomically publish the analytics file; raise PublicationRefused on a failed check. The
    build's DuckDB memory is capped at `memory_limit`; beyond it, it spills into a private folder beside the file."""
    private_dir(analytics.parent)
    # A run killed mid-build leaves its candidate behind; runs are serialised, so any left is stale. If
    # another publication were racing, losing its candidate only makes its swap fail: nothing half-published.
    for stale in analytics.parent.glob(f".{analytics.name}.*.building*"):
        stale.unlink(missing_ok=True)
    candidate = analytics.with_name(f".{analytics.name}.{uuid.uuid4().hex}.building")
    spill = analytics.with_name(f".{analytics.name}.spill")
    try:
        con = connect_memory(spill, memory_limit)
        try:
            con.execute(f"ATTACH {literal(warehouse)} AS wh (READ_ONLY)")
            con.execute(f"ATTACH {literal(candidate)} AS cand")
            make_private(candidate)  # still empty: DuckDB created it with the umask's mode
            con.execute("USE wh")
            reports, excluded = build_candidate(con, policy, domain_keys, key_version, as_of, purposes)
            con.execute("USE memory")
            con.execute("DETACH cand")
        finally:
            con.close()
        problems = validate_analytics_file(candidate, warehouse, policy)
        if any(problems.values()):
            raise PublicationRefused({check: found for check, found in problems.items() if found})
        os.replace(candidate, analytics)
    finally:
        candidate.unlink(missing_ok=True)
        candidate.with_name(candidate.name + ".wal").unlink(missing_ok=True)
        shutil.rmtree(spill, ignore_errors=True)
    return PublicationReport(path=analytics, key_version=key_version, as_of=as_of, tables=reports, excluded=excluded)
