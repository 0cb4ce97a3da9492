"""The nightly schedule: `nightly_job` at 01:30 Europe/Paris, for the scheduled day (`as_of`); on Sunday nights
the same run with a full recompute of the retention ledger (every other night it re-evaluates only what changed).

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
SUNDAY = 6  # date.weekday()


def _fields(node: dg.OpDefinition) -> dict:
    return (getattr(node.config_schema.config_type, "fields", None) or {}) if node.config_schema else {}


# What a full recompute asks of each op that has the field: the ledger re-evaluates every record, the SQL sources
# are copied whole whatever their change markers (a row changed at a source without its marker is caught up).
FULL_RECOMPUTE_FIELDS = ("full_recompute", "full_reread")


def as_of_run_config(job: dg.JobDefinition | None, as_of: dt.date, full_recompute: bool = False) -> dict:
    """Run config setting `as_of` on every op of `job` whose config schema has that field (but OWN_AS_OF), and
    when asked, `full_recompute` / `full_reread` on the ops that have them (retention ledger, SQL ingest)."""
    if job is None:
        return {}
    ops = {}
    for node in job.all_node_defs:
        config = {"as_of": as_of.isoformat()} if node.name not in OWN_AS_OF and "as_of" in _fields(node) else {}
        if full_recompute:
            config.update({field: True for field in FULL_RECOMPUTE_FIELDS if field in _fields(node)})
        if config:
            ops[node.name] = {"config": config}
    return {"ops": ops} if ops else {}


@dg.schedule(
    name="nightly_schedule",
    cron_schedule="30 1 * * *",
    execution_timezone=PARIS.key,
    job_name=NIGHTLY_JOB,
    description="Every night at 01:30 Europe/Paris (but Sunday's, the weekly full recompute's): the whole "
    "pipeline, as of the scheduled day, with the navigation day that has just ended as the run's partition.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    if _scheduled_day(context).weekday() == SUNDAY:
        return dg.SkipReason("Sunday: weekly_full_recompute_schedule runs this night")
    return _nightly_run(context, full_recompute=False)


@dg.schedule(
    name="weekly_full_recompute_schedule",
    cron_schedule="30 1 * * 0",
    execution_timezone=PARIS.key,
    job_name=NIGHTLY_JOB,
    description="Sunday at 01:30 Europe/Paris, instead of that night's nightly run: the same run, with the SQL "
    "sources copied whole and the retention ledger recomputed for every record (the other nights read the rows "
    "changed since the watermark and re-evaluate only what changed since the last ledger): the safety net for a "
    "change a marker or a hash did not show.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def weekly_full_recompute_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return _nightly_run(context, full_recompute=True)


def _scheduled_day(context: dg.ScheduleEvaluationContext) -> dt.date:
    return context.scheduled_execution_time.astimezone(PARIS).date()


def _nightly_run(context: dg.ScheduleEvaluationContext, full_recompute: bool) -> dg.RunRequest:
    as_of = _scheduled_day(context)
    job = context.repository_def.get_job(NIGHTLY_JOB) if context.repository_def else None
    return dg.RunRequest(
        # the same key for both schedules: Sunday's night runs once, whichever ticks first
        run_key=f"nightly-{as_of.isoformat()}",
        run_config=as_of_run_config(job, as_of, full_recompute),
        tags={AS_OF_TAG: as_of.isoformat()},
        # The navigation day that has just ended; days missed or rewritten since are caught up by the same run.
        partition_key=(as_of - dt.timedelta(days=1)).isoformat(),
    )
