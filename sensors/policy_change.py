"""Policy-change sensor: a changed policy file starts the preview, never a silent change.

It watches `policies/*.yaml` and the proposal folder `policies/proposed/` (a new version the DPO drops there
before its effective date). The cursor is the SHA-256 of those files (relative names and bytes). A new
hash requests one run of the preview asset `compliance/policy_change_preview` (what the new rules would
archive, erase or anonymise; assets/compliance_register.py), keyed by the hash so the same content is never
previewed twice; the nightly job is not started (and never runs the preview itself: the whole ledger again
for a proposal that did not change). A policy that does not load is refused with the loader's
message and the cursor stays put, so the corrected file is previewed when it lands.
"""

import hashlib
from pathlib import Path

import dagster as dg

from pipelines.orchestration.resources import PoliciesResource
from pipelines.orchestration.runs import PREVIEW_KEY
from pipelines.policy.load import load_policy
from pipelines.policy.loader import PolicyError

PROPOSED_SUBDIR = "proposed"
POLICY_HASH_TAG = "sem/policy_hash"


def policy_fingerprint(folder: Path) -> str:
    """SHA-256 over the policy and proposal files' relative names and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.yaml"), *(folder / PROPOSED_SUBDIR).glob("*.yaml")]):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def evaluate_policy_change(folder: Path, cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
    """What the sensor does for the policy files in `folder` given its cursor: (request or skip, new cursor)."""
    fingerprint = policy_fingerprint(folder)
    if cursor is None:
        return dg.SkipReason(f"baseline recorded for the current policy ({fingerprint[:12]})"), fingerprint
    if fingerprint == cursor:
        return dg.SkipReason("policy files unchanged"), cursor
    proposed = folder / PROPOSED_SUBDIR
    try:
        policy = load_policy(folder)
        if proposed.is_dir():
            policy = load_policy(proposed, fallback=folder)
    except PolicyError as error:
        return dg.SkipReason(f"changed policy refused, no preview: {error}"), cursor
    request = dg.RunRequest(
        run_key=f"policy-{fingerprint}",
        tags={POLICY_HASH_TAG: fingerprint, "sem/policy_version": policy.version_label},
    )
    return request, fingerprint


@dg.sensor(
    name="policy_change_sensor",
    target=dg.AssetSelection.assets(PREVIEW_KEY),
    minimum_interval_seconds=60,
    description="Watches policies/*.yaml; a change runs the policy preview (what would be archived or erased "
    "under the new rules) instead of changing retention silently.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def policy_change_sensor(context: dg.SensorEvaluationContext, policies: PoliciesResource) -> dg.SensorResult:
    result, cursor = evaluate_policy_change(policies.resolved_path, context.cursor)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result, cursor=cursor)
    return dg.SensorResult(run_requests=[result], cursor=cursor)
