"""What a right reaches, read from the policy: which tables hold a person's rows, which of them a legal
obligation keeps on erasure, which serve only direct marketing, which carry a restriction flag.

Nothing here names a purpose or a table: legal obligation = purposes whose legal basis is art. 6(1)(c)
with an archive period; direct marketing = the purposes the `marketing_consent` columns serve; legal
holds come from `legal_holds` in datasets.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.policy.models import Policy, duration_parts
from pipelines.pushback.targets import SUPPRESSION_TABLE
from pipelines.sources.schema import RESTRICTION_COLUMNS, SQL_SYSTEMS

LEGAL_OBLIGATION = "6(1)(c)"
CONSENT_COLUMN = "marketing_consent"


@dataclass(frozen=True)
class SubjectTable:
    system: str
    table_name: str
    key_column: str
    node_type: str  # member | prospect | visitor (identity.person_links node_type)
    primary_key: str
    kept_reason: str | None  # why erasure archives these rows instead of deleting them
    marketing_only: bool  # every purpose of the subject column is direct marketing
    restrictable: bool  # carries restricted_at / restriction_decision_id at the source


def marketing_purposes(policy: Policy) -> set[str]:
    return {p for ds in policy.datasets for c in ds.columns if c.name == CONSENT_COLUMN for p in c.purposes}


def _legal_obligations(policy: Policy) -> dict[str, str]:
    """purpose -> its legal source, for purposes a legal obligation imposes and that keep an archive."""
    return {p.key: p.retention.legal_source for p in policy.purposes
            if p.legal_basis.article_6 == LEGAL_OBLIGATION and any(duration_parts(p.retention.archive))}


PORTABLE_BASES = ("6(1)(a)", "6(1)(b)")  # art. 20(1)(a): consent or contract


def portable_columns(policy: Policy, table: str) -> list[str]:
    """Art. 20: the columns of `table` holding data the person provided (or their use of the service
    produced) for a processing based on consent or contract, plus the row's key; not system bookkeeping."""
    ds = policy.dataset(table)
    bases = {p.key for p in policy.purposes if p.legal_basis.article_6 in PORTABLE_BASES}
    return [c.name for c in ds.columns if c.name == ds.primary_key
            or (not c.category.startswith("system") and bases & set(c.purposes))]


def subject_tables(policy: Policy) -> list[SubjectTable]:
    obligations = _legal_obligations(policy)
    marketing = marketing_purposes(policy)
    found = []
    for ds in policy.datasets:
        if ds.name == SUPPRESSION_TABLE:  # the suppression list must outlive erasure (art. 21(3), 3 years)
            continue
        for subject in ds.subjects:
            purposes = set(ds.column(subject.column).purposes)
            kept = sorted(purposes) if purposes and purposes <= set(obligations) else []
            table = SQL_SYSTEMS[ds.system].tables[ds.name] if ds.system in SQL_SYSTEMS else None
            found.append(SubjectTable(
                system=ds.system, table_name=ds.name, key_column=subject.column, node_type=subject.type,
                primary_key=ds.primary_key,
                kept_reason="art. 17(3)(b) legal obligation: " + "; ".join(
                    f"{p} ({obligations[p]})" for p in kept) if kept else None,
                marketing_only=bool(purposes) and purposes <= marketing,
                restrictable=table is not None and all(c in table.c for c in RESTRICTION_COLUMNS),
            ))
    return found


def legal_hold_sql(policy: Policy, alias: str) -> list[tuple[str, str, str]]:
    """(table, SQL condition over the table aliased `alias`, reason) per declared legal hold."""
    return [(h.table, h.where_sql(alias),
             f"art. 17(3)(e) legal claims: {h.description}") for h in policy.datasets_file.legal_holds]
