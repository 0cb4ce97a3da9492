"""Which subjects the night's ledger re-evaluates: the incremental ledger's scope, and when it must be full.

A record's retention only changes when (a) one of its purposes reaches a dated boundary (`next_review`, kept per
record in retention.record_status), (b) the columns the ledger reads from it change (a hash per record, kept in
retention.record_inputs), (c) a row of a per-record clock it references changes (through a `references`
column), or (d) a person-wide flag reaching it changes (restricted, legal hold, objection to marketing: the
expanded sets are small, computed whole every night and kept in retention.flag_sets). The unit re-evaluated is
the subject: per-subject clocks, person-wide flags and the ledger rows all hang on it.

A record that left its subject because an earlier night's ledger ended it (erased, or anonymised so that it
no longer names the subject) does not bring the subject back where a full recompute provably decides the same
for what stays: its rows are dropped (`DROPPED`), with the subject's ended ledger rows that counted only such
records. That is so when the records that stay share no ledger row with it (checked per purpose from the row
counts: `_droppable`) and do not read it: its dataset times no per-subject clock unless all the subject's
records in it left (the clock is then the fact kept in retention.clock_events), and records timed by a clock row
that left still come in (`clock_refs`). Otherwise the subject is re-evaluated, as for any other change.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import duckdb

from pipelines.policy.models import Dataset, Policy
from pipelines.sources.schema import RESTRICTION_COLUMNS
from pipelines.sqltext import ident as q
from pipelines.sqltext import in_list
from pipelines.sqltext import literal as lit

# Bump when the ledger's SQL changes what it decides: the next night then recomputes everything.
LEDGER_CODE_VERSION = 1
INPUTS = "retention.record_inputs"
FLAGS = "retention.flag_sets"
STATE = "retention.ledger_state"
SCOPE = "_ret_scope"  # temp table (subject_type, subject_id) of the night's incremental scope
# temp table (dataset, record_key, subject_type, subject_id): records that left a subject kept out of SCOPE
DROPPED = "_ret_dropped"
# temp table (subject_type, subject_id, dataset, purpose): ended ledger rows that counted only DROPPED records
DROPPED_ROWS = "_ret_dropped_rows"
ENDED = ("to_erase", "to_anonymise")  # record statuses whose records leave their subject (retention.applied)
DDL = f"""
CREATE SCHEMA IF NOT EXISTS retention;
CREATE TABLE IF NOT EXISTS {INPUTS} (dataset VARCHAR, record_key VARCHAR, subject_type VARCHAR,
    subject_id VARCHAR, input_hash UBIGINT);
CREATE TABLE IF NOT EXISTS {FLAGS} (flag VARCHAR, subject_type VARCHAR, subject_id VARCHAR);
CREATE TABLE IF NOT EXISTS {STATE} (as_of DATE, fingerprint VARCHAR);
"""


def fingerprint(policy: Policy) -> str:
    """Hash of the policy as loaded and of the ledger code's version: a ledger computed under another one is not
    a base to update."""
    files = [f.model_dump(mode="json") for f in (policy.purposes_file, policy.datasets_file, policy.recipients_file)]
    text = json.dumps({"ledger": LEDGER_CODE_VERSION, "policy": files}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def input_columns(policy: Policy, ds: Dataset, available: set[str]) -> list[str]:
    """The columns of `ds` the ledger reads (key, subjects, references, row purposes, clocks and their fallback,
    restriction and legal-hold conditions), as far as the warehouse has them."""
    wanted = [ds.primary_key, *(s.column for s in ds.subjects), *ds.references]
    wanted += [c.column for entry in ds.row_purposes for c in entry.where]
    for clock in policy.clocks.values():
        if clock.table == ds.name:
            wanted += [*clock.columns, *([clock.fallback.column] if clock.fallback else [])]
    for hold in policy.datasets_file.legal_holds:
        if hold.table == ds.name:
            wanted += [hold.column, *([hold.until_set] if hold.until_set else [])]
    wanted += RESTRICTION_COLUMNS
    return sorted({c for c in wanted if c in available})


def inputs_sql(policy: Policy, ds: Dataset, source: str, subject: tuple[str, str], available: set[str]) -> str:
    """(dataset, record_key, subject_type, subject_id, input_hash) per record of `source`; `subject` is the
    pair of SQL expressions naming a record's subject, as the ledger lists it."""
    columns = ", ".join(q(c) for c in input_columns(policy, ds, available))
    return (f"SELECT {lit(ds.name)} AS dataset, CAST({q(ds.primary_key)} AS VARCHAR) AS record_key, "
            f"{subject[0]} AS subject_type, {subject[1]} AS subject_id, hash({columns}) AS input_hash "
            f"FROM ({source})")


