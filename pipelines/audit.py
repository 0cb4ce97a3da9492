"""The append-only, hash-chained audit log (JSON Lines) and its `verify` command.

Each line is one entry {seq, ts, actor, action, subject_token, decision_id, reason, details, prev_hash,
hash}; `hash` is the SHA-256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of the entry
without `hash`, so it covers `prev_hash` and chains every entry to the one before (the first entry's
prev_hash is 64 zeros). Editing, removing or reordering any line breaks the chain at that line:

    python -m pipelines.audit verify [path]     # exit 0 when intact, 1 naming the first bad entry

Subjects appear only as keyed tokens: `subject_token("<kind>:<value>", key)` = lowercase hex
HMAC-SHA256(audit domain key, "<kind>:<value>"), kind in member|prospect|visitor|email|phone|person and
the value normalised as in pipelines.normalise; the audit domain key is HKDF of the master
pseudonymisation key with info "sem-privacy/audit/v<version>" (pipelines.pseudo.keys), so an auditor
holding the master key can re-derive the token of a given person with the standard library.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines import settings

GENESIS_HASH = "0" * 64
AUDIT_DOMAIN = "audit"


def audit_token_key() -> bytes:
    """The audit domain key, derived from the configured master key (never stored)."""
    from pipelines.pseudo.keys import derive_domain_key, key_version_from_env, load_master_key

    return derive_domain_key(load_master_key(), AUDIT_DOMAIN, key_version_from_env())


def subject_token(value: str, key: bytes) -> str:
    """Keyed token of a subject reference such as "member:42" (see module doc)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _canonical(entry: Mapping[str, object]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: Mapping[str, object]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    bad_seq: int | None = None  # seq the bad line claims (or its 1-based line number if unreadable)
    line: int | None = None
    reason: str = ""


class AuditLog:
    """Appends entries under an exclusive file lock, so concurrent writers keep one chain."""

    def __init__(self, path: Path | None = None, actor: str = "pipeline") -> None:
        self.path = Path(path) if path else settings.audit_log_path()
        self.actor = actor

    def append(self, action: str, *, subject_token: str | None = None, decision_id: str | None = None,
               reason: str | None = None, details: Mapping[str, object] | None = None,
               actor: str | None = None) -> dict[str, object]:
        return self.extend([{"action": action, "subject_token": subject_token, "decision_id": decision_id,
                             "reason": reason, "details": dict(details or {}), "actor": actor}])[-1]

    def extend(self, items: list[Mapping[str, object]]) -> list[dict[str, object]]:
        """Append several entries (each a mapping with action and optional subject_token, decision_id,
        reason, details, actor) in one locked write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written: list[dict[str, object]] = []
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            seq, prev = _tail(fh)
            ts = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
            lines = []
            for item in items:
                seq += 1
                entry: dict[str, object] = {
                    "seq": seq, "ts": ts, "actor": item.get("actor") or self.actor, "action": item["action"],
                    "subject_token": item.get("subject_token"), "decision_id": item.get("decision_id"),
                    "reason": item.get("reason"), "details": dict(item.get("details") or {}),
                    "prev_hash": prev,
                }
                entry["hash"] = prev = entry_hash(entry)
                lines.append(_canonical(entry) + b"\n")
                written.append(entry)
            fh.seek(0, os.SEEK_END)
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        return written


def _tail(fh) -> tuple[int, str]:
    """(seq, hash) of the last entry, read from the end of the file."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return 0, GENESIS_HASH
    block = min(size, 65536)
    while True:
        fh.seek(size - block)
        lines = fh.read(block).rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or block == size:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        block = min(size, block * 2)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line.rstrip("\n")


def verify(path: Path) -> VerifyResult:
    """Walk the chain; the first entry whose seq, prev_hash or own hash does not fit is reported."""
    prev, expected_seq, count = GENESIS_HASH, 1, 0
    if not path.exists():
        return VerifyResult(ok=True, entries=0)
    for number, line in _lines(path):
        try:
            entry = json.loads(line)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            return VerifyResult(False, count, number, number, "unreadable line")
        if entry.get("hash") != entry_hash(entry):
            return VerifyResult(False, count, seq, number, "content does not match its hash (edited)")
        if seq != expected_seq:
            return VerifyResult(False, count, seq, number,
                                f"sequence {seq} where {expected_seq} was expected (removed or reordered)")
        if entry.get("prev_hash") != prev:
            return VerifyResult(False, count, seq, number, "prev_hash does not match the previous entry")
        prev, expected_seq, count = entry["hash"], expected_seq + 1, count + 1
    return VerifyResult(ok=True, entries=count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.audit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="verify the hash chain")
    check.add_argument("path", nargs="?", type=Path, default=None)
    args = parser.parse_args(argv)
    path = args.path or settings.audit_log_path()
    result = verify(path)
    if result.ok:
        print(f"OK: {path}: {result.entries} entries, chain intact")
        return 0
    print(f"TAMPERED: {path}: first bad entry seq={result.bad_seq} (line {result.line}): {result.reason}; "
          f"{result.entries} entries verified before it", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
