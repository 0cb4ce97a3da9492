"""Day partitions of the navigation logs: one partition per day file, so backfills can fan out by day."""

from __future__ import annotations

import datetime as dt

import dagster as dg

# The oldest day a navigation log may hold: audience data is kept at most 25 months, so a start well before
# the oldest event still held is enough. end_offset=1 includes the current day.
NAVIGATION_DAYS = dg.DailyPartitionsDefinition(start_date="2023-01-01", timezone="Europe/Paris", end_offset=1)


def navigation_range_tags(as_of: dt.date) -> dict[str, str]:
    """Run tags selecting every navigation day up to `as_of` (one run, the asset's single-run backfill policy)."""
    return {
        "dagster/asset_partition_range_start": NAVIGATION_DAYS.start.date().isoformat(),
        "dagster/asset_partition_range_end": as_of.isoformat(),
    }
