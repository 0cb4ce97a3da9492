"""Runs whose process was killed: found and cleared with nobody intervening (pipelines/orchestration/dead_runs.py).

A real run (tests/dead_run_job.py: one step in the `warehouse` pool, the nightly's run-queue tag and executor) is
launched with `dagster job execute` on an instance made from the project's dagster.yaml, SIGKILLed inside its
step, then either the next run clears it itself, or the real daemon's run monitoring does and the next scheduled
run goes through. A second live run waits for the slot the first holds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.launcher import WorkerStatus

from pipelines.orchestration.dead_runs import CLEARED_TAG, LocalRunLauncher, clear_dead_claims
from pipelines.orchestration.worker_process import worker_alive

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB_FILE = PROJECT / "tests" / "dead_run_job.py"
WAIT_S = 180


def _home(tmp_path: Path, **monitoring: int) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = yaml.safe_load((PROJECT / "dagster.yaml").read_text())
    config["run_monitoring"].update(monitoring)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "yes"}


def _execute(home: Path, tags: dict[str, str] | None = None) -> subprocess.Popen:
    command = [str(BIN / "dagster"), "job", "execute", "-f", str(JOB_FILE), "-j", "warehouse_writer"]
    if tags:
        command += ["--tags", json.dumps(tags)]
    return subprocess.Popen(command, env=_env(home), cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _killed_in_its_step(home: Path, tmp_path: Path) -> str:
    """Launch a run, SIGKILL its process group once its step holds the warehouse slot; return its id."""
    marker = tmp_path / "holding"
    process = _execute(home, {"hold": str(marker)})
    _wait_for(marker.exists, "the step to hold the warehouse slot")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # what a killed run looks like: nothing says it died
        claims = instance.event_log_storage.get_concurrency_info("warehouse").claimed_slots
        assert [c.run_id for c in claims] == [run.run_id]
        return run.run_id


def test_worker_alive_tells_a_live_worker_from_a_dead_or_reused_pid():
    assert worker_alive(os.getpid(), time.time())
    # A process that started after the run did is not its worker, whatever its pid.
    assert not worker_alive(os.getpid(), time.time() - 10 * 365 * 86400)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not worker_alive(child.pid, time.time())


def test_the_next_run_clears_a_dead_run_itself_and_says_so(tmp_path):
    home = _home(tmp_path)
    dead = _killed_in_its_step(home, tmp_path)
    # No daemon: the next run must not wait behind the dead one's slot.
    assert _execute(home).wait(timeout=WAIT_S) == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = {r.run_id: r for r in instance.get_runs()}
        [nxt] = [r for r in runs.values() if r.run_id != dead]
        assert nxt.status == dg.DagsterRunStatus.SUCCESS
        assert runs[dead].status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(dead, of_type=DagsterEventType.RUN_FAILURE)[-1]
        assert nxt.run_id in failure.message and "no longer exists" in failure.message
        assert nxt.tags[CLEARED_TAG] == dead
        [cleared] = [e for e in instance.all_logs(nxt.run_id, of_type=DagsterEventType.ENGINE_EVENT)
                     if "dead_runs_cleared" in e.dagster_event.engine_event_data.metadata]
        listed = cleared.dagster_event.engine_event_data.metadata["dead_runs_cleared"].value
        assert [(c["run_id"], c["steps"]) for c in listed] == [(dead, ["hold_the_warehouse"])]
        assert instance.event_log_storage.get_concurrency_info("warehouse").claimed_slots == []


def test_a_live_run_keeps_its_slot(tmp_path):
    home = _home(tmp_path)
    marker = tmp_path / "holding"
    holder = _execute(home, {"hold": str(marker)})
    try:
        _wait_for(marker.exists, "the step to hold the warehouse slot")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            [run] = instance.get_runs()
            assert isinstance(instance.run_launcher, LocalRunLauncher)
            assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
            assert clear_dead_claims(instance, "another-run", ["warehouse"]) == []
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_the_pool_keeps_a_second_run_off_the_warehouse_while_the_first_holds_it(tmp_path):
    """Both runs execute their steps in process (the project's executor) and are started outside the run
    queue: the `warehouse` pool alone must keep the second run's step from starting."""
    home = _home(tmp_path)
    marker = tmp_path / "holding"
    first = _execute(home, {"hold": str(marker)})
    second = None
    try:
        _wait_for(marker.exists, "the first run's step to hold the warehouse slot")
        second = _execute(home, {"hold": str(tmp_path / "second-holding")})
        with dg.DagsterInstance.from_config(str(home)) as instance:
            def warehouse():  # who holds the slot, who waits for it (claims not assigned a slot)
                return instance.event_log_storage.get_concurrency_info("warehouse")

            _wait_for(lambda: len(warehouse().pending_run_ids) == 1, "the second run's step to queue for the slot")
            [queued] = warehouse().pending_run_ids
            [holder] = {c.run_id for c in warehouse().claimed_slots}
            assert holder != queued
            assert instance.get_run_by_id(queued).status == dg.DagsterRunStatus.STARTED
            assert instance.all_logs(queued, of_type=DagsterEventType.STEP_START) == []
            assert not (tmp_path / "second-holding").exists()
    finally:
        for process in (first, second):
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_after_a_kill_the_daemon_fails_the_dead_run_and_the_next_scheduled_run_completes(tmp_path):
    """The project's instance (run queue with the one-writer tag, pool limit 1, run monitoring) and the real
    `dagster-daemon`: the killed run is marked failed, its slot freed, and the schedule's next run, queued
    behind it, starts and succeeds. Monitoring polls every 2 s here instead of 30 s."""
    home = _home(tmp_path, poll_interval_seconds=2, free_slots_after_run_end_seconds=2)
    dead = _killed_in_its_step(home, tmp_path)
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 — closed after the daemon stops
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-f", str(JOB_FILE)], env=_env(home),
                              cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            def settled() -> bool:
                others = [r for r in instance.get_runs() if r.run_id != dead]
                return any(r.status == dg.DagsterRunStatus.SUCCESS for r in others)

            _wait_for(settled, "the next scheduled run to succeed")
            assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(dead, of_type=DagsterEventType.RUN_FAILURE)[-1]
            assert "no longer exists" in failure.message
            nxt = next(r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.SUCCESS)
            assert nxt.tags.get("dagster/schedule_name") == "warehouse_writer_schedule"
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        log.close()


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.production.yaml"])
def test_both_instances_monitor_runs_and_free_dead_runs_slots_within_two_minutes(path):
    config = yaml.safe_load((PROJECT / path).read_text())
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] and monitoring["max_resume_run_attempts"] == 0
    # Found dead at the next poll, its slots freed at the poll after the grace period: about 1.5 min at worst.
    assert monitoring["poll_interval_seconds"] * 2 + monitoring["free_slots_after_run_end_seconds"] <= 120
    if path == "dagster.yaml":  # Dagster's default launcher cannot tell a dead run; ours can
        assert config["run_launcher"] == {"module": "pipelines.orchestration.dead_runs", "class": "LocalRunLauncher"}
