"""Run the rights requests: intake, decide, push back to the sources, carry out in the warehouse, answer.

    process_rights(con, policy, *, members, prospects, navigation_dir, exports_dir, outbox_dir, audit,
                   token_key, now=None) -> RightsOutcome

Per verified, matched request (decision id "rights:<request_id>:<request_type>"):
- access: an export bundle (pipelines.rights.access) -> answered;
- rectification: the corrected values of `details` written to the person's own records (members,
  prospects: the columns each has) by push-back `rectify`;
- erasure: every row of the person in every source and in raw.* deleted; rows a legal obligation keeps
  (policy: art. 6(1)(c) purposes with an archive) or a legal hold covers are first copied to the restricted
  archive.* schema, with the reason in rights.decisions; the person's identity links go too;
- restriction / lift_restriction: the restriction flag set / cleared at the source;
- objection_prospecting: rows serving only direct marketing deleted (campaign selections, the prospect
  record), marketing consent set to false on the person's other records, SHA-256 of each normalised
  e-mail and phone put on the suppression list;
- objection: the purposes named in `details.purposes` recorded in rights.objections;
then push-back confirmation moves the request to confirmed (or leaves it executed with the reason, to be
retried by the next run: decisions are idempotent). rights.exclusions (person_id, reason, since) is
rebuilt from the requests in force, and the member system's rights_requests.status follows the state.
Every state change is audited, subjects as tokens only. Finally the source tables the run changed are
re-read into raw.* (pipelines.refresh), so the warehouse ends where the next run starts.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.audit import AuditLog, subject_token
from pipelines.duck import quote
from pipelines.policy.models import Policy
from pipelines.pushback import TARGET_SCHEMA, apply_decisions, make_targets
from pipelines.pushback.notices import notice_rules
from pipelines.pushback.targets import SUPPRESSION_TABLE
from pipelines.refresh import refresh_from_sources, touched_tables
from pipelines.retention.apply import table_order
from pipelines.rights.access import write_access_bundle
from pipelines.rights.intake import ensure_schema, intake, run_sql, table_exists
from pipelines.rights.scope import CONSENT_COLUMN, SubjectTable, legal_hold_sql, subject_tables
from pipelines.sources.schema import SQL_SYSTEMS, rights_requests

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


def _nodes_sql(request_types: str, node_types: str = "") -> str:
    where = f" AND node_type IN ({node_types})" if node_types else ""
    return f"SELECT node_value FROM _nodes WHERE request_type IN ({request_types}){where}"


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
        FROM _actionable a JOIN identity.person_links l USING (person_id)""")


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
               '{{"{CONSENT_COLUMN}": false}}'
        FROM _nodes n JOIN _subject_tables s ON s.node_type = n.node_type
        WHERE n.request_type = 'objection_prospecting' AND NOT s.marketing_only AND s.key_column = s.primary_key
          AND s.table_name IN (SELECT table_name FROM _consent_tables)
        UNION ALL
        SELECT DISTINCT n.decision_id, 'prospects', '{SUPPRESSION_TABLE}', 'contact_hash', sha256(n.node_value),
               'suppress', CAST(json_object('channel', n.node_type, 'objected_at', '{now}',
                                            'source_request_id', CAST(n.request_id AS VARCHAR)) AS VARCHAR)
        FROM _nodes n WHERE n.request_type = 'objection_prospecting' AND n.node_type IN ('email', 'phone')
    """).to_arrow_table().cast(TARGET_SCHEMA)


def _rectification_targets(con: duckdb.DuckDBPyConnection, tables: list[SubjectTable]
                           ) -> tuple[pa.Table, dict[int, str]]:
    """Corrected values onto the person's own records; a request naming a field none of them has is
    refused (request_id -> reason) rather than half applied."""
    own = [t for t in tables if t.key_column == t.primary_key and t.system in SQL_SYSTEMS]
    rows: list[dict[str, object]] = []
    refused: dict[int, str] = {}
    requests = run_sql(con, "SELECT request_id, new_decision_id, CAST(details AS VARCHAR) FROM _actionable "
                           "WHERE request_type = 'rectification'")
    for request_id, decision_id, details in requests:  # a few requests, each a small JSON object
        values = json.loads(details or "{}")
        nodes = run_sql(con, "SELECT node_type, node_value FROM _nodes WHERE request_id = ?", [request_id])
        wanted: list[dict[str, object]] = []
        correctable: set[str] = set()
        for table in own:
            columns = SQL_SYSTEMS[table.system].tables[table.table_name].c
            payload = {k: v for k, v in values.items() if k in columns and k != table.key_column}
            correctable |= set(payload)
            wanted += [{"decision_id": decision_id, "system": table.system, "table_name": table.table_name,
                        "key_column": table.key_column, "key_value": value, "action": "rectify",
                        "payload": payload} for node_type, value in nodes if node_type == table.node_type and payload]
        unknown = sorted(set(values) - correctable)
        if not values or unknown:
            refused[request_id] = f"nothing to correct or fields not held on the person's records: {unknown}"
        else:
            rows += wanted
    return make_targets(rows), refused


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
    for t in tables:
        if not table_exists(con, "raw", t.table_name):
            continue
        raw, key = f"raw.{quote(t.table_name)}", f"CAST({quote(t.key_column)} AS VARCHAR)"
        rules = ([("true", t.kept_reason)] if t.kept_reason else []) + [
            # a person under a hold keeps every row of the hold's table, not only the matching ones
            (f"n.person_id IN (SELECT n2.person_id FROM _nodes n2 JOIN {raw} h ON CAST(h.{quote(t.key_column)} AS "
             f"VARCHAR) = n2.node_value AND n2.node_type = '{t.node_type}' WHERE {condition})", reason)
            for condition, reason in holds.get(t.table_name, [])]
        for condition, reason in rules:
            matched = (f"FROM {raw} r JOIN _nodes n ON {key} = n.node_value AND n.node_type = '{t.node_type}' "
                       f"WHERE n.request_type = 'erasure' AND {condition}")
            run_sql(con, f"INSERT INTO _kept SELECT n.decision_id, '{t.table_name}', ?, count(*) {matched} "
                        "GROUP BY n.decision_id", [reason])
            archive, pk = f"archive.{quote(t.table_name)}", quote(t.primary_key)
            run_sql(con, f"CREATE TABLE IF NOT EXISTS {archive} AS SELECT * FROM {raw} WHERE false")
            run_sql(con, f"INSERT INTO {archive} BY NAME SELECT DISTINCT r.* {matched} "
                        f"AND r.{pk} NOT IN (SELECT {pk} FROM {archive})")


def _erase_in_warehouse(con: duckdb.DuckDBPyConnection, tables: list[SubjectTable], hold_tables: set[str]) -> None:
    """Delete the erased people (and objectors' marketing rows) from raw.*, from archive.* where no legal
    obligation or hold keeps them, and the erased people's identity links."""
    for t in tables:
        nodes = _nodes_sql("'erasure', 'objection_prospecting'" if t.marketing_only else "'erasure'",
                           f"'{t.node_type}'")
        key = f"CAST({quote(t.key_column)} AS VARCHAR)"
        if table_exists(con, "raw", t.table_name):
            run_sql(con, f"DELETE FROM raw.{quote(t.table_name)} WHERE {key} IN ({nodes})")
        if table_exists(con, "archive", t.table_name) and not t.kept_reason and t.table_name not in hold_tables:
            run_sql(con, f"DELETE FROM archive.{quote(t.table_name)} WHERE {key} IN ({nodes})")
    run_sql(con, "DELETE FROM identity.person_links WHERE person_id IN "
                "(SELECT person_id FROM _actionable WHERE request_type = 'erasure')")


def _rebuild_exclusions(con: duckdb.DuckDBPyConnection) -> None:
    """rights.exclusions from the requests in force; a restriction holds until a later lift_restriction."""
    run_sql(con, f"""
        CREATE OR REPLACE TABLE rights.exclusions AS
        WITH in_force AS (
            SELECT person_id, request_type, received_at, state_changed_at FROM rights.requests
            WHERE state IN {IN_FORCE} AND person_id IS NOT NULL
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
        SELECT person_id, CASE request_type {" ".join(f"WHEN '{k}' THEN '{v}'" for k, v in EXCLUDING.items())} END,
               min(state_changed_at)
        FROM in_force WHERE request_type IN {tuple(EXCLUDING)} GROUP BY ALL
    """)


@dataclass
class _Result:
    state: str
    reason: str | None = None
    decision_id: str | None = None
    targets: int = 0


def process_rights(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    *,
    members: sa.Engine,
    prospects: sa.Engine | None,
    navigation_dir: Path | None,
    exports_dir: Path,
    outbox_dir: Path,
    audit: AuditLog,
    token_key: bytes,
    now: dt.datetime | None = None,
    as_of: dt.date | None = None,
) -> RightsOutcome:
    """See the module docstring. `con` is the warehouse (raw.*, identity.person_links already built);
    deadlines are evaluated as of `as_of` (default: the date of `now`)."""
    now_text = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S")
    tables = subject_tables(policy)
    ensure_schema(con)
    intake(con, now_text)
    _stage(con, tables)
    results: dict[int, _Result] = {}

    refused = _objection_refusals(con, policy)
    rectify, refused_rectify = _rectification_targets(con, tables)
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

    _archive_kept(con, policy, tables)  # before the sources lose the rows
    failed: dict[str, str] = {}
    touched = {("members", rights_requests.name)}  # the requests' status changes at the source too
    if targets.num_rows:
        report = apply_decisions(
            targets, members=members, prospects=prospects, navigation_dir=navigation_dir, outbox_dir=outbox_dir,
            audit=audit, tokenise=lambda value: subject_token(value, token_key), notice_rules=notice_rules(policy),
            table_order=table_order(policy))
        failed = report.failed
        touched |= touched_tables(targets, report)
    run_sql(con, "BEGIN")
    _erase_in_warehouse(con, tables, {h for h, _, _ in legal_hold_sql(policy, "h")})
    run_sql(con, "COMMIT")

    kept = {}
    for decision_id, table_name, reason, n in run_sql(con, "SELECT * FROM _kept ORDER BY 1, 2"):
        kept.setdefault(decision_id, []).append(f"{n} row(s) of {table_name} kept in the restricted archive: "
                                                f"{reason}")
    bundles: list[Path] = []
    actionable = run_sql(con, "SELECT request_id, request_type, new_decision_id, person_id FROM _actionable "
                             "ORDER BY request_id")
    nodes_of = {}
    for request_id, node_type, value in run_sql(con, 
            "SELECT request_id, node_type, node_value FROM _nodes WHERE request_type = 'access'"):
        nodes_of.setdefault(request_id, []).append((node_type, value))
    for request_id, request_type, decision_id, person_id in actionable:  # one per request, not per row
        if request_id in refused:
            results[request_id] = _Result("refused", refused[request_id], decision_id)
        elif request_type == "access":
            token = subject_token(f"person:{person_id}", token_key)
            path = write_access_bundle(con, policy, request_id=request_id, subject_token=token,
                                       nodes=nodes_of.get(request_id, []),
                                       engines={"members": members, "prospects": prospects},
                                       navigation_dir=navigation_dir, exports_dir=exports_dir)
            bundles.append(path)
            results[request_id] = _Result("answered", f"export bundle {path.name}", decision_id)
        elif decision_id in failed:
            results[request_id] = _Result("executed", f"push-back not confirmed: {failed[decision_id]}",
                                          decision_id, target_counts.get(decision_id, 0))
        else:
            reason = "; ".join(kept.get(decision_id, [])) or None
            if request_type != "objection" and not target_counts.get(decision_id):
                reason = "no record of the person at the sources for this right; exclusions apply"
            results[request_id] = _Result("confirmed", reason, decision_id, target_counts.get(decision_id, 0))
    _record(con, results, now_text)
    _publish_states(con, members, audit, token_key)
    day = as_of or (now or dt.datetime.now(dt.UTC)).date()
    # the warehouse re-reads what this run changed at the sources, so the next run starts where this one ends
    refresh_from_sources(con, touched, engines={"members": members, "prospects": prospects},
                         navigation_dir=navigation_dir, policy=policy, as_of=day)
    summary = deadline_summary(con, day)
    return RightsOutcome(
        states=summary["states"], needs_human=summary["needs_human"], overdue=summary["overdue"],
        due_within_7_days=summary["due_within_7_days"],
        decisions_confirmed=sum(1 for r in results.values() if r.state == "confirmed"),
        decisions_failed=dict(failed), bundles=bundles)


RESULTS_SCHEMA = pa.schema([("request_id", pa.int64()), ("state", pa.string()), ("reason", pa.string()),
                            ("decision_id", pa.string()), ("targets", pa.int64())])


def _record(con: duckdb.DuckDBPyConnection, results: dict[int, _Result], now: str) -> None:
    """rights.requests, rights.decisions, rights.objections and rights.exclusions, in one transaction."""
    con.register("_results", pa.Table.from_pylist(
        [{"request_id": k, **vars(r)} for k, r in results.items()], schema=RESULTS_SCHEMA))
    run_sql(con, f"""
        CREATE OR REPLACE TEMP TABLE _final AS
        SELECT i.request_id, i.request_type, i.person_id, i.matched_by, i.received_at, i.identity_verified_at,
               i.due_date, coalesce(r.state, i.state) AS state,
               CASE WHEN r.request_id IS NULL THEN i.reason ELSE r.reason END AS reason, i.needs_human, i.details,
               coalesce(r.decision_id, i.decision_id) AS decision_id,
               CASE WHEN coalesce(r.state, i.state) IS DISTINCT FROM i.previous_state THEN TIMESTAMP '{now}'
                    ELSE i.state_changed_at END AS state_changed_at,
               i.previous_state, r.targets
        FROM _intake i LEFT JOIN _results r USING (request_id)""")
    run_sql(con, "BEGIN")
    run_sql(con, "DELETE FROM rights.requests")
    run_sql(con, "INSERT INTO rights.requests BY NAME SELECT * EXCLUDE (previous_state, targets) FROM _final")
    run_sql(con, f"""
        INSERT OR REPLACE INTO rights.decisions
        SELECT decision_id, request_id, person_id, request_type, coalesce(targets, 0), state, reason,
               TIMESTAMP '{now}', CASE WHEN state IN ('confirmed', 'answered', 'refused') THEN TIMESTAMP '{now}' END
        FROM _final WHERE request_id IN (SELECT request_id FROM _results)""")
    confirmed_objections = ("FROM _final WHERE request_type = 'objection' AND state = 'confirmed' "
                            "AND request_id IN (SELECT request_id FROM _results)")
    run_sql(con, f"DELETE FROM rights.objections WHERE request_id IN (SELECT request_id {confirmed_objections})")
    run_sql(con, f"""
        INSERT INTO rights.objections
        SELECT person_id, unnest(from_json(details -> 'purposes', '["VARCHAR"]')), TIMESTAMP '{now}', request_id
        {confirmed_objections}""")
    _rebuild_exclusions(con)
    run_sql(con, "COMMIT")


# The states a request passes through on its way to each state, in order (art. 12: received -> verified ->
# decided -> executed -> confirmed / answered, or refused with a reason).
PATHS = {
    "received": ("received",),
    "verified": ("received", "verified"),
    "executed": ("received", "verified", "decided", "executed"),
    "confirmed": ("received", "verified", "decided", "executed", "confirmed"),
    "answered": ("received", "verified", "decided", "answered"),
    "refused": ("received", "verified", "refused"),
}


def _steps(previous: str | None, state: str) -> tuple[str, ...]:
    """The states reached since `previous`, each audited."""
    path = PATHS[state]
    return path[path.index(previous) + 1:] if previous in path else path


def _publish_states(con: duckdb.DuckDBPyConnection, members: sa.Engine, audit: AuditLog, token_key: bytes) -> None:
    """Audit each state change and mirror it in the member system's rights_requests.status."""
    changed = run_sql(con, """
        SELECT request_id, request_type, person_id, previous_state, state, reason, CAST(due_date AS VARCHAR),
               needs_human, decision_id
        FROM _final WHERE state IS DISTINCT FROM previous_state ORDER BY request_id""")
    if not changed:
        return
    audit.extend([
        {"action": f"rights.{step}", "decision_id": decision_id, "reason": reason if step == state else None,
         "subject_token": subject_token(f"person:{person_id}", token_key) if person_id else None,
         "details": {"request_id": request_id, "request_type": request_type, "due_date": due,
                     "needs_human": needs_human}}
        for request_id, request_type, person_id, previous, state, reason, due, needs_human, decision_id in changed
        for step in _steps(previous, state)
    ])
    with members.begin() as source:
        source.execute(
            sa.update(rights_requests).where(rights_requests.c.request_id == sa.bindparam("rid"))
            .values(status=sa.bindparam("new_status")),
            [{"rid": row[0], "new_status": row[4]} for row in changed])


def deadline_summary(con: duckdb.DuckDBPyConnection, today: dt.date) -> dict[str, object]:
    """Counts by state, requests waiting for a human, open requests overdue or due within 7 days.

    A request still waiting for its identity proof is not counted late: asking for identity information
    suspends the one-month clock (retention-rules.md §D.1, décret 2019-536); it is counted apart."""
    states = dict(run_sql(con, "SELECT state, count(*) FROM rights.requests GROUP BY state ORDER BY state"))
    row = run_sql(con, """
        SELECT count(*) FILTER (WHERE needs_human AND running),
               count(*) FILTER (WHERE running AND due_date < ?),
               count(*) FILTER (WHERE running AND due_date BETWEEN ? AND ? + INTERVAL 7 DAY),
               list(request_id ORDER BY request_id) FILTER (WHERE running AND due_date < ?),
               count(*) FILTER (WHERE state = 'received')
        FROM (SELECT *, state NOT IN ('confirmed', 'answered', 'refused') AND identity_verified_at IS NOT NULL
                        AS running FROM rights.requests)""",
        [today, today, today, today])[0]
    return {"states": states, "needs_human": row[0], "overdue": row[1], "due_within_7_days": row[2],
            "overdue_request_ids": row[3] or [], "awaiting_identity": row[4]}
