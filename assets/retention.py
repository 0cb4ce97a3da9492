"""Stage "retention": the per-purpose ledger for an `as_of` date, and its application in warehouse and sources."""


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
from pipelines.orchestration.runs import LedgerConfig, as_of_date
from pipelines.policy.load import source_columns
from pipelines.refresh import refresh_from_sources
from pipelines.retention.apply import apply_retention, audit_applied, residue
from pipelines.retention.ledger import build_ledger, counts_by_purpose, fallback_clocks, ledger_day

OWNER = "team:data-engineering"
LEDGER_KEY = dg.AssetKey(["retention", "ledger"])
APPLIED_KEY = dg.AssetKey(["retention", "applied"])
RAW_KEYS = [dg.AssetKey(["raw", table]) for (_, table) in source_columns()]
# Holds and restrictions reach the whole person (identity links); the night's verified restrictions and
# objections (rights stage) are in force before the ledger decides anything.
LEDGER_DEPS = [*RAW_KEYS, dg.AssetKey(["identity", "person_links"]), dg.AssetKey(["rights", "exclusions"])]
# ledger status -> what the UI shows for the run
SHOWN = {"active": "active", "archived": "archived", "to_erase": "erased", "to_anonymise": "anonymised",
         "legal_hold": "on_hold", "restricted": "on_hold"}


def _purpose_table(counts: dict[str, dict[str, int]]) -> str:
    columns = ["active", "archived", "erased", "anonymised", "on_hold"]
    lines = ["| purpose | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for purpose, by_status in sorted(counts.items()):
        shown = dict.fromkeys(columns, 0)
        for status, n in by_status.items():
            shown[SHOWN[status]] += n
        lines.append(f"| {purpose} | " + " | ".join(str(shown[c]) for c in columns) + " |")
    return "\n".join(lines)


@dg.asset(
    key=LEDGER_KEY,
    group_name="retention",
    deps=LEDGER_DEPS,
    description="Retention ledger: one row per subject × purpose × dataset (clock start, last day active, last "
    "day archived, status active/archived/to_erase/to_anonymise/legal_hold/restricted, reason), computed in SQL "
    "generated from policies/ for the run's as_of; retention.record_status holds the per-record outcome, "
    "retention.column_status the column groups of kept records that go to the archive or are cleared (and why), "
    "retention.clock_events the dated events still timing a kept record. Holds and restrictions reach the whole "
    "person; it runs after the rights stage. Incremental: only subjects with a record whose next transition is "
    "due, whose inputs changed or whose person-wide flags changed are re-evaluated (pipelines.retention.scope); "
    "the config's `full_recompute` (the Sunday schedule) re-evaluates everyone; `ledger_path` says which ran.",
    kinds={"duckdb", "sql"},
    owners=[OWNER],
    tags={"stage": "retention"},
    pool="warehouse",
)
def retention_ledger(
    context: dg.AssetExecutionContext, config: LedgerConfig, warehouse: WarehouseResource,
    policies: PoliciesResource,
) -> dg.MaterializeResult:
    as_of = as_of_date(config.as_of, context.run.tags)
    policy = policies.load()
    with warehouse.connect() as con:
        plan = build_ledger(con, policy, as_of, full=config.full_recompute,
                            slice_records=warehouse.resolved_ledger_slice_records)
        if plan is None:
            context.log.info(f"Push-back of {as_of} is still owed (an interrupted run or a failed source): the "
                             "day's ledger stands as decided, not recomputed from half-changed sources")
        counts = counts_by_purpose(con)
        rows = con.execute("SELECT count(*) FROM retention.ledger").fetchall()[0][0]
        records = dict(con.execute("SELECT status, count(*) FROM retention.record_status GROUP BY 1").fetchall())
        column_groups: dict[str, dict[str, int]] = {}
        for dataset, group, state, n in con.execute(
                "SELECT dataset, column_group, state, count(*) FROM retention.column_status GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            column_groups.setdefault(f"{dataset}: {group}", {})[state] = n
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(rows),
        "as_of": dg.MetadataValue.text(as_of.isoformat()),
        "policy_version": dg.MetadataValue.text(policy.version_label),
        # which path ran: "full: <reason>" or "incremental: N subjects in scope (due X, changed Y, flags Z)"
        "ledger_path": dg.MetadataValue.text(plan.describe() if plan else "kept: the day's push-back is owed"),
        "records_by_status": dg.MetadataValue.json(records),
        # kept records whose column group left their stage: "dataset: purposes" -> archived / cleared records
        "column_groups_out_of_stage": dg.MetadataValue.json(column_groups),
        "by_purpose": dg.MetadataValue.md(_purpose_table(counts)),
    })


