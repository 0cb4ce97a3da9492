"""Stage "compliance": retention of the pipeline's own records (quarantine, access bundles, transfer deliveries,
art. 19 notices), a thin wrapper over pipelines.purge; periods come from policies/own_records.yaml."""

import dagster as dg

from assets.quality_checks import WAREHOUSE_POOL
from assets.transfers import transfer_assets
from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
    core_context,
)
from pipelines.orchestration.runs import RetentionConfig, as_of_date
from pipelines.policy.own_records import OWN_RECORDS_FILE, load_own_records_policy
from pipelines.purge import purge_own_records
from pipelines.sources.schema import SQL_SYSTEMS

OWN_RECORDS_KEY = dg.AssetKey(["compliance", "own_records_retention"])
# After everything that writes the records it purges: ingest (quarantine), rights (bundles, notices),
# retention push-back (notices) and the transfers (deliveries).
UPSTREAM = [
    *(dg.AssetKey(["raw", t]) for metadata in SQL_SYSTEMS.values() for t in metadata.tables),
    dg.AssetKey(["raw", "navigation_events"]),
    dg.AssetKey(["raw", "cookie_consents"]),
    dg.AssetKey(["identity", "person_links"]),
    dg.AssetKey(["rights", "exclusions"]),
    dg.AssetKey(["retention", "applied"]),
    *(a.key for a in transfer_assets),
]


@dg.asset(
    key=OWN_RECORDS_KEY,
    group_name="compliance",
    deps=UPSTREAM,
    description=f"Applies policies/{OWN_RECORDS_FILE} as of the run's day: raw.quarantine rows lose their "
    "offending values past their period, an erased person's go, a restricted person's are flagged; resolved "
    "entries (raw.quarantine_resolved: key, reason, dates) go past their own period; "
    "access bundles and transfer deliveries lose their data past `keep` and keep their proof (hashes, dates) "
    "until `proof_keep`; transfers.delivered_rows loses the lines past their period or of erased records, never "
    "the line of a row a recipient holds; art. 19 notices lose their subject token, then go. Audited when "
    "anything changed.",
    kinds={"duckdb", "json"},
    owners=["team:data-engineering", "team:dpo"],
    tags={"stage": "retention"},
    pool=WAREHOUSE_POOL,
)
def own_records_retention(
    context: dg.AssetExecutionContext,
    config: RetentionConfig,
    warehouse: WarehouseResource,
    compliance: ComplianceStoreResource,
    policies: PoliciesResource,
    pseudonymisation_key: PseudonymisationKeyResource,
    navigation: NavigationSourceResource,
) -> dg.MaterializeResult:
    as_of = as_of_date(config.as_of, context.run.tags)
    rules = load_own_records_policy(policies.resolved_path)
    ctx = core_context(policies, pseudonymisation_key, compliance, navigation)
    with warehouse.connect() as con:
        report = purge_own_records(con, ctx, rules, as_of)
    return dg.MaterializeResult(metadata={
        "as_of": dg.MetadataValue.text(as_of.isoformat()),
        **{name: dg.MetadataValue.int(n) for name, n in vars(report).items()},
        "periods": dg.MetadataValue.json({
            **{store: {"keep": rule.keep, "proof_keep": rule.proof_keep}
               for store, rule in (("quarantine", rules.quarantine), ("access_exports", rules.access_exports),
                                   ("transfer_extracts", rules.transfer_extracts),
                                   ("delivered_rows", rules.delivered_rows), ("notices", rules.notices))},
            "quarantine_resolved": {"keep": rules.quarantine.resolved_keep, "proof_keep": None},
        }),
        **compliance.audit_head_metadata(),
    })
