"""Stage "pseudonymised": the analysts' DuckDB file, built from the warehouse and published atomically.

One multi-asset builds every table of policies/pseudonymisation.yaml plus the catalogue into a new file,
checks it and swaps it in (pipelines/pseudo/publish.py); a failed check publishes nothing. The same
checks are exposed as blocking asset checks on the published file, so nothing downstream runs on a file
that would leak. Key material never enters config, metadata or logs: only the key version does.
"""

import json
from dataclasses import asdict

import dagster as dg
from pydantic import Field

from pipelines.orchestration import settings
from pipelines.orchestration.resources import (
    AnalyticsFileResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
)
from pipelines.orchestration.runs import as_of_date
from pipelines.pseudo.checks import CATALOGUE, attached, release_problems, validate_analytics_file
from pipelines.pseudo.policy import POLICY_FILE, PseudonymisationPolicy, load_pseudonymisation_policy
from pipelines.pseudo.publish import PublicationReport, publish_analytics
from pipelines.pseudo.tables import BUILDERS, REQUIRED_TABLES

OWNER = "team:data-engineering"
GROUP = "pseudonymised"
CATALOGUE_KEY = dg.AssetKey(["analytics", CATALOGUE])
UPSTREAM = [
    *(dg.AssetKey([schema, table]) for schema, table in REQUIRED_TABLES),
    dg.AssetKey(["rights", "exclusions"]),
    # Nothing past its retention reaches the analysts: the file is built after retention is applied.
    dg.AssetKey(["retention", "applied"]),
]


class AnalyticsConfig(dg.Config):
    as_of: str | None = Field(
        default=None,
        description="Reference date (YYYY-MM-DD) for ages; default: the run's `sem/as_of` tag, else today (Paris).",
    )


def _policy(policies: PoliciesResource) -> PseudonymisationPolicy:
    return load_pseudonymisation_policy(policies.resolved_path / POLICY_FILE)


def _specs() -> list[dg.AssetSpec]:
    tables = [
        dg.AssetSpec(
            key=["analytics", name],
            group_name=GROUP,
            deps=UPSTREAM,
            description=f"Analysts' table `{name}` (policies/pseudonymisation.yaml): tokens, generalised "
            "quasi-identifiers, small classes suppressed; restricted, objecting and erased people excluded.",
            kinds={"duckdb"},
            owners=[OWNER],
            tags={"stage": "pseudonymisation"},
        )
        for name in BUILDERS
    ]
    catalogue = dg.AssetSpec(
        key=CATALOGUE_KEY,
        group_name=GROUP,
        deps=UPSTREAM,
        description="Catalogue of the analysts' file: every table and column with its role (pseudonym, "
        "quasi_identifier, attribute, measure), token domain, key version and k.",
        kinds={"duckdb"},
        owners=[OWNER],
        tags={"stage": "pseudonymisation"},
    )
    return [*tables, catalogue]


def _table_metadata(report: PublicationReport, name: str, policy: PseudonymisationPolicy) -> dict:
    table = report.tables[name]
    kanon = table.kanon
    cells = {} if kanon.cells is None else {
        "cells_suppressed_under_k": dg.MetadataValue.int(kanon.cells.primary),
        "cells_suppressed_complementary": dg.MetadataValue.int(kanon.cells.complementary),
        "total_rows_published": dg.MetadataValue.int(kanon.cells.totals),
    }
    quality = table.quality
    release = {
        "distinct_values_kept": dg.MetadataValue.json(quality.distinct_kept),
        "prosecutor_risk_max": dg.MetadataValue.float(quality.prosecutor_max),
        "prosecutor_risk_avg": dg.MetadataValue.float(quality.prosecutor_avg),
        "journalist_risk_max": dg.MetadataValue.float(quality.journalist_max),
        "journalist_risk_avg": dg.MetadataValue.float(quality.journalist_avg),
        f"share_rows_in_classes_under_{policy.report.small_class}": dg.MetadataValue.float(quality.small_class_share),
        "quasi_identifiers_fully_suppressed": dg.MetadataValue.int(quality.quasi_identifiers_fully_suppressed),
        "analyst_query_error": dg.MetadataValue.json({n: asdict(e) for n, e in quality.queries.items()}),
    }
    return cells | release | {
        "dagster/row_count": dg.MetadataValue.int(table.rows),
        "k": dg.MetadataValue.int(kanon.k),
        "achieved_k": dg.MetadataValue.int(kanon.achieved_k or 0),
        "rows_before_suppression": dg.MetadataValue.int(kanon.rows_in),
        "rows_suppressed": dg.MetadataValue.int(kanon.rows_suppressed),
        "suppression_ratio": dg.MetadataValue.float(round(kanon.suppression_ratio, 4)),
        "generalisation_loss": dg.MetadataValue.float(kanon.generalisation_loss),
        "loss_measure": dg.MetadataValue.text(kanon.loss_measure),
        "generalisation_levels": dg.MetadataValue.json(kanon.levels),
        "runner_up_nodes": dg.MetadataValue.json([asdict(node) for node in kanon.runner_ups]),
        "lattice_nodes": dg.MetadataValue.int(kanon.nodes_in_lattice),
        "lattice_nodes_counted": dg.MetadataValue.int(kanon.nodes_evaluated),
        "token_domain": dg.MetadataValue.text(policy.tables[name].domain),
        "key_version": dg.MetadataValue.int(table.key_version or 0),
    }


