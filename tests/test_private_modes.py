"""Files that hold personal data are created 0600 in 0700 folders whatever the umask: the helpers every writer
goes through (pipelines.private), and the audit log on its own. Everything a whole nightly writes under the data
folder is checked in tests/test_nightly.py."""

from __future__ import annotations

import os

import duckdb

from pipelines.audit import AuditLog, anchor_path
from pipelines.private import open_private, private_dir, write_atomically
from tests.conftest import loose_modes


def test_the_audit_log_and_its_anchor_are_private(tmp_path, open_umask):
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    log.append("retention.applied")
    assert loose_modes(tmp_path) == {}
    assert {p.name for p in (tmp_path / "audit").iterdir()} == {log.path.name, anchor_path(log.path).name}


def test_every_way_of_writing_creates_private_files_in_private_folders(tmp_path, open_umask):
    root = tmp_path / "data"
    with open_private(root / "outbox" / "notices.jsonl", "a") as fh:
        fh.write("{}\n")
    write_atomically(root / "exports" / "7" / "bundle.json", '{"iban": "FR76..."}')
    # DuckDB's COPY deletes and recreates the file it is given: the mode is set again before the rename.
    write_atomically(root / "outbox" / "transfers" / "x.csv",
                     lambda temp: duckdb.sql(f"COPY (SELECT 1 AS a) TO '{temp}' (FORMAT csv)"))
    assert loose_modes(root) == {}
    assert (root / "outbox" / "transfers" / "x.csv").read_text() == "a\n1\n"
    assert not list(root.rglob("*.tmp"))


def test_what_an_earlier_version_left_readable_is_narrowed_when_written_again(tmp_path, open_umask):
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "alerts.jsonl").write_text("")
    assert loose_modes(tmp_path) == {"reports": "0o755", "reports/alerts.jsonl": "0o644"}
    with open_private(folder / "alerts.jsonl", "a") as fh:
        fh.write("{}\n")
    assert loose_modes(tmp_path) == {}


def test_a_source_systems_file_keeps_its_own_mode_when_push_back_rewrites_it(tmp_path, open_umask):
    day = tmp_path / "navigation" / "events" / "day=2026-01-01"
    day.mkdir(parents=True)
    (day / "part-0.parquet").write_bytes(b"old")
    os.chmod(day / "part-0.parquet", 0o640)  # the source system's own choice: its readers' group
    write_atomically(day / "part-0.parquet", b"new", in_source=True)
    assert loose_modes(tmp_path) == {"navigation": "0o755", "navigation/events": "0o755",
                                     "navigation/events/day=2026-01-01": "0o755",
                                     "navigation/events/day=2026-01-01/part-0.parquet": "0o640"}


def test_private_dir_does_not_touch_folders_above_the_ones_it_creates(tmp_path, open_umask):
    shared = tmp_path / "shared"
    shared.mkdir()
    private_dir(shared / "data" / "audit")
    assert loose_modes(tmp_path) == {"shared": "0o755"}
