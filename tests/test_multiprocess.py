"""Beyond one run: the project's executor and pools on the real jobs, and the production instance."""

from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema, validate_concurrency_config

from assets.quality_checks import WAREHOUSE_POOL
from pipelines.definitions import defs

PRODUCTION_YAML = Path(__file__).resolve().parents[1] / "deploy" / "dagster.production.yaml"


def test_project_jobs_run_their_steps_in_the_run_process_after_clearing_dead_runs():
    # The run itself, launched as the UI does, is in tests/test_webserver.py; a second run waiting for the
    # warehouse slot the first holds, and dead runs cleared, in tests/test_dead_runs.py.
    for name in ("nightly_job", "rights_job", "policy_preview_job"):
        executor = defs.resolve_job_def(name).executor_def
        assert executor.name == "in_process_clearing_dead_runs"


@pytest.mark.parametrize("job_name", ["nightly_job", "rights_job", "policy_preview_job"])
def test_every_step_that_opens_the_warehouse_is_in_the_one_writer_pool(job_name):
    # DuckDB lets one process hold the file for writing and refuses readers from other processes meanwhile:
    # a reader outside the pool could run beside a writer step and fail on the file lock.
    job = defs.resolve_job_def(job_name)
    opens = {n.name: n.definition.pool for n in job.graph.nodes if "warehouse" in n.definition.required_resource_keys}
    assert opens and all(pool == WAREHOUSE_POOL for pool in opens.values()), opens


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
