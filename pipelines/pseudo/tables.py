"""What each analytics table is built from: one SQL query per table over the warehouse (`raw.*`).

A builder returns the table's base rows: the source columns that policies/pseudonymisation.yaml names,
already stripped of everyone who must not be there for the table's domain. Who is excluded comes from
`exclusions_sql`: people in `rights.exclusions` (when the rights stage has written it) and records
restricted at the source, spread to every record and contact of the person through
`identity.person_links`, keeping only the reasons the policy lists for the domain.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from pipelines.normalise import email_sql, phone_sql
from pipelines.sqltext import ident, in_list

# Warehouse tables the builders and the identifier check read; `rights.exclusions` is optional.
RAW_INPUTS = (
    "members", "establishments", "contracts", "reimbursements", "survey_answers", "prospects",
    "suppression_list", "navigation_events", "cookie_consents", "id_documents", "rights_requests",
)
REQUIRED_TABLES = (*(("raw", t) for t in RAW_INPUTS), ("identity", "person_links"))


def exclusions_sql(with_rights_table: bool) -> str:
    """Temp table `_exclusions(node_type, node_value, reason)`: every excluded record and contact."""
    rights = "SELECT person_id, reason FROM rights.exclusions UNION ALL" if with_rights_table else ""
    return f"""
    CREATE OR REPLACE TEMP TABLE _exclusions AS
    WITH restricted AS (
        SELECT 'member' AS node_type, CAST(member_id AS VARCHAR) AS node_value
        FROM raw.members WHERE restricted_at IS NOT NULL
        UNION ALL
        SELECT 'prospect', CAST(prospect_id AS VARCHAR) FROM raw.prospects WHERE restricted_at IS NOT NULL
    ),
    people AS (
        {rights}
        SELECT l.person_id, 'restricted' AS reason FROM restricted r
        JOIN identity.person_links l ON l.node_type = r.node_type AND l.node_value = r.node_value
    )
    SELECT DISTINCT l.node_type, l.node_value, p.reason
    FROM people p JOIN identity.person_links l ON l.person_id = p.person_id
    UNION
    SELECT node_type, node_value, 'restricted' FROM restricted
    """


def prepare_exclusions(con: duckdb.DuckDBPyConnection) -> None:
    """Temp table `_exclusions` (`exclusions_sql`), empty while there is no identity graph yet."""
    found = {(schema, table) for schema, table in con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE (table_schema, table_name) IN "
        "(('identity', 'person_links'), ('rights', 'exclusions'))").fetchall()}
    if ("identity", "person_links") in found:
        con.execute(exclusions_sql(("rights", "exclusions") in found))
    else:
        con.execute("CREATE OR REPLACE TEMP TABLE _exclusions (node_type VARCHAR, node_value VARCHAR, reason VARCHAR)")


def domain_exclusions_sql(domain: str, reasons: tuple[str, ...]) -> str:
    return (
        f"CREATE OR REPLACE TEMP TABLE {ident('_excluded_' + domain)} AS "
        f"SELECT DISTINCT node_type, node_value FROM _exclusions WHERE reason IN {in_list(reasons)}"
    )


def _kept(domain: str, node_type: str, value_sql: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM {ident('_excluded_' + domain)} x "
        f"WHERE x.node_type = {node_type} AND x.node_value = CAST({value_sql} AS VARCHAR))"
    )


def _in_purpose(table: str, node_type: str, value_sql: str) -> str:
    """The node is not among those every purpose of `table` has ended for (pipelines.pseudo.purposes)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM _ended_{table} x "
        f"WHERE x.node_type = {node_type} AND x.node_value = CAST({value_sql} AS VARCHAR))"
    )


def members_base(domain: str) -> str:
    return f"""
    WITH contract AS (
        SELECT member_id, min(start_date) AS membership_start, arg_max(status, start_date) AS status
        FROM raw.contracts GROUP BY member_id
    )
    SELECT m.member_id, m.birth_date, m.civility, m.postal_code,
           e.name AS establishment_name, e.kind AS establishment_kind,
           c.membership_start, coalesce(c.status, 'none') AS status
    FROM raw.members m
    LEFT JOIN raw.establishments e ON e.establishment_id = m.establishment_id
    LEFT JOIN contract c ON c.member_id = m.member_id
    WHERE m.restricted_at IS NULL AND {_kept(domain, "'member'", 'm.member_id')}
      AND {_in_purpose("members_pseudo", "'member'", 'm.member_id')}
    """


