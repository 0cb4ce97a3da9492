"""What every run shares: its day (`as_of`, from config, the `sem/as_of` tag, else today in Paris), the time
zone of SEM's days, and the job names the schedules and sensors start."""

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

PARIS = ZoneInfo("Europe/Paris")
AS_OF_TAG = "sem/as_of"
NIGHTLY_JOB = "nightly_job"
RIGHTS_JOB = "rights_job"
POLICY_PREVIEW_JOB = "policy_preview_job"
# The policy-change preview: run by POLICY_PREVIEW_JOB when a policy file changes, never by the nightly.
PREVIEW_KEY = dg.AssetKey(["compliance", "policy_change_preview"])


class RetentionConfig(dg.Config):
    """The day retention is evaluated for (ISO date); empty = the run's `sem/as_of` tag, else today (Paris)."""

    as_of: str | None = None


class LedgerConfig(RetentionConfig):
    """`full_recompute`: the ledger re-evaluates every record, not only what changed (the weekly schedule)."""

    full_recompute: bool = False


def as_of_date(value: str | None, tags: dict[str, str]) -> dt.date:
    value = value or tags.get(AS_OF_TAG)
    return dt.date.fromisoformat(value) if value else dt.datetime.now(PARIS).date()
