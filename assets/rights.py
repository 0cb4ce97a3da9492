"""Stage "rights": rights requests from intake to confirmation (pipelines.rights.process), and their deadlines."""


import dagster as dg

from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    SqlSourceResource,
    WarehouseResource,
    core_context,
)
from pipelines.orchestration.runs import NIGHTLY_JOB, as_of_date
from pipelines.policy.load import source_columns
from pipelines.rights.intake import run_sql, table_exists
from pipelines.rights.process import deadline_summary, process_rights

OWNER = "team:data-engineering"
REQUESTS_KEY = dg.AssetKey(["rights", "requests"])
DECISIONS_KEY = dg.AssetKey(["rights", "decisions"])
EXCLUSIONS_KEY = dg.AssetKey(["rights", "exclusions"])


class RightsConfig(dg.Config):
    """The day deadlines are evaluated for (ISO date); empty = the run's `sem/as_of` tag, else today (Paris)."""

    as_of: str | None = None


# Rights run before retention (assets.retention depends on them): a restriction or objection verified tonight
# is in force before retention erases anything, and a fixed order makes every run reproducible.
UPSTREAM = [dg.AssetKey(["raw", table]) for (_, table) in source_columns()] + [
    dg.AssetKey(["identity", "person_links"])]


@dg.multi_asset(
    specs=[
        dg.AssetSpec(REQUESTS_KEY, deps=UPSTREAM, description="Rights requests (art. 15-21): person matched through "
                     "the identity links or flagged for a human with the reason, state received → verified → decided "
                     "→ executed → confirmed/answered or refused with a reason, due date one month after receipt.",
                     kinds={"duckdb"}, owners=[OWNER], tags={"stage": "rights"}),
        dg.AssetSpec(DECISIONS_KEY, deps=UPSTREAM, description="One decision per executed request: push-back targets, "
                     "confirmation status, and what a legal obligation kept in the restricted archive.",
                     kinds={"duckdb", "sql", "parquet"}, owners=[OWNER], tags={"stage": "rights"}),
        dg.AssetSpec(EXCLUSIONS_KEY, deps=UPSTREAM, description="People excluded from processing: restricted, "
                     "objection, objection_prospecting, erased (person_id, reason, since). The analytics stage "
                     "leaves them out.", kinds={"duckdb"}, owners=[OWNER], tags={"stage": "rights"}),
    ],
    group_name="rights",
    pool="warehouse",
)
def rights_requests(
    context: dg.AssetExecutionContext, config: RightsConfig, warehouse: WarehouseResource, policies: PoliciesResource,
    member_source: SqlSourceResource, prospect_source: SqlSourceResource, navigation: NavigationSourceResource,
    compliance: ComplianceStoreResource, pseudonymisation_key: PseudonymisationKeyResource,
):
    ctx = core_context(policies, pseudonymisation_key, compliance, navigation, actor="rights_job")
    with warehouse.connect() as con:
        outcome = process_rights(con, ctx, members=member_source.engine(), prospects=prospect_source.engine(),
                                 as_of=as_of_date(config.as_of, context.run.tags),
                                 nightly=context.run.job_name == NIGHTLY_JOB,
                                 # the retention ledger is the nightly's: built by its retention step after this
                                 # stage, or, after the rights job, by the next night (which re-evaluates what the
                                 # push-back changed); a rights run costs what its requests touch, not a ledger
                                 refresh_ledger=False)
        decisions = dict(run_sql(con, "SELECT status, count(*) FROM rights.decisions GROUP BY 1 ORDER BY 1"))
        exclusions = dict(run_sql(con, "SELECT reason, count(*) FROM rights.exclusions GROUP BY 1 ORDER BY 1"))
    if outcome.decisions_failed:
        context.log.error(f"{len(outcome.decisions_failed)} rights decision(s) not confirmed at the sources: "
                          f"{sorted(outcome.decisions_failed)}")
    yield dg.MaterializeResult(asset_key=REQUESTS_KEY, metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(outcome.states.values())),
        "by_state": dg.MetadataValue.json(outcome.states),
        "needs_human": dg.MetadataValue.int(outcome.needs_human),
        "overdue": dg.MetadataValue.int(outcome.overdue),
        "due_within_7_days": dg.MetadataValue.int(outcome.due_within_7_days),
        "awaiting_identity": dg.MetadataValue.int(outcome.states.get("received", 0)),
        "access_bundles_written": dg.MetadataValue.int(len(outcome.bundles)),
    })
    yield dg.MaterializeResult(asset_key=DECISIONS_KEY, metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(decisions.values())),
        "by_status": dg.MetadataValue.json(decisions),
        "confirmed_this_run": dg.MetadataValue.int(outcome.decisions_confirmed),
        "not_confirmed_this_run": dg.MetadataValue.int(len(outcome.decisions_failed)),
        # navigation day files push-back rewrote and the warehouse already mirrors (not read again)
        "navigation_files_mirrored": dg.MetadataValue.int(len(outcome.mirrored)),
        **compliance.audit_head_metadata(),
    })
    yield dg.MaterializeResult(asset_key=EXCLUSIONS_KEY, metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(exclusions.values())),
        "by_reason": dg.MetadataValue.json(exclusions),
    })


@dg.asset_check(
    asset=REQUESTS_KEY,
    name="no_overdue_rights_request",
    description="No open request past its due date (one month after receipt, art. 12(3); the clock is suspended "
    "while the identity proof is awaited); requests due within 7 days and those waiting for a human are listed.",
    pool="warehouse",
)
def no_overdue_rights_request(
    context: dg.AssetCheckExecutionContext, config: RightsConfig, warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        summary = deadline_summary(con, as_of_date(config.as_of, context.run.tags))
    return dg.AssetCheckResult(
        passed=summary["overdue"] == 0,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "overdue": dg.MetadataValue.int(summary["overdue"]),
            "overdue_request_ids": dg.MetadataValue.json(summary["overdue_request_ids"]),
            "due_within_7_days": dg.MetadataValue.int(summary["due_within_7_days"]),
            "needs_human": dg.MetadataValue.int(summary["needs_human"]),
            "awaiting_identity": dg.MetadataValue.int(summary["awaiting_identity"]),
        },
    )


@dg.asset_check(
    asset=DECISIONS_KEY,
    name="every_rights_decision_confirmed",
    description="Every rights decision recorded (audited as decided) was applied and confirmed by re-reading every "
    "source; one still pending is pushed again from its recorded targets by the next run.",
    pool="warehouse",
)
def every_rights_decision_confirmed(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        pending = [r[0] for r in run_sql(con, "SELECT decision_id FROM rights.decisions WHERE status = 'decided' "
                                              "ORDER BY 1")] if table_exists(con, "rights", "decisions") else []
    return dg.AssetCheckResult(passed=not pending, metadata={
        "not_confirmed": dg.MetadataValue.json(pending)})
