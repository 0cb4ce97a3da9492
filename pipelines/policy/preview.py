"""Policy-change preview: what a proposed policy version would do to today's data, touching nothing.

Both versions' ledgers are computed into temporary tables of the same connection, slice by slice (a read-only
connection is enough); the report counts, per purpose and dataset, the records whose status would change, and says why
(the purpose's rule changed, or another purpose of the same records did).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa

from pipelines.policy.models import Policy
from pipelines.retention.ledger import (
    SLICE_RECORDS,
    SUBJECTS,
    compute,
    drop_computed,
    flag_sets,
    record_subjects_sql,
    slice_subjects,
    sources_of,
)


def _why(current: Policy, proposed: Policy, purpose: str, dataset: str) -> str:
    keys_now, keys_next = {p.key for p in current.purposes}, {p.key for p in proposed.purposes}
    if purpose not in keys_now:
        return "purpose added"
    if purpose not in keys_next:
        return "purpose removed"
    before, after = current.rule_for(purpose, dataset), proposed.rule_for(purpose, dataset)
    changed = [f"{field} {getattr(before, field)} -> {getattr(after, field)}"
               for field in ("active", "clock", "archive", "end_action")
               if getattr(before, field) != getattr(after, field)]
    if not changed and current.clocks.get(before.clock) != proposed.clocks.get(after.clock):
        changed = [f"clock {before.clock} redefined"]
    return "; ".join(changed) or "rule unchanged: another purpose of the same records changed"


def preview(current: Policy, proposed: Policy, con: duckdb.DuckDBPyConnection, as_of: dt.date,
            slice_records: int = SLICE_RECORDS) -> pa.Table:
    """Per purpose × dataset × (status now -> status under the proposal): records affected and why.

    When both versions name the same subjects in every dataset, the two ledgers are computed side by side one
    slice of subjects at a time (about `slice_records` records for the two: pipelines.retention.ledger), as the
    nightly ledger is; otherwise a record could fall in different slices under each, and they are computed whole.
    """
    slices = 1
    if {ds.name: ds.subjects for ds in current.datasets} == {ds.name: ds.subjects for ds in proposed.datasets}:
        slices = slice_subjects(con, record_subjects_sql(con, current), max(1, slice_records // 2), SUBJECTS)
    con.execute("CREATE OR REPLACE TEMP TABLE _preview_changes (purpose VARCHAR, dataset VARCHAR, "
                "status_now VARCHAR, status_proposed VARCHAR, records BIGINT)")
    versions = {"_now": current, "_next": proposed}
    for prefix, policy in versions.items():  # person-wide, whole: once for every slice
        flag_sets(con, policy, sources_of(con, policy), prefix)
    for piece in range(slices):
        scope = None if slices == 1 else f"SELECT subject_type, subject_id FROM {SUBJECTS} WHERE slice = {piece}"
        for prefix, policy in versions.items():
            compute(con, policy, as_of, prefix=prefix, scope=scope, flags_built=True)
        con.execute("""
            INSERT INTO _preview_changes
            WITH now AS (SELECT p.dataset, p.record_key, p.purpose, r.status
                         FROM _now_purposes p JOIN _now_records r USING (dataset, record_key)),
                 next AS (SELECT p.dataset, p.record_key, p.purpose, r.status
                          FROM _next_purposes p JOIN _next_records r USING (dataset, record_key))
            SELECT coalesce(now.purpose, next.purpose), coalesce(now.dataset, next.dataset),
                   coalesce(now.status, 'not held'), coalesce(next.status, 'not held'), count(*)
            FROM now FULL JOIN next USING (dataset, record_key, purpose)
            WHERE now.status IS DISTINCT FROM next.status
            GROUP BY ALL""")
        for prefix in versions:
            drop_computed(con, prefix)
    changes = con.sql("SELECT purpose, dataset, status_now, status_proposed, sum(records)::BIGINT AS records "
                      "FROM _preview_changes GROUP BY ALL "
                      "ORDER BY purpose, dataset, status_now, status_proposed").to_arrow_table()
    con.execute(f"DROP TABLE _preview_changes; DROP TABLE IF EXISTS {SUBJECTS}; DROP TABLE _now_flags; "
                "DROP TABLE _next_flags")
    reasons = [_why(current, proposed, p, d)
               for p, d in zip(changes["purpose"].to_pylist(), changes["dataset"].to_pylist(), strict=True)]
    return changes.append_column("why", pa.array(reasons, pa.string()))


def render_preview(table: pa.Table, current: Policy, proposed: Policy, as_of: dt.date) -> str:
    lines = [
        "# Policy-change preview",
        "",
        f"Current: {current.version_label} (effective {current.effective_date}).  ",
        f"Proposed: {proposed.version_label} (effective {proposed.effective_date}).  ",
        f"Evaluated as of {as_of.isoformat()}; nothing was changed.",
        "",
    ]
    if not table.num_rows:
        return "\n".join([*lines, "No record would change status.", ""])
    lines += ["| Purpose | Dataset | Status now | Status proposed | Records | Why |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['purpose']} | {r['dataset']} | {r['status_now']} | {r['status_proposed']} | {r['records']} "
              f"| {r['why']} |" for r in table.to_pylist()]
    return "\n".join([*lines, ""])
