"""A one-step job holding the `warehouse` pool like the nightly's steps, for the dead-run tests.

With run tag `hold=<marker path>` the step touches the marker and waits to be killed; otherwise it ends at
once. It runs on the project's executor (in process, dead runs cleared before the first step) and carries the
nightly's run-queue tag; its schedule fires every minute, as the nightly's fires every night.
"""

import time
from pathlib import Path

import dagster as dg

from pipelines.orchestration.jobs import RUN_EXECUTOR


@dg.op(pool="warehouse")
def hold_the_warehouse(context: dg.OpExecutionContext) -> None:
    marker = context.run.tags.get("hold")
    if marker:
        Path(marker).touch()
        while True:
            time.sleep(60)


@dg.job(executor_def=RUN_EXECUTOR, tags={"sem/warehouse-writer": "true"})
def warehouse_writer() -> None:
    hold_the_warehouse()


every_minute = dg.ScheduleDefinition(
    job=warehouse_writer, cron_schedule="* * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)

defs = dg.Definitions(jobs=[warehouse_writer], schedules=[every_minute])
