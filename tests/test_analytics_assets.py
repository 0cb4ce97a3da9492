"""The analytics stage in Dagster: materialisation, blocking checks, metadata, and no key anywhere."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.analytics import (
    CATALOGUE_KEY,
    analytics_file,
    catalogue_complete,
    k_anonymity,
    no_direct_identifiers,
    release_utility_and_risk,
)
from pipelines.orchestration.resources import (
    AnalyticsFileResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    WarehouseResource,
)
from pipelines.orchestration.settings import KEY_ENV, PROJECT_ROOT, VERSION_ENV
from pipelines.pseudo.keys import derive_domain_key
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.pseudo.tokens import hmac_pads
from tests.test_analytics_publish import build_warehouse

HEX_KEY = "c3" * 16 + "5a" * 16
ASSETS = [analytics_file, no_direct_identifiers, k_anonymity, catalogue_complete, release_utility_and_risk]


@pytest.fixture(autouse=True)
def _key_only_from_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(VERSION_ENV, raising=False)


def _resources(tmp_path: Path, key_file: Path) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
        "analytics": AnalyticsFileResource(path=str(tmp_path / "analytics" / "analytics.duckdb")),
        "pseudonymisation_key": PseudonymisationKeyResource(key_file=str(key_file)),
        "policies": PoliciesResource(),
    }


def _policy_tables() -> list[str]:
    return list(load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml").tables)


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "pseudonymisation.key"
    path.parent.mkdir()
    path.write_text(HEX_KEY)
    path.chmod(0o600)
    return path


def _secret_forms() -> dict[str, bytes]:
    """Every form of key material that must not be written anywhere: master and domain keys, hex and raw."""
    master = bytes.fromhex(HEX_KEY)
    forms = {"master hex": HEX_KEY.encode(), "master raw": master}
    for domain in ("statistics", "marketing"):
        key = bytes(derive_domain_key(master, domain, 1))
        ipad, opad = hmac_pads(key)
        forms |= {f"{domain} hex": key.hex().encode(), f"{domain} raw": key,
                  f"{domain} ipad": bytes(ipad), f"{domain} opad": bytes(opad)}
    return forms


def test_materialisation_publishes_checks_and_leaks_no_key(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    build_warehouse(tmp_path / "warehouse.duckdb")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        result = dg.materialize(
            ASSETS, resources=_resources(tmp_path, _key_file(tmp_path)), instance=instance,
            # The day comes from the run's tag, as the nightly schedule sets it.
            tags={"sem/as_of": "2026-06-15"},
        )
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert {c.check_name for c in checks} == {"no_direct_identifiers", "k_anonymity", "catalogue_complete",
                                                  "release_utility_and_risk"}
        assert all(c.passed for c in checks if c.check_name != "release_utility_and_risk")
        release = next(c for c in checks if c.check_name == "release_utility_and_risk")
        figures = release.metadata["release_report"].value
        assert set(figures) == set(_policy_tables())
        assert all(0 <= t["prosecutor_max"] <= 0.2 and 0 <= t["suppression_ratio"] <= 1 for t in figures.values())
        # Numbers only: no published value travels in the report.
        assert all(isinstance(e["mean_relative_error"], float) for t in figures.values() for e in t["queries"].values())
        members = next(
            m for m in result.get_asset_materialization_events()
            if m.asset_key == dg.AssetKey(["analytics", "members_pseudo"])
        ).materialization.metadata
        assert members["achieved_k"].value >= members["k"].value == 5
        assert {"rows_suppressed", "suppression_ratio", "generalisation_loss", "key_version", "runner_up_nodes",
                "lattice_nodes", "lattice_nodes_counted"} <= set(members)
        assert members["lattice_nodes_counted"].value <= members["lattice_nodes"].value == 3 * 1 * 2 * 2 * 5
        catalogue = next(
            m for m in result.get_asset_materialization_events() if m.asset_key == CATALOGUE_KEY
        ).materialization.metadata
        assert catalogue["as_of"].value == "2026-06-15"
    captured = capfd.readouterr()
    outputs = [tmp_path / "analytics" / "analytics.duckdb", tmp_path / "warehouse.duckdb",
               *(p for p in dagster_home.rglob("*") if p.is_file())]
    assert len(outputs) > 3
    for name, secret in _secret_forms().items():
        for path in outputs:
            assert secret not in path.read_bytes(), f"{name} found in {path}"
        assert secret.decode("latin-1") not in captured.out + captured.err, f"{name} in the logs"


def test_missing_key_fails_the_run_and_publishes_nothing(tmp_path: Path) -> None:
    build_warehouse(tmp_path / "warehouse.duckdb")
    result = dg.materialize(
        ASSETS, resources=_resources(tmp_path, tmp_path / "absent.key"), raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "no pseudonymisation key" in failure.step_failure_data.error.cause.message
    assert not (tmp_path / "analytics").exists() or not any((tmp_path / "analytics").iterdir())
