"""Stage "compliance" (policy outputs): the art. 30 processing register and the policy-change preview."""

import datetime as dt
from pathlib import Path

import dagster as dg

from assets.retention import RAW_KEYS
from pipelines.orchestration.resources import ComplianceStoreResource, PoliciesResource, WarehouseResource
from pipelines.orchestration.runs import as_of_date
from pipelines.policy.load import load_policy
from pipelines.policy.preview import preview, render_preview
from pipelines.policy.register import render_register
from pipelines.private import write_atomically

OWNER = "team:data-engineering"
PROPOSED_SUBDIR = "proposed"


@dg.asset(
    key=["compliance", "processing_register"],
    group_name="compliance",
    description="Record of processing activities (GDPR art. 30) generated from policies/: purposes, legal bases, "
    "categories, recipients, transfers and safeguards, retention and erasure time limits. Markdown under the "
    "compliance reports folder.",
    kinds={"markdown"},
    owners=[OWNER, "team:dpo"],
    tags={"stage": "compliance"},
)
def processing_register(policies: PoliciesResource, compliance: ComplianceStoreResource) -> dg.MaterializeResult:
    policy = policies.load()
    path = compliance.reports_dir / "processing_register.md"
    write_atomically(path, render_register(policy))
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "policy_version": dg.MetadataValue.text(policy.version_label),
        "effective_date": dg.MetadataValue.text(policy.effective_date.isoformat()),
        "purposes": dg.MetadataValue.int(len(policy.purposes)),
        "recipients": dg.MetadataValue.int(len(policy.recipients)),
        "transfers_outside_eu": dg.MetadataValue.int(sum(r.transfer is not None for r in policy.recipients)),
    })


class PreviewConfig(dg.Config):
    """`proposed_dir`: a folder with the changed policy files (missing files are taken from the current ones);
    default `<policies>/proposed/`. `as_of`: default the later of today and the proposal's effective date."""

    proposed_dir: str | None = None
    as_of: str | None = None


@dg.asset(
    key=["compliance", "policy_change_preview"],
    group_name="compliance",
    deps=RAW_KEYS,
    description="What a proposed policy version would change, per purpose and dataset: how many records would "
    "change status (active, archived, erased, anonymised, on hold) and why. Reads the warehouse read-only; "
    "changes nothing.",
    kinds={"duckdb", "markdown"},
    owners=[OWNER, "team:dpo"],
    tags={"stage": "compliance"},
    pool="warehouse",
)
def policy_change_preview(
    context: dg.AssetExecutionContext, config: PreviewConfig, warehouse: WarehouseResource,
    policies: PoliciesResource, compliance: ComplianceStoreResource,
) -> dg.MaterializeResult:
    current = policies.load()
    proposed_dir = Path(config.proposed_dir) if config.proposed_dir else policies.resolved_path / PROPOSED_SUBDIR
    proposed = load_policy(proposed_dir, fallback=policies.resolved_path) if proposed_dir.is_dir() else current
    today = as_of_date(None, context.run.tags)
    as_of = dt.date.fromisoformat(config.as_of) if config.as_of else max(today, proposed.effective_date)
    with warehouse.connect(read_only=True) as con:
        table = preview(current, proposed, con, as_of, slice_records=warehouse.resolved_ledger_slice_records)
    text = render_preview(table, current, proposed, as_of)
    path = compliance.reports_dir / "policy_change_preview.md"
    write_atomically(path, text)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "proposed": dg.MetadataValue.text(proposed.version_label if proposed is not current else "no proposal"),
        "as_of": dg.MetadataValue.text(as_of.isoformat()),
        "records_changing_status": dg.MetadataValue.int(sum(table["records"].to_pylist())),
        "preview": dg.MetadataValue.md(text),
    })
