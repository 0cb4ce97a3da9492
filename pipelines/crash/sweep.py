"""Kill the nightly at chosen moments, run it again, compare with an uninterrupted run.

The baseline is one uninterrupted nightly on a fresh copy of the sources; while it runs, the sources are
watched for push-back commits (World.source_commits) and the outbox and audit log for the transfers' progress
(World.transfer_marks), which gives the commit and transfer kill points. Then, for each kill point, on
another fresh copy: launch, SIGKILL the process group at that moment (or as soon as the k-th source commit or
transfer mark is seen), launch again with nobody touching anything, and compare the fingerprint of the end
state with the baseline's.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType

from pipelines.crash.fingerprint import differences, fingerprint
from pipelines.crash.world import Launch, World

POLL_S = 0.05
STEP_POLL_S = 0.2
SOURCE_NAMES = ("member system", "prospecting platform", "navigation log")


@dataclass(frozen=True)
class KillPoint:
    name: str
    at_s: float | None = None  # seconds after launch
    after_commit: int | None = None  # the k-th push-back commit seen in the sources (1-based)
    of_kind: str | None = None  # count only commits of decisions of this kind (retention, rights)
    after_transfer: int | None = None  # the k-th transfer mark: a delivery file written, an audit entry
    after_rewrite: int | None = None  # the k-th navigation file push-back swapped in
    in_step: str | None = None  # kill step_offset_s after this step starts (where the baseline was at at_s)
    step_offset_s: float = 0.0
    then: KillPoint | None = None  # kill the re-run too, at this point, before the last (plain) re-run


@dataclass
class Baseline:
    fingerprint: dict[str, str]
    duration_s: float
    commits: list[tuple[float, str]]  # (seconds after launch, which source)
    outcome: str
    transfers: list[tuple[float, str]] = field(default_factory=list)  # (seconds after launch, what)
    steps: list[tuple[float, str]] = field(default_factory=list)  # (seconds after launch, step started)
    rewrites: list[tuple[float, str]] = field(default_factory=list)  # (seconds after launch, navigation file)


@dataclass
class Outcome:
    point: KillPoint
    killed_at_s: float | None = None
    killed_during: list[str] = field(default_factory=list)
    left_after_kill: list[str] = field(default_factory=list)
    killed_run_status: str = ""
    rerun: str = ""
    rerun_s: float = 0.0
    differing: list[str] = field(default_factory=list)
    note: str = ""
    fingerprint: dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", self.point.name.replace("%", "pct").replace("'", ""))

    @property
    def matches(self) -> bool:
        return self.rerun == "SUCCESS" and not self.differing and not self.note


def _commit_changes(previous: tuple[frozenset[str], ...], current: tuple[frozenset[str], ...]) -> list[str]:
    """'<source> (<kind>)' per source that recorded new decisions, kind from their ids (retention, rights)."""
    return [f"{name} ({'+'.join(sorted({d.split(':')[0] for d in b - a}))})"
            for name, a, b in zip(SOURCE_NAMES, previous, current, strict=True) if b - a]


@dataclass
class _Seen:
    commits: list[tuple[float, str]] = field(default_factory=list)
    transfers: list[tuple[float, str]] = field(default_factory=list)
    rewrites: list[tuple[float, str]] = field(default_factory=list)

    def reached(self, point: KillPoint) -> bool:
        if point.after_transfer is not None:
            return len(self.transfers) >= point.after_transfer
        if point.after_rewrite is not None:
            return len(self.rewrites) >= point.after_rewrite
        kind = point.of_kind
        counted = [s for _, s in self.commits if kind is None or f"({kind}" in s or f"+{kind}" in s]
        return point.after_commit is not None and len(counted) >= point.after_commit


def _watch(world: World, launch: Launch, point: KillPoint | None) -> _Seen:
    """Poll the sources, outbox and audit log while the run lives; with a `point` (after a commit, a transfer mark
    or a file rewrite), watch only what it counts and kill the run as soon as it is reached. (Every poll lists
    and stats the whole navigation log and reads the audit log: a watcher polling all of them every 50 ms takes
    a good part of a core from the run it watches.)"""
    seen = _Seen()
    watch_commits, watch_transfers, watch_files = (
        (True, True, True) if point is None else
        (point.after_commit is not None, point.after_transfer is not None, point.after_rewrite is not None))
    commits = world.source_commits() or (frozenset(), frozenset(), frozenset())
    transfers = world.transfer_marks() or frozenset()
    files = world.navigation_files() if watch_files else {}
    while launch.process.poll() is None:
        time.sleep(POLL_S)
        now = time.monotonic() - launch.started
        if watch_files:
            current_files = world.navigation_files()
            seen.rewrites += [(now, f) for f, mtime in sorted(current_files.items()) if files.get(f, mtime) != mtime]
            files = current_files
        if watch_commits and (current := world.source_commits()) is not None:
            seen.commits += [(now, name) for name in _commit_changes(commits, current)]
            commits = current
        if watch_transfers and (marks := world.transfer_marks()) is not None:
            seen.transfers += [(now, mark) for mark in sorted(marks - transfers)]
            transfers = marks
        if point is not None and seen.reached(point):
            world.kill(launch)
            break
    return seen


def _runs(world: World) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(world.home)) as instance:
        return sorted(instance.get_runs(), key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def _steps_in_flight(world: World, run_id: str) -> list[str]:
    with dg.DagsterInstance.from_config(str(world.home)) as instance:
        started, ended = [], set()
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                started.append(event.step_key)
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                ended.add(event.step_key)
        return [s for s in started if s not in ended]


def _leftovers(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and (p.suffix in (".tmp", ".wal") or p.name.startswith(".")))


def run_baseline(workdir: Path, sources: Path, as_of: dt.date) -> Baseline:
    world = World(workdir / "baseline", sources, as_of)
    launch, wall = world.launch(), time.time()
    seen = _watch(world, launch, None)
    outcome = world.wait(launch)
    duration = time.monotonic() - launch.started
    [run] = _runs(world)
    return Baseline(fingerprint(world.data), duration, seen.commits, f"{run.status.value} ({outcome})",
                    seen.transfers, [(t - wall, step) for t, step in _step_starts(world, run.run_id)],
                    seen.rewrites)


def _step_starts(world: World, run_id: str) -> list[tuple[float, str]]:
    """(wall-clock time, step) of each step the run started, in order."""
    with dg.DagsterInstance.from_config(str(world.home)) as instance:
        return [(e.timestamp, e.step_key) for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]


def _wait_for_step(world: World, launch: Launch, killed: list[str], step: str) -> float | None:
    """Poll the run's event log until `step` starts: monotonic time it was seen, None if the run ended first."""
    with dg.DagsterInstance.from_config(str(world.home)) as instance:
        while launch.process.poll() is None:
            for run in instance.get_runs():
                if run.run_id not in killed and any(
                        e.step_key == step for e in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)):
                    return time.monotonic()
            time.sleep(STEP_POLL_S)
    return None


