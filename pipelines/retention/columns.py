"""Column-level retention: a column's value lives as long as one of the purposes it serves (datasets.yaml).

The clearable columns of a dataset fall into groups of identical purposes (members: iban, birth_date and
activity serve membership only; email and names also serve customer relationship and marketing). The key, the
subject and reference columns and the system columns follow the record. For a record that is kept (in the
active base or in the archive), a group whose purposes have all left the record's stage is cleared there: out
of the active base into the restricted archive while one of its purposes is archived, erased once all ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from pipelines.policy.models import Dataset, Policy
from pipelines.sqltext import ident as q
from pipelines.sqltext import list_literal
from pipelines.sqltext import literal as lit

# retention.column_status states; the record's own status (retention.record_status) says where it is kept.
ARCHIVED, CLEARED = "archived", "cleared"


@dataclass(frozen=True)
class ColumnGroup:
    dataset: str
    purposes: tuple[str, ...]
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.purposes)


def structural_columns(policy: Policy, ds: Dataset) -> set[str]:
    """Columns that follow the record whatever its purposes: key, subjects, links to other records about a
    person, system columns. (A link to reference data, such as a member's establishment, is an attribute.)"""
    links = {c for c, target in ds.references.items() if policy.dataset(target.split(".")[0]).subjects}
    return ({ds.primary_key} | {s.column for s in ds.subjects} | links
            | {c.name for c in ds.columns if not c.purposes})


def column_groups(policy: Policy) -> list[ColumnGroup]:
    """Clearable column groups of every dataset about a person, only where a dataset has more than one."""
    groups = []
    for ds in policy.datasets:
        if not ds.subjects:
            continue
        fixed = structural_columns(policy, ds)
        by_purposes: dict[tuple[str, ...], list[str]] = {}
        for column in ds.columns:
            if column.name not in fixed:
                by_purposes.setdefault(tuple(sorted(column.purposes)), []).append(column.name)
        if len(by_purposes) > 1:  # one group only: its purposes are the record's, record retention suffices
            groups += [ColumnGroup(ds.name, p, tuple(cols)) for p, cols in sorted(by_purposes.items())]
    return groups


def groups_sql(groups: list[ColumnGroup]) -> str:
    """The groups as a relation (dataset, column_group, purposes VARCHAR[], columns VARCHAR[])."""
    if not groups:
        return ("SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS column_group, NULL::VARCHAR[] AS purposes, "
                "NULL::VARCHAR[] AS columns WHERE false")
    rows = ", ".join(f"({lit(g.dataset)}, {lit(g.name)}, {list_literal(g.purposes)}, {list_literal(g.columns)})"
                     for g in groups)
    return f"SELECT * FROM (VALUES {rows}) AS g(dataset, column_group, purposes, columns)"


def compute_columns(con: duckdb.DuckDBPyConnection, policy: Policy, prefix: str) -> None:
    """Temp table `{prefix}_columns`: per kept record, each column group that must leave the record's stage.

    A group with no evaluated purpose for the record (its clock does not apply to this kind of subject) follows
    the record. Holds and restrictions suspend clearing like every other step.
    """
    purposes, records = q(prefix + "_purposes"), q(prefix + "_records")
    # The reasons (text per record, group and purpose) are built only for the groups that leave their stage: built
    # for every record first, they held the first night's page views in memory (out of memory under a 4 GB cap).
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {q(prefix + '_columns')} AS
        WITH g AS ({groups_sql(column_groups(policy))}),
        -- one row per (group, purpose): an equality join (a list_contains condition made it a nested loop)
        gp AS (SELECT dataset, column_group, columns, unnest(purposes) AS purpose FROM g),
        states AS (
            SELECT p.dataset, p.record_key, g.column_group,
                   CASE WHEN bool_or(p.purpose_status = 'active') THEN 'active'
                        WHEN bool_or(p.purpose_status = 'archived') THEN {lit(ARCHIVED)}
                        ELSE {lit(CLEARED)} END AS state
            FROM {purposes} p JOIN gp AS g ON g.dataset = p.dataset AND g.purpose = p.purpose
            GROUP BY ALL
        ),
        leaving AS (
            SELECT s.*, r.system, r.subject_type, r.subject_id
            FROM states s JOIN {records} r USING (dataset, record_key)
            WHERE (r.status = 'active' AND s.state IN ({lit(ARCHIVED)}, {lit(CLEARED)}))
               OR (r.status = 'archived' AND s.state = {lit(CLEARED)})
        ),
        why AS (
            SELECT l.dataset, l.record_key, l.column_group,
                   string_agg(p.purpose || ': ' || p.purpose_reason, '; ' ORDER BY p.purpose) AS why
            FROM leaving l JOIN gp AS g ON g.dataset = l.dataset AND g.column_group = l.column_group
            JOIN {purposes} p ON p.dataset = l.dataset AND p.record_key = l.record_key AND p.purpose = g.purpose
            GROUP BY ALL
        )
        SELECT l.dataset, l.system, l.record_key, l.subject_type, l.subject_id, l.column_group, g.columns, l.state,
               CASE l.state WHEN {lit(ARCHIVED)} THEN 'moved to the restricted archive: '
                    ELSE 'cleared, every purpose of these columns ended: ' END || w.why AS reason
        FROM leaving l JOIN why w USING (dataset, record_key, column_group)
        JOIN g ON g.dataset = l.dataset AND g.column_group = l.column_group
    """)
