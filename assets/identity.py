"""Stage "identity": one person id linking member, prospect and visitor records and their contacts."""

from __future__ import annotations

import dagster as dg

from pipelines.duck import scalar
from pipelines.identity import resolve_identities
from pipelines.orchestration.resources import PoliciesResource, WarehouseResource


@dg.asset(
    key=["identity", "person_links"],
    group_name="identity",
    deps=[dg.AssetKey(["raw", t]) for t in ("members", "prospects", "navigation_events")],
    description="Identity graph: person_id ↔ member ids, prospect ids, visitor cookies, normalised e-mails "
    "and E.164 phones, joined only by the rules of datasets.yaml `identity` (a contact several members share "
    "is flagged in identity.ambiguities, never a merge). Every erasure, restriction or objection reaches all "
    "of a person's records through it.",
    kinds={"duckdb"},
    owners=["team:data-engineering"],
    tags={"stage": "identity"},
    pool="warehouse",
)
def person_links(warehouse: WarehouseResource, policies: PoliciesResource) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        stats = resolve_identities(con, policies.load().datasets_file.identity)
        rows = scalar(con, "SELECT count(*) FROM identity.person_links")
    metadata = {k: dg.MetadataValue.int(v) for k, v in stats.items()}
    return dg.MaterializeResult(metadata={"dagster/row_count": dg.MetadataValue.int(rows), **metadata})