@dataclass(frozen=True)
class Plan:
    """How tonight's ledger is computed: `full` (and why) or incremental over SCOPE (and why each part)."""

    full: bool
    reason: str = ""
    due: int = 0  # subjects with a record whose next transition is due
    changed: int = 0  # subjects with a record whose ledger inputs changed (new, changed, vanished, clock row)
    flags: int = 0  # subjects entering or leaving a person-wide flag
    subjects: int = 0  # the union
    dropped: int = 0  # records the last ledger ended that left their subject, dropped without re-evaluating it
    slices: int = 1  # pieces the subjects were computed in (pipelines.retention.ledger)

    def describe(self) -> str:
        sliced = f"; computed in {self.slices} slices" if self.slices > 1 else ""
        if self.full:
            return f"full: {self.reason}{sliced}"
        return (f"incremental: {self.subjects} subjects in scope (due {self.due}, changed {self.changed}, "
                f"flags {self.flags}); {self.dropped} ended records dropped{sliced}")


def previous_state(con: duckdb.DuckDBPyConnection) -> tuple[dt.date, str] | None:
    con.execute(DDL)
    rows = con.execute(f"SELECT as_of, fingerprint FROM {STATE}").fetchall()
    return rows[0] if rows else None


def why_full(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, requested: bool) -> str | None:
    """The reason tonight's ledger must be computed whole, None when the last one can be updated."""
    state = previous_state(con)
    if requested:
        return "full recompute requested"
    if state is None:
        return "no previous incremental ledger"
    if state[1] != fingerprint(policy):
        return "policy or ledger code changed since the last ledger"
    if as_of < state[0]:
        return f"as_of {as_of} is before the last ledger's ({state[0]})"
    return None


