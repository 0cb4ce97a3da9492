"""A benchmark site: a data folder (sources, warehouse, analytics file, audit log…) with its own Dagster instance,
on which jobs run as a whole process and are measured (pipelines/bench/measure.py).

Two ways to launch the same job, as `make bench` compares them:
- in process: `python -m pipelines.demo job` (what `make demo` and the tests do);
- as the UI and the schedule launch it: `dagster job execute` with the schedule's `sem/as_of` tag, partition and
  config, on the job's own executor and the project's dagster.yaml (run launcher, pools, monitoring).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from pipelines.bench.measure import Measured, attach_last_run, run_measured
from pipelines.orchestration import settings

BIN = Path(sys.executable).parent
# The benchmark's own pseudonymisation key: tokens only need to be stable across the site's runs.
BENCH_KEY_HEX = "b3" * 32


class Site:
    """`root/data` is SEM_DATA_DIR, `root/dagster_home` the instance (the project's dagster.yaml)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data, self.home = root / "data", root / "dagster_home"

    @classmethod
    def create(cls, root: Path, sources: Path) -> Site:
        """A new site whose sources are a copy of `sources` (the cached workload is never changed)."""
        site = cls(root)
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(sources, site.data / "sources")
        site.home.mkdir(parents=True)
        shutil.copy(settings.PROJECT_ROOT / "dagster.yaml", site.home / "dagster.yaml")
        return site

    def clone(self, root: Path) -> Site:
        """A copy of this site as it is now (sources, warehouse, instance), to run the same night twice."""
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(self.root, root)
        return Site(root)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "SEM_DATA_DIR": str(self.data), "DAGSTER_HOME": str(self.home),
               "SEM_PSEUDONYMISATION_KEY": BENCH_KEY_HEX, "DAGSTER_DISABLE_TELEMETRY": "yes"}
        # Every path under this site's data folder, with the defaults; the tuning variables are passed on.
        keep = ("SEM_DATA_DIR", "SEM_PSEUDONYMISATION_KEY", "SEM_DUCKDB_MEMORY_LIMIT", "SEM_WAREHOUSE_LOCK_TIMEOUT",
                "SEM_LEDGER_SLICE_RECORDS")
        for var in [v for v in env if v.startswith("SEM_") and v not in keep]:
            env.pop(var)
        return env

    def _measure(self, label: str, command: list[str]) -> Measured:
        log = self.root / f"{label.replace(' ', '_')}.log"
        measured = run_measured(label, command, self.env(), settings.PROJECT_ROOT, log)
        return attach_last_run(measured, self.home)

    def in_process(self, label: str, as_of: dt.date, job: str = "nightly_job") -> Measured:
        return self._measure(label, [str(BIN / "python"), "-m", "pipelines.demo", "job", "--job", job,
                                     "--as-of", as_of.isoformat()])

    def as_scheduled(self, label: str, as_of: dt.date, job: str = "nightly_job") -> Measured:
        """`dagster job execute` with the schedule's tags, partition and run config."""
        from pipelines.definitions import defs
        from pipelines.orchestration.partitions import nightly_partition
        from pipelines.orchestration.runs import AS_OF_TAG
        from sensors.schedules import as_of_run_config

        config = self.root / f"{job}-{as_of}.yaml"
        config.write_text(yaml.safe_dump(as_of_run_config(defs.resolve_job_def(job), as_of)))
        tags = {AS_OF_TAG: as_of.isoformat()}
        if (partition := nightly_partition(as_of)) is not None:
            tags["dagster/partition"] = partition
        return self._measure(label, [str(BIN / "dagster"), "job", "execute", "-m", "pipelines.definitions",
                                     "-j", job, "-c", str(config), "--tags", json.dumps(tags)])
