"""The one definition of "until" in retention: whole days (C. civ. 2229, prescription runs to the end of its day).

A period of P from a clock event ending on day D = date(event + P) keeps the data through D and lets it go on
D + 1. The ledger, the policy preview, the register and the checks all use these two helpers, so "active until
2026-10-31" always means "still kept on 2026-10-31, gone on 2026-11-01".
"""

from __future__ import annotations

from pipelines.policy.models import sql_interval

# Said in the register and in reasons: the last day named is still a day of retention.
WORDING_FR = "le dernier jour de la durée est conservé en entier; l'effacement a lieu le lendemain"


def last_day_sql(clock: str, *durations: str) -> str:
    """SQL DATE: the last day the data is kept, for the clock expression `clock` and the durations (ISO-8601)."""
    shifted = " + ".join([f"({clock})", *(sql_interval(d) for d in durations)])
    return f"CAST({shifted} AS DATE)"


def kept_on_sql(as_of: str, last_day: str) -> str:
    """SQL: true while the day `as_of` is within the period whose last day is `last_day`."""
    return f"(CAST({as_of} AS DATE) <= {last_day})"