def plan_scope(con: duckdb.DuckDBPyConnection, as_of: dt.date, inputs: str, flags: str,
               clock_refs: list[tuple[str, str, str]], shared: list[str]) -> Plan:
    """Create SCOPE: subjects due tonight, whose inputs changed, or whose flags changed; and DROPPED.

    `inputs` and `flags` are tonight's temp tables (INPUTS and FLAGS layout); `clock_refs` lists, per reference
    to a per-record clock table, (clock table, referencing relation with subject_type/subject_id, reference
    column) so records timed by a changed clock row come in too. `shared`: the datasets whose records a subject's
    other records depend on (per-subject clock tables) or whose records serve different purposes (row purposes):
    a record of theirs that left brings its subject in unless all the subject's records there left."""
    _changed_rows(con, inputs)
    _droppable(con, as_of, shared)
    referencing = " ".join(
        f"UNION SELECT r.subject_type, r.subject_id FROM ({relation}) r WHERE r.{q(column)} IN "
        f"(SELECT record_key FROM _ret_changed_rows WHERE dataset = {lit(table)})"
        for table, relation, column in clock_refs)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_scope_parts AS
        SELECT DISTINCT subject_type, subject_id, 'due' AS part FROM retention.record_status
        WHERE next_review <= DATE {lit(as_of.isoformat())}
        UNION SELECT subject_type, subject_id, 'changed' FROM (
            SELECT old_type AS subject_type, old_id AS subject_id FROM _ret_changed_rows c WHERE old_id IS NOT NULL
            AND (dataset, record_key) NOT IN (SELECT (dataset, record_key) FROM {DROPPED})
            UNION SELECT new_type, new_id FROM _ret_changed_rows WHERE new_id IS NOT NULL {referencing})
        UNION SELECT subject_type, subject_id, 'flags' FROM (
            (SELECT * FROM {flags} EXCEPT SELECT * FROM {FLAGS})
            UNION (SELECT * FROM {FLAGS} EXCEPT SELECT * FROM {flags}))""")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {SCOPE} AS SELECT DISTINCT subject_type, subject_id "
                "FROM _ret_scope_parts")
    # a subject in scope for another reason is rewritten whole: its records that left go with it
    for table in (DROPPED, DROPPED_ROWS):
        con.execute(f"DELETE FROM {table} WHERE (subject_type, subject_id) IN "
                    f"(SELECT (subject_type, subject_id) FROM {SCOPE})")
    counts = dict(con.execute("SELECT part, count(DISTINCT (subject_type, subject_id)) FROM _ret_scope_parts "
                              "GROUP BY 1").fetchall())
    subjects = con.execute(f"SELECT count(*) FROM {SCOPE}").fetchall()[0][0]
    dropped = con.execute(f"SELECT count(*) FROM {DROPPED}").fetchall()[0][0]
    con.execute("DROP TABLE _ret_scope_parts; DROP TABLE _ret_changed_rows")
    return Plan(False, due=counts.get("due", 0), changed=counts.get("changed", 0), flags=counts.get("flags", 0),
                subjects=subjects, dropped=dropped)


# A record's whole row of INPUTS (dataset, key, subject, inputs hash) as one 64-bit hash. Almost every record is
# the same as last night: the two sides are first told apart on that one integer (an anti-join on 70 million
# records at 1,000,000 members: 19 s), and only the rows found on one side only are then matched by key (the
# full join on two text keys, over all 70 million: 60 s).
ROW_HASH = "hash(dataset, record_key, subject_type, subject_id, input_hash)"


def _changed_rows(con: duckdb.DuckDBPyConnection, inputs: str) -> None:
    """Temp table `_ret_changed_rows` (dataset, record_key, old_type, old_id, new_type, new_id): the records
    whose subject or inputs hash differ between tonight's `inputs` and INPUTS, or found on one side only."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_differing AS
        SELECT h FROM (SELECT {ROW_HASH} AS h FROM {inputs}) WHERE h NOT IN (SELECT {ROW_HASH} FROM {INPUTS})
        UNION ALL
        SELECT h FROM (SELECT {ROW_HASH} AS h FROM {INPUTS}) WHERE h NOT IN (SELECT {ROW_HASH} FROM {inputs})""")
    side = "(SELECT * FROM {table} WHERE " + ROW_HASH + " IN (SELECT h FROM _ret_differing))"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_changed_rows AS
        SELECT coalesce(n.dataset, o.dataset) AS dataset, coalesce(n.record_key, o.record_key) AS record_key,
               o.subject_type AS old_type, o.subject_id AS old_id, n.subject_type AS new_type, n.subject_id AS new_id
        FROM {side.format(table=inputs)} n FULL JOIN {side.format(table=INPUTS)} o
             ON n.dataset = o.dataset AND n.record_key = o.record_key
        WHERE n.input_hash IS DISTINCT FROM o.input_hash OR n.subject_type IS DISTINCT FROM o.subject_type
           OR n.subject_id IS DISTINCT FROM o.subject_id""")
    con.execute("DROP TABLE _ret_differing")


