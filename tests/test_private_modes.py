"""Files that hold personal data are created 0600 in 0700 folders whatever the umask: the warehouse, exports,
outbox, audit log and reports after a real rights run; the audit log on its own."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.audit import AuditLog, anchor_path


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
