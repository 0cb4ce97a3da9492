"""`make bench`: the project's performance figures, each beside the naive approach, in the same run.

Sections: generator (1,000,000 members by default), ingest + identity of those sources, SQL source reading
(ADBC vs DB-API, on those SQLite sources and a throw-away PostgreSQL copy), retention on them (ledger,
push-back, warehouse, re-read; needs the generator section), tokenisation (DuckDB-vectorised
HMAC vs a Python hmac loop over pandas rows), push-back (set-based vs one statement per row, against a
throw-away PostgreSQL). Prints figures; asserts nothing (tests never time anything).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path


def bench_generator_and_ingest(members: int, workdir: Path) -> dict:
    from pipelines.demo.generate import generate
    from pipelines.duck import connect_warehouse
    from pipelines.identity import resolve_identities
    from pipelines.orchestration.resources import SqlSourceResource
    from pipelines.orchestration.settings import PROJECT_ROOT
    from pipelines.policy.load import load_policy
    from pipelines.refresh import ingest_all
    from pipelines.sources.schema import SQL_SYSTEMS

    sources = workdir / "sources"
    started = time.perf_counter()
    counts = generate(sources, members=members, seed=1, as_of=dt.date.today())
    generated = time.perf_counter() - started

    started = time.perf_counter()
    with connect_warehouse(workdir / "warehouse.duckdb") as con:
        engines = {
            system: SqlSourceResource(system=system, url=f"sqlite:///{sources / (system + '.db')}").engine()
            for system in SQL_SYSTEMS
        }
        ingest_all(con, engines, sources / "navigation", load_policy(PROJECT_ROOT / "policies"))
        ingested = time.perf_counter() - started
        started = time.perf_counter()
        from pipelines.orchestration import settings
        from pipelines.policy.load import load_policy

        identity = resolve_identities(con, load_policy(settings.policies_dir()).datasets_file.identity)
        resolved = time.perf_counter() - started
    return {
        "members": members,
        "source_rows": sum(counts.values()),
        "generate_seconds": round(generated, 1),
        "ingest_seconds": round(ingested, 1),
        "identity_seconds": round(resolved, 1),
        "persons": identity["persons"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench", description=__doc__)
    parser.add_argument("--members", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--tokens", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--erase", type=lambda s: int(s.replace("_", "")), default=10_000)
    parser.add_argument(
        "--only", choices=["generator", "sql_read", "retention", "tokens", "pushback"], action="append",
        help="retention needs generator (it runs on the warehouse that section builds)",
    )
    args = parser.parse_args(argv)
    sections = set(args.only or ["generator", "sql_read", "retention", "tokens", "pushback"])
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sem-bench-") as tmp:
        if "generator" in sections:
            report["generator_ingest_identity"] = bench_generator_and_ingest(args.members, Path(tmp))
            print(json.dumps({"generator_ingest_identity": report["generator_ingest_identity"]}, indent=2))
        if "sql_read" in sections:
            from pipelines.bench.sql_read import bench_sql_sources

            report["sql_read"] = bench_sql_sources(args.members, Path(tmp))
            print(json.dumps({"sql_read": report["sql_read"]}, indent=2))
        if "retention" in sections and "generator" in sections:
            from pipelines.bench.retention import bench_retention

            report["retention"] = bench_retention(Path(tmp), dt.date.today())
            print(json.dumps({"retention": report["retention"]}, indent=2))
    if "tokens" in sections:
        from pipelines.bench.tokens import bench_tokens

        report["tokens"] = bench_tokens(args.tokens)
        print(json.dumps({"tokens": report["tokens"]}, indent=2))
    if "pushback" in sections:
        from pipelines.bench.pushback import bench_pushback
        from pipelines.sources.throwaway_pg import start_cluster

        cluster = start_cluster()
        try:
            report["pushback"] = bench_pushback(cluster.create_database(), n_people=args.erase)
        finally:
            cluster.stop()
        print(json.dumps({"pushback": report["pushback"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