def _droppable(con: duckdb.DuckDBPyConnection, as_of: dt.date, shared: list[str]) -> None:
    """Create DROPPED and DROPPED_ROWS: the records of `_ret_changed_rows` that left their subject after an
    earlier night's ledger ended them (the same night's re-run keeps its decisions: pipelines.retention.ledger),
    in (subject, dataset) groups where a full recompute provably decides the same without them, and the
    (subject, dataset, purpose) whose ended ledger rows counted only them.

    Per (subject, dataset), every record serves the same purposes (no row purposes) and counts once in one ledger
    row per purpose; a record that left counts in an ended row, or no longer (a re-run the night it was ended
    rewrote the rows it shared with records that stay). So per purpose, the records that stay counted in ended
    rows are the records that stay less those the other rows count: none, the ended rows go; all the ended rows
    count, they stay as they are; a mix, the subject is re-evaluated. A `shared` dataset qualifies only when every
    record of the subject in it left: the subject's clock is then the fact kept in retention.clock_events."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_left AS
        SELECT c.dataset, c.record_key, c.old_type AS subject_type, c.old_id AS subject_id
        FROM _ret_changed_rows c JOIN retention.record_status s ON s.dataset = c.dataset
             AND s.record_key = c.record_key AND s.subject_type = c.old_type AND s.subject_id = c.old_id
        WHERE (c.new_type, c.new_id) IS DISTINCT FROM (c.old_type, c.old_id) AND s.status IN {in_list(ENDED)}
          AND s.as_of < DATE {lit(as_of.isoformat())}""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_left_purposes AS
        WITH groups AS (SELECT subject_type, subject_id, dataset, count(*) AS left_records FROM _ret_left
                        GROUP BY ALL),
        held AS (SELECT subject_type, subject_id, dataset, count(*) - any_value(g.left_records) AS staying
                 FROM groups g JOIN retention.record_status USING (subject_type, subject_id, dataset)
                 GROUP BY subject_type, subject_id, dataset)
        SELECT subject_type, subject_id, dataset, purpose, any_value(staying) AS staying,
               any_value(staying) - coalesce(sum(records) FILTER (status NOT IN {in_list(ENDED)}), 0) AS staying_ended,
               coalesce(sum(records) FILTER (status IN {in_list(ENDED)}), 0) AS ended
        FROM retention.ledger JOIN held USING (subject_type, subject_id, dataset)
        GROUP BY subject_type, subject_id, dataset, purpose""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _ret_clean AS SELECT subject_type, subject_id, dataset
        FROM _ret_left_purposes GROUP BY subject_type, subject_id, dataset
        HAVING bool_and(staying_ended >= 0 AND (staying_ended = 0 OR staying_ended = ended))
           AND (dataset NOT IN {in_list(shared)} OR bool_and(staying = 0))""")
    clean = "(subject_type, subject_id, dataset) IN (SELECT (subject_type, subject_id, dataset) FROM _ret_clean)"
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DROPPED} AS SELECT * FROM _ret_left WHERE {clean}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DROPPED_ROWS} AS SELECT subject_type, subject_id, dataset, purpose "
                f"FROM _ret_left_purposes WHERE staying_ended = 0 AND ended > 0 AND {clean}")
    con.execute("DROP TABLE _ret_left; DROP TABLE _ret_left_purposes; DROP TABLE _ret_clean")


def forget_dropped(con: duckdb.DuckDBPyConnection) -> None:
    """Delete what the ledger keeps of DROPPED: their record_status and inputs rows, and the ended ledger rows
    DROPPED_ROWS names. They have no column_status rows (kept records only) and time no clock fact (facts time
    records that stay)."""
    for table in ("retention.record_status", INPUTS):
        con.execute(f"DELETE FROM {table} WHERE (dataset, record_key, subject_type, subject_id) IN "
                    f"(SELECT (dataset, record_key, subject_type, subject_id) FROM {DROPPED})")
    con.execute(f"DELETE FROM retention.ledger WHERE status IN {in_list(ENDED)} AND (subject_type, subject_id, "
                f"dataset, purpose) IN (SELECT (subject_type, subject_id, dataset, purpose) FROM {DROPPED_ROWS})")
