"""Day partitions of the navigation log: one partition per `events/day=YYYY-MM-DD/` folder of the source.

Days are Paris days, so the partition of day D exists once D is over in Paris: the 01:30 nightly run
ingests the day that has just ended. Partitions start on 2023-01-01, when SEM's current web-analytics log
starts; a day folder outside the partitions (older, or a day not over yet) is still ingested, it just has
no partition to record it on. Which day a file belongs to is the core's (pipelines.navigation_days).
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from pipelines.orchestration.runs import PARIS

NAVIGATION_DAYS = dg.DailyPartitionsDefinition(
    start_date="2023-01-01", timezone=PARIS.key, fmt="%Y-%m-%d"
)


def current_partitions() -> frozenset[str]:
    """Every day that is a partition now (on or after the start, and already over in Paris)."""
    return frozenset(NAVIGATION_DAYS.get_partition_keys())


def nightly_partition(as_of: dt.date) -> str | None:
    """The partition a nightly run as of `as_of` ingests: the day before, when that day is a partition."""
    day = (as_of - dt.timedelta(days=1)).isoformat()
    return day if NAVIGATION_DAYS.has_partition_key(day) else None
