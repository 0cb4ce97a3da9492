"""Run the rights requests: intake, decide, push back to the sources, carry out in the warehouse, answer.

    process_rights(con, ctx, *, members, prospects, now=None, as_of=None, nightly=False, refresh_ledger=True)

`ctx` (pipelines.context.CoreContext) gives the policy, the audit log and its keyed subject tokens, the
navigation log, the exports folder (access bundles, erasure answers) and the outbox (art. 19 notices).

Per verified, matched request (decision id "rights:<request_id>:<request_type>"):
- access (or "interrogation"): an export bundle (pipelines.rights.access) -> answered;
- portability (art. 20): the same machinery, only what the person provided, per source -> answered;
- rectification: the corrected values of `details` written to the person's own records (members,
  prospects: the columns each has) by push-back `rectify`;
- erasure: every row of the person in every source and in raw.* deleted; rows a legal obligation keeps
  (policy: art. 6(1)(c) purposes with an archive) or a legal hold covers are first copied to the restricted
  archive.* schema, with the reason in rights.decisions and rights.kept; the person's identity links go too;
  the answer tells the person what was kept and why (pipelines.rights.answer);
- restriction / lift_restriction: the restriction flag set / cleared at the source;
- objection_prospecting: rows serving only direct marketing deleted (campaign selections, the prospect
  record), marketing consent set to false on the person's other records, SHA-256 of each normalised
  e-mail and phone put on the suppression list;
- objection: the purposes named in `details.purposes` recorded in rights.objections;
Intent before action (pipelines.rights.intent): the decisions, their full target lists, the archive copies
of what erasure keeps and their audit entries are committed to the warehouse in one transaction, then the
"decided" entries are appended to the audit log; if it cannot be appended, nothing is pushed. Every pending
decision (this run's and those an earlier run left) is then pushed from its recorded targets, each source in
its own transaction(s); a source that fails leaves its decisions pending ("executed", with the reason) for
the next run, even if the person no longer resolves through identity. Once every source confirmed by
re-reading, the warehouse is brought in line and the decision is "applied" (audited once), the request
confirmed. rights.exclusions (person_id, reason, since) is rebuilt from the requests in force, and the
member system's rights_requests.status follows the state (with `handled_at`, the day it ended). Subjects
appear in the audit as tokens only. Finally the source tables the run changed are re-read into raw.*
(pipelines.refresh), so the warehouse ends where the next run starts; the navigation files push-back rewrote are
recorded as rewritten rather than read again when every decision was confirmed (the warehouse erased the same
rows), unless a quarantined row of theirs was erased (its quarantine copy only a re-read takes away).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.context import CoreContext
from pipelines.ingest import duckdb_type
from pipelines.navigation import Stat, mark_mirrored
from pipelines.policy.models import Policy
from pipelines.pushback import TARGET_SCHEMA, apply_decisions, make_targets
from pipelines.pushback.sql import NoticeRule
from pipelines.pushback.targets import SUPPRESSION_TABLE
from pipelines.refresh import refresh_from_sources
from pipelines.retention.apply import table_order
from pipelines.rights.access import Held, read_held, write_access_bundle
from pipelines.rights.answer import record_kept, write_erasure_answers
from pipelines.rights.intake import (
    TERMINAL_STATES,
    column_type,
    ensure_schema,
    intake,
    nightly_decided,
    record_nightly,
    run_sql,
    table_exists,
)
from pipelines.rights.intent import (
    AUDIT_KEY,
    enqueue_audit,
    flush_audit,
    pending_targets,
    record_targets,
    target_summary,
)
from pipelines.rights.scope import CONSENT_COLUMN, SubjectTable, legal_hold_sql, subject_tables
from pipelines.sources.schema import SQL_SYSTEMS, rights_requests, source_clock
from pipelines.sqltext import ident, in_list, literal, transaction

EXCLUDING = {"erasure": "erased", "objection": "objection", "objection_prospecting": "objection_prospecting"}
IN_FORCE = ("decided", "executed", "confirmed")


@dataclass
class RightsOutcome:
    states: dict[str, int] = field(default_factory=dict)
    needs_human: int = 0
    overdue: int = 0
    due_within_7_days: int = 0
    decisions_confirmed: int = 0
    decisions_failed: dict[str, str] = field(default_factory=dict)
    bundles: list[Path] = field(default_factory=list)
    mirrored: list[str] = field(default_factory=list)  # navigation files rewritten and recorded as such, not re-read


def _stage(con: duckdb.DuckDBPyConnection, tables: list[SubjectTable]) -> None:
    con.register("_subject_tables", pa.Table.from_pylist([vars(t) for t in tables]))
    consent = [t.table_name for t in tables
               if t.system in SQL_SYSTEMS and CONSENT_COLUMN in SQL_SYSTEMS[t.system].tables[t.table_name].c]
    con.register("_consent_tables", pa.table({"table_name": pa.array(consent, pa.string())}))
    run_sql(con, """
        CREATE OR REPLACE TEMP TABLE _actionable AS
        SELECT *, 'rights:' || request_id || ':' || request_type AS new_decision_id FROM _intake
        WHERE state = 'verified' AND NOT needs_human AND person_id IS NOT NULL""")
    run_sql(con, """
        CREATE OR REPLACE TEMP TABLE _nodes AS
        SELECT a.request_id, a.request_type, a.new_decision_id AS decision_id, a.person_id, l.node_type, l.node_value
        FROM _actionable a JOIN identity.person_links l USING (person_id)
        WHERE NOT l.shared  -- a contact several people hold is acted on for none of them""")


def _set_based_targets(con: duckdb.DuckDBPyConnection, now: str) -> pa.Table:
    """Targets of erasure, restriction, lift_restriction and objection_prospecting, in one query."""
    return con.sql(f"""
        SELECT n.decision_id, s.system, s.table_name, s.key_column, n.node_value AS key_value,
               CASE WHEN n.request_type IN ('erasure', 'objection_prospecting') THEN 'erase'
                    WHEN n.request_type = 'restriction' THEN 'restrict' ELSE n.request_type END AS action,
               CAST(NULL AS VARCHAR) AS payload
        FROM _nodes n JOIN _subject_tables s ON s.node_type = n.node_type
        WHERE n.request_type = 'erasure'
           OR (n.request_type = 'objection_prospecting' AND s.marketing_only)
           OR (n.request_type IN ('restriction', 'lift_restriction') AND s.restrictable)
        UNION ALL
        SELECT n.decision_id, s.system, s.table_name, s.key_column, n.node_value, 'rectify',
               {literal(json.dumps({CONSENT_COLUMN: False}))}
        FROM _nodes n JOIN _subject_tables s ON s.node_type = n.node_type
        WHERE n.request_type = 'objection_prospecting' AND NOT s.marketing_only AND s.key_column = s.primary_key
          AND s.table_name IN (SELECT table_name FROM _consent_tables)
        UNION ALL
        SELECT DISTINCT n.decision_id, 'prospects', {literal(SUPPRESSION_TABLE)}, 'contact_hash',
               sha256(n.node_value), 'suppress',
               CAST(json_object('channel', n.node_type, 'objected_at', {literal(now)},
                                            'source_request_id', CAST(n.request_id AS VARCHAR)) AS VARCHAR)
        FROM _nodes n WHERE n.request_type = 'objection_prospecting' AND n.node_type IN ('email', 'phone')
    """).to_arrow_table().cast(TARGET_SCHEMA)


def _rectification_targets(con: duckdb.DuckDBPyConnection, policy: Policy, tables: list[SubjectTable]
                           ) -> tuple[pa.Table, dict[int, str]]:
    """Corrected values onto the person's own records. Refused (request_id -> reason) rather than half
    applied: a request naming a field the policy does not declare rectifiable on those records, or a value
    the source's column cannot hold (checked as ingestion will read it back, so nothing lands in quarantine)."""
    own = [t for t in tables if t.key_column == t.primary_key and t.system in SQL_SYSTEMS]
    rows: list[dict[str, object]] = []
    refused: dict[int, str] = {}
    requests = run_sql(con, "SELECT request_id, new_decision_id, CAST(details AS VARCHAR) FROM _actionable "
                           "WHERE request_type = 'rectification'")
    for request_id, decision_id, details in requests:  # a few requests, each a small JSON object
        values = json.loads(details or "{}")
        nodes = run_sql(con, "SELECT node_type, node_value FROM _nodes WHERE request_id = ?", [request_id])
        wanted: list[dict[str, object]] = []
        allowed: set[str] = set()
        invalid: set[str] = set()
        for table in own:
            columns = SQL_SYSTEMS[table.system].tables[table.table_name].c
            rectifiable = set(policy.dataset(table.table_name).rectifiable)
            allowed |= rectifiable
            payload = {k: v for k, v in values.items() if k in rectifiable}
            invalid |= {k for k, v in payload.items() if not _fits(con, columns[k], v)}
            wanted += [{"decision_id": decision_id, "system": table.system, "table_name": table.table_name,
                        "key_column": table.key_column, "key_value": value, "action": "rectify",
                        "payload": payload} for node_type, value in nodes if node_type == table.node_type and payload]
        unknown = sorted(set(values) - allowed)
        if not values or unknown:
            refused[request_id] = (f"nothing to correct, or fields not rectifiable on the person's records: {unknown} "
                                   f"(rectifiable: {sorted(allowed)})")
        elif invalid:
            refused[request_id] = (f"values the source cannot hold for {sorted(invalid)} (the value is required and "
                                   "must have the column's type)")
        else:
            rows += wanted
    return make_targets(rows), refused


