"""The "decision targets" relation that callers hand to push-back, its validation and the deletion order.

One row per (decision, source row key): a decision (id chosen by the caller, stable across re-runs) may
touch several tables and several keys; the source records it as applied once, atomically.

Push-back reads the targets where they are, through DuckDB (`prepare`, `TargetSet`): an Arrow table the caller
built, or a table of the warehouse. A first night at 1,000,000 members owes tens of millions of targets: held as one
Arrow table they did not fit in memory; DuckDB streams them and spills what it must.
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from pipelines.sources.schema import (
    COOKIE_CONSENT_SCHEMA,
    NAVIGATION_EVENT_SCHEMA,
    RESTRICTION_COLUMNS,
    SQL_SYSTEMS,
)
from pipelines.sqltext import all_of, ident, list_literal, literal

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


NAVIGATION_SCHEMAS = {"navigation_events": NAVIGATION_EVENT_SCHEMA, "cookie_consents": COOKIE_CONSENT_SCHEMA}
PREPARED = "_pushback_targets"  # temp view: the validated targets, with `columns_key`
_PAYLOAD_COLUMNS = "_pushback_payload_columns"  # temp table: (action, payload) -> columns_key
# What an anonymise or rectify payload names, as the sorted columns joined by ','.
COLUMNS_OF = {"anonymise": "list_sort(CAST(CAST(payload AS JSON) AS VARCHAR[]))",
              "rectify": "list_sort(json_keys(CAST(payload AS JSON)))"}


def prepare(con: duckdb.DuckDBPyConnection, relation: str) -> None:
    """Validate the targets of `relation` (SQL text naming a table or view `con` reads): every column of
    TARGET_SCHEMA, no null but the payload, known systems, tables, columns and actions (a clear message for the
    first that is not). Then define the temp view PREPARED over them, with `columns_key`: the sorted columns an
    anonymise/rectify payload names. Each check reads the distinct combinations, never the rows into Python; the
    columns are worked out once per distinct payload."""
    names = {r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE SELECT * FROM {relation})").fetchall()}
    missing = [f.name for f in TARGET_SCHEMA if f.name not in names]
    if missing:
        raise ValueError(f"decision targets lack column(s) {missing}")
    typed = ", ".join(f"CAST({ident(f.name)} AS VARCHAR) AS {ident(f.name)}" for f in TARGET_SCHEMA)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _pushback_typed AS SELECT {typed} FROM {relation}")
    required = ("decision_id", "system", "table_name", "key_column", "key_value", "action")
    nulls = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {ident(c)} IS NULL)" for c in required)
                        + " FROM _pushback_typed").fetchall()[0]
    for name, n in zip(required, nulls, strict=True):
        if n:
            raise ValueError(f"decision targets: column {name!r} has null values")
    combos = con.execute("SELECT DISTINCT system, table_name, key_column, action, payload FROM _pushback_typed "
                         "ORDER BY ALL").fetchall()
    bad_actions = {c[3] for c in combos} - set(ACTIONS)
    if bad_actions:
        raise ValueError(f"decision targets: unknown action(s) {sorted(bad_actions)}; expected one of {ACTIONS}")
    for combo in sorted({c[:4] for c in combos}):
        _check_combo(*combo)
    named = [f"SELECT action, payload, array_to_string({columns}, ',') AS columns_key FROM (SELECT DISTINCT "
             f"action, payload FROM _pushback_typed WHERE action = {literal(action)})"
             for action, columns in COLUMNS_OF.items()]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_PAYLOAD_COLUMNS} AS {' UNION ALL '.join(named)}")
    keyed = dict(((a, p), k) for a, p, k in con.execute(f"SELECT * FROM {_PAYLOAD_COLUMNS}").fetchall())
    for system, table_name, _, action, payload in combos:
        _check_columns(system, table_name, action, keyed.get((action, payload)) or "")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {PREPARED} AS SELECT t.*, coalesce(p.columns_key, '') AS columns_key "
                f"FROM _pushback_typed t LEFT JOIN {_PAYLOAD_COLUMNS} p ON p.action = t.action "
                "AND p.payload = t.payload")


def _check_columns(system: str, table_name: str, action: str, columns_key: str) -> None:
    if action not in ("anonymise", "rectify"):
        return
    names = set(NAVIGATION_SCHEMAS[table_name].names) if system == "navigation" \
        else set(SQL_SYSTEMS[system].tables[table_name].c.keys())
    unknown = [c for c in columns_key.split(",") if c not in names]
    if not columns_key or unknown:
        raise ValueError(f"decision targets: {action} on {system}.{table_name} names no or unknown columns "
                         f"{unknown}")


@dataclass(frozen=True)
class TargetSet:
    """Prepared targets (the view PREPARED on `con`) meeting `where`, SQL built with pipelines.sqltext."""

    con: duckdb.DuckDBPyConnection
    where: str = "true"

    def narrowed(self, **equal: str) -> TargetSet:
        """The targets whose columns have these values."""
        return TargetSet(self.con, all_of([self.where, *(f"{ident(c)} = {literal(v)}" for c, v in equal.items())]))

    def of_decisions(self, decision_ids: Iterable[str], *, keep: bool = True) -> TargetSet:
        """The targets of these decisions (`keep=False`: of every other one)."""
        ids = sorted(decision_ids)
        test = f"list_contains({list_literal(ids)}::VARCHAR[], decision_id)" if ids else "false"
        return TargetSet(self.con, all_of([self.where, test if keep else f"NOT {test}"]))

    def select(self, columns: str = "*") -> str:
        return f"SELECT {columns} FROM {PREPARED} WHERE {self.where}"

    def distinct(self, columns: Sequence[str]) -> list[dict[str, str]]:
        names = ", ".join(ident(c) for c in columns)
        rows = self.con.execute(f"SELECT DISTINCT {names} FROM {PREPARED} WHERE {self.where} ORDER BY ALL").fetchall()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    def decision_ids(self) -> list[str]:
        return [d["decision_id"] for d in self.distinct(["decision_id"])]

    def count(self) -> int:
        return self.con.execute(f"SELECT count(*) FROM {PREPARED} WHERE {self.where}").fetchall()[0][0]

    def batches(self, columns: Sequence[str], rows: int) -> pa.RecordBatchReader:
        """The targets' `columns`, `rows` at a time (read each batch before the next query on `con`)."""
        return self.con.sql(self.select(", ".join(ident(c) for c in columns))).to_arrow_reader(rows)


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
