"""Retention at scale: the ledger for an `as_of`, then its application (push-back to the sources included).

Runs on the sources and warehouse the generator section left behind, as the nightly run does after ingest
and identity: build the ledger from policies/, push the decisions back to the SQLite / Parquet sources,
carry them out in the warehouse, then re-read what push-back changed.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from pipelines.audit import AuditLog
from pipelines.context import CoreContext, Paths
from pipelines.duck import connect_warehouse
from pipelines.orchestration import settings
from pipelines.orchestration.resources import SqlSourceResource
from pipelines.policy.load import load_policy
from pipelines.refresh import refresh_from_sources
from pipelines.retention.apply import apply_retention
from pipelines.retention.ledger import build_ledger


def bench_retention(workdir: Path, as_of: dt.date) -> dict:
    sources = workdir / "sources"
    policy = load_policy(settings.policies_dir())
    engines = {
        system: SqlSourceResource(system=system, url=f"sqlite:///{sources / (system + '.db')}").engine()
        for system in ("members", "prospects")
    }
    with connect_warehouse(workdir / "warehouse.duckdb") as con:
        started = time.perf_counter()
        build_ledger(con, policy, as_of)
        ledgered = time.perf_counter() - started
        ledger_rows = con.execute("SELECT count(*) FROM retention.ledger").fetchall()[0][0]
        started = time.perf_counter()
        ctx = CoreContext(policy=policy, keys=settings.key_provider(),
                          audit=AuditLog(workdir / "audit" / "audit.jsonl", actor="bench"),
                          paths=Paths(navigation=sources / "navigation", outbox=workdir / "outbox",
                                      exports=workdir / "exports"))
        outcome = apply_retention(con, ctx, as_of, members=engines["members"], prospects=engines["prospects"])
        applied = time.perf_counter() - started
        started = time.perf_counter()
        reread = refresh_from_sources(con, outcome.touched, engines=engines, navigation_dir=sources / "navigation",
                                      policy=policy, as_of=as_of)
        refreshed = time.perf_counter() - started
    return {
        "ledger_rows": ledger_rows,
        "ledger_seconds": round(ledgered, 1),
        "source_rows_targeted": outcome.source_rows,
        "decisions_confirmed": outcome.decisions_confirmed,
        "archived_rows": outcome.warehouse.total("archive"),
        "erased_rows": outcome.warehouse.total("erase"),
        "anonymised_rows": outcome.warehouse.total("anonymise"),
        "apply_seconds": round(applied, 1),
        "tables_reread": len(reread),
        "reread_seconds": round(refreshed, 1),
    }
