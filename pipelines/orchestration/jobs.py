"""Jobs: the nightly run of everything, the rights run, and the policy-change preview."""

from __future__ import annotations

import dagster as dg

from pipelines.orchestration.dead_runs import clearing_in_process_executor
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

# Every step runs in the run's own process, one after the other (Dagster's in-process executor). Measured at
# 10,000 members (README, "Running jobs"): a night launched as the schedule launches it took 1.6x the same night
# in process when each step was forked from a fork server and opened the warehouse again; steps share nothing
# but the DuckDB file, which one process at a time may hold, so separate processes bought no parallelism, only
# ~45 forks, imports and warehouse opens a night. Pools still apply: each step claims its `warehouse` slot
# before it starts, which keeps other runs' steps off the file, and before any step claims one the executor
# frees the slots of runs that died (orchestration/dead_runs.py).
# A step that crashes the interpreter takes the run down with it; the next run clears it and finishes the work.
RUN_EXECUTOR = clearing_in_process_executor
