"""Re-read what push-back changed, so one nightly run ends in the state the next run would start from.

Push-back changes the source systems after they were copied into `raw`. Re-ingesting the tables a run's
decisions touched (incrementally where the table has a change marker: push-back sets it on every row it updates
and the key-only read finds the rows it erased, so only those rows are read again), then re-deriving the identity
graph (when one of its input tables was touched) and the retention ledger from them, makes the warehouse a fixed
point: a second run with the same `as_of` finds nothing to do and changes nothing. A caller after which the
ledger is built anyway in the same run (the rights stage of the nightly, before the retention ledger) leaves
the ledger to it: built once instead of twice a night.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import duckdb
import sqlalchemy as sa

from pipelines.identity import INPUT_TABLES, resolve_identities
from pipelines.ingest import change_marker, ingest_sql_table, quarantine_fields
from pipelines.navigation import NAVIGATION_TABLES, ingest_navigation_table
from pipelines.policy.models import Policy
from pipelines.retention.ledger import SLICE_RECORDS, build_ledger
from pipelines.sources.schema import SQL_SYSTEMS


def ingest_all(con: duckdb.DuckDBPyConnection, engines: dict[str, sa.Engine], navigation_dir: Path,
               policy: Policy, *, full: bool = False) -> None:
    """Every source table into `raw` (what the `sources` assets do, for tests, the benchmark and scripts); the
    policy says what a quarantined row keeps and which tables are read incrementally (`full`: none)."""
    for system, metadata in SQL_SYSTEMS.items():
        for table in metadata.sorted_tables:
            ingest_sql_table(con, engines[system], system, table, quarantine_fields(policy, table.name),
                             marker=change_marker(policy, table.name), full=full)
    for table in NAVIGATION_TABLES:
        ingest_navigation_table(con, navigation_dir, table, fields=quarantine_fields(policy, table))


def refresh_from_sources(
    con: duckdb.DuckDBPyConnection,
    touched: Iterable[tuple[str, str]],
    *,
    engines: dict[str, sa.Engine],
    navigation_dir: Path,
    policy: Policy,
    as_of: dt.date,
    ledger: bool = True,
    ledger_slice_records: int = SLICE_RECORDS,
) -> list[str]:
    """Re-ingest the touched (system, table) pairs (what they read adds to what the raw checks look at: the run's
    own load, when the checks run after this), then rebuild identity links (if one of their input tables
    is among them) and, unless `ledger` is false, the ledger (in slices of `ledger_slice_records` records).

    Returns the tables re-read (sorted); does nothing when nothing was touched.
    """
    touched = sorted(set(touched))
    if not touched:
        return []
    for system, table in touched:
        fields = quarantine_fields(policy, table)
        if system == "navigation":
            ingest_navigation_table(con, navigation_dir, table, fields=fields, add_to_scope=True)
        else:
            ingest_sql_table(con, engines[system], system, SQL_SYSTEMS[system].tables[table], fields,
                             marker=change_marker(policy, table), add_to_scope=True)
    if INPUT_TABLES & {table for _, table in touched}:
        resolve_identities(con, policy.datasets_file.identity)
    if ledger:
        build_ledger(con, policy, as_of, slice_records=ledger_slice_records)
    return [table for _, table in touched]
