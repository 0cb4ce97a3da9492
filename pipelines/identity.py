"""Identity resolution: one person id per human across the member system, prospecting and navigation.

Records (member, prospect, visitor) and contacts (normalised e-mail, E.164 phone) are nodes; a record
is linked to its contacts, and a visitor to the member it logged in as. Connected components are found
by label propagation in SQL (each round is one set-based statement; rounds ≈ the graph's diameter).
The person id is a hash of the component's smallest node, so it carries no identifier itself.
"""

from __future__ import annotations

import duckdb

from pipelines.duck import scalar
from pipelines.normalise import email_sql, phone_sql

_EDGES_SQL = f"""
CREATE OR REPLACE TEMP TABLE _edges AS
WITH contact_edges AS (
    SELECT 'member:' || member_id AS a, 'email:' || {email_sql('email')} AS b FROM raw.members
    UNION ALL SELECT 'member:' || member_id, 'phone:' || {phone_sql('phone')} FROM raw.members
    UNION ALL SELECT 'prospect:' || prospect_id, 'email:' || {email_sql('email')} FROM raw.prospects
    UNION ALL SELECT 'prospect:' || prospect_id, 'phone:' || {phone_sql('phone')} FROM raw.prospects
    UNION ALL SELECT DISTINCT 'visitor:' || visitor_id, 'member:' || member_id
        FROM raw.navigation_events WHERE member_id IS NOT NULL
    UNION ALL SELECT 'member:' || member_id, 'member:' || member_id FROM raw.members
    UNION ALL SELECT 'prospect:' || prospect_id, 'prospect:' || prospect_id FROM raw.prospects
    UNION ALL SELECT DISTINCT 'visitor:' || visitor_id, 'visitor:' || visitor_id FROM raw.navigation_events
)
SELECT DISTINCT a, b FROM contact_edges WHERE a IS NOT NULL AND b IS NOT NULL
"""

_PROPAGATE_SQL = """
CREATE OR REPLACE TEMP TABLE _next AS
SELECT l.node, least(l.label, coalesce(min(n.label), l.label)) AS label
FROM _labels l
LEFT JOIN (
    SELECT e.a AS node, lb.label FROM _edges e JOIN _labels lb ON lb.node = e.b
    UNION ALL
    SELECT e.b AS node, la.label FROM _edges e JOIN _labels la ON la.node = e.a
) n ON n.node = l.node
GROUP BY l.node, l.label
"""


def resolve_identities(con: duckdb.DuckDBPyConnection, max_rounds: int = 50) -> dict[str, int]:
    """Write `identity.person_links(person_id, node_type, node_value)`; return counts for metadata."""
    con.execute(_EDGES_SQL)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _labels AS "
        "SELECT node, node AS label FROM (SELECT a AS node FROM _edges UNION SELECT b FROM _edges)"
    )
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the count is reported
        con.execute(_PROPAGATE_SQL)
        changed = scalar(con, "SELECT count(*) FROM _next n JOIN _labels l USING (node) WHERE n.label <> l.label")
        con.execute("CREATE OR REPLACE TEMP TABLE _labels AS SELECT * FROM _next")
        if changed == 0:
            break
    else:
        raise RuntimeError(f"identity resolution did not converge in {max_rounds} rounds")
    con.execute("CREATE SCHEMA IF NOT EXISTS identity")
    con.execute(
        """
        CREATE OR REPLACE TABLE identity.person_links AS
        SELECT 'p_' || substr(sha256(label), 1, 20) AS person_id,
               split_part(node, ':', 1) AS node_type,
               substr(node, strpos(node, ':') + 1) AS node_value
        FROM _labels
        ORDER BY person_id, node_type
        """
    )
    con.execute("DROP TABLE _labels; DROP TABLE _next; DROP TABLE _edges")
    stats = con.execute(
        """
        SELECT count(DISTINCT person_id),
               count(DISTINCT person_id) FILTER (WHERE node_type = 'member'),
               count(*) FILTER (WHERE node_type = 'prospect'),
               count(*) FILTER (WHERE node_type = 'visitor'),
               (SELECT count(*) FROM (
                    SELECT person_id FROM identity.person_links GROUP BY person_id
                    HAVING bool_or(node_type = 'member') AND bool_or(node_type = 'prospect')))
        FROM identity.person_links
        """
    ).fetchall()[0]
    keys = (
        "persons", "persons_with_member_record", "prospect_records", "visitor_records", "prospects_linked_to_members"
    )
    return {**dict(zip(keys, stats, strict=True)), "propagation_rounds": rounds}
