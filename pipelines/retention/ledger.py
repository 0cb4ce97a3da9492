"""The retention ledger, generated as SQL from the policy and computed in DuckDB: each night for the subjects
whose retention can have changed (pipelines.retention.scope), or for the whole population (a full recompute).

For every dataset record and each purpose it serves, the purpose's clock (declared in datasets.yaml) gives
clock start and the last day of the active and archive periods (whole days: pipelines.retention.until);
the record's status combines its purposes: active while one is
active, archived while one still has archive time, then anonymised if an ended purpose says so, else erased.
Open legal holds suspend anything but "active"; restricted subjects (art. 18) are only stored. Both reach the
whole person: every record linked to a held or restricted record through identity.person_links, and every
person rights.exclusions lists as restricted (rights intake runs before retention).

The active base is `raw.<table>`, the restricted archive `archive.<table>`; a record is read from both (the
raw copy wins) so archived records keep ageing until their archive period ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection
from typing import get_args

import duckdb

from pipelines.duck import table_exists
from pipelines.policy.models import Clock, Dataset, Policy, RetentionRule, SubjectType
from pipelines.retention.columns import compute_columns
from pipelines.retention.intent import owed_on
from pipelines.retention.scope import (
    DDL,
    DROPPED,
    DROPPED_ROWS,
    ENDED,
    FLAGS,
    INPUTS,
    SCOPE,
    STATE,
    Plan,
    fingerprint,
    forget_dropped,
    input_columns,
    inputs_sql,
    plan_scope,
    previous_state,
    why_full,
)
from pipelines.retention.until import kept_on_sql, last_day_sql
from pipelines.rights.scope import marketing_purposes
from pipelines.sources.schema import RESTRICTION_COLUMNS
from pipelines.sqltext import ident as q
from pipelines.sqltext import in_list, transaction
from pipelines.sqltext import literal as lit

STATUSES = ("active", "archived", "to_erase", "to_anonymise", "legal_hold", "restricted")
RESTRICTED_AT = RESTRICTION_COLUMNS[0]
UNIDENTIFIED = "unidentified"
EMPTY_SUBJECTS = "SELECT NULL::VARCHAR AS subject_type, NULL::VARCHAR AS subject_id WHERE false"
RESTRICTED, HELD, OBJECTING = "restricted", "legal_hold", "marketing_objection"  # retention.flag_sets flags
# rights.exclusions reasons that are objections to direct marketing (pipelines.rights.process)
OBJECTION_REASONS = ("objection", "objection_prospecting")


def quarantined_sql(con: duckdb.DuckDBPyConnection, ds: Dataset) -> str | None:
    """The dataset's rows that ingest quarantined (still in the source), typed like raw.<table> as far as their
    values allow: a page view without visitor id still has its timestamp, a claim with a bad date its member."""
    if not (table_exists(con, "raw", "quarantine") and table_exists(con, "raw", ds.name)):
        return None
    columns = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = "
                          "current_database() AND schema_name = 'raw' AND table_name = ? ORDER BY column_index",
                          [ds.name]).fetchall()
    typed = ", ".join(f"TRY_CAST(record->>{lit(c)} AS {t}) AS {q(c)}" for c, t in columns)
    return (f"SELECT {typed} FROM raw.quarantine WHERE system = {lit(ds.system)} AND table_name = {lit(ds.name)} "
            f"AND record->>{lit(ds.primary_key)} IS NOT NULL")


def source_sql(con: duckdb.DuckDBPyConnection, ds: Dataset) -> str | None:
    """Every record of a dataset: the active base, what only the archive still holds, then the source rows
    ingest quarantined (personal data under the same retention, with whatever clock they carry)."""
    # Anti-joins, not NOT IN: DuckDB then hashes the smaller side (the archive, the quarantine) instead of every
    # key of raw, 3x faster on 5.4 million page views.
    parts, pk = [], q(ds.primary_key)
    if table_exists(con, "raw", ds.name):
        parts.append(f"SELECT * FROM raw.{q(ds.name)}")
    if table_exists(con, "archive", ds.name):
        not_in_raw = f" ANTI JOIN raw.{q(ds.name)} r ON a.{pk} = r.{pk}" if parts else ""
        parts.append(f"SELECT a.* FROM archive.{q(ds.name)} a{not_in_raw}")
    quarantined = quarantined_sql(con, ds)
    if quarantined is not None:
        seen = " UNION ALL ".join(f"SELECT {pk} FROM ({p})" for p in parts)
        parts.append(f"SELECT x.* FROM ({quarantined}) x ANTI JOIN ({seen}) s ON x.{pk} = s.{pk} "
                     f"WHERE x.{pk} IS NOT NULL")
    return " UNION ALL BY NAME ".join(parts) if parts else None


# the temp tables compute() leaves for its scope, beside `{prefix}_flags` (built once for every slice)
COMPUTED = ("purposes", "records", "clock_facts", "columns")


def drop_computed(con: duckdb.DuckDBPyConnection, prefix: str) -> None:
    """Drop what compute() built for a scope (a slice done with), keeping the flags."""
    for name in COMPUTED:
        con.execute(f"DROP TABLE IF EXISTS {q(prefix + '_' + name)}")


def sources_of(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, str]:
    """Dataset -> every record of it (source_sql), for the datasets the warehouse holds."""
    return {ds.name: sql for ds in policy.datasets if (sql := source_sql(con, ds)) is not None}


def _subject_exprs(ds: Dataset, alias: str = "") -> tuple[str, str]:
    a = f"{alias}." if alias else ""
    whens_type = " ".join(f"WHEN {a}{q(s.column)} IS NOT NULL THEN {lit(s.type)}" for s in ds.subjects)
    whens_id = " ".join(f"WHEN {a}{q(s.column)} IS NOT NULL THEN CAST({a}{q(s.column)} AS VARCHAR)"
                        for s in ds.subjects)
    return f"CASE {whens_type} END", f"CASE {whens_id} END"


def _clock_value(clock: Clock) -> str:
    if clock.transform == "year_end":
        values = [f"CAST(make_date(CAST({q(c)} AS INTEGER), 12, 31) AS TIMESTAMP)" for c in clock.columns]
    else:
        values = [f"CAST({q(c)} AS TIMESTAMP)" for c in clock.columns]
    return values[0] if len(values) == 1 else f"greatest({', '.join(values)})"


CLOCK_EVENTS = "retention.clock_events"
STAGED = ("record_status", "ledger", "column_status", "clock_events")  # retention tables a ledger rewrites
SUBJECTS = "_ret_subjects"  # temp table (subject_type, subject_id, slice): the subjects a ledger computes, sliced
# Records per slice of a ledger's computation: a full ledger at 100,000 members (9.4 million records) peaked at
# 12.9 GB resident in one piece, 5.0 GB in four; at 1,000,000 members one piece's spill filled a 54 GB disk.
SLICE_RECORDS = 2_000_000


def _clock_sql(policy: Policy, name: str, sources: dict[str, str], *, stored: bool,
               as_of: dt.date | None = None, only: str | None = None) -> str:
    """(clock_subject_type, clock_key, clock, is_open) per subject id, or per primary key of the clock table.

    The rows of the clock table still held give the event; once they are gone (a contract erased at its own
    date), the dated fact kept in retention.clock_events still times the records of the subject that remain.
    An event that has not happened yet (a running contract) is open whatever an older fact says. A row the
    clock's declared fallback covers (a case closed without a decision date) starts on the night it is first
    seen so: `as_of` tonight, then the fact kept from that night (`provisional` until then).

    `only`, a relation of `(clock_subject_type, clock_key)` (per subject) or `clock_key` (per record), limits the
    clock to the keys an incremental ledger needs."""
    clock = policy.clocks[name]
    ds = policy.dataset(clock.table)
    value = _clock_value(clock)
    fallback = f"({value}) IS NULL AND {clock.fallback.sql()}" if clock.fallback else "false"
    open_expr = f"({value}) IS NULL AND NOT ({fallback})" if clock.open_when_null else "false"
    seen = f"TIMESTAMP {lit(as_of.isoformat())}" if as_of else "NULL::TIMESTAMP"
    current = None
    per_subject = clock.per == "subject"
    key_of = "(clock_subject_type, clock_key)" if per_subject else "clock_key"
    needed = "" if only is None else f" AND {key_of} IN (SELECT {key_of} FROM ({only}))"
    if ds.name in sources:
        subject_type, subject_id = ((_subject_exprs(ds)) if per_subject
                                    else ("NULL::VARCHAR", f"CAST({q(ds.primary_key)} AS VARCHAR)"))
        current = (f"SELECT * FROM (SELECT {subject_type} AS clock_subject_type, {subject_id} AS clock_key, "
                   f"CASE WHEN {fallback} THEN {seen} ELSE {value} END AS clock, "
                   f"CASE WHEN {fallback} THEN 2 ELSE 0 END AS origin, {open_expr} AS is_open "
                   f"FROM ({sources[ds.name]})) WHERE clock_key IS NOT NULL{needed}")
    facts = (f"SELECT clock_subject_type, clock_key, clock, 1 AS origin, false AS is_open FROM {CLOCK_EVENTS} "
             f"WHERE clock_name = {lit(name)}{needed}" if stored else None)
    union = " UNION ALL ".join(x for x in (current, facts) if x) or (
        "SELECT NULL::VARCHAR clock_subject_type, NULL::VARCHAR clock_key, NULL::TIMESTAMP clock, 0 origin, "
        "false is_open WHERE false")
    aggregate = clock.aggregate if clock.per == "subject" else "max"
    # the event the rows still show, else the fact kept, else the night a fallback row was first seen
    best = ", ".join(f"{aggregate}(clock) FILTER (origin = {o})" for o in (0, 1, 2))
    # timed by the night it was first seen, not kept yet: re-evaluated the next night, when the kept fact times it
    provisional = ("NOT bool_or(is_open) AND count(clock) FILTER (origin < 2) = 0 AND "
                   "count(clock) FILTER (origin = 2) > 0")
    return (f"SELECT clock_subject_type, clock_key, CASE WHEN bool_or(is_open) THEN NULL "
            f"ELSE coalesce({best}) END AS clock, bool_or(is_open) AS is_open, {provisional} AS provisional "
            f"FROM ({union}) GROUP BY ALL")


def fallback_clocks(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, list[str]]:
    """Clock name -> keys of the rows timed by the clock's fallback (no date where one is expected)."""
    found = {}
    for name, clock in policy.clocks.items():
        ds = policy.dataset(clock.table)
        source = source_sql(con, ds) if clock.fallback else None
        if source is None:
            continue
        keys = [k for (k,) in con.execute(
            f"SELECT CAST({q(ds.primary_key)} AS VARCHAR) FROM ({source}) WHERE ({_clock_value(clock)}) IS NULL "
            f"AND {clock.fallback.sql()} ORDER BY 1").fetchall()]
        if keys:
            found[name] = keys
    return found


