"""Rights-request intake: validate each request of `raw.rights_requests` (and those ingestion quarantined),
match it to one person, compute its deadline, and carry its state over from the previous run.

A request names its subject by member id and/or e-mail; both are matched through `identity.person_links`
(the e-mail normalised as in pipelines.normalise). The member id decides. Nothing is guessed: no match, a
member id and an e-mail naming different people, an unknown member id, or an e-mail alone held by several
people are flagged for a human with the reason. Deadline: one month after receipt (art. 12(3)).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from pipelines.duck import scalar, table_exists
from pipelines.normalise import email_sql
from pipelines.rights.intent import ensure_intent_schema
from pipelines.sqltext import in_list

# The rights of the policy ("Quels sont vos droits ?") as request types -> how each is carried out.
REQUEST_TYPES = {
    "access": "access", "interrogation": "access",  # art. 15; "droit d'interrogation" (loi 78-17 art. 49)
    "rectification": "rectification", "completion": "rectification",  # art. 16: correct or complete
    "erasure": "erasure", "restriction": "restriction", "lift_restriction": "lift_restriction",
    "objection": "objection", "objection_prospecting": "objection_prospecting",
    "portability": "portability",  # art. 20: what the person provided, machine-readable
}
TERMINAL_STATES = ("confirmed", "answered", "refused")
# a decision recorded and not yet confirmed by every source: the next run pushes it from its recorded targets
PENDING_STATES = ("decided", "executed")
CARRIED_STATES = TERMINAL_STATES + PENDING_STATES

REQUESTS_DDL = """
CREATE TABLE IF NOT EXISTS rights.requests (
    request_id BIGINT PRIMARY KEY, request_type VARCHAR, person_id VARCHAR, matched_by VARCHAR,
    received_at TIMESTAMP, identity_verified_at TIMESTAMP, due_date DATE, state VARCHAR, reason VARCHAR,
    needs_human BOOLEAN, details JSON, decision_id VARCHAR, state_changed_at TIMESTAMP
)
"""


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Execute and read the whole result: DuckDB 2 keeps an unread result pending on the connection."""
    return con.execute(sql, params or []).fetchall()


