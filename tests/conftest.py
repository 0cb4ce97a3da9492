"""Shared fixtures: a throw-away PostgreSQL cluster per test worker, and fresh databases in it.

Fixtures:
- `pg_cluster` (session): a running PgCluster (tests/pg_cluster.py).
- `pg_url` (function): SQLAlchemy URL (postgresql+psycopg) of a fresh, empty database.
- `make_pg_url` (function): a callable returning the URL of another fresh database on each call.

Without PostgreSQL binaries these tests are skipped locally, but fail in CI (CI=true or
SEM_REQUIRE_POSTGRES=1): PostgreSQL-backed tests are mandatory there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.pg_cluster import PgCluster, find_pg_bin, start_cluster


def _postgres_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("SEM_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if find_pg_bin() is None:
        message = "PostgreSQL 15 binaries (initdb, pg_ctl, postgres) are not installed"
        if _postgres_required():
            pytest.fail(message + " and PostgreSQL tests are mandatory here")
        pytest.skip(message)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_pg_url(pg_cluster: PgCluster) -> Callable[[], str]:
    return pg_cluster.create_database


@pytest.fixture
def pg_url(make_pg_url: Callable[[], str]) -> str:
    return make_pg_url()