def _purpose_sql(policy: Policy, ds: Dataset, purpose: str, rule: RetentionRule, as_of: str, prefix: str) -> str:
    clock = policy.clocks[rule.clock]
    clock_ds = policy.dataset(clock.table)
    if clock.per == "subject":
        clock_types = sorted({s.type for s in clock_ds.subjects})
        key = "r.subject_id"
        join = (f"LEFT JOIN {q(prefix + '_clock_' + rule.clock)} k ON k.clock_key = r.subject_id "
                f"AND k.clock_subject_type = r.subject_type")
        where = f"WHERE r.subject_type IN ({', '.join(lit(t) for t in clock_types)})"
    else:
        key = f"r.{q(_clock_key(policy, ds, rule.clock))}"
        join, where = f"LEFT JOIN {q(prefix + '_clock_' + rule.clock)} k ON k.clock_key = {key}", ""
    if ds.row_purposes:  # only the rows that serve the purpose (datasets.yaml row_purposes)
        where = f"{where} {'AND' if where else 'WHERE'} list_contains(r._row_purposes, {lit(purpose)})"
    active_until = last_day_sql("k.clock", rule.active)
    archive_until = last_day_sql("k.clock", rule.active, rule.archive)
    ended = "to_anonymise" if rule.end_action == "anonymise" else "to_erase"
    as_of_day = f"DATE {lit(as_of)}"
    return f"""
        SELECT r.dataset, r.record_key, r.subject_type, r.subject_id,
               {lit(purpose)} AS purpose, {lit(rule.clock)} AS clock_name, {key} AS clock_key,
               k.clock AS clock_start,
               {active_until} AS active_until, {archive_until} AS archive_until,
               CASE WHEN k.clock IS NULL THEN 'active'
                    WHEN {kept_on_sql(as_of_day, active_until)} THEN 'active'
                    WHEN {kept_on_sql(as_of_day, archive_until)} THEN 'archived'
                    ELSE {lit(ended)} END AS purpose_status,
               CASE WHEN k.is_open THEN {lit(rule.clock + ' not reached yet')}
                    WHEN k.clock IS NULL THEN {lit('no ' + rule.clock + ' event recorded')}
                    WHEN {kept_on_sql(as_of_day, active_until)}
                         THEN 'active through ' || strftime({active_until}, '%Y-%m-%d')
                    WHEN {kept_on_sql(as_of_day, archive_until)}
                         THEN 'archive through ' || strftime({archive_until}, '%Y-%m-%d')
                    ELSE {lit(rule.end_action + ' after ')} || strftime({archive_until}, '%Y-%m-%d') END
                 || {lit(f' ({rule.describe()})')} AS purpose_reason,
               CASE WHEN k.provisional THEN {as_of_day} + 1
                    WHEN k.clock IS NULL THEN NULL
                    WHEN {kept_on_sql(as_of_day, active_until)} THEN {active_until} + 1
                    WHEN {kept_on_sql(as_of_day, archive_until)} THEN {archive_until} + 1 END AS next_change
        FROM {q(prefix + '_records_' + ds.name)} r {join} {where}"""