@dg.asset(
    key=APPLIED_KEY,
    group_name="retention",
    deps=[LEDGER_KEY],
    description="Applies the ledger: archived records move to the restricted `archive` schema and leave the "
    "sources, erased records are deleted, anonymised ones lose every identifying column, in the warehouse and "
    "(through push-back, set-based, idempotent, confirmed by re-reading) in the member system, the prospecting "
    "platform and the navigation logs.",
    kinds={"duckdb", "sql", "parquet"},
    owners=[OWNER],
    tags={"stage": "retention"},
    pool="warehouse",
)
def retention_applied(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, policies: PoliciesResource,
    member_source: SqlSourceResource, prospect_source: SqlSourceResource, navigation: NavigationSourceResource,
    compliance: ComplianceStoreResource, pseudonymisation_key: PseudonymisationKeyResource,
) -> dg.MaterializeResult:
    ctx = core_context(policies, pseudonymisation_key, compliance, navigation)
    policy = ctx.policy
    with warehouse.connect() as con:
        as_of = ledger_day(con)
        if as_of is None:
            raise dg.Failure("retention.record_status is empty: materialise retention/ledger first")
        engines = {"members": member_source.engine(), "prospects": prospect_source.engine()}
        outcome = apply_retention(con, ctx, as_of, members=engines["members"], prospects=engines["prospects"])
        counts = counts_by_purpose(con)
        reread = refresh_from_sources(con, outcome.touched, engines=engines,
                                      navigation_dir=navigation.resolved_path, policy=policy, as_of=as_of,
                                      ledger_slice_records=warehouse.resolved_ledger_slice_records)
        audited = audit_applied(con, ctx, as_of, outcome)
    summary = {step: outcome.warehouse.total(step) for step in ("archive", "erase", "anonymise")}
    if outcome.day is not None:
        context.log.info(f"Retention of {as_of} was applied by an earlier run ("
                         f"{'audited' if outcome.day.audited else 'interrupted'}); audit entry "
                         f"{'appended' if audited else 'not appended again'}")
    if outcome.decisions_failed:
        context.log.error(f"{len(outcome.decisions_failed)} push-back decision(s) not confirmed: "
                          f"{sorted(outcome.decisions_failed)}")
    return dg.MaterializeResult(metadata={
        "as_of": dg.MetadataValue.text(as_of.isoformat()),
        "archived_rows": dg.MetadataValue.int(summary["archive"]),
        "erased_rows": dg.MetadataValue.int(summary["erase"]),
        "anonymised_rows": dg.MetadataValue.int(summary["anonymise"]),
        "source_rows_targeted": dg.MetadataValue.int(outcome.source_rows),
        "decisions_confirmed": dg.MetadataValue.int(outcome.decisions_confirmed),
        "decisions_failed": dg.MetadataValue.int(len(outcome.decisions_failed)),
        **compliance.audit_head_metadata(),
        "source_tables_reread": dg.MetadataValue.json(reread),
        # rewritten by push-back after the warehouse carried the same decisions out: recorded, not read again
        "navigation_files_mirrored": dg.MetadataValue.int(len(outcome.mirrored)),
        "by_dataset": dg.MetadataValue.json(outcome.warehouse.rows),
        "by_purpose": dg.MetadataValue.md(_purpose_table(counts)),
    })


@dg.asset_check(
    asset=APPLIED_KEY,
    name="nothing_past_retention_in_active_base",
    blocking=True,
    description="No record the ledger sent to the archive, to erasure or to anonymisation is still in raw.* as it "
    "was (blocking: downstream analytics would publish it).",
    pool="warehouse",
)
def nothing_past_retention(warehouse: WarehouseResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = policies.load()
    with warehouse.connect(read_only=True) as con:
        left = residue(con, policy)
    return dg.AssetCheckResult(passed=not left, metadata={"records_left": dg.MetadataValue.json(left)})


@dg.asset_check(
    asset=LEDGER_KEY,
    name="no_clock_from_fallback",
    description="Lists the records whose retention clock comes from a declared fallback because the date the "
    "clock needs is missing (a litigation case closed without a final-decision date: timed from the first night "
    "it was seen closed). Warns until the date is filled in at the source.",
    pool="warehouse",
)
def no_clock_from_fallback(warehouse: WarehouseResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = policies.load()
    with warehouse.connect(read_only=True) as con:
        found = fallback_clocks(con, policy)
    return dg.AssetCheckResult(
        passed=not found, severity=dg.AssetCheckSeverity.WARN,
        metadata={"records_by_clock": dg.MetadataValue.json(found),
                  "fallbacks": dg.MetadataValue.json({name: policy.clocks[name].fallback.description
                                                      for name in found})})
