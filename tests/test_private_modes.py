"""Files that hold personal data are created 0600 in 0700 folders whatever the umask: the warehouse, exports,
outbox, audit log and reports after a real rights run; the audit log on its own."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa

from pipelines.audit import AuditLog, anchor_path
from pipelines.identity import resolve_identities
from pipelines.refresh import ingest_all
from pipelines.sources.schema import SQL_SYSTEMS


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what a shell usually has: files 0644, folders 0755
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in [root, *root.rglob("*")]}


def test_the_audit_log_and_its_anchor_are_private(tmp_path, open_umask):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    log.append("retention.applied")
    assert _mode(log.path.parent) == 0o700
    assert _mode(log.path) == 0o600 and _mode(anchor_path(log.path)) == 0o600


def test_after_a_rights_run_every_store_is_private(sandbox, open_umask):
    from assets.rights import rights_requests

    engines = {s: sa.create_engine(f"sqlite:///{sandbox.sources / (s + '.db')}") for s in SQL_SYSTEMS}
    with duckdb.connect(str(sandbox.warehouse)) as con:
        ingest_all(con, engines, sandbox.sources / "navigation")
        resolve_identities(con)
    os.chmod(sandbox.warehouse, 0o644)  # as an earlier version left it
    assert dg.materialize([rights_requests], resources=sandbox.resources()).success
    assert _mode(sandbox.warehouse) == 0o600
    stores = [sandbox.root / name for name in ("audit", "exports", "outbox")]
    assert all(store.is_dir() for store in stores) and any((sandbox.root / "exports").rglob("*"))
    for store in stores:
        modes = _modes(store)
        assert {p: m for p, m in modes.items() if (store / p).is_dir() and m != 0o700} == {}
        assert {p: m for p, m in modes.items() if (store / p).is_file() and m != 0o600} == {}
