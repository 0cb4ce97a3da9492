"""Ingest of the navigation log (Parquet): the events, one folder per day, and the cookie-consent log.

Every ingest brings the warehouse in line with *all* the files of the log (new, rewritten and removed
files, by the file manifest), whichever day a run is for: retention and erasure work from the warehouse
copy, so a day file the warehouse never saw would be a day nobody erases. A run for given days also
re-reads those days' files even when unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.duck import table_exists
from pipelines.ingest import IngestResult, QuarantineFields, ingest_parquet, navigation_columns
from pipelines.navigation_days import DAY_FOLDER_PATTERN, days_of_files
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, NAVIGATION_EVENT_SCHEMA, NAVIGATION_REQUIRED
from pipelines.sqltext import literal

NAVIGATION_TABLES = {
    "navigation_events": (NAVIGATION_EVENT_SCHEMA, list(NAVIGATION_REQUIRED), "events"),
    "cookie_consents": (COOKIE_CONSENT_SCHEMA, ["consent_id", "visitor_id", "consented_at"], "consents"),
}


@dataclass(frozen=True)
class DayCounts:
    """What the warehouse holds for one day of events after an ingest."""

    day: str
    rows: int
    quarantined: int
    has_file: bool


def ingest_navigation_table(
    con: duckdb.DuckDBPyConnection, navigation_dir: Path, table: str, reread_days: Collection[str] = (),
    fields: QuarantineFields | None = None, add_to_scope: bool = False,
) -> IngestResult:
    """Bring `raw.<table>` in line with the log's files; the files of `reread_days` are read again; `fields`:
    what a quarantined row keeps; `add_to_scope`: see pipelines.ingest.load_typed."""
    schema, required, folder = NAVIGATION_TABLES[table]
    root = navigation_dir / folder
    reread = [str(f) for day in reread_days for f in sorted((root / f"day={day}").glob("*.parquet"))]
    return ingest_parquet(
        con, root, table=table, columns=navigation_columns(schema), required=required, reread=reread, fields=fields,
        add_to_scope=add_to_scope,
    )


Stat = tuple[int, int]  # a file's size and modification time (ns): changed by any rewrite or append


def mark_mirrored(con: duckdb.DuckDBPyConnection, rewritten: Mapping[str, tuple[Stat, Stat]],
                  skip: Collection[str] = ()) -> list[str]:
    """Record as ingested, at their new size and time, the files push-back rewrote for decisions the warehouse
    carried out first (the retention stage's): their rows in `raw` already are the rewritten rows, so the re-read
    after push-back and the next ingest leave them be. `rewritten` maps a file to its (size, time) just before the
    rewrite read it and after. Only a file the manifest had as it was just before the rewrite qualifies (nothing
    came at the source since it was ingested), and none of `skip`: files with a quarantined row the decisions
    changed, whose quarantine copy only a re-read makes again as push-back left it. Returns the files recorded."""
    chosen = {path: stats for path, stats in rewritten.items() if path not in skip}
    if not chosen or not table_exists(con, "raw", "ingested_files"):
        return []
    con.register("_rewritten", pa.table({
        "path": list(chosen),
        "size_before": [before[0] for before, _ in chosen.values()],
        "mtime_before": [before[1] for before, _ in chosen.values()],
        "size_after": [after[0] for _, after in chosen.values()],
        "mtime_after": [after[1] for _, after in chosen.values()],
    }))
    try:
        return sorted(path for (path,) in con.execute(
            "UPDATE raw.ingested_files f SET size = r.size_after, mtime_ns = r.mtime_after, ingested_at = now() "
            "FROM _rewritten r WHERE f.path = r.path AND f.size = r.size_before AND f.mtime_ns = r.mtime_before "
            "RETURNING f.path").fetchall())
    finally:
        con.unregister("_rewritten")


def _day_of(path_sql: str) -> str:
    return f"regexp_extract({path_sql}, {literal(DAY_FOLDER_PATTERN)}, 1)"


def day_counts(con: duckdb.DuckDBPyConnection, days: Collection[str]) -> dict[str, DayCounts]:
    """Rows and quarantined rows of `raw.navigation_events` per day, for the given days."""
    days = sorted(days)
    quarantined_day = _day_of("record->>'source_file'")
    rows = dict(con.execute(
        f"SELECT {_day_of('source_file')} AS day, count(*) FROM raw.navigation_events "
        "WHERE list_contains(?, day) GROUP BY day",
        [days],
    ).fetchall())
    quarantined = dict(con.execute(
        f"SELECT {quarantined_day} AS day, count(*) FROM raw.quarantine "
        "WHERE system = 'navigation' AND table_name = 'navigation_events' AND list_contains(?, day) GROUP BY day",
        [days],
    ).fetchall())
    files = set(days_of_files(
        p for (p,) in con.execute("SELECT path FROM raw.ingested_files").fetchall()
    ))
    return {
        day: DayCounts(day, rows.get(day, 0), quarantined.get(day, 0), day in files) for day in days
    }
