"""`make bench`: the reference report (pipelines/bench/reference.py) or, with `--micro`, the micro-benchmarks.

Reference report: a cached workload (default 1,000,000 members, 2,000,000 prospects and ~67 million page views
over 30 months; `--members 100000` for a run of minutes), its first night, three following nights after a day of
changes each, the third also launched as the UI and the schedule launch it, and the rights job for 100 new
verified requests; wall time, five slowest steps and peak memory of each, to `bench/results/<date>-<members>.json`.

Micro-benchmarks (`--micro SECTION`, repeatable), each beside the naive approach in the same run: SQL source
reading (ADBC vs DB-API, on the cached SQLite sources and a throw-away PostgreSQL copy), tokenisation
(DuckDB-vectorised HMAC vs a Python hmac loop), push-back (set-based vs one statement per row, against a
throw-away PostgreSQL). Prints figures; asserts nothing (tests never time anything).
"""

from __future__ import annotations

import argparse
import json


def _count(text: str) -> int:
    return int(text.replace("_", "").replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=_count, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--regenerate", action="store_true", help="generate the cached workload again")
    parser.add_argument("--no-ui", action="store_true", help="skip the night launched as the UI launches it")
    parser.add_argument("--resume", action="store_true",
                        help="start from the state the last report kept after its first night (skip that night)")
    parser.add_argument("--rights", type=_count, default=100, help="new verified requests for the rights run")
    parser.add_argument("--micro", choices=["sql_read", "tokens", "pushback"], action="append",
                        help="run these micro-benchmarks instead of the reference report")
    parser.add_argument("--tokens", type=_count, default=1_000_000)
    parser.add_argument("--erase", type=_count, default=10_000)
    args = parser.parse_args(argv)
    if not args.micro:
        from pipelines.bench.reference import run_report

        run_report(args.members, args.seed, args.regenerate, ui=not args.no_ui, rights=args.rights,
                   resume=args.resume)
        return 0

    report: dict[str, dict] = {}
    if "sql_read" in args.micro:
        from pipelines.bench.reference import cached_workload
        from pipelines.bench.sql_read import bench_sql_sources

        folder, _ = cached_workload(args.members, args.seed, args.regenerate)
        report["sql_read"] = bench_sql_sources(args.members, folder)
    if "tokens" in args.micro:
        from pipelines.bench.tokens import bench_tokens

        report["tokens"] = bench_tokens(args.tokens)
    if "pushback" in args.micro:
        from pipelines.bench.pushback import bench_pushback
        from pipelines.sources.throwaway_pg import start_cluster

        cluster = start_cluster()
        try:
            report["pushback"] = bench_pushback(cluster.create_database(), n_people=args.erase)
        finally:
            cluster.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
