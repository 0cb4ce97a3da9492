"""The real Dagster webserver on the project's definitions: its GraphQL API lists assets, checks and automations."""

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
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 240
WEBSERVER = Path(sys.executable).with_name("dagster-webserver")

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


def _post(url: str, query: str) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def graphql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dagster_home")
    port = _free_port()
    log = open(home / "webserver.log", "w")  # noqa: SIM115 — closed after the process stops
    process = subprocess.Popen(
        [str(WEBSERVER), "-m", "pipelines.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"},
        cwd=Path(__file__).resolve().parents[1],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"webserver exited with {process.returncode}: {(home / 'webserver.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"webserver not ready after {STARTUP_TIMEOUT_S}s")
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