def _fits(con: duckdb.DuckDBPyConnection, column: sa.Column, value: object) -> bool:
    """Whether ingestion would read `value` back from `column` (not null, of its type)."""
    if value is None or isinstance(value, dict | list) or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, bool) != (duckdb_type(column) == "BOOLEAN"):
        return False
    text = value if isinstance(value, str) else json.dumps(value)
    return run_sql(con, f"SELECT TRY_CAST(? AS {duckdb_type(column)}) IS NOT NULL", [text])[0][0]


def _objection_refusals(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[int, str]:
    known = {p.key for p in policy.purposes}
    refused = {}
    for request_id, details in run_sql(con, "SELECT request_id, CAST(details AS VARCHAR) FROM _actionable "
                                           "WHERE request_type = 'objection'"):
        purposes = json.loads(details or "{}").get("purposes") or []
        unknown = sorted(set(purposes) - known)
        if not purposes or unknown:
            refused[request_id] = f"objection names no purpose or unknown purposes {unknown}; known: {sorted(known)}"
    return refused


def _archive_kept(con: duckdb.DuckDBPyConnection, policy: Policy, tables: list[SubjectTable]) -> None:
    """Copy to archive.* the rows erasure must keep; temp table `_kept(decision_id, table_name, reason, n)`."""
    run_sql(con, "CREATE OR REPLACE TEMP TABLE _kept (decision_id VARCHAR, table_name VARCHAR, reason VARCHAR, "
                "n BIGINT)")
    run_sql(con, "CREATE SCHEMA IF NOT EXISTS archive")
    holds = {}
    for table, condition, reason in legal_hold_sql(policy, "h"):
        holds.setdefault(table, []).append((condition, reason))
    erased_types = {t for (t,) in run_sql(con, "SELECT DISTINCT node_type FROM _nodes WHERE request_type = 'erasure'")}
    for t in tables:
        if t.node_type not in erased_types or not table_exists(con, "raw", t.table_name):
            continue  # nobody's erasure reaches the table: no scan of it
        raw, typed = f"raw.{ident(t.table_name)}", column_type(con, "raw", t.table_name, t.key_column)
        rules = ([("true", t.kept_reason)] if t.kept_reason else []) + [
            # a person under a hold keeps every row of the hold's table, not only the matching ones
            (f"n.person_id IN (SELECT n2.person_id FROM _nodes n2 JOIN {raw} h ON h.{ident(t.key_column)} = "
             f"TRY_CAST(n2.node_value AS {typed}) AND n2.node_type = {literal(t.node_type)} WHERE {condition})", reason)
            for condition, reason in holds.get(t.table_name, [])]
        for condition, reason in rules:
            matched = (f"FROM {raw} r JOIN _nodes n ON r.{ident(t.key_column)} = TRY_CAST(n.node_value AS {typed}) "
                       f"AND n.node_type = {literal(t.node_type)} WHERE n.request_type = 'erasure' AND {condition}")
            run_sql(con, f"INSERT INTO _kept SELECT n.decision_id, {literal(t.table_name)}, ?, count(*) {matched} "
                        "GROUP BY n.decision_id", [reason])
            archive, pk = f"archive.{ident(t.table_name)}", ident(t.primary_key)
            run_sql(con, f"CREATE TABLE IF NOT EXISTS {archive} AS SELECT * FROM {raw} WHERE false")
            run_sql(con, f"INSERT INTO {archive} BY NAME SELECT DISTINCT r.* {matched} "
                        f"AND r.{pk} NOT IN (SELECT {pk} FROM {archive})")


def _erase_in_warehouse(con: duckdb.DuckDBPyConnection, tables: list[SubjectTable], hold_tables: set[str],
                        decision_ids: list[str]) -> None:
    """For the confirmed decisions, delete from raw.* the rows their recorded targets erased at the sources,
    from archive.* those no legal obligation or hold keeps, and the erased people's identity links (by
    person and by record, as the person may resolve differently since the decision)."""
    run_sql(con, """
        CREATE OR REPLACE TEMP TABLE _erased AS
        SELECT t.system, t.table_name, t.key_column, t.key_value, d.person_id, d.action AS request_type
        FROM rights.decision_targets t JOIN rights.decisions d USING (decision_id)
        WHERE t.action = 'erase' AND list_contains(?, t.decision_id)""", [decision_ids])
    reached = set(run_sql(con, "SELECT DISTINCT system, table_name, key_column FROM _erased"))
    if not reached:
        return  # nothing erased (most nights): no table nor identity link to scan
    for t in tables:
        if (t.system, t.table_name, t.key_column) not in reached:
            continue  # no erased key in the table: no scan of it
        erased = (f"FROM _erased WHERE system = {literal(t.system)} AND table_name = {literal(t.table_name)} "
                  f"AND key_column = {literal(t.key_column)}")
        for schema in ("raw", "archive"):
            if not table_exists(con, schema, t.table_name) or (
                    schema == "archive" and (t.kept_reason or t.table_name in hold_tables)):
                continue
            typed = column_type(con, schema, t.table_name, t.key_column)
            run_sql(con, f"DELETE FROM {schema}.{ident(t.table_name)} WHERE {ident(t.key_column)} IN "
                         f"(SELECT TRY_CAST(key_value AS {typed}) {erased})")
    run_sql(con, """
        DELETE FROM identity.person_links WHERE person_id IN (SELECT person_id FROM _erased
                                                            WHERE request_type = 'erasure')
           OR (node_type, node_value) IN (SELECT s.node_type, e.key_value FROM _erased e
               JOIN _subject_tables s USING (system, table_name, key_column)
               WHERE e.request_type = 'erasure' AND s.key_column = s.primary_key)""")


def _quarantined_erased(con: duckdb.DuckDBPyConnection, tables: list[SubjectTable]) -> set[str]:
    """Navigation files holding a quarantined row whose subject column names someone erased (`_erased`, left by
    _erase_in_warehouse): push-back deleted the row from the file, while raw.quarantine keeps its copy until the
    file is read again."""
    parts = [f"SELECT q.record->>'source_file' FROM raw.quarantine q JOIN _erased e "
             f"ON e.system = q.system AND e.table_name = q.table_name AND e.key_column = {literal(t.key_column)} "
             f"AND q.record->>{literal(t.key_column)} = e.key_value "
             f"WHERE q.system = 'navigation' AND q.table_name = {literal(t.table_name)}"
             for t in tables if t.system == "navigation"]
    if not parts or not table_exists(con, "raw", "quarantine"):
        return set()
    return {path for (path,) in run_sql(con, " UNION ".join(parts))}


def _rebuild_exclusions(con: duckdb.DuckDBPyConnection) -> None:
    """rights.exclusions from the requests in force; a restriction holds until a later lift_restriction."""
    reasons = " ".join(f"WHEN {literal(k)} THEN {literal(v)}" for k, v in EXCLUDING.items())
    run_sql(con, f"""
        CREATE OR REPLACE TABLE rights.exclusions AS
        WITH in_force AS (
            SELECT person_id, request_type, received_at, state_changed_at FROM rights.requests
            WHERE (state IN {in_list(IN_FORCE)} OR (state = 'needs_human' AND decision_id IS NOT NULL))
              AND person_id IS NOT NULL  -- a right carried out stays in force while a human sees to the rest
        ),
        restrictions AS (
            SELECT person_id,
                   max(received_at) FILTER (WHERE request_type = 'restriction') AS restricted,
                   max(received_at) FILTER (WHERE request_type = 'lift_restriction') AS lifted,
                   min(state_changed_at) FILTER (WHERE request_type = 'restriction') AS since
            FROM in_force GROUP BY person_id
        )
        SELECT person_id, 'restricted' AS reason, since FROM restrictions
        WHERE restricted IS NOT NULL AND (lifted IS NULL OR lifted < restricted)
        UNION ALL
        SELECT person_id, CASE request_type {reasons} END,
               min(state_changed_at)
        FROM in_force WHERE request_type IN {in_list(EXCLUDING)} GROUP BY ALL
    """)


@dataclass
class _Result:
    state: str
    reason: str | None = None
    decision_id: str | None = None
    targets: int = 0
    human: bool = False  # part of it left for a human: needs_human once carried out


def process_rights(
    con: duckdb.DuckDBPyConnection,
    ctx: CoreContext,
    *,
    members: sa.Engine,
    prospects: sa.Engine | None,
    now: dt.datetime | None = None,
    as_of: dt.date | None = None,
    nightly: bool = False,
    refresh_ledger: bool = True,
) -> RightsOutcome:
    """See the module docstring. `con` is the warehouse (raw.*, identity.person_links already built);
    deadlines are evaluated as of `as_of` (default: the date of `now`).

    `nightly`: the nightly run of `as_of`. When a nightly run of that day has already decided (this one
    re-executes the day, after a kill or by hand), the sources may no longer hold what it matched requests
    against, so requests it left waiting for a human stay so (the rights job, started when a request changes,
    re-examines them). `refresh_ledger=False` leaves the retention ledger to the nightly's retention step (the
    Dagster jobs: in the same run after this stage, or the next night after the rights job): the re-read of what
    push-back changed then rebuilds no ledger."""
    policy, audit, token = ctx.policy, ctx.audit, ctx.tokenise
    navigation_dir, exports_dir, outbox_dir = ctx.paths.navigation, ctx.paths.exports, ctx.paths.outbox
    now_text = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S")
    tables = subject_tables(policy)
    ensure_schema(con)
    flush_audit(con, audit, recover=True)  # what a killed run queued, each entry written once
    nightly_day = as_of if nightly else None
    intake(con, now_text, hold_needs_human=nightly_day is not None and nightly_decided(con, nightly_day))
    _stage(con, tables)
    results: dict[int, _Result] = {}

    refused = _objection_refusals(con, policy)
    rectify, refused_rectify = _rectification_targets(con, policy, tables)
    refused |= refused_rectify
    targets = pa.concat_tables([_set_based_targets(con, now_text), rectify])
    if refused:
        keep = pc.invert(pc.is_in(targets["decision_id"], value_set=pa.array(
            [f"rights:{r}:" + t for r, t in run_sql(con, 
                "SELECT request_id, request_type FROM _actionable WHERE list_contains(?, request_id)",
                [list(refused)])], pa.string())))
        targets = targets.filter(keep)
    per_decision = targets.group_by("decision_id").aggregate([("key_value", "count")]).to_pylist()
    target_counts = {r["decision_id"]: r["key_value_count"] for r in per_decision}

    # 1. Decide: the targets, the archive copies of what an obligation keeps, the states and their audit
    # entries in one warehouse transaction; then the audit log. If it cannot be appended, nothing is pushed.
    bundles: list[Path] = []
    with transaction(con):
        _archive_kept(con, policy, tables)  # before the sources lose the rows
        kept = {}
        for decision_id, table_name, reason, n in run_sql(con, "SELECT * FROM _kept ORDER BY 1, 2"):
            kept.setdefault(decision_id, []).append(f"{n} row(s) of {table_name} kept in the restricted archive: "
                                                    f"{reason}")
        actionable = run_sql(con, "SELECT request_id, request_type, new_decision_id, person_id FROM _actionable "
                                 "ORDER BY request_id")
        nodes_of = {}
        for request_id, node_type, value in run_sql(con,
                "SELECT request_id, node_type, node_value FROM _nodes WHERE request_type IN ('access', "
                "'portability')"):
            nodes_of.setdefault(request_id, []).append((node_type, value))
        # what is near the person but not theirs for sure is left untouched, for a human (identity.ambiguities)
        ambiguous = dict(run_sql(con, "SELECT a.request_id, count(*) || ' left for a human: ' || "
                                      "string_agg(DISTINCT m.reason, '; ' ORDER BY m.reason) FROM _actionable a "
                                      "JOIN identity.ambiguities m USING (person_id) GROUP BY 1"))
        # every access and portability request's rows, read once per table for all of them
        held: Held | Exception
        try:
            held = read_held(con, policy, [n for ns in nodes_of.values() for n in ns],
                             engines={"members": members, "prospects": prospects}, navigation_dir=navigation_dir)
        except SOURCE_ERRORS as exc:
            held = exc
        for request_id, request_type, decision_id, person_id in actionable:  # one per request, not per row
            if request_id in refused:
                results[request_id] = _Result("refused", refused[request_id], decision_id)
            elif request_type in ("access", "portability"):
                try:
                    if isinstance(held, Exception):
                        raise held
                    path = write_access_bundle(policy, held, request_id=request_id,
                                               subject_token=token(f"person:{person_id}"),
                                               nodes=nodes_of.get(request_id, []), exports_dir=exports_dir,
                                               portability=request_type == "portability")
                except SOURCE_ERRORS as exc:
                    results[request_id] = _Result("verified", f"bundle not written, retried next run: "
                                                              f"{_unavailable('a source', exc)}")
                    continue
                bundles.append(path)
                results[request_id] = _Result("answered", _joined(f"export bundle {path.name}",
                                                                  ambiguous.get(request_id)), decision_id,
                                              human=request_id in ambiguous)
            else:
                reason = "; ".join(kept.get(decision_id, [])) or None
                if request_type != "objection" and not target_counts.get(decision_id):
                    reason = "no record of the person at the sources for this right; exclusions apply"
                results[request_id] = _Result("decided", _joined(reason, ambiguous.get(request_id)), decision_id,
                                              target_counts.get(decision_id, 0), human=request_id in ambiguous)
        record_targets(con, targets)
        record_kept(con)
        if nightly_day is not None:
            record_nightly(con, nightly_day)
        _save(con, results, now_text, "SELECT * FROM _intake", token, target_summary(targets, token))
    flush_audit(con, audit)

    # 2. Push every pending decision (this run's and any an earlier run left) from its recorded targets.
    pending = run_sql(con, "SELECT decision_id, request_id, reason, targets FROM rights.decisions "
                           "WHERE status = 'decided' ORDER BY decision_id")
    failed, touched, rewritten = _push(pending_targets(con, [d for d, *_ in pending]), policy=policy, members=members,
                            prospects=prospects, navigation_dir=navigation_dir, outbox_dir=outbox_dir,
                            tokenise=token, notices=ctx.notice_rules, now=now, shared=con)
    touched.add(("members", rights_requests.name))  # the requests' status changes at the source too

    # 3. Carry out in the warehouse what every source confirmed, and record it applied (audited once).
    applied = [d for d, *_ in pending if d not in failed]
    later = {request_id: _Result("executed", f"push-back not confirmed: {failed[d]}", d, n) if d in failed
             else _Result("confirmed", reason, d, n) for d, request_id, reason, n in pending}
    # the person is told what was kept and why (art. 17(3)); rewritten alike if this run dies before recording
    persons = dict(run_sql(con, "SELECT decision_id, person_id FROM rights.decisions WHERE list_contains(?, "
                                "decision_id)", [applied]))
    write_erasure_answers(con, applied, exports_dir, {d: token(f"person:{p}") for d, p in persons.items()},
                          now_text)
    with transaction(con):
        _erase_in_warehouse(con, tables, {h for h, _, _ in legal_hold_sql(policy, "h")}, applied)
        _save(con, later, now_text, "SELECT *, state AS previous_state FROM rights.requests", token, {})
    flush_audit(con, audit)
    _mirror_status(con, members)
    # A decision not confirmed everywhere was not carried out in the warehouse: its rewritten files are re-read.
    mirrored = [] if failed else mark_mirrored(con, rewritten, skip=_quarantined_erased(con, tables))
    day = as_of or (now or dt.datetime.now(dt.UTC)).date()
    # the warehouse re-reads what this run changed at the sources, so the next run starts where this one ends
    refresh_from_sources(con, touched, engines={"members": members, "prospects": prospects},
                         navigation_dir=navigation_dir, policy=policy, as_of=day, ledger=refresh_ledger)
    summary = deadline_summary(con, day)
    return RightsOutcome(
        states=summary["states"], needs_human=summary["needs_human"], overdue=summary["overdue"],
        due_within_7_days=summary["due_within_7_days"], decisions_confirmed=len(applied),
        decisions_failed=dict(failed), bundles=bundles, mirrored=mirrored)


# A source that cannot be reached or written leaves its decisions pending for the next run; anything else
# (a bug, a bad target) stops the run.
SOURCE_ERRORS = (sa.exc.SQLAlchemyError, OSError, duckdb.Error, pa.ArrowException)


def _joined(*parts: str | None) -> str | None:
    return " | ".join(p for p in parts if p) or None


def _unavailable(system: str, exc: Exception) -> str:
    # the driver's class only: its message may quote the values of the statement
    return f"{system} unavailable ({type(getattr(exc, 'orig', None) or exc).__name__})"


def _push(targets: pa.Table, *, policy: Policy, members: sa.Engine, prospects: sa.Engine | None,
          navigation_dir: Path | None, outbox_dir: Path, tokenise: Callable[[str], str],
          notices: tuple[NoticeRule, ...], now: dt.datetime | None, shared: duckdb.DuckDBPyConnection
          ) -> tuple[dict[str, str], set[tuple[str, str]], dict[str, tuple[Stat, Stat]]]:
    """Each source in its own transaction(s); (decision_id -> why not confirmed, (system, table) changed,
    navigation files rewritten with their (size, mtime) before and after). `shared`: the warehouse connection,
    whose cursors push-back works in (pipelines.duck.scratch)."""
    failed: dict[str, str] = {}
    touched: set[tuple[str, str]] = set()
    rewritten: dict[str, tuple[Stat, Stat]] = {}
    for system in sorted(set(targets["system"].to_pylist())):
        part = targets.filter(pc.equal(targets["system"], system))
        try:
            report = apply_decisions(
                part, members=members, prospects=prospects, navigation_dir=navigation_dir, outbox_dir=outbox_dir,
                tokenise=tokenise, notice_rules=notices, table_order=table_order(policy), now=now, shared=shared)
        except SOURCE_ERRORS as exc:
            reason = _unavailable(system, exc)
            for decision_id in pc.unique(part["decision_id"]).to_pylist():
                failed.setdefault(decision_id, reason)
            continue
        for decision_id, reason in report.failed.items():
            failed.setdefault(decision_id, reason)
        touched |= report.touched
        rewritten |= report.rewritten
    return failed, touched, rewritten


RESULTS_SCHEMA = pa.schema([("request_id", pa.int64()), ("state", pa.string()), ("reason", pa.string()),
                            ("decision_id", pa.string()), ("targets", pa.int64()), ("human", pa.bool_())])
# A request carried out with a part left for a human (identity.ambiguities) is needs_human rather than closed,
# so the deadline check keeps counting it; its decision keeps the status of what was carried out.
HUMAN_AFTER = ("confirmed", "answered")
DECISION_STATUS = {"confirmed": "applied", "answered": "answered", "refused": "refused"}  # else still "decided"


def _save(con: duckdb.DuckDBPyConnection, results: dict[int, _Result], now: str, base: str,
          token: Callable[[str], str], summaries: dict[str, dict[str, object]]) -> None:
    """rights.requests (from `base` with `results` applied), rights.decisions, objections, exclusions, and
    the audit entries of every state change queued; call inside the caller's transaction. `outcome` is what
    was done (the decision's side), `state` the request's: needs_human when part of it is left for a human."""
    con.register("_results", pa.Table.from_pylist(
        [{"request_id": k, **vars(r)} for k, r in results.items()], schema=RESULTS_SCHEMA))
    run_sql(con, f"""
        CREATE OR REPLACE TEMP TABLE _final AS
        SELECT *, CASE WHEN needs_human AND outcome IN {in_list(HUMAN_AFTER)} THEN 'needs_human' ELSE outcome END
                  AS state
        FROM (
            SELECT i.request_id, i.request_type, i.person_id, i.matched_by, i.received_at, i.identity_verified_at,
                   i.due_date, coalesce(r.state, i.state) AS outcome,
                   CASE WHEN r.request_id IS NULL THEN i.reason ELSE r.reason END AS reason,
                   coalesce(r.human, false) OR i.needs_human AS needs_human, i.details,
                   coalesce(r.decision_id, i.decision_id) AS decision_id, i.state_changed_at, i.previous_state,
                   r.targets
            FROM ({base}) i LEFT JOIN _results r USING (request_id))""")
    run_sql(con, f"UPDATE _final SET state_changed_at = TIMESTAMP {literal(now)} "
                 "WHERE state IS DISTINCT FROM previous_state")
    run_sql(con, "DELETE FROM rights.requests")
    run_sql(con, "INSERT INTO rights.requests BY NAME SELECT * EXCLUDE (previous_state, targets, outcome) "
                 "FROM _final")
    status = " ".join(f"WHEN {literal(k)} THEN {literal(v)}" for k, v in DECISION_STATUS.items())
    run_sql(con, f"""
        INSERT OR REPLACE INTO rights.decisions
        SELECT f.decision_id, f.request_id, f.person_id, f.request_type, coalesce(f.targets, d.targets, 0),
               CASE f.outcome {status} ELSE 'decided' END,
               CASE WHEN f.outcome = 'executed' THEN d.reason ELSE f.reason END,  -- the failure is the request's
               coalesce(d.decided_at, TIMESTAMP {literal(now)}),
               CASE WHEN f.outcome IN {in_list(TERMINAL_STATES)} THEN TIMESTAMP {literal(now)} END
        FROM _final f LEFT JOIN rights.decisions d USING (decision_id)
        WHERE f.request_id IN (SELECT request_id FROM _results) AND f.outcome <> 'verified'""")
    confirmed_objections = ("FROM _final WHERE request_type = 'objection' AND outcome = 'confirmed' "
                            "AND previous_state IS DISTINCT FROM 'confirmed' "
                            "AND request_id IN (SELECT request_id FROM _results)")
    run_sql(con, f"DELETE FROM rights.objections WHERE request_id IN (SELECT request_id {confirmed_objections})")
    run_sql(con, f"""
        INSERT INTO rights.objections
        SELECT person_id, unnest(from_json(details -> 'purposes', '["VARCHAR"]')), TIMESTAMP {literal(now)}, request_id
        {confirmed_objections}""")
    _rebuild_exclusions(con)
    con.unregister("_results")
    enqueue_audit(con, _state_entries(con, token, summaries))


# The states a request passes through on its way to each state, in order (art. 12: received -> verified ->
# decided -> executed -> confirmed / answered, or refused with a reason). "executed" (pushed, not yet confirmed
# by every source) is only reached when a source failed; "needs_human" waits for a person to fix the request.
PATHS = {
    "received": ("received",),
    "needs_human": ("received", "needs_human"),
    "verified": ("received", "verified"),
    "decided": ("received", "verified", "decided"),
    "executed": ("received", "verified", "decided", "executed"),
    "confirmed": ("received", "verified", "decided", "executed", "confirmed"),
    "answered": ("received", "verified", "decided", "answered"),
    "refused": ("received", "verified", "refused"),
}


def _steps(previous: str | None, state: str) -> tuple[str, ...]:
    """The states reached since `previous`, each audited."""
    path = PATHS[state]
    if previous in path:
        path = path[path.index(previous) + 1:]
    elif previous is not None:  # a request a human fixed goes on from where it was checked
        path = path[path.index("verified"):] if "verified" in path else (state,)
    return tuple(s for s in path if s != "executed" or s == state)


def _state_entries(con: duckdb.DuckDBPyConnection, token: Callable[[str], str],
                   summaries: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    """One audit entry per state reached (keyed: written once across re-runs); "decided" carries the
    decision's full target list, and a confirmed decision gets its "applied" entry."""
    changed = run_sql(con, """
        SELECT request_id, request_type, person_id, previous_state, outcome, state, reason,
               CAST(due_date AS VARCHAR), needs_human, decision_id, targets
        FROM _final WHERE state IS DISTINCT FROM previous_state ORDER BY request_id""")
    entries: list[dict[str, object]] = []
    for (request_id, request_type, person_id, previous, outcome, state, reason, due, needs_human, decision_id,
         n) in changed:
        subject = token(f"person:{person_id}") if person_id else None
        # what was carried out, then (its part left for a human) needs_human
        steps = _steps(previous, outcome) if outcome != previous else ()
        for step in steps + ((state,) if state != outcome else ()):
            if step == "confirmed":
                entries.append({"action": "rights.applied", "decision_id": decision_id, "subject_token": subject,
                                "details": {AUDIT_KEY: f"rights.applied:{decision_id}", "request_id": request_id,
                                            "targets": n, "confirmed_by": "re-reading every source"}})
            details = {AUDIT_KEY: f"rights.{step}:{decision_id if step == 'decided' else request_id}",
                       "request_id": request_id, "request_type": request_type, "due_date": due,
                       "needs_human": needs_human}
            if step == "decided":
                details["intent"] = summaries.get(decision_id, {"sources": {}, "targets": 0})
            entries.append({"action": f"rights.{step}", "decision_id": decision_id, "subject_token": subject,
                            "reason": reason if step == state else None, "details": details})
    return entries


def _mirror_status(con: duckdb.DuckDBPyConnection, members: sa.Engine) -> None:
    """The member system's rights_requests.status follows the state, and `handled_at` gets the day the request
    reached a terminal state, once: it starts the clock of what only served the request, such as the ID copy sent
    with it (whole days, as every retention period). Again next run if this one dies first. The change marker
    takes the source's own clock, so the next incremental ingest reads the row again."""
    changed = run_sql(con, f"""
        SELECT r.request_id, r.state,
               CASE WHEN r.state IN {in_list(TERMINAL_STATES)} AND i.source_handled_at IS NULL
                    THEN strftime(r.state_changed_at, '%Y-%m-%d') END
        FROM rights.requests r JOIN _intake i USING (request_id)
        WHERE r.state IS DISTINCT FROM i.source_status
           OR (r.state IN {in_list(TERMINAL_STATES)} AND i.source_handled_at IS NULL) ORDER BY 1""")
    if changed:
        with members.begin() as source:
            source.execute(
                sa.update(rights_requests).where(rights_requests.c.request_id == sa.bindparam("rid"))
                .values(status=sa.bindparam("new_status"),
                        handled_at=sa.func.coalesce(rights_requests.c.handled_at, sa.bindparam("handled")),
                        updated_at=source_clock()),
                [{"rid": request_id, "new_status": state, "handled": handled}
                 for request_id, state, handled in changed])


def deadline_summary(con: duckdb.DuckDBPyConnection, today: dt.date) -> dict[str, object]:
    """Counts by state, requests waiting for a human, open requests overdue or due within 7 days.

    A request waiting for a human (malformed, unknown type, unmatched...) runs late like any other. A request
    still waiting for its identity proof is not counted late: asking for identity information
    suspends the one-month clock (retention-rules.md §D.1, décret 2019-536); it is counted apart."""
    states = dict(run_sql(con, "SELECT state, count(*) FROM rights.requests GROUP BY state ORDER BY state"))
    row = run_sql(con, """
        SELECT count(*) FILTER (WHERE needs_human AND running),
               count(*) FILTER (WHERE running AND due_date < ?),
               count(*) FILTER (WHERE running AND due_date BETWEEN ? AND ? + INTERVAL 7 DAY),
               list(request_id ORDER BY request_id) FILTER (WHERE running AND due_date < ?),
               count(*) FILTER (WHERE state = 'received')
        FROM (SELECT *, state NOT IN ('confirmed', 'answered', 'refused')
                        AND (identity_verified_at IS NOT NULL OR needs_human) AS running FROM rights.requests)""",
        [today, today, today, today])[0]
    return {"states": states, "needs_human": row[0], "overdue": row[1], "due_within_7_days": row[2],
            "overdue_request_ids": row[3] or [], "awaiting_identity": row[4]}
