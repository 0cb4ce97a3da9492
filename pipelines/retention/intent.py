"""What retention still owes the sources: push-back targets recorded in the warehouse before any source changes.

A run killed after one source committed its part and before the others did would leave the next run to
recompute the targets from sources already half changed (a member erased at the member system no longer
resolves to their prospect record), so the rest would never be pushed. Instead the targets of each decision
are recorded once, in `retention.pushback_targets`, and a decision stays there until every source confirms
it: the next run pushes the recorded targets again (sources skip what they already applied) rather than
recomputed ones.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipelines.pushback import TARGET_SCHEMA

INTENT_TABLE = "retention.pushback_targets"


def record_targets(con: duckdb.DuckDBPyConnection, targets: pa.Table) -> tuple[pa.Table, set[str]]:
    """Record the targets of decisions not recorded yet; return every recorded target still owed, and the ids of
    the decisions among them that an earlier run recorded (it may have pushed and audited part of them)."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {INTENT_TABLE} (decision_id VARCHAR, system VARCHAR, "
                "table_name VARCHAR, key_column VARCHAR, key_value VARCHAR, action VARCHAR, payload VARCHAR)")
    earlier = {row[0] for row in con.execute(f"SELECT DISTINCT decision_id FROM {INTENT_TABLE}").fetchall()}
    con.register("_new_targets", targets.cast(TARGET_SCHEMA))
    try:
        con.execute(f"INSERT INTO {INTENT_TABLE} SELECT * FROM _new_targets WHERE decision_id NOT IN "
                    f"(SELECT decision_id FROM {INTENT_TABLE})")
    finally:
        con.unregister("_new_targets")
    owed = con.sql(f"SELECT * FROM {INTENT_TABLE} ORDER BY decision_id, system, table_name, key_value"
                   ).to_arrow_table().cast(TARGET_SCHEMA)
    return owed, earlier


def forget_confirmed(con: duckdb.DuckDBPyConnection, decision_ids: list[str]) -> None:
    """Decisions every source confirmed are owed nothing more."""
    if decision_ids:
        con.execute(f"DELETE FROM {INTENT_TABLE} WHERE list_contains($ids, decision_id)", {"ids": decision_ids})