def column_type(con: duckdb.DuckDBPyConnection, schema: str, table: str, column: str) -> str:
    """The column's DuckDB type: keys given as text are cast to it, so a lookup hashes the column's own values
    instead of making a text of every row."""
    return scalar(con, "SELECT data_type FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                       "AND column_name = ?", [schema, table, column])


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    run_sql(con, "CREATE SCHEMA IF NOT EXISTS rights")
    run_sql(con, REQUESTS_DDL)
    run_sql(con, """
        CREATE TABLE IF NOT EXISTS rights.decisions (
            decision_id VARCHAR PRIMARY KEY, request_id BIGINT, person_id VARCHAR, action VARCHAR,
            targets BIGINT, status VARCHAR, reason VARCHAR, decided_at TIMESTAMP, closed_at TIMESTAMP
        )""")
    ensure_intent_schema(con)
    run_sql(con, """
        CREATE TABLE IF NOT EXISTS rights.objections (
            person_id VARCHAR, purpose VARCHAR, since TIMESTAMP, request_id BIGINT
        )""")
    # the days whose nightly run has decided the requests (see nightly_decided)
    run_sql(con, "CREATE TABLE IF NOT EXISTS rights.nightly_days (as_of DATE PRIMARY KEY)")


def nightly_decided(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> bool:
    """Whether a nightly run of `as_of` has already decided the requests: the sources may since have lost what
    it matched them against (its own push-back, retention), so a re-run of the day does not decide again what
    it left waiting for a human."""
    return bool(run_sql(con, "SELECT count(*) FROM rights.nightly_days WHERE as_of = ?", [as_of])[0][0])


def record_nightly(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> None:
    """The nightly run of `as_of` has decided the requests (inside the transaction that saves the decisions)."""
    run_sql(con, "INSERT INTO rights.nightly_days VALUES (?) ON CONFLICT DO NOTHING", [as_of])


def _requests_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The source's requests, typed; those ingestion quarantined (a malformed date or id) come too, with
    their values as far as they parse and the reason, so they are answered rather than lost."""
    typed = f"""
        SELECT request_id, request_type, received_at, identity_verified_at, details, status AS source_status,
               handled_at AS source_handled_at, CAST(member_id AS VARCHAR) AS member_key,
               {email_sql('email')} AS email_key,
               CAST(NULL AS VARCHAR) AS malformed
        FROM raw.rights_requests"""
    if not table_exists(con, "raw", "quarantine"):
        return typed
    return typed + f"""
        UNION ALL
        SELECT TRY_CAST(record->>'request_id' AS BIGINT), record->>'request_type',
               TRY_CAST(record->>'received_at' AS TIMESTAMP), TRY_CAST(record->>'identity_verified_at' AS TIMESTAMP),
               record->>'details', record->>'status', TRY_CAST(record->>'handled_at' AS TIMESTAMP),
               CAST(TRY_CAST(record->>'member_id' AS BIGINT) AS VARCHAR), {email_sql("record->>'email'")},
               'malformed at the source (' || reason || ')'
        FROM raw.quarantine
        WHERE system = 'members' AND table_name = 'rights_requests'
          AND TRY_CAST(record->>'request_id' AS BIGINT) IS NOT NULL"""


def intake(con: duckdb.DuckDBPyConnection, now: str, *, hold_needs_human: bool = False) -> None:
    """Create temp table `_intake`: every request with its match, flag, due date and carried-over state.

    A request already in a terminal or pending state (here or, terminal, at the source) keeps it, and so does
    one carried out with a part left for a human (`needs_human` with a decision) until a human gives it a
    terminal status at the source; so does one waiting for a human when `hold_needs_human` (the nightly
    re-running a day already decided: the identity graph, read from sources changed since, must not decide it
    differently from the day's first run). A request
    that does not hold together (malformed, no or an unknown type, dated in the future, details that are not
    a JSON object) is `needs_human` with the reason, verified or not; an unverified one is `received`; a
    verified one is `verified`, or `needs_human` when it cannot be matched to exactly one person. Due date:
    one month after receipt (the first due date computed, when the date of receipt is unreadable)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _intake AS
        WITH req AS (
            SELECT * REPLACE (coalesce(list_extract($rights, list_position($types, request_type)), request_type)
                              AS request_type),
                   CASE
                       WHEN malformed IS NOT NULL THEN malformed
                       WHEN request_type IS NULL THEN 'no request type'
                       WHEN NOT list_contains($types, request_type)
                           THEN 'unknown request type; expected one of ' || array_to_string($types, ', ')
                       WHEN received_at IS NULL THEN 'no date of receipt'
                       WHEN received_at > $now THEN 'received in the future: the date of receipt is wrong'
                       WHEN identity_verified_at > $now THEN 'identity verified in the future: the date is wrong'
                       WHEN details IS NOT NULL AND TRY_CAST(details AS JSON) IS NULL
                           THEN 'details are not valid JSON'
                       WHEN details IS NOT NULL AND json_type(TRY_CAST(details AS JSON)) <> 'OBJECT'
                           THEN 'details are not a JSON object'
                   END AS invalid
            FROM ({_requests_sql(con)})
        ),
        found AS MATERIALIZED (
            -- one pass over the identity links for every request that needs a match: those not decided or
            -- closed here (those keep their person, below) whose identity was verified (nobody is linked to a
            -- request before); a night without such a request reads none of the links
            SELECT w.request_id, w.node_type, l.person_id
            FROM (SELECT request_id, UNNEST(['member', 'email']) AS node_type, UNNEST([member_key, email_key])
                         AS node_value
                  FROM req WHERE identity_verified_at IS NOT NULL AND request_id NOT IN
                      (SELECT request_id FROM rights.requests WHERE state IN {in_list(CARRIED_STATES)})) w
            JOIN identity.person_links l USING (node_type, node_value)
        ),
        by_member AS (SELECT request_id, person_id FROM found WHERE node_type = 'member'),
        by_email AS (SELECT request_id, person_id FROM found WHERE node_type = 'email'),
        matched AS (
            SELECT r.request_id, min(m.person_id) AS member_person, count(DISTINCT e.person_id) AS email_people,
                   min(e.person_id) AS email_person, coalesce(bool_or(e.person_id = m.person_id), false) AS agree
            FROM req r LEFT JOIN by_member m USING (request_id) LEFT JOIN by_email e USING (request_id)
            GROUP BY r.request_id
        ),
        flagged AS (
            -- the member id decides; an e-mail alone must designate exactly one person (a shared mailbox
            -- designates several: a human says whose request it is)
            SELECT r.*, coalesce(m.member_person, m.email_person) AS candidate,
                CASE WHEN r.member_key IS NOT NULL THEN 'member_id' ELSE 'email' END AS matched_by,
                CASE
                    WHEN r.member_key IS NULL AND r.email_key IS NULL THEN 'no subject given (member id or e-mail)'
                    WHEN r.member_key IS NOT NULL AND m.member_person IS NULL AND m.email_people > 0
                        THEN 'the member id matches no member; only the e-mail does'
                    WHEN m.member_person IS NULL AND m.email_people = 0
                        THEN 'no record of any system matches the member id or e-mail'
                    WHEN m.member_person IS NOT NULL AND m.email_people > 0 AND NOT m.agree
                        THEN 'the member id and the e-mail designate different people'
                    WHEN m.member_person IS NULL AND m.email_people > 1
                        THEN 'the e-mail is held by several people (e.g. a shared mailbox): whose request is it?'
                END AS flag
            FROM req r JOIN matched m USING (request_id)
        ),
        kept AS (
            -- closed or pending here; or carried out with what identity could not settle left for a human
            -- (needs_human with a decision), until a human closes it at the source
            SELECT f.*, p.person_id AS kept_person, p.matched_by AS kept_matched_by, p.reason AS kept_reason,
                   p.due_date AS kept_due_date, p.decision_id, p.state_changed_at, p.state AS previous_state,
                   p.needs_human AS kept_needs_human,
                   coalesce(p.state IN {in_list(CARRIED_STATES)} OR (p.state = 'needs_human' AND p.decision_id
                            IS NOT NULL AND coalesce(f.source_status NOT IN {in_list(TERMINAL_STATES)}, true)),
                            false) AS carried
            FROM flagged f LEFT JOIN rights.requests p USING (request_id)
        ),
        decided AS (
            SELECT *,
                   CASE
                       WHEN carried THEN previous_state
                       WHEN source_status IN {in_list(TERMINAL_STATES)} THEN source_status
                       WHEN $hold AND previous_state = 'needs_human' THEN previous_state
                       WHEN invalid IS NOT NULL THEN 'needs_human'
                       WHEN identity_verified_at IS NULL THEN 'received'
                       WHEN flag IS NOT NULL THEN 'needs_human'
                       ELSE 'verified'
                   END AS state
            FROM kept
        )
        SELECT request_id, request_type,
               -- a closed or pending request keeps the person it was decided for (erasure removes the links);
               -- nobody is linked to a request before its identity proof is checked
               CASE WHEN carried THEN kept_person WHEN state = 'verified' THEN candidate END AS person_id,
               CASE WHEN carried THEN kept_matched_by WHEN state = 'verified' THEN matched_by END AS matched_by,
               received_at, identity_verified_at,
               coalesce(CAST(received_at + INTERVAL 1 MONTH AS DATE), kept_due_date,
                        CAST($now + INTERVAL 1 MONTH AS DATE)) AS due_date,
               state,
               CASE
                   WHEN carried THEN kept_reason
                   WHEN $hold AND previous_state = 'needs_human' AND state = 'needs_human' THEN kept_reason
                   WHEN state = 'needs_human' THEN coalesce(invalid, flag)
                   WHEN state = 'received' THEN 'identity not verified yet: nothing is executed'
               END AS reason,
               CASE WHEN carried THEN kept_needs_human ELSE state = 'needs_human' END AS needs_human,
               TRY_CAST(details AS JSON) AS details,
               decision_id,
               coalesce(state_changed_at, $now) AS state_changed_at,
               previous_state, source_status, source_handled_at
        FROM decided
    """, {"now": dt.datetime.fromisoformat(now), "types": list(REQUEST_TYPES), "rights": list(REQUEST_TYPES.values()),
          "hold": hold_needs_human})
