"""Is a run's worker process still alive on this machine? (no Dagster: a pid and the time the run started)."""

from __future__ import annotations

import os
from pathlib import Path

# A pid is reused once its process is gone: a live process that started after the run did is someone else.
# /proc start times have clock-tick precision, hence the tolerance.
START_TOLERANCE_S = 2.0


def _proc_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) and liveness of `pid` from /proc; None when /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after its closing ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in {"Z", "X"}:  # zombie or dead: the process has exited, only its entry waits to be reaped
        return float("inf")
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int, run_started_at: float) -> bool:
    """True when process `pid` exists and is the one that started the run at `run_started_at` (epoch s)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = _proc_start_time(pid)
    if started is None:
        return True  # no /proc (not Linux): existence is all we can know
    return started <= run_started_at + START_TOLERANCE_S
