"""Shared fixtures: a throw-away PostgreSQL cluster per test worker, and fresh databases in it.

Fixtures:
- `pg_cluster` (session): a running PgCluster (pipelines/sources/throwaway_pg.py).
- `pg_url` (function): SQLAlchemy URL (postgresql+psycopg) of a fresh, empty database.
- `make_pg_url` (function): a callable returning the URL of another fresh database on each call.
- `generated_sources` (session): the demo generator's output at small scale (TEST_MEMBERS, TEST_AS_OF).
- `open_umask` (function): the process umask set to 022 (files 0644, folders 0755 unless a writer says otherwise).
- `sandbox` (function): a private copy of those sources + fresh warehouse/analytics paths, with
  `.resources()` for `dg.materialize` / `execute_in_process`; `pg_sandbox`: the same with the SQL
  systems copied into a real PostgreSQL.
- `parse_source(path)`: a module's syntax tree, parsed with the garbage collector paused (see below).
- `first_night` (session): those sources after the nightly job's first night (the backlog of years), run once per
  test worker through the real Definitions under a umask of 022; `site_after_first_night` (function): a copy of
  that site, back at the path the first night ran at, with SEM_DATA_DIR and DAGSTER_HOME pointing into it. Tests
  using them share the group FIRST_NIGHT (`pytest.mark.xdist_group`), so one worker runs the first night once.

Without PostgreSQL binaries these tests are skipped locally, but fail in CI (CI=true or
SEM_REQUIRE_POSTGRES=1): PostgreSQL-backed tests are mandatory there.
"""

from __future__ import annotations

import ast
import datetime as dt
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.sources.throwaway_pg import PgCluster, find_pg_bin, start_cluster