def _record_subject(ds: Dataset, alias: str = "") -> tuple[str, str]:
    """A record naming none of its subjects (a page view without visitor id or member) is still personal data
    (IP, time): it is listed as subject `unidentified:<key>`, so per-record clocks still apply to it."""
    subject_type, subject_id = _subject_exprs(ds, alias)
    pk = f"CAST({alias + '.' if alias else ''}{q(ds.primary_key)} AS VARCHAR)"
    return (f"coalesce({subject_type}, {lit(UNIDENTIFIED)})",
            f"coalesce({subject_id}, {lit(UNIDENTIFIED + ':')} || {pk})")


def _records_sql(ds: Dataset, source: str, scope: str | None = None) -> str:
    """The dataset's records with their subject, references and row purposes; only the subjects of `scope` (a
    relation of subject_type, subject_id) if given."""
    subject_type, subject_id = _record_subject(ds, "s")
    refs = "".join(f", CAST(s.{q(c)} AS VARCHAR) AS {q('_ref_' + c)}" for c in ds.references)
    if ds.row_purposes:
        refs += f", {ds.row_purposes_sql('s')} AS _row_purposes"
    records = (f"SELECT {lit(ds.name)} AS dataset, CAST(s.{q(ds.primary_key)} AS VARCHAR) AS record_key, "
               f"{subject_type} AS subject_type, {subject_id} AS subject_id{refs} FROM ({source}) s")
    if scope is None:
        return records
    return (f"SELECT * FROM ({records}) WHERE (subject_type, subject_id) IN "
            f"(SELECT (subject_type, subject_id) FROM ({scope}))")


def _flags_sql(policy: Policy, sources: dict[str, str]) -> tuple[str, str]:
    """(restricted subjects, subjects on legal hold) as SQL relations of (subject_type, subject_id)."""
    restricted, held = [], []
    for ds in policy.datasets:
        if ds.name not in sources or not ds.subjects:
            continue
        subject_type, subject_id = _subject_exprs(ds)
        if ds.column(RESTRICTED_AT) is not None:
            restricted.append(f"SELECT {subject_type} AS subject_type, {subject_id} AS subject_id "
                              f"FROM ({sources[ds.name]}) WHERE {q(RESTRICTED_AT)} IS NOT NULL")
        for hold in policy.datasets_file.legal_holds:
            if hold.table == ds.name:
                held.append(f"SELECT {subject_type} AS subject_type, {subject_id} AS subject_id "
                            f"FROM ({sources[ds.name]}) WHERE {hold.where_sql()}")
    return " UNION ".join(restricted) or EMPTY_SUBJECTS, " UNION ".join(held) or EMPTY_SUBJECTS


