"""One run measured from outside, as a whole: wall time, peak resident memory of its process tree, slowest steps.

The command is started in a session of its own; a sampler thread adds up the resident set of every process of
that session (run worker, fork server, step processes, DuckDB's threads live inside them) from /proc every
0.2 s and keeps the highest sum. Shared pages of forked processes count once per process, so the figure is an
upper bound of what the tree holds. Step durations come from the run's own event log (STEP_START to its
success or failure), read from the Dagster instance the run wrote to.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_EVERY_S = 0.2
PAGE = os.sysconf("SC_PAGE_SIZE")


def session_rss(session: int) -> int:
    """Bytes resident in every process of `session` (Linux /proc; 0 elsewhere)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # the process ended between the listing and the read
        # Fields after the command name, which may hold spaces: state ppid pgrp session ... rss (24th field).
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session:
            total += int(fields[21]) * PAGE
    return total


@dataclass
class Measured:
    label: str
    exit_code: int
    wall_s: float
    peak_rss_bytes: int
    run_id: str | None = None
    status: str | None = None
    steps_s: dict[str, float] = field(default_factory=dict)

    def slowest(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.steps_s.items(), key=lambda item: -item[1])[:n]

    def as_json(self) -> dict:
        return {
            "label": self.label,
            "exit_code": self.exit_code,
            "status": self.status,
            "run_id": self.run_id,
            "wall_s": round(self.wall_s, 1),
            "peak_rss_gb": round(self.peak_rss_bytes / 1e9, 2),
            "steps": len(self.steps_s),
            "step_seconds_total": round(sum(self.steps_s.values()), 1),
            "slowest_steps": [{"step": s, "seconds": round(t, 1)} for s, t in self.slowest()],
            # every step, slowest first: the run's profile, to compare nights and versions step by step
            "step_seconds": {s: round(t, 2) for s, t in self.slowest(len(self.steps_s))},
        }


def run_measured(label: str, command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Measured:
    """Run `command` to its end; wall time and the peak resident memory of everything it started."""
    peak = 0
    done = threading.Event()
    with open(log, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, session_rss(process.pid))
                done.wait(SAMPLE_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    return Measured(label, code, wall, peak)


def attach_last_run(measured: Measured, dagster_home: Path) -> Measured:
    """Fill in the run id, status and per-step seconds of the latest run recorded under `dagster_home`."""
    import dagster as dg
    from dagster._core.events import DagsterEventType

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return measured
        run = runs[0]
        measured.run_id, measured.status = run.run_id, run.status.value
        starts: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or record.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                starts[record.step_key] = record.timestamp
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE) \
                    and record.step_key in starts:
                measured.steps_s[record.step_key] = record.timestamp - starts[record.step_key]
    return measured