def parse_source(path: Path) -> ast.Module:
    """The syntax tree of a source file. The collector is paused meanwhile: an object it collects may log a
    traceback (a database connection dropped unclosed), and Python 3.11's traceback module parses source with ast;
    entering ast.parse again that way breaks its recursion counter ("AST constructor recursion depth mismatch",
    CPython gh-106905), which failed a suite run."""
    gc.collect()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` sends the tests of one `xdist_group` to one worker by a `@group` suffix pytest-xdist
    3.8 puts on their node ids; under pytest 9 its assignment (`item._nodeid`) no longer reaches the node id, so the
    groups were silently ignored. The suffix is put where pytest 9 keeps the id; nothing happens once xdist does it."""
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


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


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what a shell usually has
    try:
        yield
    finally:
        os.umask(previous)


def loose_modes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `root` that is not 0600 and every folder that is not 0700 (but the top-level names
    in `skip`), with its mode."""
    found = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        mode = path.stat().st_mode & 0o777
        if relative.parts[0] not in skip and mode != (0o700 if path.is_dir() else 0o600):
            found[str(relative)] = oct(mode)
    return found


# --- Generated sources and an isolated project sandbox -------------------------------------------------

TEST_AS_OF = dt.date(2026, 11, 1)
TEST_MEMBERS = 400
TEST_KEY_HEX = "5e" * 32  # test-only master key; production keys come from the environment or a 0600 file


def identity_rules() -> list:
    """The shipped policy's identity rules (datasets.yaml `identity`)."""
    from pipelines.orchestration.settings import PROJECT_ROOT
    from pipelines.policy.load import load_policy

    return load_policy(PROJECT_ROOT / "policies").datasets_file.identity


def core_context(root: Path, policy: object, navigation: Path, audit_log: Path | None = None) -> object:
    """The privacy core's explicit inputs for a test: the test key, an audit log (default
    `root/audit/audit.jsonl`) and folders under `root`."""
    from pipelines.audit import AuditLog
    from pipelines.context import CoreContext, Paths
    from pipelines.pseudo.keys import KeyProvider

    return CoreContext(policy=policy, keys=KeyProvider(bytes.fromhex(TEST_KEY_HEX)),
                       audit=AuditLog(audit_log or root / "audit" / "audit.jsonl"),
                       paths=Paths(navigation=navigation, outbox=root / "outbox", exports=root / "exports"))


def retention_night(warehouse: Path, root: Path, policy: object, navigation: Path, engines: dict,
                    as_of: dt.date) -> None:
    """What the nightly job does for retention once the sources are ingested: ledger, then apply (push-back to
    the sources, then the warehouse), then the re-read of what push-back changed (its change markers included),
    as `retention/applied` does; every decision must be confirmed."""
    import duckdb

    from pipelines.refresh import refresh_from_sources
    from pipelines.retention.apply import apply_retention
    from pipelines.retention.ledger import build_ledger

    with duckdb.connect(str(warehouse)) as con:
        build_ledger(con, policy, as_of)
        outcome = apply_retention(con, core_context(root, policy, navigation), as_of, members=engines["members"],
                                  prospects=engines["prospects"])
        refresh_from_sources(con, outcome.touched, engines=engines, navigation_dir=navigation, policy=policy,
                             as_of=as_of)
    assert not outcome.decisions_failed


@pytest.fixture(scope="session")
def generated_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three source systems, generated once per test worker (read-only: copy before changing)."""
    from pipelines.demo.generate import generate

    out = tmp_path_factory.mktemp("generated") / "sources"
    generate(out, members=TEST_MEMBERS, seed=7, as_of=TEST_AS_OF)
    return out


@dataclass
class Sandbox:
    """A private copy of the sources and fresh warehouse/analytics/compliance paths for one test."""

    root: Path
    members_url: str
    prospects_url: str

    @classmethod
    def at(cls, root: Path) -> Sandbox:
        """The site under `root`, with its SQL sources in the SQLite files of `root/sources`."""
        sources = root / "sources"
        return cls(root=root, members_url=f"sqlite:///{sources / 'members.db'}",
                   prospects_url=f"sqlite:///{sources / 'prospects.db'}")

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def analytics(self) -> Path:
        return self.root / "analytics.duckdb"

    def resources(self) -> dict[str, object]:
        from pipelines.orchestration.resources import (
            AnalyticsFileResource,
            ComplianceStoreResource,
            NavigationSourceResource,
            SqlSourceResource,
            WarehouseResource,
            default_resources,
        )

        return {
            **default_resources(),
            "warehouse": WarehouseResource(path=str(self.warehouse)),
            "analytics": AnalyticsFileResource(path=str(self.analytics)),
            "member_source": SqlSourceResource(system="members", url=self.members_url),
            "prospect_source": SqlSourceResource(system="prospects", url=self.prospects_url),
            "navigation": NavigationSourceResource(path=str(self.sources / "navigation")),
            "compliance": ComplianceStoreResource(data_dir=str(self.root)),
        }


@pytest.fixture
def sandbox(tmp_path: Path, generated_sources: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    shutil.copytree(generated_sources, tmp_path / "sources")
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
    return Sandbox.at(tmp_path)


FIRST_NIGHT = "first_night"


@dataclass
class FirstNight:
    """The generated sources after the first nightly run: the site as it was then (`pristine`), where the run
    happened (`site`: paths the warehouse records, such as the navigation files', point there) and its result."""

    site: Path
    pristine: Path
    result: object  # dg.ExecuteInProcessResult


@pytest.fixture(scope="session")
def first_night(tmp_path_factory: pytest.TempPathFactory, generated_sources: Path) -> FirstNight:
    from pipelines.demo.__main__ import run_job

    base = tmp_path_factory.mktemp("first-night")
    site = base / "site"
    shutil.copytree(generated_sources, site / "sources")
    (site / "dagster_home").mkdir()
    previous = os.umask(0o022)  # what a shell usually has: everything the run writes must still be private
    try:
        with pytest.MonkeyPatch.context() as mp:
            point_at(mp, site)
            result = run_job(TEST_AS_OF)
    finally:
        os.umask(previous)
    site.rename(base / "pristine")
    return FirstNight(site=site, pristine=base / "pristine", result=result)


def point_at(mp: pytest.MonkeyPatch, site: Path) -> None:
    """Every default at `site`, as an operator would with SEM_DATA_DIR (and the site's own Dagster instance)."""
    mp.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
    mp.setenv("SEM_DATA_DIR", str(site))
    mp.setenv("DAGSTER_HOME", str(site / "dagster_home"))


@pytest.fixture
def site_after_first_night(first_night: FirstNight, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A copy of the site after its first night, at the path it ran at (file times kept, so the navigation files
    read as unchanged); removed after the test."""
    shutil.copytree(first_night.pristine, first_night.site)
    point_at(monkeypatch, first_night.site)
    try:
        yield Sandbox.at(first_night.site)
    finally:
        shutil.rmtree(first_night.site)


@pytest.fixture
def pg_sandbox(sandbox: Sandbox, make_pg_url: Callable[[], str]) -> Sandbox:
    """The same sources, with the member system and prospecting platform in a real PostgreSQL."""
    from pipelines.sources.copy import copy_sql_system
    from pipelines.sources.schema import member_metadata, prospect_metadata

    members_url, prospects_url = make_pg_url(), make_pg_url()
    copy_sql_system(sandbox.members_url, members_url, member_metadata)
    copy_sql_system(sandbox.prospects_url, prospects_url, prospect_metadata)
    return Sandbox(root=sandbox.root, members_url=members_url, prospects_url=prospects_url)