def _objecting_sql(con: duckdb.DuckDBPyConnection, policy: Policy) -> str:
    """Subjects of every person with an objection to direct marketing in force (rights.exclusions)."""
    linked = table_exists(con, "rights", "exclusions") and table_exists(con, "identity", "person_links")
    if not marketing_purposes(policy) or not linked:
        return EMPTY_SUBJECTS
    return (f"SELECT node_type, node_value FROM identity.person_links WHERE person_id IN ("
            f"SELECT person_id FROM rights.exclusions WHERE reason IN {in_list(OBJECTION_REASONS)})")


def _end_marketing_on_objection(con: duckdb.DuckDBPyConnection, policy: Policy, prefix: str) -> None:
    """Art. 21(3): once the rights stage has an objection to direct marketing in force, the marketing purposes
    of the whole person end that night (what only they kept goes; the suppression list keeps the objection)."""
    marketing = sorted(marketing_purposes(policy))
    if not marketing:
        return
    status = {"anonymise": "to_anonymise", "delete": "to_erase"}
    ended = " ".join(f"WHEN {lit(p)} THEN {lit(status[policy.purpose(p).retention.end_action])}" for p in marketing)
    con.execute(f"""
        UPDATE {q(prefix + '_purposes')} SET purpose_status = CASE purpose {ended} END,
               purpose_reason = 'objection to direct marketing in force (GDPR art. 21(3)): marketing stopped'
        WHERE purpose IN {in_list(marketing)} AND (subject_type, subject_id) IN (
            SELECT (subject_type, subject_id) FROM {q(prefix + '_flags')} WHERE flag = {lit(OBJECTING)})""")


