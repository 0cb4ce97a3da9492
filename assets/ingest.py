"""Stage "sources": raw, typed copies of the three source systems in the warehouse (`raw` schema)."""

import dagster as dg

from assets.quality_checks import WAREHOUSE_POOL
from pipelines.ingest import IngestResult, change_marker, ingest_sql_table, quarantine_fields
from pipelines.navigation import DayCounts, day_counts, ingest_navigation_table
from pipelines.navigation_days import days_of_files
from pipelines.orchestration.partitions import NAVIGATION_DAYS, current_partitions
from pipelines.orchestration.resources import (
    NavigationSourceResource,
    PoliciesResource,
    SqlSourceResource,
    WarehouseResource,
)
from pipelines.sources.schema import SQL_SYSTEMS

OWNER = "team:data-engineering"
SYSTEM_LABELS = {"members": "member system", "prospects": "prospecting platform"}


class IngestConfig(dg.Config):
    """`full_reread`: copy every table whole, whatever its change marker (a watermark can be trusted no more)."""

    full_reread: bool = False


def _metadata(result: IngestResult) -> dict[str, dg.MetadataValue]:
    return {
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "quarantined_rows": dg.MetadataValue.int(result.quarantined),
    }


def _sql_metadata(result: IngestResult) -> dict[str, dg.MetadataValue]:
    """Besides the table's counts, what this load read: a full copy, or the changes since the watermark."""
    return {
        **_metadata(result),
        "load": dg.MetadataValue.text("full copy" if result.full else "incremental"),
        "rows_read": dg.MetadataValue.int(result.read),
        "rows_new": dg.MetadataValue.int(result.new),
        "rows_changed": dg.MetadataValue.int(result.changed),
        "rows_deleted": dg.MetadataValue.int(result.deleted),
        "watermark": dg.MetadataValue.text(str(result.watermark) if result.watermark else "none (no change marker)"),
    }


def _sql_system_assets(system: str, source_resource_key: str) -> dg.AssetsDefinition:
    metadata = SQL_SYSTEMS[system]
    specs = [
        dg.AssetSpec(
            key=["raw", table.name],
            group_name="sources",
            description=f"Typed copy of `{table.name}` from the {SYSTEM_LABELS[system]} (the rows changed since "
            "the last load where policies declare a change marker, else the whole table; rows breaking the "
            "declared schema go to raw.quarantine with the reason).",
            kinds={"duckdb", "sql"},
            owners=[OWNER],
            tags={"stage": "ingest", "source_system": system},
        )
        for table in metadata.sorted_tables
    ]

    @dg.multi_asset(
        name=f"ingest_{system}",
        specs=specs,
        can_subset=True,
        pool="warehouse",
        required_resource_keys={"warehouse", source_resource_key, "policies"},
    )
    def _ingest(context: dg.AssetExecutionContext, config: IngestConfig):
        warehouse: WarehouseResource = context.resources.warehouse
        policy = context.resources.policies.load()
        source: SqlSourceResource = getattr(context.resources, source_resource_key)
        engine = source.engine()
        selected = {key.path[-1] for key in context.selected_asset_keys}
        with warehouse.connect() as con:
            for table in metadata.sorted_tables:
                if table.name not in selected:
                    continue
                result = ingest_sql_table(con, engine, system, table, quarantine_fields(policy, table.name),
                                          marker=change_marker(policy, table.name), full=config.full_reread)
                if result.quarantined:
                    context.log.warning(f"{table.name}: {result.quarantined} row(s) quarantined (see raw.quarantine)")
                yield dg.MaterializeResult(asset_key=["raw", table.name], metadata=_sql_metadata(result))

    return _ingest


ingest_members = _sql_system_assets("members", "member_source")
ingest_prospects = _sql_system_assets("prospects", "prospect_source")


