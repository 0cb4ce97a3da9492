"""Policy-change sensor evaluated as the daemon does: baseline, one preview per change, broken files refused."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pipelines.orchestration import settings
from pipelines.orchestration.resources import PoliciesResource
from sensors.policy_change import POLICY_HASH_TAG, PREVIEW_KEY, PROPOSED_SUBDIR, policy_change_sensor


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(settings.policies_dir(), folder, ignore=shutil.ignore_patterns(PROPOSED_SUBDIR))
    return folder


def _graph():
    """The preview asset among others the nightly job runs: the sensor must select only the preview."""
    specs = [dg.AssetSpec(PREVIEW_KEY), dg.AssetSpec(["raw", "members"]), dg.AssetSpec(["retention", "ledger"])]
    return dg.Definitions(assets=specs).resolve_asset_graph()


def _tick(folder: Path, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, resources={"policies": PoliciesResource(path=str(folder))})
    return policy_change_sensor(context)


def test_policy_change_requests_one_preview_and_never_the_nightly_job(policies):
    baseline = _tick(policies, None)
    assert not baseline.run_requests and baseline.cursor
    unchanged = _tick(policies, baseline.cursor)
    assert not unchanged.run_requests and unchanged.cursor == baseline.cursor

    purposes = policies / "purposes.yaml"
    purposes.write_text(purposes.read_text().replace("archive: P2Y", "archive: P3Y", 1))
    changed = _tick(policies, unchanged.cursor)
    [request] = changed.run_requests
    assert changed.cursor != baseline.cursor
    assert request.tags[POLICY_HASH_TAG] == changed.cursor
    assert request.job_name is None  # the sensor's own target: the preview asset, nothing else
    [target] = policy_change_sensor.targets
    assert target.resolvable_to_job.selection.resolve(_graph()) == {PREVIEW_KEY}
    # The same content is not previewed twice.
    assert not _tick(policies, changed.cursor).run_requests


def test_broken_policy_is_refused_and_previewed_once_fixed(policies):
    cursor = _tick(policies, None).cursor
    purposes = policies / "purposes.yaml"
    original = purposes.read_text()
    purposes.write_text(original.replace("archive: P2Y", "archive: two years", 1))
    refused = _tick(policies, cursor)
    assert not refused.run_requests
    assert refused.cursor == cursor
    assert "purposes.yaml" in refused.skip_reason.skip_message
    purposes.write_text(original.replace("archive: P2Y", "archive: P4Y", 1))
    assert len(_tick(policies, refused.cursor).run_requests) == 1


def test_a_proposal_dropped_in_proposed_is_previewed(policies):
    cursor = _tick(policies, None).cursor
    (policies / PROPOSED_SUBDIR).mkdir()
    purposes = (policies / "purposes.yaml").read_text()
    (policies / PROPOSED_SUBDIR / "purposes.yaml").write_text(purposes.replace("archive: P2Y", "archive: P1Y", 1))
    assert len(_tick(policies, cursor).run_requests) == 1
