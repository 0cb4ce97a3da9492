"""The hash-chained audit log: an intact log verifies; an edited, removed or reordered line is named, and so is
the loss of its last entries (head anchor, published head)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.audit import (
    AUDIT_DOMAIN,
    GENESIS_HASH,
    AuditLog,
    AuditLogError,
    Head,
    anchor_path,
    current_head,
    entry_hash,
    entry_mac,
    subject_token,
    verify,
)

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


def cli(path: Path | None, *options: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    named = [str(path)] if path else []
    return subprocess.run([sys.executable, "-m", "pipelines.orchestration.audit_cli", "verify", *named, *options],
                          capture_output=True, text=True, cwd=cwd, env=env)


def rewrite(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in change(lines)))


def test_intact_log_verifies_and_appends_continue_the_chain(log_path):
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(entries))
    result = cli(log_path)
    assert result.returncode == 0 and "7 entries" in result.stdout
    appended = AuditLog(log_path).append("rights.answered", decision_id="rights:3")
    assert verify(log_path).ok and verify(log_path).entries == 8
    anchor = json.loads(anchor_path(log_path).read_text())
    assert (anchor["seq"], anchor["hash"], anchor["ts"]) == (8, appended["hash"], appended["ts"])
    assert sorted(p.name for p in log_path.parent.iterdir()) == ["audit.jsonl", "audit.jsonl.head"]


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


@pytest.mark.parametrize("removed", [1, 3, 7])
def test_truncated_tail_is_named(log_path, removed):
    rewrite(log_path, lambda lines: lines[:-removed])
    result = cli(log_path)
    assert result.returncode == 1
    assert (f"log ends at seq {7 - removed} but its head anchor says seq 7: entries were removed from the end"
            in result.stderr)


def test_deleted_log_is_named_by_its_anchor(log_path):
    log_path.unlink()
    result = verify(log_path)
    assert not result.ok and "log ends at seq 0 but its head anchor says seq 7" in result.reason


def test_rewritten_chain_is_named_by_its_anchor(log_path):
    def forge_and_rechain(lines):
        entries = [json.loads(line) for line in lines]
        entries[2]["reason"] = "forged"
        for before, entry in zip([None, *entries], entries, strict=False):
            entry["prev_hash"] = before["hash"] if before else GENESIS_HASH
            entry["hash"] = entry_hash(entry)
        return [json.dumps(entry) for entry in entries]

    rewrite(log_path, forge_and_rechain)
    result = cli(log_path)
    assert result.returncode == 1
    assert "entry seq 7 has hash" in result.stderr and "the log was rewritten" in result.stderr
    assert verify(log_path, check_anchor=False).ok  # the chain alone cannot tell


def test_log_longer_than_a_lagging_anchor_verifies(log_path):
    """An append interrupted between its entries and its anchor leaves the anchor behind, like this older one."""
    older = anchor_path(log_path).read_bytes()
    log = AuditLog(log_path)
    log.append("rights.answered", decision_id="rights:3")
    log.append("rights.answered", decision_id="rights:4")
    anchor_path(log_path).write_bytes(older)
    result = verify(log_path)
    assert result.ok and (result.entries, result.anchor_seq) == (9, 7)
    assert "head anchor agrees at seq 7 (2 entries appended" in cli(log_path).stdout
    # The next append moves the anchor to the head again.
    log.append("rights.answered", decision_id="rights:5")
    assert verify(log_path).anchor_seq == 10


def test_missing_anchor_fails_unless_no_anchor(log_path):
    anchor_path(log_path).unlink()
    result = cli(log_path)
    assert result.returncode == 1 and "no head anchor audit.jsonl.head beside the log" in result.stderr
    result = cli(log_path, "--no-anchor")
    assert result.returncode == 0 and "head anchor not checked (--no-anchor)" in result.stdout


def test_empty_log_without_anchor_verifies(tmp_path):
    (tmp_path / "audit.jsonl").touch()
    assert verify(tmp_path / "audit.jsonl") == verify(tmp_path / "missing.jsonl")
    assert verify(tmp_path / "audit.jsonl").ok
    assert current_head(tmp_path / "audit.jsonl") == current_head(tmp_path / "missing.jsonl") == (0, GENESIS_HASH)
    # The head published by a run that audited nothing yet.
    assert verify(tmp_path / "audit.jsonl", expect_heads=[GENESIS_HASH]).ok


def test_unreadable_anchor_fails(log_path):
    anchor_path(log_path).write_text('{"seq": "7"}\n')
    result = cli(log_path)
    assert result.returncode == 1 and "does not hold a seq and a hash" in result.stderr


def test_expect_head_finds_published_heads_and_rejects_others(log_path):
    published = current_head(log_path)
    last = json.loads(log_path.read_text().splitlines()[-1])
    assert isinstance(published, Head) and published == (7, last["hash"])
    AuditLog(log_path).append("rights.answered", decision_id="rights:3")
    # A head published by an earlier run is still in the chain once later runs have appended.
    result = cli(log_path, "--expect-head", published.hash, "--expect-head", current_head(log_path).hash)
    assert result.returncode == 0 and "expected heads found" in result.stdout
    unknown = "ab" * 32
    result = cli(log_path, "--expect-head", unknown)
    assert result.returncode == 1 and f"expected head {unknown} is not an entry of the chain" in result.stderr


def test_expect_head_catches_truncation_when_the_anchor_is_rewritten_too(log_path):
    published = current_head(log_path)
    rewrite(log_path, lambda lines: lines[:-1])
    anchor_path(log_path).unlink()
    assert cli(log_path, "--no-anchor").returncode == 0
    result = cli(log_path, "--no-anchor", "--expect-head", published.hash)
    assert result.returncode == 1 and "is not an entry of the chain" in result.stderr


@pytest.mark.parametrize("damage", ["truncate", "rewrite last"])
def test_append_refuses_a_log_that_contradicts_its_anchor(log_path, damage):
    def rewrite_last(lines):
        entry = json.loads(lines[-1])
        entry["reason"] = "forged"
        entry["hash"] = entry_hash(entry)
        return [*lines[:-1], json.dumps(entry)]

    rewrite(log_path, (lambda lines: lines[:-2]) if damage == "truncate" else rewrite_last)
    before = (log_path.read_bytes(), anchor_path(log_path).read_bytes())
    with pytest.raises(AuditLogError, match="refusing to append"):
        AuditLog(log_path).append("rights.answered", decision_id="rights:3")
    # Nothing written: the evidence stays for verify.
    assert (log_path.read_bytes(), anchor_path(log_path).read_bytes()) == before
    assert not verify(log_path).ok


# ---------------------------------------------------------------- keyed chain (HMAC under the audit key)

AUDIT_KEY = bytes.fromhex("22" * 32)


@pytest.fixture
def keyed_log(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path / "keyed" / "audit.jsonl", actor="rights", key=AUDIT_KEY)
    for n in range(1, 6):
        log.append("rights.decided", subject_token=subject_token(f"member:{n}", KEY), decision_id=f"rights:{n}")
    return log.path


def _forge_and_rechain(path: Path, *, with_key: bytes | None) -> None:
    """Edit entry 3, then recompute every hash, MAC (with `with_key`, else leave the old ones) and the anchor:
    everything a forger who can write the files can do."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    entries[2]["reason"] = "forged"
    for before, entry in zip([None, *entries], entries, strict=False):
        entry["prev_hash"] = before["hash"] if before else GENESIS_HASH
        entry["hash"] = entry_hash(entry)
        if with_key is not None:
            entry["mac"] = entry_mac(entry["hash"], with_key)
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    last = entries[-1]
    anchor_path(path).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"], "ts": last["ts"]}))


