"""The "decision targets" relation that callers hand to push-back, its validation and the deletion order.

One row per (decision, source row key): a decision (id chosen by the caller, stable across re-runs) may
touch several tables and several keys; the source records it as applied once, atomically.
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.sources.schema import RESTRICTION_COLUMNS, SQL_SYSTEMS

TARGET_SCHEMA = pa.schema([
    ("decision_id", pa.string()),
    ("system", pa.string()),  # members | prospects | navigation
    ("table_name", pa.string()),
    ("key_column", pa.string()),
    ("key_value", pa.string()),
    ("action", pa.string()),  # see ACTIONS
    ("payload", pa.string()),  # JSON, see the package docstring
])

ACTIONS = ("rectify", "lift_restriction", "restrict", "anonymise", "erase", "suppress")
SUPPRESSION_TABLE = "suppression_list"
NAVIGATION_TABLES = ("navigation_events", "cookie_consents")
NAVIGATION_ACTIONS = ("erase", "anonymise")


def make_targets(rows: Iterable[dict[str, object]]) -> pa.Table:
    """Build a targets table from dicts (payload may be given as a Python object; it is JSON-encoded)."""
    encoded = [
        {**row, "payload": row.get("payload") if isinstance(row.get("payload"), str | None)
         else json.dumps(row["payload"], sort_keys=True)}
        for row in rows
    ]
    return pa.Table.from_pylist(encoded, schema=TARGET_SCHEMA)


def validate_targets(targets: pa.Table) -> pa.Table:
    """Cast to TARGET_SCHEMA and refuse unknown systems, tables, columns or actions with a clear message."""
    missing = [f.name for f in TARGET_SCHEMA if f.name not in targets.column_names]
    if missing:
        raise ValueError(f"decision targets lack column(s) {missing}")
    targets = targets.select(TARGET_SCHEMA.names).cast(TARGET_SCHEMA)
    for name in ("decision_id", "system", "table_name", "key_column", "key_value", "action"):
        if targets[name].null_count:
            raise ValueError(f"decision targets: column {name!r} has null values")
    bad_actions = set(pc.unique(targets["action"]).to_pylist()) - set(ACTIONS)
    if bad_actions:
        raise ValueError(f"decision targets: unknown action(s) {sorted(bad_actions)}; expected one of {ACTIONS}")
    combos = targets.group_by(["system", "table_name", "key_column", "action"]).aggregate([]).to_pylist()
    for combo in combos:
        _check_combo(**combo)
    return targets


def _check_combo(system: str, table_name: str, key_column: str, action: str) -> None:
    where = f"decision targets: {system}.{table_name}.{key_column} ({action})"
    if system == "navigation":
        if table_name not in NAVIGATION_TABLES:
            raise ValueError(f"{where}: navigation tables are {NAVIGATION_TABLES}")
        if action not in NAVIGATION_ACTIONS:
            raise ValueError(f"{where}: the append-only navigation logs support only {NAVIGATION_ACTIONS}")
        return
    metadata = SQL_SYSTEMS.get(system)
    if metadata is None:
        raise ValueError(f"{where}: unknown system; expected navigation or one of {sorted(SQL_SYSTEMS)}")
    table = metadata.tables.get(table_name)
    if table is None:
        raise ValueError(f"{where}: no such table in the {system} schema")
    if key_column not in table.c:
        raise ValueError(f"{where}: no such column")
    if action in ("restrict", "lift_restriction") and not all(c in table.c for c in RESTRICTION_COLUMNS):
        raise ValueError(f"{where}: the table has no restriction columns {RESTRICTION_COLUMNS}; restrict the "
                         "subject's row in the table that carries them")
    if action == "suppress" and (table_name, key_column) != (SUPPRESSION_TABLE, "contact_hash"):
        raise ValueError(f"{where}: suppress targets suppression_list.contact_hash")


def dependency_order(metadata: sa.MetaData, explicit: Sequence[str] | None = None) -> list[str]:
    """Tables children first. An explicit order (from the policy's declared references) wins; otherwise
    a column named like another table's single-column primary key (e.g. contracts.member_id) makes the
    table a child of that one, since the legacy schemas declare no foreign-key constraints."""
    names = sorted(metadata.tables)
    if explicit is not None:
        return [t for t in explicit if t in metadata.tables] + [t for t in names if t not in explicit]
    owner_of_key = {}
    for name in names:
        pk = list(metadata.tables[name].primary_key.columns)
        if len(pk) == 1:
            owner_of_key[pk[0].name] = name
    parents: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        for column in metadata.tables[name].c:
            owner = owner_of_key.get(column.name)
            if owner and owner != name:
                parents[owner].add(name)  # the owner must wait for its children
    return list(graphlib.TopologicalSorter(parents).static_order())
