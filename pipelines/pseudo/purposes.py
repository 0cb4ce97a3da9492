"""Analytics follows its purpose: who may still be in each analysts' table, and at which health granularity.

Each table of policies/pseudonymisation.yaml names the purposes (purposes.yaml) its rows serve, e.g.
`statistics` for members_pseudo, `communication_marketing` and `prospecting` for the marketing audience. A
row enters the table only while one of them is active for it: a purpose whose clock runs per subject (the
statistics clock is the end of membership) covers that clock's subject types, one whose clock runs per record
(a page view) covers that dataset's records. `_ended_<table>(node_type, node_value)` lists the subjects
(`member`, `prospect`, `visitor`) and records (node_type = dataset) for which every listed purpose covering
them has ended on `as_of`, with the one definition of "until" (pipelines.retention.until: the last day is
kept whole). A subject with no clock event yet (a running contract) is within the purpose.

Health detail: the care acts reach analytics as categories (`act_categories`, e.g. consultation, pharmacie)
through `_act_categories(act_code, act_category)`; a column the policy lists under `health_detail` (act code,
label, professional) may only be published by a table whose purposes all declare an art. 9(2) condition.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from pipelines.policy.models import Policy
from pipelines.pseudo.policy import POLICY_FILE, PseudonymisationPolicy
from pipelines.retention.ledger import (
    CLOCK_EVENTS,
    _clock_sql,
    _clock_value,
    quarantined_sql,
    source_sql,
    table_exists,
)
from pipelines.retention.until import kept_on_sql, last_day_sql
from pipelines.sqltext import ident, literal


class PurposeMismatch(ValueError):
    """policies/pseudonymisation.yaml asks for something policies/purposes.yaml does not allow."""


def check_purposes(policy: Policy, pseudo: PseudonymisationPolicy) -> None:
    """Every table names defined purposes; health detail only under purposes with an art. 9 condition."""
    defined = {p.key for p in policy.purposes}
    for name, table in pseudo.tables.items():
        if not table.purposes:
            raise PurposeMismatch(f"{POLICY_FILE}: tables.{name}.purposes: name the purposes its rows serve "
                                  "(purposes.yaml); a row is published only while one of them is active")
        unknown = sorted(set(table.purposes) - defined)
        if unknown:
            raise PurposeMismatch(f"{POLICY_FILE}: tables.{name}.purposes: {unknown} not defined in purposes.yaml")
        detailed = sorted({c.source for c in table.columns} & set(pseudo.health_detail))
        without_art9 = [p for p in table.purposes if policy.purpose(p).legal_basis.article_9 is None]
        if detailed and without_art9:
            raise PurposeMismatch(
                f"{POLICY_FILE}: tables.{name} publishes health detail {detailed} but purpose(s) {without_art9} "
                "state no art. 9(2) condition in purposes.yaml: publish the act category instead")


def _ended_sql(con: duckdb.DuckDBPyConnection, policy: Policy, purpose: str, as_of: dt.date) -> str | None:
    """(node_type, node_value) whose `purpose` has ended on `as_of`; None when its clock table is absent."""
    rule = policy.purpose(purpose).retention
    clock = policy.clocks[rule.clock]
    clock_ds = policy.dataset(clock.table)
    source = source_sql(con, clock_ds)
    if source is None:
        return None

    def over(clock_sql: str) -> str:
        return f"NOT {kept_on_sql(literal(as_of.isoformat()), last_day_sql(clock_sql, rule.active))}"

    ended = f"k.clock IS NOT NULL AND {over('k.clock')}"
    stored = table_exists(con, "retention", "clock_events")
    only = None
    if clock.per == "record":
        # Only the records that have a row dated past the purpose (or undated: a fallback times it) are aggregated,
        # not every page view of 25 months. Any superset of them gives the same answer, so each place a record
        # may be held is read on its own, without the de-duplication `source_sql` does for the clock itself.
        value = _clock_value(clock)
        held = [f"{schema}.{ident(clock_ds.name)}" for schema in ("raw", "archive")
                if table_exists(con, schema, clock_ds.name)]
        quarantined = quarantined_sql(con, clock_ds)
        parts = [f"SELECT CAST({ident(clock_ds.primary_key)} AS VARCHAR) AS clock_key FROM {rows} "
                 f"WHERE ({value}) IS NULL OR {over(value)}"
                 for rows in [*held, *([f"({quarantined})"] if quarantined else [])]]
        if stored:
            parts.append(f"SELECT clock_key FROM {CLOCK_EVENTS} WHERE clock_name = {literal(rule.clock)} "
                         f"AND (clock IS NULL OR {over('clock')})")
        only = " UNION ALL ".join(parts)
    # with the dated facts retention keeps once the clock's own rows are gone (a contract erased at its date)
    clocks = _clock_sql(policy, rule.clock, {clock_ds.name: source}, stored=stored, only=only)
    node_type = "k.clock_subject_type" if clock.per == "subject" else literal(clock_ds.name)
    return (f"SELECT {literal(purpose)} AS purpose, {node_type} AS node_type, k.clock_key AS node_value "
            f"FROM ({clocks}) k WHERE {ended}")


def _covers(policy: Policy, purpose: str) -> set[str]:
    """Node types a purpose's clock speaks for: subject types of a per-subject clock, else its dataset."""
    clock = policy.clocks[policy.purpose(purpose).retention.clock]
    ds = policy.dataset(clock.table)
    return {s.type for s in ds.subjects} if clock.per == "subject" else {ds.name}


def prepare_purpose_tables(con: duckdb.DuckDBPyConnection, policy: Policy, pseudo: PseudonymisationPolicy,
                           as_of: dt.date) -> None:
    """Create `_ended_<table>` for every analytics table and `_act_categories` (see the module doc)."""
    check_purposes(policy, pseudo)
    # Each purpose's ended set once, however many tables name it (three audience tables share one over every
    # page view).
    ended = {}
    for purpose in sorted({p for table in pseudo.tables.values() for p in table.purposes}):
        if (sql := _ended_sql(con, policy, purpose, as_of)) is not None:
            ended[purpose] = ident(f"_ended_purpose_{purpose}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {ended[purpose]} AS {sql}")
    for name, table in pseudo.tables.items():
        parts = [f"SELECT * FROM {ended[p]}" for p in table.purposes if p in ended]
        covering: dict[str, int] = {}
        for p in table.purposes:
            for node_type in _covers(policy, p):
                covering[node_type] = covering.get(node_type, 0) + 1
        needed = "CASE node_type " + " ".join(f"WHEN {literal(t)} THEN {n}" for t, n in covering.items()) + " END"
        body = " UNION ALL ".join(parts) if parts else (
            "SELECT NULL::VARCHAR AS purpose, NULL::VARCHAR AS node_type, NULL::VARCHAR AS node_value WHERE false")
        # Out only when every listed purpose that speaks for the node has ended for it.
        con.execute(f"CREATE OR REPLACE TEMP TABLE {ident('_ended_' + name)} AS SELECT node_type, node_value "
                    f"FROM ({body}) GROUP BY node_type, node_value HAVING count(DISTINCT purpose) = {needed}")
    rows = [(code, category) for category, codes in pseudo.act_categories.items() for code in codes]
    con.execute("CREATE OR REPLACE TEMP TABLE _act_categories (act_code VARCHAR PRIMARY KEY, act_category VARCHAR)")
    if rows:
        con.executemany("INSERT INTO _act_categories VALUES (?, ?)", rows)
    for table_name in ended.values():
        con.execute(f"DROP TABLE {table_name}")
