"""The short summary `make demo` prints: what is in the warehouse and the analytics file, and where to look."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb

from pipelines.orchestration import settings
from pipelines.sqltext import qualified


def _table_counts(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    with duckdb.connect(str(path), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' ORDER BY table_schema, table_name"
        ).fetchall()
        return [
            (f"{schema}.{name}", con.execute(f"SELECT count(*) FROM {qualified(schema, name)}").fetchone()[0])
            for schema, name in tables
        ]


def _print_counts(title: str, path: Path) -> None:
    counts = _table_counts(path)
    print(f"\n{title} — {path}")
    if not counts:
        print("  (not produced)")
    by_schema: dict[str, list[str]] = {}
    for name, rows in counts:
        schema, table = name.split(".", 1)
        by_schema.setdefault(schema, []).append(f"{table} {rows:,}")
    for schema, items in by_schema.items():
        print(f"  {schema:<10} " + ", ".join(items))


def _cut(text: str, width: int = 60) -> str:
    """A metadata value on one line of the summary; a cut one ends in "…" (so "is off by …" does not read as
    an empty figure), the UI shows it whole."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_run(result: dg.ExecuteInProcessResult, seconds: float) -> None:
    """The run in a few lines: outcome, steps, navigation days ingested, and every check that did not pass."""
    steps = [e for e in result.all_events if e.is_step_success]
    print(f"\nRun {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'} in {seconds:.0f}s, "
          f"{len(steps)} steps")
    days = [
        e.materialization for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["raw", "navigation_events"]) and e.materialization.partition
    ]
    if days:
        print(f"  navigation days ingested: {len(days)} (run's day {result.dagster_run.tags.get('dagster/partition')}, "
              f"{sum(d.metadata['ingested_as'].value == 'caught up' for d in days if 'ingested_as' in d.metadata)} "
              "caught up)")
    evaluations = result.get_asset_check_evaluations()
    failed = [e for e in evaluations if not e.passed]
    print(f"  checks: {len(evaluations) - len(failed)} passed, {len(failed)} not passed")
    for e in failed:
        # Check metadata carries counts and ids only (never an identifier), so it can be shown here.
        details = ", ".join(f"{k}={_cut(str(v.value))}" for k, v in list(e.metadata.items())[:3])
        print(f"    {e.severity.value} {'/'.join(e.asset_key.path)} · {e.check_name}: {details}")


def print_summary() -> None:
    _print_counts("Warehouse (pipeline and authorised roles only)", settings.warehouse_path())
    _print_counts("Analytics file (what analysts query)", settings.analytics_path())
    print("\nCompliance outputs:")
    for folder in (settings.reports_dir(), settings.outbox_dir(), settings.exports_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
        print(f"  {folder}: {len(files)} file(s)" + "".join(f"\n    {p.relative_to(folder)}" for p in files[:8]))
    preview = settings.reports_dir() / "policy_change_preview.md"
    if preview.exists():
        print(f"\nPolicy-change preview ({preview}):")
        for line in preview.read_text().splitlines()[2:14]:
            print(f"  {line}")
    register = settings.reports_dir() / "processing_register.md"
    if register.exists():
        purposes = sum(line.startswith("## ") for line in register.read_text().splitlines())
        print(f"\nProcessing register (GDPR art. 30): {register} ({purposes} sections)")
    audit = settings.audit_log_path()
    if audit.exists():
        entries = sum(1 for _ in audit.open())
        print(f"\nAudit log {audit}: {entries} chained entries "
              "(verify: .venv/bin/python -m pipelines.orchestration.audit_cli verify)")
    print(
        "\nNext: `make dev` opens the Dagster UI at http://127.0.0.1:3000 (assets, checks, runs, schedules, sensors);"
        f"\nanalysts open {settings.analytics_path()} with duckdb (read-only)."
    )
