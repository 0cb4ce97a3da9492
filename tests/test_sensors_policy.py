"""Policy-change sensor evaluated as the daemon does: baseline, one preview per change, broken files refused."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pipelines import settings
from sensors.policy_change import POLICY_HASH_TAG, PREVIEW_JOB, policy_change_sensor
from sensors.schedules import NIGHTLY_JOB


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(settings.policies_dir(), folder)
    monkeypatch.setenv("SEM_POLICIES_DIR", str(folder))
    return folder


def _tick(cursor: str | None) -> dg.SensorResult:
    return policy_change_sensor(dg.build_sensor_context(cursor=cursor))


def test_policy_change_requests_one_preview_and_never_the_nightly_job(policies):
    baseline = _tick(None)
    assert not baseline.run_requests and baseline.cursor
    unchanged = _tick(baseline.cursor)
    assert not unchanged.run_requests and unchanged.cursor == baseline.cursor

    purposes = policies / "purposes.yaml"
    purposes.write_text(purposes.read_text().replace("archive: P2Y", "archive: P3Y", 1))
    changed = _tick(unchanged.cursor)
    [request] = changed.run_requests
    assert changed.cursor != baseline.cursor
    assert request.tags[POLICY_HASH_TAG] == changed.cursor
    assert policy_change_sensor.job_name == PREVIEW_JOB != NIGHTLY_JOB
    # The same content is not previewed twice.
    assert not _tick(changed.cursor).run_requests


def test_broken_policy_is_refused_and_previewed_once_fixed(policies):
    cursor = _tick(None).cursor
    purposes = policies / "purposes.yaml"
    original = purposes.read_text()
    purposes.write_text(original.replace("archive: P2Y", "archive: two years", 1))
    refused = _tick(cursor)
    assert not refused.run_requests
    assert refused.cursor == cursor
    assert "purposes.yaml" in refused.skip_reason.skip_message
    purposes.write_text(original.replace("archive: P2Y", "archive: P4Y", 1))
    assert len(_tick(refused.cursor).run_requests) == 1
