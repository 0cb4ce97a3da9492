"""`python -m pipelines.crash` (what `make crash` calls): the full crash sweep, printed and written as a report.

Generates the demo sources (plus one open complaint for the provider in Morocco, so that the night delivers a
transfer whatever the size), runs the nightly once uninterrupted (the baseline, watching the sources for
push-back commits and the outbox and audit log for the transfers' progress), then kills it at --moments points
spread over the run plus right after each source commit and each transfer mark, re-runs it, and compares.
Exits non-zero when any re-run does not end where the uninterrupted run did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
from pathlib import Path

from pipelines.crash.sweep import Outcome, kill_points, run_baseline, sweep, table
from pipelines.crash.world import plant_transfer
from pipelines.orchestration import settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.crash", description=__doc__)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=dt.date(2026, 11, 1))
    parser.add_argument("--moments", type=int, default=20, help="kill points spread over the run")
    parser.add_argument("--no-commits", action="store_true",
                        help="skip the kill points after source commits and transfer marks")
    parser.add_argument("--jobs", type=int, default=1, help="kill points run side by side")
    parser.add_argument("--workdir", type=Path, default=settings.PROJECT_ROOT / ".crash")
    parser.add_argument("--report", type=Path, default=settings.PROJECT_ROOT / ".crash" / "report.md")
    args = parser.parse_args(argv)

    from pipelines.demo.generate import generate

    sources = args.workdir / "sources"
    generate(sources, members=args.members, seed=args.seed, as_of=args.as_of)
    plant_transfer(sources, args.as_of)
    baseline = run_baseline(args.workdir, sources, args.as_of)
    print(f"Uninterrupted run: {baseline.outcome} in {baseline.duration_s:.0f} s; push-back commits seen in the "
          f"sources: {', '.join(f'{s} at {t:.1f} s' for t, s in baseline.commits) or 'none'}; transfer marks: "
          f"{', '.join(f'{s} at {t:.1f} s' for t, s in baseline.transfers) or 'none'}", flush=True)
    points = kill_points(baseline, args.moments)
    if args.no_commits:
        points = [p for p in points if p.at_s is not None]
    lock = threading.Lock()
    done: list[Outcome] = []
    header = (f"# Crash sweep: {args.members} members, seed {args.seed}, as of {args.as_of}\n\n"
              f"Uninterrupted run: {baseline.outcome} in {baseline.duration_s:.0f} s, "
              f"{len(baseline.commits)} push-back commits seen in the sources, {len(baseline.transfers)} transfer "
              "marks (delivery files written, audit entries) in the outbox and audit log.\n\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)

    def progress(outcome: Outcome) -> None:
        with lock:
            verdict = "same end state" if outcome.matches else (outcome.note or f"DIFFERS: {outcome.differing}")
            print(f"{outcome.point.name}: killed during {outcome.killed_during}; re-run {outcome.rerun}; "
                  f"{verdict}", flush=True)
            done.append(outcome)  # the report grows as kill points finish: a long sweep can be read half-way
            args.report.write_text(f"{header}{table(done)}\n\n{len(done)} of {len(points)} kill points.\n")

    outcomes = sweep(args.workdir, sources, args.as_of, points, baseline, jobs=args.jobs, on_result=progress)
    print(f"\n{table(outcomes)}\n\nReport: {args.report}")
    return 0 if all(o.matches or o.note for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