def navigation_base(domain: str) -> str:
    # Only the visitor's latest choice counts: a withdrawn consent removes the whole history.
    return f"""
    WITH consent AS (
        SELECT visitor_id, arg_max(analytics, consented_at) AS analytics
        FROM raw.cookie_consents GROUP BY visitor_id
    )
    SELECT e.visitor_id, e.url, e.ts, [e.latitude, e.longitude] AS coordinates
    FROM raw.navigation_events e
    JOIN consent c ON c.visitor_id = e.visitor_id AND c.analytics
    WHERE {_kept(domain, "'visitor'", 'e.visitor_id')}
      AND (e.member_id IS NULL OR {_kept(domain, "'member'", 'e.member_id')})
      AND {_in_purpose("navigation_pseudo", "'navigation_events'", 'e.event_id')}
      AND {_in_purpose("navigation_pseudo", "'visitor'", 'e.visitor_id')}
    """


def reimbursements_base(domain: str) -> str:
    return f"""
    SELECT r.reimbursement_id, r.member_id, r.care_date, r.act_code,
           coalesce(c.act_category, 'autre') AS act_category, r.professional_country,
           r.amount_eur, r.reimbursed_eur, m.birth_date, m.civility
    FROM raw.reimbursements r JOIN raw.members m ON m.member_id = r.member_id
    LEFT JOIN _act_categories c ON c.act_code = r.act_code
    WHERE m.restricted_at IS NULL AND {_kept(domain, "'member'", 'r.member_id')}
      AND {_in_purpose("reimbursement_stats", "'member'", 'r.member_id')}
      AND {_in_purpose("reimbursement_stats", "'reimbursements'", 'r.reimbursement_id')}
    """


def surveys_base(domain: str) -> str:
    return f"""
    SELECT s.answer_id, s.member_id, s.survey, s.answered_at, s.score, m.birth_date
    FROM raw.survey_answers s JOIN raw.members m ON m.member_id = s.member_id
    WHERE m.restricted_at IS NULL AND {_kept(domain, "'member'", 's.member_id')}
      AND {_in_purpose("survey_stats", "'member'", 's.member_id')}
      AND {_in_purpose("survey_stats", "'survey_answers'", 's.answer_id')}
    """


def marketing_base(domain: str) -> str:
    # A contact is in the audience only if every record holding it consents and none is restricted or
    # excluded, and its hash is not on the suppression list (SHA-256 hex of the normalised contact).
    return f"""
    WITH records AS (
        SELECT 'member' AS node_type, CAST(member_id AS VARCHAR) AS record_id, email, phone,
               marketing_consent, restricted_at FROM raw.members
        UNION ALL
        SELECT 'prospect', CAST(prospect_id AS VARCHAR), email, phone, marketing_consent, restricted_at
        FROM raw.prospects
    ),
    in_purpose AS (  -- a record whose marketing purpose has ended speaks for nobody
        SELECT * FROM records r WHERE {_in_purpose("marketing_audience", 'r.node_type', 'r.record_id')}
    ),
    contacts AS (
        SELECT node_type, record_id, 'email' AS channel, {email_sql('email')} AS contact,
               marketing_consent, restricted_at FROM in_purpose
        UNION ALL
        SELECT node_type, record_id, 'phone', {phone_sql('phone')}, marketing_consent, restricted_at
        FROM in_purpose
    ),
    per_contact AS (
        SELECT channel, contact,
               CASE WHEN bool_or(node_type = 'member') THEN 'member' ELSE 'prospect' END AS audience,
               bool_and(coalesce(marketing_consent, false) AND restricted_at IS NULL
                        AND {_kept(domain, 'c.node_type', 'c.record_id')}) AS allowed
        FROM contacts c WHERE contact IS NOT NULL
        GROUP BY channel, contact
    )
    SELECT channel, contact, audience FROM per_contact p
    WHERE allowed
      AND {_kept(domain, 'p.channel', 'p.contact')}
      AND NOT EXISTS (SELECT 1 FROM raw.suppression_list s WHERE lower(trim(s.contact_hash)) = sha256(p.contact))
    """


BUILDERS: dict[str, Callable[[str], str]] = {
    "members_pseudo": members_base,
    "navigation_pseudo": navigation_base,
    "audience_daily": navigation_base,
    "audience_weekly_area": navigation_base,
    "reimbursement_stats": reimbursements_base,
    "survey_stats": surveys_base,
    "marketing_audience": marketing_base,
}
