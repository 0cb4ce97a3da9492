"""Jobs: the nightly run of everything, the rights run, and the policy-change preview."""

from __future__ import annotations

import dagster as dg

from pipelines.orchestration.dead_runs import clearing_multiprocess_executor
from pipelines.orchestration.runs import NIGHTLY_JOB, POLICY_PREVIEW_JOB, PREVIEW_KEY, RIGHTS_JOB

nightly_job = dg.define_asset_job(
    name=NIGHTLY_JOB,
    # The policy-change preview evaluates the whole ledger again under a proposed policy: it runs when a policy
    # file changes (policy_preview_job, started by the policy-change sensor), not every night.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(PREVIEW_KEY),
    description="Everything but the policy-change preview, in dependency order: ingest, identity, retention, "
    "rights, pseudonymised analytics, compliance outputs. Scheduled every night (Europe/Paris).",
    tags={"sem/warehouse-writer": "true"},
)

rights_job = dg.define_asset_job(
    name=RIGHTS_JOB,
    # Retention is left to the nightly run: a rights run re-reads the sources, decides, pushes back and
    # re-publishes what depends on the decisions, without waiting for a full retention pass.
    selection=(dg.AssetSelection.groups("sources", "identity", "rights")
               | dg.AssetSelection.groups("rights").downstream()) - dg.AssetSelection.groups("retention"),
    description="Rights of the person: ingest the requests and everything they touch, decide, push back, "
    "confirm, re-publish the analytics file. Started by the rights-request sensor.",
    tags={"sem/warehouse-writer": "true"},
)

policy_preview_job = dg.define_asset_job(
    name=POLICY_PREVIEW_JOB,
    selection=dg.AssetSelection.assets(PREVIEW_KEY),
    description="What a proposed policy version would archive or erase, per purpose and dataset — read-only. "
    "Started by the policy-change sensor when a file under policies/ changes.",
)

ALL_JOBS = [nightly_job, rights_job, policy_preview_job]

# Steps run in their own processes (a failing or leaking step cannot take the run down). A fork server imports
# the definitions (Dagster, DuckDB, GX, pandas) once and forks every step from it: spawning a fresh interpreter
# per step cost ~6 s of imports for each of the ~45 steps. One step at a time: nearly every step opens the
# DuckDB warehouse, which one process at a time may hold, and a second step would only wait in the `warehouse`
# pool, whose blocked claims back off up to 15 s each. The pool still keeps other runs' steps off the file.
# Before any step claims a pool slot, the executor frees the slots of runs that died (orchestration/dead_runs.py).
MULTIPROCESS_EXECUTOR = clearing_multiprocess_executor.configured(
    {"max_concurrent": 1, "start_method": {"forkserver": {"preload_modules": ["pipelines.definitions"]}}},
    name="forkserver_multiprocess",
)
