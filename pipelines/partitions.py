"""Day partitions of the navigation log: one partition per `events/day=YYYY-MM-DD/` folder of the source.

Days are Paris days, so the partition of day D exists once D is over in Paris: the 01:30 nightly run
ingests the day that has just ended. Partitions start on 2023-01-01, when SEM's current web-analytics log
starts; a day folder outside the partitions (older, or a day not over yet) is still ingested, it just has
no partition to record it on.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

import dagster as dg

NAVIGATION_DAYS = dg.DailyPartitionsDefinition(
    start_date="2023-01-01", timezone="Europe/Paris", fmt="%Y-%m-%d"
)
# The day folder in a file's path; also used as a DuckDB regexp (same syntax for this pattern).
DAY_FOLDER_PATTERN = r"/day=(\d{4}-\d{2}-\d{2})/"
_DAY_FOLDER = re.compile(DAY_FOLDER_PATTERN)


def day_of_file(path: str) -> str | None:
    """The day a navigation file belongs to (its `day=` folder), or None for a file outside day folders."""
    match = _DAY_FOLDER.search(path)
    return match.group(1) if match else None


def days_of_files(paths: Iterable[str]) -> list[str]:
    return sorted({day for day in map(day_of_file, paths) if day is not None})


def current_partitions() -> frozenset[str]:
    """Every day that is a partition now (on or after the start, and already over in Paris)."""
    return frozenset(NAVIGATION_DAYS.get_partition_keys())


def nightly_partition(as_of: dt.date) -> str | None:
    """The partition a nightly run as of `as_of` ingests: the day before, when that day is a partition."""
    day = (as_of - dt.timedelta(days=1)).isoformat()
    return day if NAVIGATION_DAYS.has_partition_key(day) else None
