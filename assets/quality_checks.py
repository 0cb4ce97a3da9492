"""Asset checks running the Great Expectations suites of pipelines.quality (thin wrappers).

Raw tables and the ledger get non-blocking checks (a failure is a finding for the data engineer); the
analytics identifier check is blocking: a direct identifier in the analysts' file must stop publication.
Metadata holds counts and masked examples only.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from assets.retention import LEDGER_KEY
from pipelines.orchestration.resources import AnalyticsFileResource, SqlSourceResource, WarehouseResource
from pipelines.orchestration.runs import RetentionConfig, as_of_date
from pipelines.quality.checks import (
    RawTableSpec,
    check_analytics_identifiers,
    check_analytics_tokens,
    check_ledger,
    check_raw_table,
    raw_table_specs,
)
from pipelines.quality.gx_runner import SuiteOutcome

SOURCE_RESOURCE_KEYS = {"members": "member_source", "prospects": "prospect_source"}
# The catalogue asset stands for the analytics file as a whole (assets/analytics.py): checking the file there
# blocks everything downstream of the file.
ANALYTICS_FILE_KEY = dg.AssetKey(["analytics", "catalogue"])
# DuckDB lets one process write a file or many read it, not both: checks that read the warehouse queue in the
# same pool as the assets that write it.
WAREHOUSE_POOL = "warehouse"


def _result(
    outcomes: Sequence[SuiteOutcome], failure: dg.AssetCheckSeverity, unit: str = "rows"
) -> dg.AssetCheckResult:
    failed = [f for o in outcomes for f in o.metadata()["failures"]]
    return dg.AssetCheckResult(
        passed=not failed,
        severity=failure,
        metadata={
            f"{unit}_checked": dg.MetadataValue.int(sum(o.row_count for o in outcomes)),
            "expectations": dg.MetadataValue.int(sum(len(o.outcomes) for o in outcomes)),
            "failed_expectations": dg.MetadataValue.int(len(failed)),
            "unexpected_values": dg.MetadataValue.int(sum(f["unexpected_count"] for f in failed)),
            "failures": dg.MetadataValue.json(failed),
        },
    )


def _raw_check(spec: RawTableSpec) -> dg.AssetChecksDefinition:
    source_key = SOURCE_RESOURCE_KEYS.get(spec.system)

    @dg.asset_check(
        asset=dg.AssetKey(["raw", spec.table]),
        name="gx_raw_expectations",
        description=f"GX on the rows the last load of raw.{spec.table} brought in (all of them after a full copy; "
        "none on a night without changes), in bounded batches: keys not null, required columns present, e-mails "
        "well formed, dates parsed (plausible year; not null wherever the source held text). Keys unique over the "
        "whole table, in SQL.",
        required_resource_keys={"warehouse", *([source_key] if source_key else [])},
        pool=WAREHOUSE_POOL,
    )
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        warehouse: WarehouseResource = context.resources.warehouse
        source: SqlSourceResource | None = getattr(context.resources, source_key) if source_key else None
        with warehouse.connect(read_only=True) as con:
            outcome = check_raw_table(con, spec, source.engine() if source else None)
        # Malformed e-mails are a data-quality finding at the source; broken keys or lost dates are errors.
        structural = [o for o in outcome.failed if "well formed" not in o.label]
        return _result([outcome], dg.AssetCheckSeverity.ERROR if structural else dg.AssetCheckSeverity.WARN)

    return _check


raw_table_checks = [_raw_check(spec) for spec in raw_table_specs()]


@dg.asset_check(
    asset=LEDGER_KEY,
    name="gx_nothing_active_past_retention",
    description="GX: no ledger row is still 'active' after its active_until (as of the run's date).",
    pool=WAREHOUSE_POOL,
)
def ledger_check(
    context: dg.AssetCheckExecutionContext, config: RetentionConfig, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    as_of = as_of_date(config.as_of, context.run.tags)
    with warehouse.connect(read_only=True) as con:
        outcome = check_ledger(con, as_of)
    result = _result([outcome], dg.AssetCheckSeverity.ERROR)
    return dg.AssetCheckResult(
        passed=result.passed, severity=result.severity, metadata={**result.metadata, "as_of": as_of.isoformat()}
    )


def analytics_checks(
    asset_key: dg.AssetKey, file_path: Callable[[AnalyticsFileResource], Path] = lambda r: r.resolved_path
) -> list[dg.AssetChecksDefinition]:
    """The analytics-file checks on `asset_key`: identifiers (blocking) and tokens/catalogue (non-blocking).

    `file_path` says which file to read from the `analytics` resource (the staged file when publication is
    a separate, downstream step).
    """

    @dg.asset_check(
        asset=asset_key,
        name="gx_no_direct_identifier",
        blocking=True,
        description="GX, blocking: no e-mail, phone, IPv4 or French postal address in any text column of the "
        "analytics file. A failure stops everything downstream (publication to analysts).",
    )
    def identifiers(analytics: AnalyticsFileResource) -> dg.AssetCheckResult:
        # Counted over distinct non-token values per column (pipelines.quality.checks).
        return _result(check_analytics_identifiers(file_path(analytics)), dg.AssetCheckSeverity.ERROR, "values")

    @dg.asset_check(
        asset=asset_key,
        name="gx_tokens_and_catalogue",
        description="GX: pseudonym columns are 64 lowercase hex; every column is in the catalogue; token-like "
        "columns are catalogued with role 'pseudonym'.",
    )
    def tokens(analytics: AnalyticsFileResource) -> dg.AssetCheckResult:
        return _result(check_analytics_tokens(file_path(analytics)), dg.AssetCheckSeverity.ERROR)

    return [identifiers, tokens]


analytics_file_checks = analytics_checks(ANALYTICS_FILE_KEY)