def test_a_keyed_log_verifies_with_its_key(keyed_log, tmp_path):
    result = verify(keyed_log, key=AUDIT_KEY)
    assert result.ok and result.entries == 5
    key_file = tmp_path / "master.key"
    key_file.write_text("33" * 32)
    key_file.chmod(0o600)
    # The CLI derives the audit key from the master key as the token scheme does (HKDF, "sem-privacy/audit/v1").
    from pipelines.pseudo.keys import KeyProvider

    master_log = AuditLog(tmp_path / "cli" / "audit.jsonl",
                          key=KeyProvider(bytes.fromhex("33" * 32)).domain_key(AUDIT_DOMAIN))
    master_log.append("retention.applied")
    ok = cli(master_log.path, "--master-key-file", str(key_file))
    assert ok.returncode == 0 and "every HMAC matches" in ok.stdout


def test_a_chain_rewritten_without_the_key_fails_the_hmac_check_naming_the_entry(keyed_log):
    _forge_and_rechain(keyed_log, with_key=None)
    assert verify(keyed_log).ok  # hash chain and anchor were recomputed: without the key nothing shows
    result = verify(keyed_log, key=AUDIT_KEY)
    assert not result.ok and result.bad_seq == 3 and result.reason.startswith("HMAC check")


def test_a_chain_rewritten_with_another_key_fails_too(keyed_log):
    _forge_and_rechain(keyed_log, with_key=bytes.fromhex("44" * 32))
    result = verify(keyed_log, key=AUDIT_KEY)
    assert not result.ok and result.bad_seq == 1 and "HMAC does not match" in result.reason


