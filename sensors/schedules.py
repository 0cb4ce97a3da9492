"""The nightly schedule: `nightly_job` at 01:30 Europe/Paris, for the scheduled day (`as_of`).

The run's partition is the navigation day that has just ended (`as_of` - 1 day).

01:30 because it exists exactly once every day: the DST changes skip or repeat 02:00-02:59 in Paris.

The day is passed both as the run tag `sem/as_of` and as the `as_of` config field of every op of the job
that declares one (retention assets, the ledger check), so a run is reproducible and its date is visible.
"""

import datetime as dt

import dagster as dg

from pipelines.orchestration.runs import AS_OF_TAG, NIGHTLY_JOB, PARIS
from sensors.policy_change import PREVIEW_KEY

# The preview's `as_of` is the day a proposal is previewed for (by default its effective date), not the run's
# day; it reads the run's day from the tag.
OWN_AS_OF = {PREVIEW_KEY.to_python_identifier()}


def as_of_run_config(job: dg.JobDefinition | None, as_of: dt.date) -> dict:
    """Run config setting `as_of` on every op of `job` whose config schema has that field (but OWN_AS_OF)."""
    if job is None:
        return {}
    ops = {
        node.name: {"config": {"as_of": as_of.isoformat()}}
        for node in job.all_node_defs
        if node.name not in OWN_AS_OF
        and node.config_schema and "as_of" in (getattr(node.config_schema.config_type, "fields", None) or {})
    }
    return {"ops": ops} if ops else {}


@dg.schedule(
    name="nightly_schedule",
    cron_schedule="30 1 * * *",
    execution_timezone=PARIS.key,
    job_name=NIGHTLY_JOB,
    description="Every night at 01:30 Europe/Paris: the whole pipeline, as of the scheduled day, with the "
    "navigation day that has just ended as the run's partition.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    as_of = context.scheduled_execution_time.astimezone(PARIS).date()
    job = context.repository_def.get_job(NIGHTLY_JOB) if context.repository_def else None
    return dg.RunRequest(
        run_key=f"nightly-{as_of.isoformat()}",
        run_config=as_of_run_config(job, as_of),
        tags={AS_OF_TAG: as_of.isoformat()},
        # The navigation day that has just ended; days missed or rewritten since are caught up by the same run.
        partition_key=(as_of - dt.timedelta(days=1)).isoformat(),
    )
