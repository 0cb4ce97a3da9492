"""Beyond one process: real assets and GX checks under the multiprocess executor, and the production instance."""

import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema, validate_concurrency_config

from assets.ingest import ingest_members, navigation_events
from assets.quality_checks import WAREHOUSE_POOL, raw_table_checks
from pipelines.jobs import MULTIPROCESS_EXECUTOR
from pipelines.resources import default_resources

PRODUCTION_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.production.yaml"
TABLES = ("members", "interactions", "navigation_events")
CHECKED = dg.AssetKey(["raw", "members"])


def multiprocess_job() -> dg.JobDefinition:
    """Ingest of three raw tables and the GX check of one, two processes at a time (loaded in each process)."""
    keys = [dg.AssetKey(["raw", t]) for t in TABLES]
    selection = dg.AssetSelection.assets(*keys).without_checks() | dg.AssetSelection.checks_for_assets(CHECKED)
    defs = dg.Definitions(
        assets=[ingest_members, navigation_events],
        asset_checks=raw_table_checks,
        jobs=[
            dg.define_asset_job(
                "multiprocess_ingest",
                selection=selection,
                executor_def=MULTIPROCESS_EXECUTOR,  # the project's executor, as `dagster dev` runs use
            )
        ],
        resources=default_resources(),
    )
    return defs.resolve_job_def("multiprocess_ingest")


@pytest.fixture
def environment(sandbox, monkeypatch) -> Path:
    """Step processes resolve every path from the environment, like a run pod does."""
    monkeypatch.setenv("SEM_DATA_DIR", str(sandbox.root))
    monkeypatch.setenv("SEM_WAREHOUSE_PATH", str(sandbox.warehouse))
    monkeypatch.setenv("SEM_MEMBERS_URL", sandbox.members_url)
    monkeypatch.setenv("SEM_PROSPECTS_URL", sandbox.prospects_url)
    monkeypatch.setenv("SEM_NAVIGATION_DIR", str(sandbox.sources / "navigation"))
    return sandbox.warehouse


def test_real_assets_and_checks_run_in_separate_processes_one_warehouse_writer_at_a_time(environment, tmp_path):
    # Both ingest steps write warehouse.duckdb; the `warehouse` pool (limit 1) keeps them from holding the
    # file at the same time, as the production instance does.
    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        result = dg.execute_job(dg.reconstructable(multiprocess_job), instance=instance)
        assert result.success
        events = instance.all_logs(result.run_id)
    step_pids = {e.dagster_event.pid for e in events if e.is_dagster_event and e.dagster_event.is_step_start}
    assert len(step_pids) >= 2 and os.getpid() not in step_pids
    evaluations = {
        e.dagster_event.event_specific_data.asset_key.path[-1]: e.dagster_event.event_specific_data.passed
        for e in events
        if e.is_dagster_event and e.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }
    assert evaluations == {"members": True}
    with duckdb.connect(str(environment), read_only=True) as con:
        for table in TABLES:
            assert con.execute(f"SELECT count(*) FROM raw.{table}").fetchall()[0][0] > 0


def test_project_jobs_run_their_steps_in_forked_processes():
    from pipelines.definitions import defs

    for name in ("nightly_job", "rights_job", "policy_preview_job"):
        executor = defs.resolve_job_def(name).executor_def
        assert executor.name == "forkserver_multiprocess"


def test_warehouse_steps_share_one_pool():
    job = multiprocess_job()
    pools = {node.name: node.definition.pool for node in job.graph.nodes}
    assert pools and set(pools.values()) == {WAREHOUSE_POOL}


def test_production_instance_is_valid_and_serialises_warehouse_writers():
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    validation = validate_config(dagster_instance_config_schema(), config)
    assert validation.success, validation.errors
    validate_concurrency_config(config)
    # Secrets come from the pod's environment, never from the file.
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    limits = {limit["key"]: limit["limit"] for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits["sem/warehouse-writer"] == 1
    assert config["concurrency"]["pools"]["default_limit"] == 1
