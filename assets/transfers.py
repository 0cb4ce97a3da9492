"""Stage "compliance": the extracts sent outside the EU/EEA (Morocco complaints provider, Monaco health
professionals), thin wrappers over pipelines.transfers; columns, rows and safeguards come from recipients.yaml."""

import dagster as dg

from assets.quality_checks import WAREHOUSE_POOL
from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
    core_context,
)
from pipelines.orchestration.runs import RetentionConfig, as_of_date
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
        description=f"Delivery of the {what}, outside the EU/EEA: only the columns recipients.yaml allows for "
        "this recipient and purpose, only rows new or changed since its last delivery and still within its "
        "purpose, a deletion instruction for what left the purpose, an art. 19 notice for people erased or "
        "restricted since; without restricted or erased people, written atomically to the outbox "
        "(transfers/<recipient>/<as_of>/, manifest last), recorded in transfers.* and audited with its "
        "safeguard, once per day.",
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
        pseudonymisation_key: PseudonymisationKeyResource,
        navigation: NavigationSourceResource,
    ) -> dg.MaterializeResult:
        # The run's day (config, else the `sem/as_of` tag, else today in Paris), as for retention.
        as_of = as_of_date(config.as_of, context.run.tags)
        ctx = core_context(policies, pseudonymisation_key, compliance, navigation)
        with warehouse.connect() as con:
            report = build_transfer(con, ctx, recipient, as_of)
        if report.already_delivered:
            context.log.info(f"{recipient}: {as_of} already delivered; nothing sent again")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(report.rows_sent),
                "deletion_instructions": dg.MetadataValue.int(report.deletions),
                "art19_notices": dg.MetadataValue.int(report.notices),
                "rows_held_by_recipient": dg.MetadataValue.int(report.held_rows),
                "already_delivered": dg.MetadataValue.bool(report.already_delivered),
                "files": dg.MetadataValue.json(
                    [{"file": f.file, "rows": f.rows, "columns": f.columns} for f in report.files]
                ),
                "country": dg.MetadataValue.text(report.country),
                "mechanism": dg.MetadataValue.text(report.mechanism),
                "excluded_records": dg.MetadataValue.int(report.excluded_records),
                "folder": dg.MetadataValue.text(str(report.folder) if report.folder else "nothing to send"),
                "as_of": dg.MetadataValue.text(report.as_of),
                **compliance.audit_head_metadata(),
            }
        )

    return _transfer


transfer_assets = [_transfer_asset(recipient, what) for recipient, what in TRANSFER_RECIPIENTS.items()]