def test_an_entry_without_hmac_in_a_keyed_check_is_named(log_path):
    result = verify(log_path, key=AUDIT_KEY)
    assert not result.ok and result.bad_seq == 1 and "carries no HMAC" in result.reason


def test_the_cli_verifies_the_configured_log_from_any_folder_and_names_a_missing_one(log_path, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SEM_AUDIT_LOG", "SEM_DATA_DIR")}
    # SEM_DATA_DIR places the log, not the folder the command is typed in
    found = cli(None, cwd=elsewhere, env={**env, "SEM_DATA_DIR": str(log_path.parent.parent)})
    assert found.returncode == 0 and f"OK: {log_path}: 7 entries" in found.stdout
    missing = cli(None, cwd=elsewhere, env={**env, "SEM_DATA_DIR": str(elsewhere)})
    assert missing.returncode == 2 and "SEM_DATA_DIR" in missing.stderr
    assert f"no audit log at {elsewhere / 'audit' / 'audit.jsonl'}" in missing.stderr
    # a named log that is not there is not an empty chain either
    named = cli(elsewhere / "audit.jsonl", cwd=elsewhere, env=env)
    assert named.returncode == 2 and f"no audit log at {elsewhere / 'audit.jsonl'}" in named.stderr


@pytest.mark.parametrize("cut", [1, 40])
def test_a_cut_last_line_is_an_audit_log_error_and_nothing_is_appended(log_path, cut):
    damaged = log_path.read_bytes()[:-cut - 1]  # the newline and `cut` bytes of the last entry gone
    log_path.write_bytes(damaged)
    with pytest.raises(AuditLogError, match="last line is not a whole entry"):
        AuditLog(log_path).append("rights.answered", decision_id="rights:3")
    with pytest.raises(AuditLogError, match="last line is not a whole entry"):
        current_head(log_path)
    assert log_path.read_bytes() == damaged
    assert not verify(log_path).ok


def test_an_anchor_left_behind_by_a_killed_append_catches_up_when_the_next_run_opens_the_log(tmp_path):
    """A run killed after its entries were written but before the head anchor moved: the next run's settle()
    moves it to the last entry, as the uninterrupted append would have; a rewritten tail is left for verify."""
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("first")
    behind = anchor_path(log.path).read_bytes()
    log.append("second")
    expected = anchor_path(log.path).read_bytes()
    anchor_path(log.path).write_bytes(behind)  # the kill's window: entry durable, anchor not yet replaced
    assert log.settle() and anchor_path(log.path).read_bytes() == expected
    assert not log.settle()  # current: nothing to do
    anchor_path(log.path).write_bytes(behind)
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], lines[1].replace("second", "forged")]) + "\n")
    assert not log.settle() and anchor_path(log.path).read_bytes() == behind