def flag_sets(con: duckdb.DuckDBPyConnection, policy: Policy, sources: dict[str, str], prefix: str) -> str:
    """Temp table `{prefix}_flags` (flag, subject_type, subject_id): the person-wide restricted, legal-hold and
    marketing-objection sets, whole (they are small); returns its name."""
    restricted, held = _flags_sql(policy, sources)
    sets = {RESTRICTED: _person_wide(con, restricted, "restricted"), HELD: _person_wide(con, held),
            OBJECTING: _objecting_sql(con, policy)}
    body = " UNION ALL ".join(f"SELECT DISTINCT {lit(flag)} AS flag, * FROM ({sql}) AS f(subject_type, subject_id) "
                              f"WHERE subject_id IS NOT NULL" for flag, sql in sets.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {q(prefix + '_flags')} AS {body}")
    return prefix + "_flags"


def _person_wide(con: duckdb.DuckDBPyConnection, flagged: str, rights_reason: str | None = None) -> str:
    """Every record of every person `flagged` names (member rows, linked prospects, visitors logged in as the
    member), through identity.person_links, plus the persons rights.exclusions lists with `rights_reason`."""
    if not table_exists(con, "identity", "person_links"):
        return flagged
    persons = (f"SELECT l.person_id FROM identity.person_links l JOIN ({flagged}) f "
               f"ON l.node_type = f.subject_type AND l.node_value = f.subject_id")
    if rights_reason is not None and table_exists(con, "rights", "exclusions"):
        persons += f" UNION SELECT person_id FROM rights.exclusions WHERE reason = {lit(rights_reason)}"
    subject_types = ", ".join(lit(t) for t in get_args(SubjectType))
    return (f"{flagged} UNION SELECT node_type, node_value FROM identity.person_links "
            f"WHERE node_type IN ({subject_types}) AND person_id IN ({persons})")


def _clock_key(policy: Policy, ds: Dataset, clock_name: str) -> str:
    """The column of `{prefix}_records_<ds>` a per-record clock joins on (its own key, or its reference)."""
    clock = policy.clocks[clock_name]
    if clock.table == ds.name:
        return "record_key"
    target = f"{clock.table}.{policy.dataset(clock.table).primary_key}"
    return "_ref_" + str(next((c for c, t in ds.references.items() if t == target), None))


def _clock_users(policy: Policy, datasets: list[Dataset]) -> dict[str, list[tuple[Dataset, str]]]:
    """Per clock name, the (dataset, purpose) pairs among `datasets` it times."""
    users: dict[str, list[tuple[Dataset, str]]] = {name: [] for name in policy.clocks}
    for ds in datasets:
        for purpose in ds.purposes:
            users[policy.rule_for(purpose, ds.name).clock].append((ds, purpose))
    return users


def clock_references(policy: Policy, sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """(clock table, records relation, reference column) for every record timed by another table's per-record
    clock: a change to that table's row changes the record's retention."""
    datasets = [ds for ds in policy.datasets if ds.subjects and ds.name in sources]
    found = set()
    for name, users in _clock_users(policy, datasets).items():
        clock = policy.clocks[name]
        for ds, _ in users:
            if clock.per == "record" and clock.table != ds.name:
                found.add((clock.table, ds.name, _clock_key(policy, ds, name)))
    return [(table, _records_sql(policy.dataset(ds), sources[ds]), column) for table, ds, column in sorted(found)]


def compute(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, prefix: str = "_ret",
            datasets: Collection[str] | None = None, scope: str | None = None, flags_built: bool = False,
            sliced: dict[str, str] | None = None) -> None:
    """Create temp tables `{prefix}_purposes` (record × purpose), `{prefix}_records` (record status, with the
    day it next changes: `next_review`), `{prefix}_flags` (pipelines.retention.scope), `{prefix}_clock_facts`
    and `{prefix}_columns`; with `scope` (a relation of subject_type, subject_id), only for those subjects.

    Temp tables only: safe on a read-only connection, so the policy preview can run it twice side by side.
    `datasets`: only the records of these datasets, with the clocks their purposes run on (a transfer reads a
    few datasets); their rows are those the whole computation gives them. None: every dataset.
    `flags_built`: `{prefix}_flags` is already tonight's (the scope was planned from it), not built again.
    `sliced`: per dataset, a relation of the columns the ledger reads of the scope's records only (a slice, read
    instead of the whole source); a clock read by the records of other subjects still reads its whole table.
    """
    as_of_text = as_of.isoformat()
    sources = sources_of(con, policy)
    stored = table_exists(con, *CLOCK_EVENTS.split("."))
    chosen = [ds for ds in policy.datasets if ds.subjects and ds.name in sources
              and (datasets is None or ds.name in datasets)]
    if not flags_built:
        flag_sets(con, policy, sources, prefix)
    # Record lists, then the clocks they need, as temp tables: each is read by several purposes, computed once.
    sliced = sliced or {}
    helpers = {f"{prefix}_records_{ds.name}": _records_sql(ds, sliced.get(ds.name, sources[ds.name]), scope)
               for ds in chosen}
    for name, users in _clock_users(policy, chosen).items():
        if datasets is not None and not users:
            continue
        only = None
        if scope is not None and policy.clocks[name].per == "subject":
            only = f"SELECT subject_type AS clock_subject_type, subject_id AS clock_key FROM ({scope})"
        elif scope is not None:
            only = " UNION ".join(f"SELECT {q(_clock_key(policy, ds, name))} AS clock_key "
                                  f"FROM {q(prefix + '_records_' + ds.name)}" for ds, _ in users
                                  ) or "SELECT NULL::VARCHAR AS clock_key WHERE false"
        clock = policy.clocks[name]
        # a subject's clock, or a record's own: the rows that time the slice's records are in the slice
        own = clock.per == "subject" or all(ds.name == clock.table for ds, _ in users)
        read = {**sources, **sliced} if own else sources
        helpers[f"{prefix}_clock_{name}"] = _clock_sql(policy, name, read, stored=stored, as_of=as_of, only=only)
    selects = [_purpose_sql(policy, ds, purpose, policy.rule_for(purpose, ds.name), as_of_text, prefix)
               for ds in chosen for purpose in ds.purposes]
    for name, sql in helpers.items():
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
    body = " UNION ALL ".join(selects) if selects else (
        "SELECT NULL::VARCHAR dataset, NULL::VARCHAR record_key, NULL::VARCHAR subject_type, NULL::VARCHAR "
        "subject_id, NULL::VARCHAR purpose, NULL::VARCHAR clock_name, NULL::VARCHAR "
        "clock_key, NULL::TIMESTAMP clock_start, NULL::DATE "
        "active_until, NULL::DATE archive_until, NULL::VARCHAR purpose_status, NULL::VARCHAR purpose_reason, "
        "NULL::DATE next_change WHERE false")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {prefix}_purposes AS {body}")
    _end_marketing_on_objection(con, policy, prefix)
    flags = q(prefix + "_flags")
    systems = " ".join(f"WHEN {lit(ds.name)} THEN {lit(ds.system)}" for ds in policy.datasets)
    # One table: the records with their flags and status (a flagged copy beside it held a second copy of every
    # record until the end, a gigabyte of memory at 100,000 members).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {prefix}_records AS
        WITH combined AS (
            SELECT dataset, record_key, subject_type, subject_id,
                   CASE WHEN bool_or(purpose_status = 'active') THEN 'active'
                        WHEN bool_or(purpose_status = 'archived') THEN 'archived'
                        WHEN bool_or(purpose_status = 'to_anonymise') THEN 'to_anonymise'
                        ELSE 'to_erase' END AS outcome,
                   list(purpose ORDER BY purpose) FILTER (purpose_status = 'active') AS active_purposes,
                   list(purpose ORDER BY purpose) FILTER (purpose_status = 'archived') AS archive_purposes,
                   -- the first day one of its purposes changes stage (nothing dated: only a change of input)
                   min(next_change) AS next_review
            FROM {prefix}_purposes GROUP BY dataset, record_key, subject_type, subject_id
        ),
        flagged AS (
            SELECT c.*, r.subject_id IS NOT NULL AS is_restricted, h.subject_id IS NOT NULL AS is_held
            FROM combined c
            LEFT JOIN (SELECT * FROM {flags} WHERE flag = {lit(RESTRICTED)}) r USING (subject_type, subject_id)
            LEFT JOIN (SELECT * FROM {flags} WHERE flag = {lit(HELD)}) h USING (subject_type, subject_id)
        )
        SELECT f.*, CASE f.dataset {systems} END AS system,
               CASE WHEN f.is_restricted THEN 'restricted'
                    WHEN f.is_held AND f.outcome <> 'active' THEN 'legal_hold'
                    ELSE f.outcome END AS status
        FROM flagged f
    """)
    # The dated facts still timing a record that stays (closed events only: an open one is re-read every night),
    # with the subject of the record they time (an incremental ledger replaces its subjects' facts).
    clocks = " UNION ALL ".join(f"SELECT {lit(n)} AS clock_name, * FROM {q(prefix + '_clock_' + n)}"
                                for n in policy.clocks if f"{prefix}_clock_{n}" in helpers) or (
        "SELECT NULL::VARCHAR clock_name, NULL::VARCHAR clock_subject_type, NULL::VARCHAR clock_key, "
        "NULL::TIMESTAMP clock, false is_open, false provisional WHERE false")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {prefix}_clock_facts AS
        SELECT DISTINCT p.clock_name, k.clock_subject_type, p.clock_key, k.clock, r.subject_type, r.subject_id
        FROM {prefix}_purposes p JOIN {prefix}_records r USING (dataset, record_key)
        JOIN ({clocks})
             k ON k.clock_name = p.clock_name AND k.clock_key = p.clock_key
        WHERE r.status NOT IN ('to_erase', 'to_anonymise') AND NOT k.is_open AND k.clock IS NOT NULL
    """)
    compute_columns(con, policy, prefix)
    for name in helpers:
        con.execute(f"DROP TABLE {name}")


STATUS_REASON = """CASE rec.status
        WHEN 'restricted' THEN 'subject restricted (GDPR art. 18): storage only, retention suspended'
        WHEN 'legal_hold' THEN 'open litigation: legal hold suspends ' || rec.outcome
        WHEN 'active' THEN 'kept in the active base by ' || array_to_string(rec.active_purposes, ', ')
        WHEN 'archived' THEN 'restricted archive for ' || array_to_string(rec.archive_purposes, ', ')
        WHEN 'to_anonymise' THEN 'every purpose ended; one requires anonymisation'
        ELSE 'every purpose ended' END"""


# A ledger row tells where the purpose itself stands (so "active" always means "before active_until"); a
# restriction or legal hold overrides it. What happens to the record (several purposes combined) is in the
# reason and in retention.record_status.
PURPOSE_STATUS = """CASE WHEN rec.status = 'restricted' THEN 'restricted'
    WHEN rec.status = 'legal_hold' AND p.purpose_status <> 'active' THEN 'legal_hold'
    ELSE p.purpose_status END"""


def ledger_day(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    """The `as_of` of the last ledger written (rows of record_status carry the day they were last evaluated)."""
    state = previous_state(con)
    if state is not None:
        return state[0]
    if table_exists(con, "retention", "record_status"):
        return con.execute("SELECT max(as_of) FROM retention.record_status").fetchall()[0][0]
    return None


def _inputs(con: duckdb.DuckDBPyConnection, policy: Policy, sources: dict[str, str]) -> str:
    """Temp table `_ret_inputs`: tonight's hash of what the ledger reads, per record (pipelines.retention.scope)."""
    parts = []
    for ds in policy.datasets:
        if ds.subjects and ds.name in sources:
            available = {row[0] for row in con.execute(f"DESCRIBE {sources[ds.name]}").fetchall()}
            parts.append(inputs_sql(policy, ds, sources[ds.name], _record_subject(ds), available))
    body = " UNION ALL ".join(parts) or f"SELECT * FROM {INPUTS} WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ret_inputs AS {body}")
    return "_ret_inputs"


def _shared(policy: Policy) -> list[str]:
    """Datasets whose records that left bring their subject in unless all its records there left
    (pipelines.retention.scope): the tables of per-subject clocks (the subject's other records are timed by an
    aggregate over them) and the datasets whose rows serve different purposes (row_purposes)."""
    clocks = {clock.table for clock in policy.clocks.values() if clock.per == "subject"}
    return sorted(clocks | {ds.name for ds in policy.datasets if ds.row_purposes})


def build_ledger(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, full: bool = False,
                 slice_records: int = SLICE_RECORDS) -> Plan | None:
    """(Re)write retention.ledger (subject × purpose × dataset), retention.record_status, retention.column_status
    (per kept record, the column groups that leave its stage, and why) and retention.clock_events for `as_of`.

    A dataset whose clock runs per record (navigation events, contributions) can put one subject's records in
    several statuses: the ledger then has one row per status, with the record count.

    Incremental unless `full` or the last ledger is no base for it (pipelines.retention.scope): only the subjects
    whose retention can have changed since the last ledger are re-evaluated and rewritten; the other rows stay
    as they are, with the `as_of` of the night that last evaluated them. Both give the same statuses.

    The subjects re-evaluated are computed in slices of about `slice_records` records (by a hash of the
    subject: everything the ledger combines hangs on one), each staged on disk before the next is computed, and
    swapped in at the end in one transaction; the slices give the ledger the whole computation gives.

    While push-back targets of the day are still owed (a run killed between two sources' commits, or a source
    that failed), the day's ledger stands as decided and nothing is recomputed from half-changed sources
    (pipelines.retention.intent). Returns how the ledger was computed, None when it was not.
    """
    for table in STAGED:  # what a run killed while staging left
        con.execute(f"DROP TABLE IF EXISTS {_next(table, on_disk=True)}")
    if owed_on(con, as_of) and ledger_day(con) == as_of:
        return None
    reason = why_full(con, policy, as_of, full)
    sources = sources_of(con, policy)
    inputs = _inputs(con, policy, sources)
    flags = flag_sets(con, policy, sources, "_ret")
    if reason is None:
        plan = plan_scope(con, as_of, inputs, flags, clock_references(policy, sources), _shared(policy))
        scoped = f"(subject_type, subject_id) IN (SELECT (subject_type, subject_id) FROM {SCOPE})"
    else:
        plan, scoped = Plan(True, reason), "true"
    # the subjects in scope that have records (the rows of those without go at the swap)
    slices = slice_subjects(con, f"SELECT subject_type, subject_id FROM {inputs} WHERE {scoped}", slice_records)
    copies = _slice_copies(con, policy, sources) if slices > 1 else {}
    for piece in range(slices):
        scope, sliced = None if plan.full else f"SELECT subject_type, subject_id FROM {SCOPE}", {}
        if slices > 1:
            scope = f"SELECT subject_type, subject_id FROM {SUBJECTS} WHERE slice = {piece}"
            sliced = {name: f"SELECT * EXCLUDE (_slice) FROM {q(table)} WHERE _slice = {piece}"
                      for name, table in copies.items()}
        compute(con, policy, as_of, scope=scope, flags_built=True, sliced=sliced)
        _stage(con, as_of, first=piece == 0, on_disk=slices > 1)
    for table in copies.values():
        con.execute(f"DROP TABLE {q(table)}")
    with transaction(con):
        _swap(con, as_of, scoped, on_disk=slices > 1)
        if not plan.full:
            forget_dropped(con)
        # What the next night compares with: the inputs, flags and policy this ledger was computed from.
        kept = "(dataset, record_key) NOT IN (SELECT (dataset, record_key) FROM _ret_kept)"
        con.execute(f"DELETE FROM {INPUTS} WHERE {scoped} AND {kept}")
        con.execute(f"INSERT INTO {INPUTS} BY NAME SELECT * FROM {inputs} WHERE {scoped} AND {kept}")
        con.execute(f"DELETE FROM {FLAGS}")
        con.execute(f"INSERT INTO {FLAGS} BY NAME SELECT * FROM {flags}")
        con.execute(f"DELETE FROM {STATE}")
        con.execute(f"INSERT INTO {STATE} VALUES (?, ?)", [as_of, fingerprint(policy)])
    for name in (inputs, "_ret_kept", flags, SUBJECTS, SCOPE, DROPPED, DROPPED_ROWS):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    return dataclasses.replace(plan, slices=slices)


def slice_subjects(con: duckdb.DuckDBPyConnection, records: str, slice_records: int, table: str = SUBJECTS) -> int:
    """How many slices of about `slice_records` records the subjects of `records` (a relation of subject_type,
    subject_id, one row per record) are computed in; with more than one, temp table `table` (subject_type,
    subject_id, slice) lists them with their slice."""
    count = con.execute(f"SELECT count(*) FROM ({records})").fetchall()[0][0]
    slices = max(1, -(-count // max(1, slice_records)))
    if slices > 1:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {q(table)} AS SELECT DISTINCT subject_type, subject_id, "
                    f"hash(subject_type, subject_id) % {slices} AS slice FROM ({records})")
    return slices


def _slice_copies(con: duckdb.DuckDBPyConnection, policy: Policy, sources: dict[str, str]) -> dict[str, str]:
    """Per dataset with subjects, temp table `_ret_slice_<dataset>`: the columns the ledger reads of the records
    of SUBJECTS' subjects, with their slice, in slice order; returns dataset -> table. Each slice then reads its
    own rows (row groups of other slices are skipped) instead of filtering every source again: at 1,000,000
    members that filtering, about 25 s a slice over 67 million page views, was most of a first night's ledger."""
    copies = {}
    for ds in policy.datasets:
        if not (ds.subjects and ds.name in sources):
            continue
        available = {row[0] for row in con.execute(f"DESCRIBE {sources[ds.name]}").fetchall()}
        columns = ", ".join(q(c) for c in input_columns(policy, ds, available))
        subject_type, subject_id = _record_subject(ds)
        copies[ds.name] = table = f"_ret_slice_{ds.name}"
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {q(table)} AS
            SELECT s.* EXCLUDE (_subject_type, _subject_id), x.slice AS _slice
            FROM (SELECT {columns}, {subject_type} AS _subject_type, {subject_id} AS _subject_id
                  FROM ({sources[ds.name]})) s
            JOIN {SUBJECTS} x ON x.subject_type = s._subject_type AND x.subject_id = s._subject_id
            ORDER BY x.slice""")
    return copies


def record_subjects_sql(con: duckdb.DuckDBPyConnection, policy: Policy) -> str:
    """(subject_type, subject_id) of every record the ledger of `policy` evaluates, one row per record."""
    sources = sources_of(con, policy)
    parts = [f"SELECT subject_type, subject_id FROM ({_records_sql(ds, sources[ds.name])})" for ds in policy.datasets
             if ds.subjects and ds.name in sources]
    return " UNION ALL ".join(parts) or EMPTY_SUBJECTS


def _kept(con: duckdb.DuckDBPyConnection, as_of: dt.date, scoped: str, on_disk: bool) -> None:
    """Temp table `_ret_kept`: re-running the same as_of, what an earlier run already erased or anonymised is no
    longer found (or no longer names its subject), but it is still this date's decision, so it stays in the
    ledger with the inputs it was decided on (the next night sees what changed since) and the second run changes
    nothing. Found or not is read from every slice's rows: a record anonymised out of its subject may be found
    under another subject, in another slice."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_kept AS
        WITH decided AS (SELECT dataset, record_key FROM retention.record_status
                         WHERE {scoped} AND as_of = ? AND status IN {in_list(ENDED)})
        SELECT * FROM decided EXCEPT SELECT dataset, record_key FROM {_next('record_status', on_disk)}
        WHERE (dataset, record_key) IN (SELECT (dataset, record_key) FROM decided)""", [as_of])


def _stage(con: duckdb.DuckDBPyConnection, as_of: dt.date, first: bool, on_disk: bool) -> None:
    """Add what compute() built to the staging tables (`_next`, replaced by the first slice), then drop it. On
    disk, each slice commits on its own (a run killed part-way leaves them to the next run): temp tables dropped
    inside a transaction stay in memory until it ends, 2.5 GB a slice at 100,000 members."""
    day = f"CAST({lit(as_of.isoformat())} AS DATE)"
    rows = {
        "record_status": f"""SELECT {day} AS as_of, dataset, system, record_key, subject_type, subject_id, status,
                             {STATUS_REASON} AS reason, next_review FROM _ret_records rec""",
        "ledger": f"""
            SELECT {day} AS as_of, p.subject_type, p.subject_id, p.purpose, p.dataset,
                   min(p.clock_start) AS clock_start, min(p.active_until) AS active_until,
                   max(p.archive_until) AS archive_until, {PURPOSE_STATUS} AS status,
                   -- the earliest clock explains the row; ties break on the text so reruns give the same reason
                   arg_min(p.purpose_reason || '; record ' || rec.status || ': ' || {STATUS_REASON},
                           (coalesce(p.clock_start, 'infinity'::TIMESTAMP),
                            p.purpose_reason || '; record ' || rec.status || ': ' || {STATUS_REASON})) AS reason,
                   count(*) AS records
            FROM _ret_purposes p JOIN _ret_records rec USING (dataset, record_key)
            GROUP BY p.subject_type, p.subject_id, p.purpose, p.dataset, {PURPOSE_STATUS}""",
        "column_status": f"""SELECT {day} AS as_of, dataset, system, record_key, subject_type, subject_id,
                             column_group, columns, state, reason FROM _ret_columns""",
        "clock_events": "SELECT * FROM _ret_clock_facts",
    }
    for table, sql in rows.items():
        if first:
            con.execute(f"CREATE OR REPLACE {'' if on_disk else 'TEMP '}TABLE {_next(table, on_disk)} AS {sql}")
        else:
            con.execute(f"INSERT INTO {_next(table, on_disk)} BY NAME {sql}")
    drop_computed(con, "_ret")


def _next(table: str, on_disk: bool) -> str:
    """Where a table's new rows are staged: on disk between slices, in a temp table when there is one slice (an
    incremental night's few subjects: no writes to the file before the swap)."""
    return f"retention.{q(table + '__next')}" if on_disk else q(f"_ret_next_{table}")


def _swap(con: duckdb.DuckDBPyConnection, as_of: dt.date, scoped: str, on_disk: bool) -> None:
    """Replace the rows of the subjects `scoped` selects with the staged ones (in the caller's transaction),
    keeping what `_ret_kept` names and the day's ended ledger rows no staged row replaces. A full ledger
    staged on disk (`scoped` true) takes the staging tables' place; otherwise the rows are copied in."""
    kept = "(dataset, record_key) IN (SELECT (dataset, record_key) FROM _ret_kept)"
    key = "(subject_type, subject_id, purpose, dataset, status)"
    _ensure_tables(con, on_disk)
    _kept(con, as_of, scoped, on_disk)
    con.execute(f"INSERT INTO {_next('record_status', on_disk)} BY NAME SELECT * FROM retention.record_status "
                f"WHERE {scoped} AND {kept}")
    con.execute(f"""
        INSERT INTO {_next('ledger', on_disk)} BY NAME
        WITH decided AS (SELECT * FROM retention.ledger WHERE {scoped} AND as_of = ? AND status IN {in_list(ENDED)})
        SELECT * FROM decided WHERE {key} NOT IN (SELECT {key} FROM {_next('ledger', on_disk)}
                                                  WHERE {key} IN (SELECT {key} FROM decided))""", [as_of])
    for table in STAGED:
        if scoped == "true" and on_disk:
            con.execute(f"DROP TABLE retention.{q(table)}")
            con.execute(f"ALTER TABLE {_next(table, on_disk)} RENAME TO {q(table)}")
        else:
            con.execute(f"DELETE FROM retention.{q(table)} WHERE {scoped}")
            con.execute(f"INSERT INTO retention.{q(table)} BY NAME SELECT * FROM {_next(table, on_disk)}")
            con.execute(f"DROP TABLE {_next(table, on_disk)}")


def _ensure_tables(con: duckdb.DuckDBPyConnection, on_disk: bool) -> None:
    """Create the ledger tables; a copy left by an older layout gets the new columns (clock facts cannot be
    recomputed once their rows are gone) or, if it differs otherwise, is replaced. The first ledger after that
    is full (pipelines.retention.scope: no previous state)."""
    con.execute(DDL)
    for table in STAGED:
        source = _next(table, on_disk)
        wanted = [(row[0], row[1]) for row in con.execute(f"DESCRIBE {source}").fetchall()]
        found = [(c, t) for (c, t) in con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'retention' "
            "AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()]
        if found and found == wanted[:len(found)]:
            for column, data_type in wanted[len(found):]:
                con.execute(f"ALTER TABLE retention.{table} ADD COLUMN {q(column)} {data_type}")
        elif found != wanted:
            con.execute(f"CREATE OR REPLACE TABLE retention.{table} AS SELECT * FROM {source} WHERE false")


def counts_by_purpose(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """purpose -> status -> records, from the last ledger."""
    out: dict[str, dict[str, int]] = {}
    for purpose, status, n in con.execute(
            "SELECT purpose, status, sum(records)::BIGINT FROM retention.ledger GROUP BY ALL ORDER BY ALL").fetchall():
        out.setdefault(purpose, {})[status] = n
    return out
