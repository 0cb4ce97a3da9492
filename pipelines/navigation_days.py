"""Which day a navigation file belongs to: its `events/day=YYYY-MM-DD/` folder (a Paris day)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# The day folder in a file's path; also used as a DuckDB regexp (same syntax for this pattern).
DAY_FOLDER_PATTERN = r"/day=(\d{4}-\d{2}-\d{2})/"
_DAY_FOLDER = re.compile(DAY_FOLDER_PATTERN)


def day_of_file(path: str) -> str | None:
    """The day a navigation file belongs to (its `day=` folder), or None for a file outside day folders."""
    match = _DAY_FOLDER.search(path)
    return match.group(1) if match else None


def days_of_files(paths: Iterable[str]) -> list[str]:
    return sorted({day for day in map(day_of_file, paths) if day is not None})