def _kill_at(world: World, launch: Launch, point: KillPoint, killed: list[str]) -> bool:
    """Kill the run at `point`; False when it ended on its own first."""
    if point.after_commit is not None or point.after_transfer is not None or point.after_rewrite is not None:
        _watch(world, launch, point)
        return launch.process.returncode != 0
    start, wait = launch.started, point.at_s or 0.0
    if point.in_step is not None:  # anchored on the step, so that a slower or faster machine still kills there
        seen = _wait_for_step(world, launch, killed, point.in_step)
        if seen is None:
            return launch.process.returncode != 0
        start, wait = seen, point.step_offset_s
    while launch.process.poll() is None and time.monotonic() - start < wait:
        time.sleep(POLL_S)
    world.kill(launch)
    return launch.process.returncode != 0


def run_point(workdir: Path, sources: Path, as_of: dt.date, point: KillPoint) -> Outcome:
    """Kill the nightly at `point` (and its re-runs at `point.then`...), launch it once more, fingerprint."""
    outcome = Outcome(point)
    world = World(workdir / outcome.folder, sources, as_of)
    killed: list[str] = []
    kill: KillPoint | None = point
    while kill is not None:
        launch = world.launch()
        if not _kill_at(world, launch, kill, killed):
            outcome.note = f"the run ended before the kill point {kill.name}"
            return outcome
        if outcome.killed_at_s is None:
            outcome.killed_at_s = time.monotonic() - launch.started
        runs = [r for r in _runs(world) if r.run_id not in killed]
        if not runs:  # killed while `dagster job execute` was still starting: no run recorded yet
            outcome.killed_during.append("before the run was created")
        for run in runs:
            killed.append(run.run_id)
            outcome.killed_during += _steps_in_flight(world, run.run_id) or ["between steps"]
        outcome.left_after_kill += _leftovers(world.data)
        kill = kill.then

    again = world.launch()
    ended = world.wait(again)
    outcome.rerun_s = time.monotonic() - again.started
    runs = {r.run_id: r for r in _runs(world)}
    rerun = next(r for r in runs.values() if r.run_id not in killed)
    outcome.rerun = rerun.status.value if ended != "timeout" else "never finished (timeout)"
    outcome.killed_run_status = ", ".join(runs[k].status.value for k in killed)
    outcome.fingerprint = fingerprint(world.data)
    return outcome


