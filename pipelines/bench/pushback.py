"""Benchmark: erase N people from the member system with set-based push-back vs one statement per row.

    bench_pushback(pg_url, n_people=10_000) -> dict

Both approaches run in the same call on two identical, freshly seeded copies of the member system (two
schemas would share nothing but the server; two databases of the same cluster are used when the URL
allows creating them, else the same database is reseeded). The seeded data is synthetic and built by
set-based SQL (recursive CTE) so seeding is not what is measured. Also used by the tests to build small
member/prospect sources and the erasure targets of a set of people.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.pushback import TARGET_SCHEMA, apply_decisions
from pipelines.pushback.sql import applied, bookkeeping, ensure_bookkeeping
from pipelines.pushback.targets import dependency_order
from pipelines.sources.schema import member_metadata, prospect_metadata

ROWS_PER_PERSON = 3

# Synthetic column values, as SQL over i (row number) and m (the member/prospect it belongs to).
_MEMBER_CHILDREN: dict[str, dict[str, str]] = {
    "contracts": {"product": "'essentiel'", "start_date": "'2024-09-01'", "status": "'active'"},
    "id_documents": {"doc_type": "'cni'", "doc_number": "'X' || i", "received_at": "'2024-09-01 10:00:00'"},
    "reimbursements": {"care_date": "'2025-01-10'", "act_code": "'C'", "amount_eur": "25.0",
                       "professional_country": "CASE WHEN m % 10 = 0 THEN 'MC' ELSE 'FR' END"},
    "contributions": {"due_date": "'2025-01-01'", "amount_eur": "30.0"},
    "debt_recoveries": {"contribution_id": "i", "opened_at": "'2025-03-01 09:00:00'"},
    "accounting_entries": {"entry_date": "'2025-01-01'", "fiscal_year": "2025", "account": "'706'",
                           "amount_eur": "30.0"},
    "interactions": {"kind": "'complaint'", "channel": "'mail'", "created_at": "'2025-02-01 09:00:00'",
                     "handled_by": "CASE WHEN m % 7 = 0 THEN 'morocco_complaints_provider' ELSE 'sem' END"},
    "survey_answers": {"survey": "'s2025'", "score": "8", "answered_at": "'2025-05-01 09:00:00'"},
}


def _insert_series(con: sa.Connection, table: str, n: int, per: int, columns: dict[str, str]) -> None:
    """INSERT n rows, row i belonging to person m = ceil(i / per), values given as SQL over i and m."""
    con.execute(sa.text(
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {int(n)}) "
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns.values())} "
        f"FROM (SELECT i, (i - 1) / {int(per)} + 1 AS m FROM s) AS q"
    ))


def seed_members(engine: sa.Engine, n_people: int) -> None:
    """Create the member schema: n people, ROWS_PER_PERSON rows each in every child table."""
    member_metadata.create_all(engine)
    with engine.begin() as con:
        _insert_series(con, "members", n_people, 1, {
            "member_id": "m", "first_name": "'Prenom' || m", "last_name": "'Nom' || m",
            "email": "'member' || m || '@example.org'", "phone": "'06' || (10000000 + m)",
            "birth_date": "'2004-05-06'", "created_at": "'2024-09-01 10:00:00'",
        })
        for name, columns in _MEMBER_CHILDREN.items():
            pk = next(iter(member_metadata.tables[name].primary_key.columns)).name
            _insert_series(con, name, n_people * ROWS_PER_PERSON, ROWS_PER_PERSON,
                           {pk: "i", "member_id": "m", **columns})


def seed_prospects(engine: sa.Engine, n_people: int) -> None:
    """Create the prospecting schema: n prospects, and campaign selections of prospects and members."""
    prospect_metadata.create_all(engine)
    with engine.begin() as con:
        _insert_series(con, "prospects", n_people, 1, {
            "prospect_id": "m", "first_name": "'Prenom' || m", "email": "'prospect' || m || '@example.org'",
            "collected_at": "'2025-01-01 10:00:00'", "marketing_consent": "true",
        })
        _insert_series(con, "campaigns", 2, 1, {"campaign_id": "i", "name": "'c' || i", "kind": "'prospecting'"})
        _insert_series(con, "campaign_selections", n_people * 2, 2, {
            "selection_id": "i", "campaign_id": "i % 2 + 1",
            "prospect_id": "CASE WHEN i % 2 = 0 THEN m END", "member_id": "CASE WHEN i % 2 = 1 THEN m END",
            "selected_at": "'2025-02-01 10:00:00'",
        })


def erasure_targets(member_ids: Sequence[int], prefix: str = "erase") -> pa.Table:
    """Targets erasing each member from every member-system table that has member_id (the member's own
    rights requests excepted: they prove the request was handled). Decision "<prefix>:<member_id>"."""
    keys = pa.array([str(m) for m in member_ids], pa.string())
    decisions = pc.binary_join_element_wise(pa.array([prefix] * len(keys), pa.string()), keys, ":")
    tables = [t for t in dependency_order(member_metadata)
              if "member_id" in member_metadata.tables[t].c and t != "rights_requests"]

    def constant(value: str) -> pa.Array:
        return pa.array([value] * len(keys), pa.string())

    return pa.concat_tables([
        pa.table([decisions, constant("members"), constant(t), constant("member_id"), keys, constant("erase"),
                  pa.nulls(len(keys), pa.string())], schema=TARGET_SCHEMA)
        for t in tables
    ])


def _reset(engine: sa.Engine, n_people: int) -> None:
    """Fresh member system with an index on every member_id, as a production system would have."""
    bookkeeping.drop_all(engine)
    member_metadata.drop_all(engine)
    seed_members(engine, n_people)
    with engine.begin() as con:
        for table in member_metadata.sorted_tables:
            if "member_id" in table.c and table.name != "members":
                con.execute(sa.text(f"CREATE INDEX ix_{table.name}_member ON {table.name} (member_id)"))


def _row_by_row(engine: sa.Engine, targets: pa.Table) -> None:
    """The naive approach: one DELETE per target row, one INSERT per decision, in one transaction."""
    ensure_bookkeeping(engine)
    with engine.begin() as con:
        for row in targets.to_pylist():
            table = member_metadata.tables[row["table_name"]]
            con.execute(sa.delete(table).where(table.c.member_id == int(row["key_value"])))
        for decision_id in pc.unique(targets["decision_id"]).to_pylist():
            con.execute(sa.insert(applied).values(decision_id=decision_id, applied_at="now", rows_affected=0))


def bench_pushback(pg_url: str, n_people: int = 10_000) -> dict:
    """Erase n_people (of 2 * n_people seeded) with the set-based push-back and with one statement per
    row, same PostgreSQL, same data, same run; returns seconds and the speed-up."""
    engine = sa.create_engine(pg_url)
    targets = erasure_targets(range(1, n_people + 1), prefix="bench")
    try:
        _reset(engine, 2 * n_people)
        started = time.perf_counter()
        report = apply_decisions(targets, members=engine, notice_rules=(), tokenise=str)
        set_based = time.perf_counter() - started
        _reset(engine, 2 * n_people)
        started = time.perf_counter()
        _row_by_row(engine, targets)
        row_by_row = time.perf_counter() - started
    finally:
        engine.dispose()
    return {
        "people_erased": n_people,
        "target_rows": targets.num_rows,
        "rows_deleted": report.rows_affected["members"],
        "confirmed": len(report.confirmed),
        "set_based_seconds": round(set_based, 2),
        "row_by_row_seconds": round(row_by_row, 2),
        "speedup": round(row_by_row / set_based, 1),
    }
