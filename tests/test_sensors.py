"""Schedule and sensors evaluated the way the daemon does: nightly as-of date, policy-change preview, alerts."""

import datetime as dt
import json

import dagster as dg
import pytest
from dagster._utils.schedules import cron_string_iterator

from assets.quality_checks import ledger_check
from assets.retention import LEDGER_KEY
from pipelines.orchestration.partitions import NAVIGATION_DAYS
from pipelines.orchestration.resources import ComplianceStoreResource, WarehouseResource
from pipelines.orchestration.runs import AS_OF_TAG, PARIS
from sensors.run_failure import ALERTS_FILE, run_failure_alert_sensor
from sensors.schedules import NIGHTLY_JOB, nightly_schedule


def _repository() -> dg.RepositoryDefinition:
    """The real schedule; a nightly job with the day-partitioned navigation asset and an op taking `as_of`."""
    @dg.asset(key=["raw", "navigation_events"], partitions_def=NAVIGATION_DAYS)
    def navigation_events() -> None: ...

    @dg.asset(key=LEDGER_KEY, deps=[navigation_events])
    def ledger() -> None: ...

    defs = dg.Definitions(
        assets=[navigation_events, ledger],
        asset_checks=[ledger_check],
        jobs=[dg.define_asset_job(NIGHTLY_JOB, selection=dg.AssetSelection.all())],
        schedules=[nightly_schedule],
        resources={"warehouse": WarehouseResource()},
    )
    return defs.get_repository_def()


@pytest.mark.parametrize(
    ("scheduled", "expected"),
    [
        # Summer: 01:30 in Paris is 23:30 UTC the day before; the run is for the Paris day.
        (dt.datetime(2026, 7, 15, 23, 30, tzinfo=dt.UTC), dt.date(2026, 7, 16)),
        (dt.datetime(2026, 1, 1, 1, 30, tzinfo=PARIS), dt.date(2026, 1, 1)),
    ],
)
def test_nightly_schedule_runs_the_nightly_job_as_of_the_paris_day(scheduled, expected):
    context = dg.build_schedule_context(scheduled_execution_time=scheduled, repository_def=_repository())
    [request] = nightly_schedule.evaluate_tick(context).run_requests
    assert request.tags[AS_OF_TAG] == expected.isoformat()
    assert request.run_key == f"nightly-{expected.isoformat()}"
    # The navigation day that has just ended in Paris (a new year's day gives the 31 December before it).
    assert request.partition_key == (expected - dt.timedelta(days=1)).isoformat()
    assert request.run_config == {"ops": {ledger_check.node_def.name: {"config": {"as_of": expected.isoformat()}}}}
    assert nightly_schedule.job_name == NIGHTLY_JOB
    assert nightly_schedule.execution_timezone == "Europe/Paris"


def test_nightly_schedule_fires_at_night_in_paris_across_daylight_saving_changes():
    # The days the clocks change in 2026 (29 March, 25 October) included: one tick per day, always at 01:30.
    for after in (dt.datetime(2026, 3, 27, tzinfo=PARIS), dt.datetime(2026, 10, 23, tzinfo=PARIS)):
        times = cron_string_iterator(after.timestamp(), nightly_schedule.cron_schedule, "Europe/Paris")
        days = [next(times) for _ in range(4)]
        assert [(d.hour, d.minute) for d in days] == [(1, 30)] * 4
        assert len({d.date() for d in days}) == 4


def test_failed_run_writes_one_alert_without_data(tmp_path):
    secret = "jeanne.martin@example.fr"

    @dg.op
    def leaky():
        raise ValueError(f"cannot parse {secret}")

    @dg.job
    def failing_job():
        leaky()

    instance = dg.DagsterInstance.ephemeral()
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert_sensor.name,
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    compliance = ComplianceStoreResource(data_dir=str(tmp_path))
    run_failure_alert_sensor(context, compliance=compliance)

    lines = (tmp_path / "reports" / ALERTS_FILE).read_text().splitlines()
    [record] = [json.loads(line) for line in lines]
    assert record["run_id"] == result.run_id
    assert record["job"] == "failing_job"
    assert record["failed_steps"] == ["leaky"]
    assert "ValueError" in record["error_classes"]
    assert secret not in lines[0]


def test_nightly_tick_on_the_real_definitions_gives_a_valid_run_config():
    from pipelines.definitions import defs

    repository = defs.get_repository_def()
    scheduled = dt.datetime(2026, 11, 3, 1, 30, tzinfo=PARIS)
    context = dg.build_schedule_context(scheduled_execution_time=scheduled, repository_def=repository)
    [request] = nightly_schedule.evaluate_tick(context).run_requests
    job = repository.get_job(NIGHTLY_JOB)
    dg.validate_run_config(job, request.run_config)
    configured = request.run_config["ops"]
    assert request.partition_key == "2026-11-02"
    assert configured["retention__ledger"] == {"config": {"as_of": "2026-11-03"}}
    assert configured["analytics_file"] == {"config": {"as_of": "2026-11-03"}}
    # The preview is not part of the night: it runs when a policy file changes (and keeps its own date).
    assert "compliance__policy_change_preview" not in configured


def test_the_policy_preview_runs_only_in_its_own_job_never_in_the_nightly():
    from pipelines.definitions import defs

    def steps(name: str) -> set[str]:
        return {node.name for node in defs.resolve_job_def(name).graph.nodes}

    assert "compliance__policy_change_preview" not in steps(NIGHTLY_JOB)
    assert "compliance__policy_change_preview" not in steps("rights_job")
    assert steps("policy_preview_job") == {"compliance__policy_change_preview"}
    assert {"retention__ledger", "analytics_file", "compliance__processing_register"} <= steps(NIGHTLY_JOB)
