"""Command line: `python -m pipelines.demo generate|run` (what `make demo` calls).

- generate: write the three demo source systems under data/sources (or --out).
- run: generate, then run `nightly_job` end to end on the embedded default and print a summary.
- job: run one job (`nightly_job` by default) in process on the sources and warehouse already there, as the
  schedule would for `--as-of` (what `make bench` times beside the same job launched as the UI launches it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from pipelines.demo.summary import print_run, print_summary
from pipelines.orchestration import settings


def _parse_date(value: str) -> dt.date:
    return dt.date.fromisoformat(value)


def _generate(out: Path, members: int, seed: int, as_of: dt.date) -> dict[str, int]:
    from pipelines.demo.generate import generate

    started = time.perf_counter()
    counts = generate(out, members=members, seed=seed, as_of=as_of)
    print(f"Generated {sum(counts.values()):,} source rows for {members:,} members "
          f"(seed {seed}, as of {as_of}) in {time.perf_counter() - started:.1f}s under {out}")
    return counts


def run_job(as_of: dt.date, job_name: str = "nightly_job", full_recompute: bool = False
            ) -> dg.ExecuteInProcessResult:
    """Run `job_name` in process on the current DagsterInstance (DAGSTER_HOME), as of `as_of`.

    As the schedule does: the run's partition is the navigation day before `as_of` (none when that day is
    not over yet); every other new or rewritten day file is caught up by the same run. `full_recompute`: the
    retention ledger re-evaluates every record (as the weekly schedule asks).
    """
    from pipelines.definitions import defs
    from pipelines.orchestration.partitions import nightly_partition
    from pipelines.orchestration.runs import AS_OF_TAG
    from sensors.schedules import as_of_run_config

    job = defs.resolve_job_def(job_name)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            # Step events stay in the run's event log (the UI shows them); the console gets warnings and the
            # INFO lines the assets write, not one line per caught-up navigation day.
            run_config={**as_of_run_config(job, as_of, full_recompute),
                        "loggers": {"console": {"config": {"log_level": "INFO"}}}},
            tags={AS_OF_TAG: as_of.isoformat()},
            partition_key=nightly_partition(as_of) if job.partitions_def else None,
            raise_on_error=False,
        )
    print(f"{job_name} run {result.run_id}: {'SUCCESS' if result.success else 'FAILURE'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("generate", "run"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--members", type=lambda s: int(s.replace("_", "")), default=10_000)
        cmd.add_argument("--seed", type=int, default=42)
        cmd.add_argument("--as-of", type=_parse_date, default=dt.date.today())
        cmd.add_argument("--out", type=Path, default=settings.sources_dir())
    job = sub.add_parser("job")
    job.add_argument("--job", choices=["nightly_job", "rights_job", "policy_preview_job"], default="nightly_job")
    job.add_argument("--as-of", type=_parse_date, default=dt.date.today())
    job.add_argument("--full-recompute", action="store_true",
                     help="as the weekly schedule: the SQL sources copied whole, the ledger over every record")
    args = parser.parse_args(argv)

    if args.command == "job":
        return 0 if run_job(args.as_of, args.job, full_recompute=args.full_recompute).success else 1

    if args.command == "generate":
        _generate(args.out, args.members, args.seed, args.as_of)
        return 0

    from pipelines.pseudo.keys import ensure_demo_key

    key_path = ensure_demo_key(settings.key_file())
    print(f"Pseudonymisation key: {key_path} (0600, git-ignored; never copied into DuckDB or logs)")
    # The demo starts from a clean warehouse so its summary describes this run alone.
    for derived in (settings.warehouse_path(), settings.analytics_path()):
        derived.unlink(missing_ok=True)
    derived_folders = (settings.outbox_dir(), settings.exports_dir(), settings.reports_dir())
    for folder in (*derived_folders, settings.audit_log_path().parent):
        shutil.rmtree(folder, ignore_errors=True)
    _generate(args.out, args.members, args.seed, args.as_of)
    started = time.perf_counter()
    result = run_job(args.as_of)
    print_run(result, time.perf_counter() - started)
    # What the policy-change sensor starts on its first look at policies/ (the nightly never previews).
    run_job(args.as_of, "policy_preview_job")
    print_summary()
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