@dg.multi_asset(
    name="analytics_file",
    specs=_specs(),
    can_subset=False,
    pool="warehouse",
    description="Build, check and atomically publish the analysts' pseudonymised DuckDB file.",
)
def analytics_file(
    context: dg.AssetExecutionContext,
    config: AnalyticsConfig,
    warehouse: WarehouseResource,
    analytics: AnalyticsFileResource,
    pseudonymisation_key: PseudonymisationKeyResource,
    policies: PoliciesResource,
):
    policy = _policy(policies)
    missing = sorted(set(BUILDERS) - set(policy.tables))
    if missing:
        raise ValueError(f"policies/{POLICY_FILE} declares no table {missing}: every analytics asset needs one")
    as_of = as_of_date(config.as_of, context.run.tags)
    domains = sorted({table.domain for table in policy.tables.values()})
    report = publish_analytics(
        warehouse.resolved_path,
        analytics.resolved_path,
        policy,
        pseudonymisation_key.domain_keys(domains),
        pseudonymisation_key.key_version,
        as_of,
        policies.load(),
        memory_limit=settings.duckdb_memory_limit(),
    )
    context.log.info(f"analytics file published with key version {report.key_version}, as of {as_of}")
    for name in BUILDERS:
        yield dg.MaterializeResult(asset_key=["analytics", name], metadata=_table_metadata(report, name, policy))
    yield dg.MaterializeResult(
        asset_key=CATALOGUE_KEY,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(sum(len(t.columns) for t in policy.tables.values())),
            "key_version": dg.MetadataValue.int(report.key_version),
            "as_of": dg.MetadataValue.text(as_of.isoformat()),
            "policy_version": dg.MetadataValue.int(policy.version),
            "excluded_records": dg.MetadataValue.json(report.excluded),
        },
    )


def _file_check(name: str, description: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=CATALOGUE_KEY,
        name=name,
        blocking=True,
        description=description,
        pool="warehouse",
    )
    def _check(
        warehouse: WarehouseResource, analytics: AnalyticsFileResource, policies: PoliciesResource
    ) -> dg.AssetCheckResult:
        problems = validate_analytics_file(
            analytics.resolved_path, warehouse.resolved_path, _policy(policies), checks=(name,)
        )[name]
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={"problems": dg.MetadataValue.int(len(problems)),
                      "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
        )

    return _check


no_direct_identifiers = _file_check(
    "no_direct_identifiers",
    "No value of any warehouse direct-identifier column (policy `direct_identifiers`), raw or normalised, and "
    "nothing shaped like an e-mail or IP address, appears anywhere in the published analytics file.",
)
k_anonymity = _file_check(
    "k_anonymity",
    "Every row-level table is k-anonymous on its quasi-identifiers (and l-diverse where declared) and every "
    "aggregate cell counts at least k people (k, l from policies/pseudonymisation.yaml).",
)
@dg.asset_check(
    asset=CATALOGUE_KEY,
    name="release_utility_and_risk",
    blocking=False,
    description="The release's utility and risk report (catalogue `release_report`) is within the thresholds "
    "of policies/pseudonymisation.yaml `report` (prosecutor risk, analyst query error) and every table's row "
    "suppression within its budget. Warns: k, l and identifiers are the blocking checks.",
    pool="warehouse",
)
def release_utility_and_risk(analytics: AnalyticsFileResource, policies: PoliciesResource) -> dg.AssetCheckResult:
    policy = _policy(policies)
    with attached(analytics.resolved_path) as con:
        problems = release_problems(con, policy)
        figures = dict(con.execute(
            f"SELECT DISTINCT table_name, release_report FROM pub.main.{CATALOGUE} ORDER BY 1"
        ).fetchall())
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "problems": dg.MetadataValue.int(len(problems)),
            "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "release_report": dg.MetadataValue.json({t: json.loads(r) for t, r in figures.items()}),
        },
    )


catalogue_complete = _file_check(
    "catalogue_complete",
    "Every published table and column is described in the catalogue, and the catalogue describes nothing else.",
)
