"""Identity resolution: one person id per human across the member system, prospecting and navigation,
joined only through the rules the policy declares (datasets.yaml `identity`), never by accident.

- Every member record is a person of its own: two members are never merged through a contact.
- Prospects sharing a declared contact with each other are one prospect group (connected components of the
  prospect-contact graph, SciPy's csgraph).
- A prospect group joins the member it shares a declared contact with, when that contact is held by
  exactly one member and the group points at exactly one member; otherwise it stays a person of its own.
- A visitor joins the member it logged in as, when it logged in as exactly one member.

`identity.person_links(person_id, node_type, node_value, shared)` lists each person's records (member,
prospect, visitor) and contacts (email, phone, normalised); `shared` marks a contact several people hold (a
family phone, a shared mailbox), which no right may act on for one of them. `identity.ambiguities(person_id,
node_type, node_value, reason)` lists, per person, what is near them but not theirs for sure: shared
contacts, and prospects or visitors that point at several members. The person id is a hash of the person's
anchor record, so it carries no identifier itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa
from scipy import sparse
from scipy.sparse import csgraph

from pipelines.duck import scalar
from pipelines.normalise import email_sql, phone_sql
from pipelines.policy.models import IdentityRule

# The raw tables the identity graph is built from: a push-back that changed none of them leaves it as it is.
INPUT_TABLES = frozenset({"members", "prospects", "navigation_events"})

_CONTACTS_SQL = f"""
CREATE OR REPLACE TEMP TABLE _contacts AS
SELECT * FROM (
    SELECT 'member' AS record_type, CAST(member_id AS VARCHAR) AS record, 'email' AS contact_type,
           {email_sql('email')} AS contact FROM raw.members
    UNION ALL SELECT 'member', CAST(member_id AS VARCHAR), 'phone', {phone_sql('phone')} FROM raw.members
    UNION ALL SELECT 'prospect', CAST(prospect_id AS VARCHAR), 'email', {email_sql('email')} FROM raw.prospects
    UNION ALL SELECT 'prospect', CAST(prospect_id AS VARCHAR), 'phone', {phone_sql('phone')} FROM raw.prospects
) WHERE contact IS NOT NULL
"""

def _prospect_groups(con: duckdb.DuckDBPyConnection, through: list[str]) -> int:
    """Temp table `_groups(prospect, grp)`: prospects joined by the declared contacts; returns the groups.

    The graph (prospects and their contacts as nodes, "holds" as edges) goes to SciPy's connected components as
    integer arrays: one linear pass in C, whatever the length of a chain of shared contacts. A group is named by
    its least node (text order), so the person id of a prospect group does not depend on how it was computed.
    """
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _edges AS
        SELECT 'prospect:' || record AS a, contact_type || ':' || contact AS b FROM _contacts
        WHERE record_type = 'prospect' AND list_contains(?, contact_type)
        UNION ALL SELECT 'prospect:' || CAST(prospect_id AS VARCHAR), 'prospect:' || CAST(prospect_id AS VARCHAR)
        FROM raw.prospects""", [through])
    con.execute("CREATE OR REPLACE TEMP TABLE _nodes AS SELECT node, (row_number() OVER () - 1)::INTEGER AS i "
                "FROM (SELECT a AS node FROM _edges UNION SELECT b FROM _edges)")
    edges = con.execute("SELECT na.i, nb.i FROM _edges e JOIN _nodes na ON na.node = e.a "
                        "JOIN _nodes nb ON nb.node = e.b").fetchnumpy()
    ends = list(edges.values())
    n = scalar(con, "SELECT count(*) FROM _nodes")
    graph = sparse.coo_matrix((np.ones(len(ends[0]), dtype=np.int8), (ends[0], ends[1])), shape=(n, n))
    groups, component = csgraph.connected_components(graph, directed=False)
    con.register("_component", pa.table({"i": np.arange(n, dtype=np.int32), "component": component}))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _groups AS
        WITH c AS (SELECT n.node, c.component FROM _nodes n JOIN _component c USING (i)),
        named AS (SELECT component, min(node) AS grp FROM c GROUP BY component)
        SELECT substr(c.node, 10) AS prospect, named.grp FROM c JOIN named USING (component)
        WHERE c.node LIKE 'prospect:%'""")
    con.unregister("_component")
    con.execute("DROP TABLE _nodes; DROP TABLE _edges")
    return groups


def resolve_identities(con: duckdb.DuckDBPyConnection, rules: Sequence[IdentityRule]) -> dict[str, int]:
    """Write `identity.person_links` and `identity.ambiguities` (see module doc); return counts for metadata.
    `rules` are the policy's (datasets.yaml `identity`)."""
    to_member = sorted({r.through for r in rules if r.records == ("prospect", "member")})
    between_prospects = sorted({r.through for r in rules if r.records == ("prospect", "prospect")})
    login = any(r.records == ("visitor", "member") for r in rules)
    con.execute(_CONTACTS_SQL)
    prospect_groups = _prospect_groups(con, between_prospects)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _member_contacts AS
        SELECT contact_type, contact, min(record) AS member, count(DISTINCT record) AS members
        FROM _contacts WHERE record_type = 'member' GROUP BY ALL""")
    # a prospect group joins a member only when all its declared contacts point at one single member
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _group_members AS
        SELECT g.grp, count(DISTINCT mc.member) AS members, min(mc.member) AS member
        FROM _groups g JOIN _contacts c ON c.record_type = 'prospect' AND c.record = g.prospect
        JOIN _member_contacts mc USING (contact_type, contact)
        WHERE mc.members = 1 AND list_contains(?, c.contact_type) GROUP BY g.grp""", [to_member])
    # the (visitor, member) logins, read once from the page views (tens of millions of rows at scale)
    con.execute("CREATE OR REPLACE TEMP TABLE _visits AS " + (
        "SELECT DISTINCT visitor_id AS visitor, CAST(member_id AS VARCHAR) AS member FROM raw.navigation_events "
        "WHERE member_id IS NOT NULL" if login else
        "SELECT CAST(NULL AS VARCHAR) AS visitor, CAST(NULL AS VARCHAR) AS member WHERE false"))
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _visitor_members AS
        SELECT visitor, count(DISTINCT member) AS members, min(member) AS member FROM _visits GROUP BY visitor""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _records AS
        -- a member id the navigation log names is a member record too (its row may be in quarantine)
        SELECT 'member' AS node_type, member AS node_value, 'member:' || member AS anchor FROM (
            SELECT CAST(member_id AS VARCHAR) AS member FROM raw.members UNION SELECT member FROM _visits)
        UNION ALL
        SELECT 'prospect', g.prospect, CASE WHEN gm.members = 1 THEN 'member:' || gm.member ELSE g.grp END
        FROM _groups g LEFT JOIN _group_members gm USING (grp)
        UNION ALL
        SELECT 'visitor', v.visitor_id, CASE WHEN vm.members = 1 THEN 'member:' || vm.member
                                             ELSE 'visitor:' || v.visitor_id END
        FROM (SELECT DISTINCT visitor_id FROM raw.navigation_events WHERE visitor_id IS NOT NULL) v
        LEFT JOIN _visitor_members vm ON vm.visitor = v.visitor_id""")
    con.execute("CREATE SCHEMA IF NOT EXISTS identity")
    # Records are distinct already (one row per record) and never shared; only contacts, which several records
    # of one person may hold, are made distinct and counted across persons. The person id is hashed once per
    # anchor. At 1,000,000 members (11.3 million links) this statement took 14.4 s as one UNION, now 11.6 s.
    con.execute("""
        CREATE OR REPLACE TABLE identity.person_links AS
        WITH persons AS (SELECT anchor, 'p_' || substr(sha256(anchor), 1, 20) AS person_id
                         FROM (SELECT DISTINCT anchor FROM _records)),
        records AS (SELECT p.person_id, r.node_type, r.node_value FROM _records r JOIN persons p USING (anchor)),
        contacts AS (SELECT DISTINCT r.person_id, c.contact_type AS node_type, c.contact AS node_value
                     FROM records r JOIN _contacts c ON c.record_type = r.node_type AND c.record = r.node_value)
        SELECT * FROM (
            SELECT *, false AS shared FROM records
            UNION ALL
            SELECT *, count(*) OVER (PARTITION BY node_type, node_value) > 1 FROM contacts)
        ORDER BY person_id, node_type, node_value""")
    con.execute("""
        CREATE OR REPLACE TABLE identity.ambiguities AS
        SELECT person_id, node_type, node_value,
               'the ' || node_type || ' is held by another person too' AS reason
        FROM identity.person_links WHERE shared
        UNION ALL
        SELECT DISTINCT l.person_id, 'prospect', g.prospect,
               'a prospect record shares a contact with this member but is not theirs for sure'
        FROM _groups g LEFT JOIN _group_members gm USING (grp)
        JOIN _contacts c ON c.record_type = 'prospect' AND c.record = g.prospect
        JOIN _contacts m ON m.record_type = 'member' AND m.contact_type = c.contact_type AND m.contact = c.contact
        JOIN identity.person_links l ON l.node_type = 'member' AND l.node_value = m.record
        WHERE list_contains($to_member, c.contact_type) AND (coalesce(gm.members, 0) <> 1 OR gm.member <> m.record)
        UNION ALL
        SELECT DISTINCT l.person_id, 'visitor', v.visitor, 'a visitor logged in as this member and another one'
        FROM _visitor_members vm JOIN _visits v USING (visitor)
        JOIN identity.person_links l ON l.node_type = 'member' AND l.node_value = v.member
        WHERE vm.members > 1""", {"to_member": to_member})
    con.execute("DROP TABLE _contacts; DROP TABLE _groups; DROP TABLE _member_contacts; DROP TABLE _group_members; "
                "DROP TABLE _visitor_members; DROP TABLE _visits; DROP TABLE _records")
    stats = con.execute(
        """
        SELECT count(DISTINCT person_id),
               count(DISTINCT person_id) FILTER (WHERE node_type = 'member'),
               count(*) FILTER (WHERE node_type = 'prospect'),
               count(*) FILTER (WHERE node_type = 'visitor'),
               (SELECT count(*) FROM (
                    SELECT person_id FROM identity.person_links GROUP BY person_id
                    HAVING bool_or(node_type = 'member') AND bool_or(node_type = 'prospect'))),
               (SELECT count(DISTINCT person_id) FROM identity.ambiguities)
        FROM identity.person_links
        """
    ).fetchall()[0]
    keys = ("persons", "persons_with_member_record", "prospect_records", "visitor_records",
            "prospects_linked_to_members", "persons_with_ambiguities")
    return {**dict(zip(keys, stats, strict=True)), "prospect_groups": prospect_groups}
