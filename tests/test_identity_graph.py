"""Prospect groups are the connected components of the prospect-contact graph, however long a chain of shared
contacts runs: a policy joining prospects through e-mail and phone can chain hundreds of records (the label
propagation this replaced gave up after 50 rounds and failed the night)."""

from __future__ import annotations

import duckdb

from pipelines.identity import resolve_identities
from pipelines.policy.models import IdentityRule
from tests.conftest import identity_rules

CHAIN = 150


def _warehouse(prospects: list[tuple[int, str, str]], members: list[tuple[int, str, str]]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA raw")
    con.execute("CREATE TABLE raw.members (member_id BIGINT, email VARCHAR, phone VARCHAR)")
    con.execute("CREATE TABLE raw.prospects (prospect_id BIGINT, email VARCHAR, phone VARCHAR)")
    con.execute("CREATE TABLE raw.navigation_events (visitor_id VARCHAR, member_id BIGINT)")
    con.executemany("INSERT INTO raw.members VALUES (?, ?, ?)", members)
    con.executemany("INSERT INTO raw.prospects VALUES (?, ?, ?)", prospects)
    return con


def _chain(first_id: int, tag: str) -> list[tuple[int, str, str]]:
    """Prospect k shares its e-mail with k - 1 and its phone with k + 1: a path through 2 × CHAIN nodes."""
    return [(first_id + k, f"{tag}{(k + 1) // 2}@example.org", f"+3361{first_id // 1000:02d}{k // 2:05d}")
            for k in range(CHAIN)]


def _persons(con: duckdb.DuckDBPyConnection, first_id: int) -> set[str]:
    return {p for (p,) in con.execute(
        "SELECT DISTINCT person_id FROM identity.person_links WHERE node_type = 'prospect' "
        "AND CAST(node_value AS BIGINT) BETWEEN ? AND ?", [first_id, first_id + CHAIN - 1]).fetchall()}


def test_a_long_chain_of_shared_contacts_is_one_prospect_group_and_joins_its_one_member():
    through_both = [*identity_rules(), IdentityRule(description="same prospect, same phone",
                                                   records=("prospect", "prospect"), through="phone")]
    joined, alone = _chain(1000, "a"), _chain(5000, "b")
    # the far end of the first chain has the e-mail of member 1 (typed differently); the second touches nobody
    member = (1, joined[-1][1].upper() + " ", "+33699999999")
    con = _warehouse(joined + alone, [member, (2, "other@example.org", "+33688888888")])
    stats = resolve_identities(con, through_both)

    assert stats["prospect_groups"] == 2
    member_person = con.execute("SELECT person_id FROM identity.person_links WHERE node_type = 'member' "
                                "AND node_value = '1'").fetchall()[0][0]
    assert _persons(con, 1000) == {member_person}
    assert len(_persons(con, 5000)) == 1 and _persons(con, 5000) != {member_person}
    # without the phone rule the same records are many groups: only the declared rules join anything
    con = _warehouse(joined + alone, [member])
    assert resolve_identities(con, identity_rules())["prospect_groups"] > 2
    assert len(_persons(con, 1000)) > 1
