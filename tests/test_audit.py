"""The hash-chained audit log: an intact log verifies; an edited, removed or reordered line is named."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.audit import AuditLog, subject_token, verify

KEY = bytes.fromhex("11" * 32)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl", actor="rights")
    for n in range(1, 6):
        log.append("rights.decided", subject_token=subject_token(f"member:{n}", KEY), decision_id=f"rights:{n}",
                   reason="art. 17 erasure", details={"request_id": n})
    log.extend([{"action": "pushback.confirmed", "decision_id": "rights:1"},
                {"action": "pushback.failed", "decision_id": "rights:2", "reason": "still in members"}])
    return log.path


def cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.audit", "verify", str(path)],
                          capture_output=True, text=True)


def rewrite(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_intact_log_verifies_and_appends_continue_the_chain(log_path):
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    result = cli(log_path)
    assert result.returncode == 0 and "7 entries" in result.stdout
    AuditLog(log_path).append("rights.answered", decision_id="rights:3")
    assert verify(log_path).ok and verify(log_path).entries == 8


def test_edited_entry_is_named(log_path):
    def edit(lines):
        entry = json.loads(lines[2])
        entry["reason"] = "nothing to see"
        lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        return lines

    rewrite(log_path, edit)
    result = cli(log_path)
    assert result.returncode == 1 and "seq=3" in result.stderr and "edited" in result.stderr


def test_edit_with_recomputed_hash_still_breaks_the_next_link(log_path):
    from pipelines.audit import entry_hash

    def forge(lines):
        entry = json.loads(lines[2])
        entry["reason"] = "forged"
        entry["hash"] = entry_hash(entry)
        lines[2] = json.dumps(entry)
        return lines

    rewrite(log_path, forge)
    result = verify(log_path)
    assert not result.ok and result.bad_seq == 4 and "prev_hash" in result.reason


def test_removed_entry_is_named(log_path):
    rewrite(log_path, lambda lines: lines[:3] + lines[4:])
    result = cli(log_path)
    assert result.returncode == 1 and "seq=5" in result.stderr and "removed or reordered" in result.stderr


def test_reordered_entries_are_named(log_path):
    rewrite(log_path, lambda lines: [lines[0], lines[2], lines[1], *lines[3:]])
    result = verify(log_path)
    assert not result.ok and (result.bad_seq, result.line) == (3, 2)


def test_subjects_are_keyed_tokens_only(log_path):
    text = log_path.read_text()
    assert "member:1" not in text
    assert subject_token("member:1", KEY) in text
    assert subject_token("member:1", KEY) != subject_token("member:1", bytes.fromhex("22" * 32))
