"""Runs whose process died: how the instance recognises them, and how a run clears the pool slots they hold.

A run killed outright (out of memory, SIGKILL, a lost machine) never records its end: it stays STARTED and keeps
the `warehouse` pool slot of the step it was in, so every later run would wait behind it forever.

- `LocalRunLauncher` is Dagster's default launcher plus a health check for Dagster's run monitoring: a STARTED
  run whose worker process (the pid of its RUN_START event, on this machine) no longer exists is dead. The
  daemon then marks it failed and frees its slots (`run_monitoring` in dagster.yaml). In production the
  Kubernetes launcher answers the same question from the run's Job.
- `clear_dead_claims` is what a run does itself before its first step claims a slot, for when no daemon is
  running (a `dagster job execute` from a shell) or it has not polled yet: every slot or queued claim of the
  run's pools held by a finished, deleted or dead run is freed, and every STARTED run whose worker is dead is
  marked failed.
- `ClearingExecutor` wraps the project's executor (Dagster's in-process executor, see orchestration/jobs.py) so
  that every run does it first and says so in its log (an engine event whose metadata lists the runs cleared)
  and in its tags. Pools work the same under either executor: each step claims its slot before it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, in_process_executor
from dagster._core.events import DagsterEvent, DagsterEventType, EngineEventData
from dagster._core.execution.retries import RetryMode
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter

from pipelines.orchestration.worker_process import worker_alive

CLEARED_TAG = "sem/cleared-dead-runs"
ALIVE = (WorkerStatus.RUNNING, WorkerStatus.SUCCESS)


def run_worker(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, start timestamp) of the process that started `run_id`, from its RUN_START event."""
    starts = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    if not starts or starts[-1].dagster_event is None or starts[-1].dagster_event.pid is None:
        return None
    return starts[-1].dagster_event.pid, starts[-1].timestamp


def local_worker_health(instance: dg.DagsterInstance, run: DagsterRun) -> CheckRunHealthResult:
    worker = run_worker(instance, run.run_id)
    if worker is None:
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has not recorded its worker process")
    pid, started = worker
    if worker_alive(pid, started):
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker process {pid} is running")
    return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"worker process {pid} of the run no longer exists")


class LocalRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (runs in processes of the code server on this machine) with the worker
    health check that run monitoring needs to find runs whose process died."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        health = local_worker_health(self._instance, run)
        # A STARTED run always has its RUN_START event; without one, do not let the monitor fail it.
        return health if health.status != WorkerStatus.UNKNOWN else CheckRunHealthResult(WorkerStatus.RUNNING)


@dataclass(frozen=True)
class ClearedRun:
    run_id: str
    status: str  # the status the run was found in
    reason: str
    steps: tuple[str, ...]  # the steps whose slot or queued claim was freed


def _is_dead(instance: dg.DagsterInstance, run: DagsterRun) -> str | None:
    """Why `run`'s claims may be freed now, or None while it may still use them."""
    if run.is_finished:
        return f"the run ended {run.status.value} without releasing its slot"
    if run.status != DagsterRunStatus.STARTED:
        return None  # starting or cancelling: its own process or the launcher will settle it
    launcher = instance.run_launcher
    if isinstance(launcher, LocalRunLauncher) or not launcher.supports_check_run_worker_health:
        health = local_worker_health(instance, run)
    else:
        health = launcher.check_run_worker_health(run)
    return None if health.status in (*ALIVE, WorkerStatus.UNKNOWN) else str(health.msg)


def clear_dead_claims(instance: dg.DagsterInstance, current_run_id: str, pools: Iterable[str]) -> list[ClearedRun]:
    """Free every slot and queued claim of `pools` held by another run that is finished, gone or dead, and mark
    every STARTED run whose worker died failed (with the reason) so the run queue and the UI stop counting it."""
    storage = instance.event_log_storage
    steps_by_run: dict[str, set[str]] = {
        run.run_id: set() for run in instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    }
    if storage.supports_global_concurrency_limits:
        for info in storage.get_concurrency_infos(sorted(set(pools))).values():
            for claim in [*info.claimed_slots, *info.pending_steps]:
                steps_by_run.setdefault(claim.run_id, set()).add(claim.step_key)
    steps_by_run.pop(current_run_id, None)
    cleared = []
    for run_id, steps in sorted(steps_by_run.items()):
        run = instance.get_run_by_id(run_id)
        reason = "the run no longer exists" if run is None else _is_dead(instance, run)
        if reason is None:
            continue
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, f"Marked failed by run {current_run_id}: {reason}.")
        if steps:
            storage.free_concurrency_slots_for_run(run_id)
        status = "DELETED" if run is None else run.status.value
        cleared.append(ClearedRun(run_id, status, reason, tuple(sorted(steps))))
    return cleared


class ClearingExecutor(dg.Executor):
    """Runs `clear_dead_claims` for the pools of the plan's steps, then hands the plan to `inner`."""

    def __init__(self, inner: dg.Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    def execute(self, plan_context, execution_plan) -> Iterator[DagsterEvent]:
        pools = {
            step.pool for step in execution_plan.get_steps_to_execute_in_topo_order() if step.pool is not None
        }
        run_id = plan_context.run_id
        cleared = clear_dead_claims(plan_context.instance, run_id, pools)
        if cleared:
            plan_context.instance.add_run_tags(run_id, {CLEARED_TAG: ",".join(c.run_id for c in cleared)})
        yield DagsterEvent.engine_event(
            plan_context,
            f"Cleared {len(cleared)} dead run(s) before the first step: marked failed, pool slots freed"
            if cleared
            else f"No dead run to clear (pools {sorted(pools)})",
            event_specific_data=EngineEventData(
                metadata={
                    "dead_runs_cleared": dg.MetadataValue.json(
                        [{"run_id": c.run_id, "status": c.status, "reason": c.reason, "steps": list(c.steps)}
                         for c in cleared]
                    ),
                }
            ),
        )
        yield from self._inner.execute(plan_context, execution_plan)


@dg.executor(name="in_process_clearing_dead_runs", config_schema=IN_PROC_CONFIG)
def clearing_in_process_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's in-process executor (every step in the run's own process, one after the other), after freeing
    the pool slots dead runs still hold."""
    return ClearingExecutor(in_process_executor.executor_creation_fn(init_context))
