"""The reference report of `make bench`: a population's nights, measured as whole runs.

On a workload generated once and cached (`.bench/cache/members-<n>-seed-<s>/`, `--regenerate` makes it again),
copied into a fresh site (pipelines/bench/site.py):
1. the first nightly run, as of the day the workload was generated for (the backlog of years);
2. three following nights (`as_of` + 1, + 2, + 3), each after a day of changes applied to the sources by the
   generator (pipelines/demo/changes.py); the third also launched as the UI and the schedule launch it, from
   a copy of the state before it, beside the in-process run;
3. the rights job for 100 new verified requests on top of that warehouse.
Each run: wall time, the five slowest steps, peak resident memory of its whole process tree. The report goes to
`bench/results/<date>-<members>.json` with the machine's cores and memory, and is printed as a table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from pipelines.bench.measure import Measured
from pipelines.bench.site import Site
from pipelines.demo.changes import day_of_changes, verified_requests
from pipelines.orchestration import settings

CACHE = settings.PROJECT_ROOT / ".bench" / "cache"
RUNS = settings.PROJECT_ROOT / ".bench" / "runs"
RESULTS = settings.PROJECT_ROOT / "bench" / "results"
FOLLOWING_NIGHTS = 3


def cached_workload(members: int, seed: int, regenerate: bool) -> tuple[Path, dict]:
    """The generated sources for (members, seed) and their description; generated when absent or asked to."""
    from pipelines.demo.generate import generate

    folder = CACHE / f"members-{members}-seed-{seed}"
    described = folder / "workload.json"
    if regenerate or not described.exists():
        shutil.rmtree(folder, ignore_errors=True)
        # Days before today, so every night of the report is a day already over (a partition of its own).
        as_of = dt.date.today() - dt.timedelta(days=FOLLOWING_NIGHTS + 2)
        started = dt.datetime.now()
        counts = generate(folder / "sources", members=members, seed=seed, as_of=as_of)
        workload = {"members": members, "seed": seed, "as_of": as_of.isoformat(), "rows": counts,
                    "generate_seconds": round((dt.datetime.now() - started).total_seconds(), 1)}
        described.write_text(json.dumps(workload, indent=2))
    return folder, json.loads(described.read_text())


def _machine() -> dict:
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    return {"cores": os.cpu_count(), "memory_gb": round(memory_kb / 1e6, 1),
            "load_average_at_start": os.getloadavg()}


def run_report(members: int, seed: int, regenerate: bool, ui: bool = True, rights: int = 100) -> dict:
    cache, workload = cached_workload(members, seed, regenerate)
    first = dt.date.fromisoformat(workload["as_of"])
    site = Site.create(RUNS / f"members-{members}", cache / "sources")
    report: dict = {"date": dt.date.today().isoformat(), "members": members, "machine": _machine(),
                    "workload": workload, "days_of_changes": {}, "runs": []}

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{report['date']}-{members}.json"

    def record(measured: Measured) -> None:
        report["runs"].append(measured.as_json())
        print(_row(measured.as_json()), flush=True)
        path.write_text(json.dumps(report, indent=2) + "\n")  # after each run: a report cut short keeps its runs

    print(_header(), flush=True)
    record(site.in_process("first night", first))
    for k in range(1, FOLLOWING_NIGHTS + 1):
        day = first + dt.timedelta(days=k - 1)
        report["days_of_changes"][day.isoformat()] = day_of_changes(site.data / "sources", day, seed)
        as_of = first + dt.timedelta(days=k)
        twin = site.clone(RUNS / f"members-{members}-before") if ui and k == FOLLOWING_NIGHTS else None
        record(site.in_process(f"night +{k}", as_of))
        if twin is not None:
            # The same night again from the same state, at the same path (the warehouse's file manifest names
            # the source files by path): the in-process result makes way for the copy taken before it.
            shutil.rmtree(site.root)
            twin.root.rename(site.root)
            record(site.as_scheduled(f"night +{k} as scheduled", as_of))
    if rights:
        last = first + dt.timedelta(days=FOLLOWING_NIGHTS)
        ids = verified_requests(site.data / "sources", last - dt.timedelta(days=1), rights, seed)
        report["rights_requests_added"] = len(ids)
        record(site.in_process(f"rights {len(ids)}", last, job="rights_job"))

    print(f"\nReport: {path}")
    return report


def _header() -> str:
    return f"{'run':<26} {'status':<8} {'wall s':>8} {'peak GB':>8}  five slowest steps (s)\n" + "-" * 120


def _row(run: dict) -> str:
    slowest = ", ".join(f"{s['step']} {s['seconds']:.0f}" for s in run["slowest_steps"])
    return f"{run['label']:<26} {run['status'] or '?':<8} {run['wall_s']:>8.1f} {run['peak_rss_gb']:>8.2f}  {slowest}"
