"""Run-failure sensor: every failed run leaves an alert record for the on-call data engineer.

One JSON line per failed run in `<reports_dir>/alerts.jsonl`: run id, job, time, the error classes and the
failed steps. No message text and no data: an exception message can quote a value, a class name cannot.
"""

import datetime as dt
import fcntl
import json
from pathlib import Path

import dagster as dg

from pipelines.orchestration.resources import ComplianceStoreResource
from pipelines.private import open_private

ALERTS_FILE = "alerts.jsonl"


def _classes(error: object) -> list[str]:
    """Class names along an error's cause chain (Dagster wraps the user's exception in its own)."""
    names = []
    while error is not None:
        names.append(error.cls_name)
        error = getattr(error, "cause", None)
    return names


def alert_record(context: dg.RunFailureSensorContext) -> dict[str, object]:
    """The alert for a failed run: identifiers of the run and the classes of what broke, no data."""
    run_error = context.failure_event.event_specific_data
    error_classes = _classes(getattr(run_error, "error", None))
    failed_steps = []
    for event in context.get_step_failure_events():
        failed_steps.append(event.step_key)
        error_classes += _classes(getattr(event.event_specific_data, "error", None))
    return {
        "run_id": context.dagster_run.run_id,
        "job": context.dagster_run.job_name,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "error_classes": sorted(set(error_classes)),
        "failed_steps": sorted(failed_steps),
    }


def append_alert(path: Path, record: dict[str, object]) -> None:
    """Append one line under an exclusive lock (sensors of several code locations may share the file)."""
    with open_private(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(record, sort_keys=True) + "\n")


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    description="Writes an alert record (run id, job, time, error classes; no data) for every failed run.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, compliance: ComplianceStoreResource) -> None:
    record = alert_record(context)
    append_alert(compliance.reports_dir / ALERTS_FILE, record)
    context.log.info(f"alert recorded for failed run {record['run_id']} of {record['job']}")
