"""Rights-request intake: match each request of `raw.rights_requests` to one person, compute its deadline,
and carry its state over from the previous run.

A request names its subject by member id and/or e-mail; both are matched through `identity.person_links`
(the e-mail normalised as in pipelines.normalise). Nothing is guessed: no match, a member id and an
e-mail naming different people, an unknown member id, or an e-mail shared by several member records are
flagged for a human with the reason. Deadline: one month after receipt (art. 12(3)).
"""

from __future__ import annotations

from typing import Any

import duckdb

from pipelines.duck import scalar
from pipelines.normalise import email_sql
from pipelines.rights.intent import ensure_intent_schema

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


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return bool(scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND "
                            "table_name = ?", [schema, table]))


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


def intake(con: duckdb.DuckDBPyConnection, now: str) -> None:
    """Create temp table `_intake`: every request with its match, flag, due date and carried-over state.

    A request already in a terminal state (here or at the source) keeps it; an unverified one is
    `received`; a verified one is `verified` (flagged ones too, with needs_human and the reason) until the
    run decides it."""
    run_sql(con, f"""
        CREATE OR REPLACE TEMP TABLE _intake AS
        WITH req AS (
            SELECT request_id, request_type, received_at, identity_verified_at, details, status AS source_status,
                   CAST(member_id AS VARCHAR) AS member_key, {email_sql('email')} AS email_key
            FROM raw.rights_requests
        ),
        by_member AS (
            SELECT r.request_id, l.person_id FROM req r
            JOIN identity.person_links l ON l.node_type = 'member' AND l.node_value = r.member_key
        ),
        by_email AS (
            SELECT r.request_id, l.person_id FROM req r
            JOIN identity.person_links l ON l.node_type = 'email' AND l.node_value = r.email_key
        ),
        matched AS (
            SELECT request_id, count(DISTINCT person_id) AS people, min(person_id) AS person_id
            FROM (SELECT * FROM by_member UNION SELECT * FROM by_email) GROUP BY request_id
        ),
        member_records AS (
            SELECT person_id, count(*) AS n FROM identity.person_links WHERE node_type = 'member' GROUP BY person_id
        ),
        flagged AS (
            SELECT r.*, m.person_id AS candidate,
                CASE WHEN r.member_key IS NOT NULL THEN 'member_id' ELSE 'email' END AS matched_by,
                CASE
                    WHEN r.member_key IS NULL AND r.email_key IS NULL THEN 'no subject given (member id or e-mail)'
                    WHEN coalesce(m.people, 0) = 0 THEN 'no record of any system matches the member id or e-mail'
                    WHEN m.people > 1 THEN 'the member id and the e-mail designate different people'
                    WHEN r.member_key IS NOT NULL AND r.request_id NOT IN (SELECT request_id FROM by_member)
                        THEN 'the member id matches no member; only the e-mail does'
                    WHEN r.member_key IS NULL AND coalesce(mr.n, 0) > 1
                        THEN 'the e-mail matches several member records'
                END AS flag
            FROM req r LEFT JOIN matched m USING (request_id) LEFT JOIN member_records mr ON mr.person_id = m.person_id
        )
        SELECT f.request_id, f.request_type,
               -- a closed or pending request keeps the person it was decided for (erasure removes the links)
               -- nobody is linked to a request before its identity proof is checked
               CASE WHEN p.state IN {CARRIED_STATES} THEN p.person_id
                    WHEN f.flag IS NULL AND f.identity_verified_at IS NOT NULL THEN f.candidate END AS person_id,
               CASE WHEN p.state IN {CARRIED_STATES} THEN p.matched_by
                    WHEN f.flag IS NULL AND f.identity_verified_at IS NOT NULL THEN f.matched_by END AS matched_by,
               f.received_at, f.identity_verified_at,
               CAST(f.received_at + INTERVAL 1 MONTH AS DATE) AS due_date,
               CASE
                   WHEN p.state IN {CARRIED_STATES} THEN p.state
                   WHEN f.source_status IN {TERMINAL_STATES} THEN f.source_status
                   WHEN f.identity_verified_at IS NULL THEN 'received'
                   ELSE 'verified'
               END AS state,
               CASE
                   WHEN p.state IN {CARRIED_STATES} THEN p.reason
                   WHEN f.identity_verified_at IS NULL THEN 'identity not verified yet: nothing is executed'
                   ELSE f.flag
               END AS reason,
               f.flag IS NOT NULL AND f.identity_verified_at IS NOT NULL
                   AND coalesce(p.state, '') NOT IN {CARRIED_STATES} AS needs_human,
               TRY_CAST(f.details AS JSON) AS details,
               p.decision_id,
               coalesce(p.state_changed_at, TIMESTAMP '{now}') AS state_changed_at,
               p.state AS previous_state, f.source_status
        FROM flagged f LEFT JOIN rights.requests p USING (request_id)
    """)
