"""End to end on generated demo data: generator -> ingest -> identity -> analytics file, every check green."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from pipelines.demo.generate import generate
from pipelines.identity import resolve_identities
from pipelines.ingest import ingest_parquet, ingest_sql_table, navigation_columns
from pipelines.orchestration import settings
from pipelines.orchestration.resources import SqlSourceResource
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.pseudo.checks import validate_analytics_file
from pipelines.pseudo.keys import derive_domain_key
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.pseudo.publish import publish_analytics
from pipelines.sources.schema import (
    COOKIE_CONSENT_SCHEMA,
    NAVIGATION_EVENT_SCHEMA,
    NAVIGATION_REQUIRED,
    SQL_SYSTEMS,
)
from tests.conftest import identity_rules

AS_OF = dt.date(2026, 11, 27)


@pytest.fixture(scope="module")
def generated_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    sources = root / "sources"
    generate(sources, members=400, seed=7, as_of=AS_OF)
    warehouse = root / "warehouse.duckdb"
    with duckdb.connect(str(warehouse)) as con:
        for system, metadata in SQL_SYSTEMS.items():
            engine = SqlSourceResource(system=system, url=f"sqlite:///{sources / (system + '.db')}").engine()
            for table in metadata.sorted_tables:
                ingest_sql_table(con, engine, system, table)
            engine.dispose()
        navigation = sources / "navigation"
        ingest_parquet(con, navigation / "events", table="navigation_events",
                       columns=navigation_columns(NAVIGATION_EVENT_SCHEMA), required=list(NAVIGATION_REQUIRED))
        ingest_parquet(con, navigation / "consents", table="cookie_consents",
                       columns=navigation_columns(COOKIE_CONSENT_SCHEMA),
                       required=["consent_id", "visitor_id", "consented_at"])
        resolve_identities(con, identity_rules())
    return warehouse


def test_generated_data_publishes_a_file_that_passes_every_check(generated_warehouse: Path, tmp_path: Path) -> None:
    policy = load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")
    master = bytes(range(32))
    keys = {d: derive_domain_key(master, d, 1) for d in policy.domains}
    analytics = tmp_path / "analytics.duckdb"
    report = publish_analytics(generated_warehouse, analytics, policy, keys, 1, AS_OF,
                               load_policy(settings.policies_dir()))
    assert validate_analytics_file(analytics, generated_warehouse, policy) == {
        "no_direct_identifiers": [], "k_anonymity": [], "catalogue_complete": []
    }
    for name, table in report.tables.items():
        assert table.rows > 0, name
        assert table.kanon.achieved_k >= policy.k_of(name), name
    with duckdb.connect(str(generated_warehouse), read_only=True) as con:
        restricted = con.execute("SELECT count(*) FROM raw.members WHERE restricted_at IS NOT NULL").fetchall()[0][0]
        members = con.execute("SELECT count(*) FROM raw.members").fetchall()[0][0]
        # Statistics runs while the membership does (P0D from its end, the last day kept whole).
        ended = con.execute(
            "SELECT count(*) FROM (SELECT member_id FROM raw.contracts GROUP BY member_id "
            "HAVING bool_and(end_date IS NOT NULL) AND max(end_date) < ?) e "
            "JOIN raw.members m USING (member_id) WHERE m.restricted_at IS NULL", [AS_OF]).fetchall()[0][0]
    kanon = report.tables["members_pseudo"].kanon
    assert 0 < ended < members
    assert kanon.rows_in == members - restricted - ended
