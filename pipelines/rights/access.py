"""Access requests (art. 15): one export bundle per request with everything held on the person.

`<exports_dir>/<request_id>/` holds one CSV per table and location (`source.members.contracts.csv`,
`warehouse.raw.contracts.csv`, `warehouse.archive.accounting_entries.csv`, ...) and `bundle.json` with the
same rows plus, per table, the purposes (legal basis, retention, end action), the recipients and the
transfers that apply, read from the policy. The folder is written under a temporary name and renamed, so
a reader never sees half a bundle.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa

from pipelines.duck import connect_memory, table_exists
from pipelines.policy.models import Policy
from pipelines.private import open_private, private_dir
from pipelines.rights.intake import column_type
from pipelines.rights.scope import SubjectTable, portable_columns, subject_tables
from pipelines.sources.schema import SQL_SYSTEMS
from pipelines.sqltext import ident

WAREHOUSE_SCHEMAS = ("raw", "archive")
NAVIGATION_DIRS = {"navigation_events": "events", "cookie_consents": "consents"}
KEY = "_key"  # the key column as text, to split the rows read for every request between them


def _sql_rows(engine: sa.Engine, system: str, table: str, key_column: str, keys: list[str]) -> pa.Table:
    """The rows whose key is one of `keys`, compared in the column's own type: a source can use its index on
    the column (a text cast of every row's key could not)."""
    source = SQL_SYSTEMS[system].tables[table]
    column = source.c[key_column]
    typed = sorted({_typed(column, k) for k in keys} - {None})
    with engine.connect() as con:
        result = con.execute(sa.select(source, sa.cast(column, sa.Text).label(KEY)).where(column.in_(typed)))
        return pa.Table.from_pylist([dict(r) for r in result.mappings()])


def _typed(column: sa.Column, key: str) -> object:
    """`key` (text) as the column's Python type; None when it cannot be one (then it matches no row)."""
    try:
        return column.type.python_type(key)
    except (ValueError, TypeError, NotImplementedError):
        return None


def _navigation_files(con: duckdb.DuckDBPyConnection, navigation_dir: Path, st: SubjectTable, keys: list[str],
                      copied: pa.Table | None) -> list[str]:
    """The log files that can hold rows of `keys`, out of the whole log (tens of millions of page views at a
    million members): those the warehouse copied such rows from (`copied`: raw.<table>'s rows of the keys,
    with their `source_file`), those it set such a malformed row aside from, and every file it has not copied
    as it is now (new, rewritten or unreadable since the last ingest). Every file while retention still owes
    this log a push-back: the warehouse has dropped rows that the files still hold."""
    files = {str(f): f.stat() for f in sorted((navigation_dir / NAVIGATION_DIRS[st.table_name]).rglob("*.parquet"))}
    owed = table_exists(con, "retention", "pushback_targets") and con.execute(
        "SELECT count(*) FROM retention.pushback_targets WHERE system = 'navigation' AND table_name = ?",
        [st.table_name]).fetchall()[0][0]
    if owed or not table_exists(con, "raw", "ingested_files"):
        return list(files)
    copied_as_is = {path: (size, mtime) for path, size, mtime in con.execute(
        "SELECT path, size, mtime_ns FROM raw.ingested_files WHERE list_contains(?, path)", [list(files)]).fetchall()}
    wanted = {p for p, stat in files.items() if copied_as_is.get(p) != (stat.st_size, stat.st_mtime_ns)}
    if copied is not None and "source_file" in copied.column_names:
        wanted |= set(pc.unique(copied["source_file"]).drop_null().to_pylist())
    if table_exists(con, "raw", "quarantine"):
        wanted |= {p for (p,) in con.execute(
            "SELECT DISTINCT record->>'source_file' FROM raw.quarantine WHERE system = 'navigation' "
            "AND table_name = ? AND list_contains(?, record->>?)", [st.table_name, keys, st.key_column]).fetchall()}
    return sorted(wanted & set(files))


def _navigation_rows(navigation_dir: Path | None, files: list[str], key_column: str, keys: list[str]
                     ) -> pa.Table | None:
    if navigation_dir is None or not files:
        return None
    with connect_memory() as con:
        return con.sql(
            f"SELECT *, CAST({ident(key_column)} AS VARCHAR) AS {KEY} FROM read_parquet($files, "
            f"hive_partitioning = false) WHERE CAST({ident(key_column)} AS VARCHAR) IN (SELECT unnest($keys))",
            params={"files": files, "keys": keys}).to_arrow_table()


@dataclass(frozen=True)
class Held:
    """Every row the sources and the warehouse hold on the people of a batch of requests, read once per table and
    location for all of them (a request at a time scanned every navigation file again for each person):
    (subject table, location) -> rows with their key as text in `_key`; only what some row was found for."""

    rows: dict[tuple[SubjectTable, str], pa.Table]


def read_held(con: duckdb.DuckDBPyConnection, policy: Policy, nodes: Iterable[tuple[str, str]], *,
              engines: dict[str, sa.Engine | None], navigation_dir: Path | None) -> Held:
    """The rows of every subject table whose key is one of `nodes` (node_type, node_value), at the source and
    in the warehouse."""
    by_type: dict[str, set[str]] = {}
    for node_type, value in nodes:
        by_type.setdefault(node_type, set()).add(value)
    rows: dict[tuple[SubjectTable, str], pa.Table] = {}
    for st in subject_tables(policy):
        keys = sorted(by_type.get(st.node_type, ()))
        if not keys:
            continue
        located: dict[str, pa.Table | None] = {}
        for schema in WAREHOUSE_SCHEMAS:
            if table_exists(con, schema, st.table_name):
                typed = column_type(con, schema, st.table_name, st.key_column)
                located[f"warehouse.{schema}.{st.table_name}"] = con.sql(
                    f"SELECT *, CAST({ident(st.key_column)} AS VARCHAR) AS {KEY} FROM {schema}.{ident(st.table_name)} "
                    f"WHERE {ident(st.key_column)} IN (SELECT TRY_CAST(unnest($keys) AS {typed}))",
                    params={"keys": keys}).to_arrow_table()
        source = f"source.{st.system}.{st.table_name}"
        if st.system in SQL_SYSTEMS:
            engine = engines.get(st.system)
            located[source] = None if engine is None else _sql_rows(engine, st.system, st.table_name,
                                                                     st.key_column, keys)
        elif navigation_dir is not None:
            files = _navigation_files(con, navigation_dir, st, keys, located.get(f"warehouse.raw.{st.table_name}"))
            located[source] = _navigation_rows(navigation_dir, files, st.key_column, keys)
        rows |= {(st, location): found for location, found in located.items()
                 if found is not None and found.num_rows}
    return Held(rows)


def _policy_notes(policy: Policy, table: str) -> dict[str, object]:
    ds = policy.dataset(table)
    purposes = []
    for key in ds.purposes:
        purpose, rule = policy.purpose(key), policy.rule_for(key, table)
        purposes.append({"purpose": key, "name": purpose.name, "legal_basis": purpose.legal_basis.article_6,
                         "active": rule.active, "clock": rule.clock, "archive": rule.archive,
                         "end_action": rule.end_action, "legal_source": rule.legal_source})
    recipients = [{"recipient": r.name, "kind": r.kind, "country": r.country,
                   "transfer": r.transfer.mechanism if r.transfer else None,
                   "columns": sorted({c for d in r.receives if d.dataset == table for c in d.columns})}
                  for r in policy.recipients if any(d.dataset == table for d in r.receives)]
    return {"description": ds.description, "purposes": purposes, "recipients": recipients}


def write_access_bundle(policy: Policy, held: Held, *, request_id: int, subject_token: str,
                        nodes: list[tuple[str, str]], exports_dir: Path, portability: bool = False) -> Path:
    """Write the bundle of one request from `held` (read_held over its `nodes`, the person's (node_type,
    node_value) identity links, and maybe other people's). `portability` (art. 20): only what the person
    provided, per source (no warehouse copy), each table cut to its portable columns
    (pipelines.rights.scope.portable_columns), as JSON and CSV."""
    by_type: dict[str, list[str]] = {}
    for node_type, value in nodes:
        by_type.setdefault(node_type, []).append(value)
    final = exports_dir / str(request_id)
    work = exports_dir / f".{request_id}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    private_dir(exports_dir)
    private_dir(work)
    found: dict[str, list[pa.Table]] = {}
    table_of: dict[str, str] = {}
    for (st, location), held_rows in held.rows.items():
        keys = by_type.get(st.node_type, [])
        if not keys or (portability and not location.startswith("source.")):
            continue
        rows = held_rows.filter(pc.is_in(held_rows[KEY], value_set=pa.array(keys, pa.string()))).drop_columns([KEY])
        if portability:
            rows = rows.select([c for c in portable_columns(policy, st.table_name) if c in rows.column_names])
        if rows.num_rows:
            found.setdefault(location, []).append(rows)
            table_of[location] = st.table_name
    tables: dict[str, dict[str, object]] = {}
    for location, parts in found.items():
        rows = pa.concat_tables(parts, promote_options="permissive")
        with open_private(work / f"{location}.csv", "wb") as fh:
            pacsv.write_csv(rows, fh)
        tables[location] = {"rows": rows.to_pylist(), **_policy_notes(policy, table_of[location])}
    bundle = {
        "request_id": request_id,
        "kind": "portability (art. 20)" if portability else "access (art. 15)",
        "subject_token": subject_token,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "controller": policy.purposes_file.controller.name,
        "rights_contact": policy.purposes_file.controller.rights_contact,
        "identity_links": [{"node_type": t, "node_value": v} for t, v in nodes],
        "tables": tables,
    }
    with open_private(work / "bundle.json") as fh:
        fh.write(json.dumps(bundle, indent=1, default=str, ensure_ascii=False))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    return final