def compare(outcome: Outcome, baseline: Baseline) -> Outcome:
    outcome.differing = differences(baseline.fingerprint, outcome.fingerprint) if outcome.fingerprint else []
    return outcome


def kill_points(baseline: Baseline, moments: int) -> list[KillPoint]:
    """One kill point right after each source commit and each transfer mark, then `moments` spread evenly over
    the baseline's duration (commits first: push-back is where a half-done run can leave the sources
    half-changed). The spread ones come coarse to fine (50 %, 25 %, 75 %, ...): a sweep stopped half-way has
    still covered the whole night."""
    spread = [_at(baseline, i / (moments + 1)) for i in _coarse_to_fine(moments)]
    commits = [KillPoint(f"after commit {k} ({source})", after_commit=k)
               for k, (_, source) in enumerate(baseline.commits, start=1)]
    transfers = [KillPoint(f"after transfer mark {k} ({mark})", after_transfer=k)
                 for k, (_, mark) in enumerate(baseline.transfers, start=1)]
    return commits + _rewrite_points(baseline) + transfers + spread


def _rewrite_points(baseline: Baseline) -> list[KillPoint]:
    """In the middle of each navigation push-back (rights, then retention): right after its first file is
    swapped in, and half-way through its files, its decisions not yet in the manifest."""
    ends = [t for t, source in baseline.commits if source.startswith("navigation log")]
    points, start = [], 0.0
    for end in ends:
        phase = [k for k, (t, _) in enumerate(baseline.rewrites, start=1) if start < t <= end]
        for k in sorted({phase[0], phase[len(phase) // 2]} if phase else set()):
            points.append(KillPoint(f"after navigation file {k} rewritten ({baseline.rewrites[k - 1][1]})",
                                    after_rewrite=k))
        start = end
    return points


def _at(baseline: Baseline, fraction: float) -> KillPoint:
    """The moment `fraction` of the baseline's duration, anchored on the step the baseline was in then."""
    at = baseline.duration_s * fraction
    started = [(t, step) for t, step in baseline.steps if t <= at]
    name = f"t={round(100 * fraction)}%"
    if not started:
        return KillPoint(name, at_s=at)
    t, step = started[-1]
    return KillPoint(f"{name} ({step} + {at - t:.1f} s)", at_s=at, in_step=step, step_offset_s=at - t)


def _coarse_to_fine(n: int) -> list[int]:
    """1..n, each next one as far as can be from those before (and from 0 and n + 1): the middle first."""
    chosen: list[int] = []
    left = list(range(1, n + 1))
    while left:
        best = max(left, key=lambda i: (min(abs(i - c) for c in [0, n + 1, *chosen]), -i))
        chosen.append(best)
        left.remove(best)
    return chosen


def sweep(workdir: Path, sources: Path, as_of: dt.date, points: list[KillPoint], baseline: Baseline,
          jobs: int = 1, on_result: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    def one(point: KillPoint) -> Outcome:
        try:
            result = compare(run_point(workdir, sources, as_of, point), baseline)
        except Exception as error:  # one kill point's harness failure is a row, not the end of the sweep
            result = Outcome(point, note=f"harness error: {error!r}")
        if on_result is not None:
            on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, points))


def table(outcomes: list[Outcome]) -> str:
    """One row per kill point (Markdown)."""
    rows = ["| # | kill point | killed during step | re-run completed | same end state | differences |",
            "|---|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, start=1):
        at = f" ({o.killed_at_s:.1f} s after launch)" if o.killed_at_s is not None else ""
        same = "yes" if o.matches else ("n/a" if o.note else "**NO**")
        differing = o.note or (", ".join(o.differing[:8]) + (f" (+{len(o.differing) - 8})" if len(o.differing) > 8
                                                              else ""))
        rerun = f"{o.rerun} in {o.rerun_s:.0f} s" if o.rerun else "-"
        if o.killed_run_status:
            rerun += f"; killed run {o.killed_run_status}"
        left = f"; left by the kill: {', '.join(sorted(set(o.left_after_kill)))}" if o.left_after_kill else ""
        rows.append(f"| {i} | {o.point.name}{at} | {', '.join(o.killed_during) or '-'}{left} | {rerun} | {same} | "
                    f"{differing or '-'} |")
    return "\n".join(rows)
