"""Stage "sources": raw, typed copies of the three source systems in the warehouse (`raw` schema)."""

import dagster as dg

from pipelines.ingest import IngestResult, ingest_sql_table
from pipelines.refresh import ingest_navigation_table
from pipelines.resources import NavigationSourceResource, SqlSourceResource, WarehouseResource
from pipelines.sources.schema import SQL_SYSTEMS

OWNER = "team:data-engineering"
SYSTEM_LABELS = {"members": "member system", "prospects": "prospecting platform"}


def _metadata(result: IngestResult) -> dict[str, dg.MetadataValue]:
    return {
        "dagster/row_count": dg.MetadataValue.int(result.rows),
        "quarantined_rows": dg.MetadataValue.int(result.quarantined),
    }


def _sql_system_assets(system: str, source_resource_key: str) -> dg.AssetsDefinition:
    metadata = SQL_SYSTEMS[system]
    specs = [
        dg.AssetSpec(
            key=["raw", table.name],
            group_name="sources",
            description=f"Typed copy of `{table.name}` from the {SYSTEM_LABELS[system]} (full refresh; "
            "rows breaking the declared schema go to raw.quarantine with the reason).",
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
        required_resource_keys={"warehouse", source_resource_key},
    )
    def _ingest(context: dg.AssetExecutionContext):
        warehouse: WarehouseResource = context.resources.warehouse
        source: SqlSourceResource = getattr(context.resources, source_resource_key)
        engine = source.engine()
        selected = {key.path[-1] for key in context.selected_asset_keys}
        with warehouse.connect() as con:
            for table in metadata.sorted_tables:
                if table.name not in selected:
                    continue
                result = ingest_sql_table(con, engine, system, table)
                if result.quarantined:
                    context.log.warning(f"{table.name}: {result.quarantined} row(s) quarantined (see raw.quarantine)")
                yield dg.MaterializeResult(asset_key=["raw", table.name], metadata=_metadata(result))

    return _ingest


ingest_members = _sql_system_assets("members", "member_source")
ingest_prospects = _sql_system_assets("prospects", "prospect_source")


def _navigation_asset(table: str, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw", table],
        group_name="sources",
        description=description,
        kinds={"duckdb", "parquet"},
        owners=[OWNER],
        tags={"stage": "ingest", "source_system": "navigation"},
        pool="warehouse",
    )
    def _ingest(warehouse: WarehouseResource, navigation: NavigationSourceResource) -> dg.MaterializeResult:
        with warehouse.connect() as con:
            result = ingest_navigation_table(con, navigation.resolved_path, table)
        return dg.MaterializeResult(metadata=_metadata(result))

    return _ingest


navigation_events = _navigation_asset(
    "navigation_events",
    "Web-analytics events of www.mutuelle-sem.fr (day-partitioned Parquet), ingested incrementally: only new "
    "or rewritten day files are read. Events without visitor, id or time are quarantined.",
)
cookie_consents = _navigation_asset(
    "cookie_consents",
    "Cookie-consent log (visitor, time, analytics yes/no, advertising yes/no), ingested incrementally.",
)
