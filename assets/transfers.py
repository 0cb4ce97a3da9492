"""Stage "compliance": the extracts sent outside the EU/EEA (Morocco complaints provider, Monaco health
professionals), thin wrappers over pipelines.transfers; columns, rows and safeguards come from recipients.yaml."""

import dagster as dg

from assets.quality_checks import WAREHOUSE_POOL
from assets.retention import RetentionConfig, as_of_date
from pipelines.audit import AuditLog
from pipelines.policy.resource import PoliciesResource
from pipelines.resources import ComplianceStoreResource, WarehouseResource
from pipelines.sources.schema import SQL_SYSTEMS
from pipelines.transfers import build_transfer

OWNERS = ["team:data-engineering", "team:dpo"]
TRANSFER_RECIPIENTS = {
    "morocco_complaints_provider": "complaints handled by the provider in Morocco",
    "monaco_health_professionals": "settlements of care given by health professionals in Monaco",
}
# Whatever the policy lists, an extract reads raw tables only after rights and retention have run.
UPSTREAM = [
    *(dg.AssetKey(["raw", t]) for metadata in SQL_SYSTEMS.values() for t in metadata.tables),
    dg.AssetKey(["identity", "person_links"]),
    dg.AssetKey(["rights", "exclusions"]),
    dg.AssetKey(["retention", "applied"]),
]


def _transfer_asset(recipient: str, what: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["compliance", f"transfer_{recipient}"],
        group_name="compliance",
        deps=UPSTREAM,
        description=f"Extract of the {what}, outside the EU/EEA: only the columns recipients.yaml allows for "
        "this recipient and purpose, without restricted or erased people, written atomically to the outbox "
        "(transfers/<recipient>/<as_of>/, manifest last) and logged in the audit trail with its safeguard.",
        kinds={"duckdb", "csv"},
        owners=OWNERS,
        tags={"stage": "transfers", "recipient": recipient},
        pool=WAREHOUSE_POOL,
    )
    def _transfer(
        context: dg.AssetExecutionContext,
        config: RetentionConfig,
        warehouse: WarehouseResource,
        compliance: ComplianceStoreResource,
        policies: PoliciesResource,
    ) -> dg.MaterializeResult:
        # The run's day (config, else the `sem/as_of` tag, else today in Paris), as for retention.
        as_of = as_of_date(config.as_of, context.run.tags)
        with warehouse.connect(read_only=True) as con:
            report = build_transfer(
                con, policies.load(), recipient, compliance.outbox_dir, as_of, AuditLog(compliance.audit_log_path)
            )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(sum(f.rows for f in report.files)),
                "files": dg.MetadataValue.json(
                    [{"file": f.file, "rows": f.rows, "columns": f.columns} for f in report.files]
                ),
                "country": dg.MetadataValue.text(report.country),
                "mechanism": dg.MetadataValue.text(report.mechanism),
                "excluded_records": dg.MetadataValue.int(report.excluded_records),
                "folder": dg.MetadataValue.path(str(report.folder)),
                "as_of": dg.MetadataValue.text(report.as_of),
                **compliance.audit_head_metadata(),
            }
        )

    return _transfer


transfer_assets = [_transfer_asset(recipient, what) for recipient, what in TRANSFER_RECIPIENTS.items()]