@dg.asset(
    key=["raw", "navigation_events"],
    group_name="sources",
    description="Web-analytics events of www.mutuelle-sem.fr, one partition per Paris day (the source's "
    "`day=` folders). A run reads its days' files again and also brings in every other day file that is new, "
    "rewritten or removed at the source (each recorded on its own day), so retention and erasure always see the "
    "whole log. Events without visitor, id or time are quarantined.",
    kinds={"duckdb", "parquet"},
    owners=[OWNER],
    tags={"stage": "ingest", "source_system": "navigation"},
    pool="warehouse",
    partitions_def=NAVIGATION_DAYS,
    # A backfill over many days is one run reading their files in one statement, not one run per day.
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def navigation_events(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, navigation: NavigationSourceResource,
    policies: PoliciesResource,
) -> dg.MaterializeResult:
    days = context.partition_keys if context.has_partition_key or context.has_partition_key_range else []
    fields = quarantine_fields(policies.load(), "navigation_events")
    with warehouse.connect() as con:
        result = ingest_navigation_table(con, navigation.resolved_path, "navigation_events", reread_days=days,
                                         fields=fields)
        counts = day_counts(con, {*days, *days_of_files(result.replaced_files)})
    partitions = current_partitions()
    caught_up = [c for day, c in counts.items() if day not in days and day in partitions]
    for one_day in caught_up:
        context.log_event(dg.AssetMaterialization(
            asset_key=context.asset_key, partition=one_day.day, metadata=_day_metadata(one_day, "caught up"),
        ))
    own = [counts[day] for day in days]
    return dg.MaterializeResult(metadata={
        # Per day (what the partition view charts); the whole table for a run without a day.
        "dagster/row_count": dg.MetadataValue.int(sum(c.rows for c in own) if days else result.rows),
        "quarantined_in_run_days": dg.MetadataValue.int(sum(c.quarantined for c in own)),
        "table_rows": dg.MetadataValue.int(result.rows),
        "table_quarantined_rows": dg.MetadataValue.int(result.quarantined),
        "run_days_without_file": dg.MetadataValue.int(sum(not c.has_file for c in own)),
        "days_caught_up": dg.MetadataValue.int(len(caught_up)),
        "days_outside_partitions": dg.MetadataValue.int(
            sum(day not in days and day not in partitions for day in counts)
        ),
        # Unreadable or wrongly shaped day files are set aside (raw.quarantine_files), the other days go in.
        "files_quarantined": dg.MetadataValue.json(result.quarantined_files),
    })


@dg.asset_check(
    asset=dg.AssetKey(["raw", "navigation_events"]),
    name="navigation_files_readable",
    pool=WAREHOUSE_POOL,
    description="Every navigation file could be read with the declared columns; a corrupt, truncated or wrongly "
    "shaped file is listed with its reason (raw.quarantine_files) and read again once it changes.",
)
def navigation_files_readable(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        bad = con.execute(
            "SELECT path, reason FROM raw.quarantine_files ORDER BY path"
            if con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'raw' "
                           "AND table_name = 'quarantine_files'").fetchall()[0][0] else "SELECT NULL, NULL WHERE false"
        ).fetchall()
    return dg.AssetCheckResult(
        passed=not bad, severity=dg.AssetCheckSeverity.WARN,
        metadata={"files_quarantined": dg.MetadataValue.int(len(bad)),
                  "files": dg.MetadataValue.json({path: reason for path, reason in bad})},
    )


def _day_metadata(counts: DayCounts, how: str) -> dict[str, dg.MetadataValue]:
    return {
        "dagster/row_count": dg.MetadataValue.int(counts.rows),
        "quarantined_in_day": dg.MetadataValue.int(counts.quarantined),
        "day_file": dg.MetadataValue.text("present" if counts.has_file else "absent (none or removed at source)"),
        "ingested_as": dg.MetadataValue.text(how),
    }


@dg.asset(
    key=["raw", "cookie_consents"],
    group_name="sources",
    description="Cookie-consent log (visitor, time, analytics yes/no, advertising yes/no): one file, ingested "
    "again only when it changed.",
    kinds={"duckdb", "parquet"},
    owners=[OWNER],
    tags={"stage": "ingest", "source_system": "navigation"},
    pool="warehouse",
)
def cookie_consents(
    warehouse: WarehouseResource, navigation: NavigationSourceResource, policies: PoliciesResource
) -> dg.MaterializeResult:
    fields = quarantine_fields(policies.load(), "cookie_consents")
    with warehouse.connect() as con:
        result = ingest_navigation_table(con, navigation.resolved_path, "cookie_consents", fields=fields)
    return dg.MaterializeResult(metadata=_metadata(result))
