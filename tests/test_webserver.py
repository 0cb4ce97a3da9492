"""The real Dagster webserver on the project's definitions: its GraphQL API lists assets, checks and automations."""

import datetime as dt
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._core.events import DagsterEventType

from tests.conftest import FIRST_NIGHT, TEST_KEY_HEX, FirstNight

STARTUP_TIMEOUT_S = 240
WEBSERVER = Path(sys.executable).with_name("dagster-webserver")
PROJECT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600

ASSETS_AND_CHECKS = """
{ assetNodes { assetKey { path } groupName partitionDefinition { description }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }
"""
AUTOMATIONS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    schedules { name cronSchedule executionTimezone } sensors { name } jobs { name } } } } }
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


@contextmanager
def _serving(command: list[str], home: Path, env: dict[str, str]) -> Iterator[str]:
    """Start a Dagster server process (webserver or `dagster dev`) on a free port; yield its GraphQL URL."""
    port = _free_port()
    log = open(home / "server.log", "w")  # noqa: SIM115 — closed after the process stops
    process = subprocess.Popen(
        [*command, "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"},
        cwd=PROJECT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}: {(home / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready after {STARTUP_TIMEOUT_S}s")
            time.sleep(1)
        yield f"{base}/graphql"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


# Every test here talks to one webserver, whose runs read the site after its first night (tests.conftest).
pytestmark = pytest.mark.xdist_group(FIRST_NIGHT)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, first_night: FirstNight) -> Iterator[tuple[str, Path]]:
    """The webserver on an instance that launches runs at once (no run queue, so no daemon: the daemon would also
    start the sensors, whose runs are tested on their own); everything else is the project's dagster.yaml. Its
    runs read and write the site of `site_after_first_night` (SEM_DATA_DIR)."""
    home = tmp_path_factory.mktemp("dagster_home")
    instance = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    del instance["concurrency"]["runs"]
    instance["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    env = {"SEM_DATA_DIR": str(first_night.site), "SEM_PSEUDONYMISATION_KEY": TEST_KEY_HEX}
    with _serving([str(WEBSERVER)], home, env) as url:
        yield url, home


@pytest.fixture
def graphql_url(served: tuple[str, Path]) -> str:
    return served[0]


def test_graphql_lists_raw_and_analytics_assets_with_their_checks(graphql_url):
    nodes = _post(graphql_url, ASSETS_AND_CHECKS)["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert {"raw/members", "raw/navigation_events", "analytics/members_pseudo", "analytics/catalogue"} <= set(by_key)
    assert by_key["raw/members"]["groupName"] == "sources"
    # The UI shows navigation events by Paris day; the other tables are whole.
    assert by_key["raw/navigation_events"]["partitionDefinition"]["description"].startswith("Daily")
    assert by_key["raw/members"]["partitionDefinition"] is None
    checks = {
        (key, check["name"]): check["blocking"]
        for key, node in by_key.items()
        for check in (node["assetChecksOrError"] or {}).get("checks", [])
    }
    assert checks[("raw/members", "gx_raw_expectations")] is False
    assert checks[("analytics/catalogue", "gx_no_direct_identifier")] is True
    assert ("retention/ledger", "gx_nothing_active_past_retention") in checks


def test_graphql_lists_the_nightly_schedule_and_the_sensors(graphql_url):
    [repository] = _post(graphql_url, AUTOMATIONS)["repositoriesOrError"]["nodes"]
    schedules = {s["name"]: s for s in repository["schedules"]}
    assert schedules["nightly_schedule"]["executionTimezone"] == "Europe/Paris"
    assert {"policy_change_sensor", "run_failure_alert_sensor"} <= {s["name"] for s in repository["sensors"]}
    assert "nightly_job" in {j["name"] for j in repository["jobs"]}


LOCATION = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
    __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } } } }
"""
RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def test_nightly_job_launched_like_the_ui_runs_to_success_in_its_own_process(served, site_after_first_night):
    """The next night's run launched over GraphQL, as the UI's launchpad does, runs in a process of its own (not the
    webserver's) with the project's in-process executor and `warehouse` pool, and publishes the analytics file."""
    from pipelines.definitions import defs
    from sensors.schedules import as_of_run_config
    from tests.conftest import TEST_AS_OF

    url, home = served
    as_of = TEST_AS_OF + dt.timedelta(days=1)
    day = (as_of - dt.timedelta(days=1)).isoformat()
    published = site_after_first_night.analytics.stat().st_mtime_ns
    [repository] = _post(url, LOCATION)["repositoriesOrError"]["nodes"]
    params = {
        "selector": {"repositoryLocationName": repository["location"]["name"],
                     "repositoryName": repository["name"], "jobName": "nightly_job"},
        "runConfigData": as_of_run_config(defs.resolve_job_def("nightly_job"), as_of),
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day},
                                       {"key": "sem/as_of", "value": as_of.isoformat()}]},
    }
    launched = _post(url, LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while status not in DONE and time.monotonic() < deadline:
        time.sleep(1)
        status = _post(url, RUN_STATUS, {"id": run_id})["runOrError"]["status"]
    assert status == "SUCCESS", (home / "server.log").read_text()[-5000:]
    _assert_steps_ran_in_the_run_process_one_warehouse_step_at_a_time(home, run_id)
    assert site_after_first_night.analytics.stat().st_mtime_ns != published  # the night published it again
    with duckdb.connect(str(site_after_first_night.analytics), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM members_pseudo").fetchall()[0][0] > 0


def _assert_steps_ran_in_the_run_process_one_warehouse_step_at_a_time(home: Path, run_id: str) -> None:
    from assets.quality_checks import WAREHOUSE_POOL
    from pipelines.definitions import defs

    pools = {n.name: n.definition.pool for n in defs.resolve_job_def("nightly_job").graph.nodes}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = [e for e in instance.all_logs(run_id) if e.is_dagster_event]
    # Every step in the run's worker process, the one that recorded RUN_START (the launcher started it).
    [worker] = {e.dagster_event.pid for e in events if e.dagster_event.event_type == DagsterEventType.RUN_START}
    pids = {e.dagster_event.pid for e in events if e.dagster_event.is_step_start}
    assert pids == {worker} and worker != os.getpid()
    spans: dict[str, list[float]] = {}
    for e in events:
        if e.dagster_event.is_step_start or e.dagster_event.is_step_success:
            spans.setdefault(e.step_key, []).append(e.timestamp)
    in_pool = sorted(span for step, span in spans.items() if pools.get(step) == WAREHOUSE_POOL)
    assert len(in_pool) > 10
    for (_, previous_end), (start, _) in itertools.pairwise(in_pool):
        assert start >= previous_end, "two warehouse steps held the DuckDB file at the same time"
