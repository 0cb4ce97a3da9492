"""The append-only, hash-chained audit log (JSON Lines), its head anchor and its `verify` command.

Each line is one entry {seq, ts, actor, action, subject_token, decision_id, reason, details, prev_hash,
hash}; `hash` is the SHA-256 (hex) of the canonical JSON (sorted keys, no spaces, UTF-8) of the entry
without `hash`, so it covers `prev_hash` and chains every entry to the one before (the first entry's
prev_hash is 64 zeros). Editing, removing or reordering any line breaks the chain at that line.

A chain cut short is still a valid chain, so every append also replaces the head anchor `<log>.head`
(e.g. `audit.jsonl.head`), one JSON object {seq, hash, ts} naming the last entry written, after the entries
are on disk (temporary file, fsync, rename). The log may be longer than its anchor (an append interrupted
between the two, or an anchor restored from a backup) as long as its entry at the anchor's seq has the
anchor's hash; a log shorter than its anchor, or with another entry at that seq, has lost or rewritten
entries, and appending to it is refused. Whoever can rewrite the log can rewrite the anchor beside it:
against that, publish the head (`current_head()`, e.g. in run metadata) and check it later:

    python -m pipelines.orchestration.audit_cli verify [path] [--expect-head HASH]... [--no-anchor]

exits 0 when the chain is intact, agrees with its anchor and holds every expected head; 1 naming the first
bad entry, or what is wrong with the end of the log. A non-empty log without its anchor fails unless
--no-anchor is given (a copy made without it); the anchor is then not read at all, and removal of entries
from the end goes unnoticed unless an expected head is given.

Keyed chain: a log written with the audit key (`AuditLog(path, key=...)`) also carries in each entry `mac`,
the HMAC-SHA256 under the audit domain key of the entry's `hash`. The hash chain shows any edit; the MAC shows
who could have written it: someone who rewrites entries and recomputes every hash and the anchor still cannot
produce the MACs without the key, so `verify(path, key=...)` (CLI: `--master-key-file`) names the first entry
whose MAC is missing or wrong.

Subjects appear only as keyed tokens: `subject_token("<kind>:<value>", key)` = lowercase hex
HMAC-SHA256(audit domain key, "<kind>:<value>"), kind in member|prospect|visitor|email|phone|person and
the value normalised as in pipelines.normalise; the audit domain key is HKDF of the master
pseudonymisation key with info "sem-privacy/audit/v<version>" (pipelines.pseudo.keys), so an auditor
holding the master key can re-derive the token of a given person with the standard library.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pipelines.private import open_private, write_atomically

GENESIS_HASH = "0" * 64
AUDIT_DOMAIN = "audit"


class AuditLogError(RuntimeError):
    """The log contradicts its head anchor, or the anchor cannot be read."""


class Head(NamedTuple):
    seq: int
    hash: str


def subject_token(value: str, key: bytes) -> str:
    """Keyed token of a subject reference such as "member:42" (see module doc)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _canonical(entry: Mapping[str, object]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: Mapping[str, object]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k not in ("hash", "mac")})).hexdigest()


def entry_mac(entry_hash_hex: str, key: bytes) -> str:
    """HMAC-SHA256 of an entry's hash under the audit domain key (the hash covers the entry and its chain)."""
    return hmac.new(key, entry_hash_hex.encode(), hashlib.sha256).hexdigest()


def anchor_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    bad_seq: int | None = None  # seq the bad line claims (or its 1-based line number if unreadable)
    line: int | None = None  # None when the failure is about the end of the log, not one line
    reason: str = ""
    anchor_seq: int | None = None  # seq of the head anchor checked, None when there was none to check


class AuditLog:
    """Appends entries under an exclusive file lock, so concurrent writers keep one chain."""

    def __init__(self, path: Path, actor: str = "pipeline", key: bytes | None = None) -> None:
        self.path = Path(path)
        self.actor = actor
        self._key = key  # the audit domain key: each entry then carries its HMAC

    def append(self, action: str, *, subject_token: str | None = None, decision_id: str | None = None,
               reason: str | None = None, details: Mapping[str, object] | None = None,
               actor: str | None = None) -> dict[str, object]:
        return self.extend([{"action": action, "subject_token": subject_token, "decision_id": decision_id,
                             "reason": reason, "details": dict(details or {}), "actor": actor}])[-1]

    def extend(self, items: list[Mapping[str, object]]) -> list[dict[str, object]]:
        """Append several entries (each a mapping with action and optional subject_token, decision_id,
        reason, details, actor) in one locked write, then move the head anchor to the last of them.

        Raises AuditLogError, writing nothing, when the anchor is unreadable, or the log is shorter than its
        anchor or ends on another entry than the anchor's: chaining on would make the anchor agree with the
        damaged log again."""
        anchor_file = anchor_path(self.path)
        written: list[dict[str, object]] = []
        # Private: the log names decisions about people (as tokens) and why.
        with open_private(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            seq, prev = _tail(fh, self.path)
            anchor = _read_anchor(anchor_file)
            # A log longer than its anchor is the normal result of an interrupted append; checking it would
            # mean reading back to the anchor's entry on every append, so verify does that instead.
            if anchor and (problem := _anchor_mismatch(anchor, seq, prev if seq == anchor.seq else None)):
                raise AuditLogError(f"{self.path}: {problem}; refusing to append (see python -m "
                                    "pipelines.orchestration.audit_cli verify)")
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
                if self._key is not None:
                    entry["mac"] = entry_mac(prev, self._key)
                lines.append(_canonical(entry) + b"\n")
                written.append(entry)
            fh.seek(0, os.SEEK_END)
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            # Only once the entries are durable, so the anchor never names an entry a crash could lose; still
            # under the lock, so concurrent appends cannot leave an older head in place.
            if written:
                _write_anchor(anchor_file, {"seq": seq, "hash": prev, "ts": ts})
        return written


    def settle(self) -> bool:
        """Move a head anchor an interrupted append left behind (entries written, anchor not yet moved) to the
        last entry, once the entries after it are checked to chain from the anchor's; returns whether it moved.
        Reads only the tail while the anchor is current. A run calls it before its own appends (core_context),
        so a kill costs the log nothing an uninterrupted run would have."""
        if not self.path.exists():
            return False
        anchor_file = anchor_path(self.path)
        with open_private(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            seq, last = _tail(fh, self.path)
            anchor = _read_anchor(anchor_file)
            if anchor is None or anchor.seq >= seq:
                return False
            fh.seek(0)
            chained, ts = None, None
            for line in fh:
                entry = json.loads(line)
                if entry["seq"] == anchor.seq:
                    chained = entry["hash"] if entry["hash"] == anchor.hash else None
                elif entry["seq"] > anchor.seq:
                    if chained is None or entry["prev_hash"] != chained or entry_hash(entry) != entry["hash"]:
                        return False  # not this method's business: verify names what is wrong
                    chained, ts = entry["hash"], entry["ts"]
            if chained != last:
                return False
            _write_anchor(anchor_file, {"seq": seq, "hash": last, "ts": ts})
        return True


def logged(path: Path, wanted: set[str], key: Callable[[dict], object], marker: str) -> set[str]:
    """Those of `wanted` that `key` finds in an entry of the log (lines without `marker` are not parsed).

    For finishing a killed run's work exactly once: what it already appended is not appended again."""
    found: set[str] = set()
    if not wanted or not path.exists():
        return found
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if marker in line and (value := key(json.loads(line))) in wanted:
                found.add(str(value))
    return found


def current_head(path: Path) -> Head:
    """(seq, hash) of the last entry of the log, (0, GENESIS_HASH) when there is none: the value to publish
    elsewhere (it identifies no one) for `verify --expect-head`. Reads the tail only; it verifies nothing."""
    path = Path(path)
    if not path.exists():
        return Head(0, GENESIS_HASH)
    with open(path, "rb") as fh:
        # Shared lock: waits for an append in progress instead of reading half of it.
        fcntl.flock(fh, fcntl.LOCK_SH)
        return _tail(fh, path)


def _tail(fh: BinaryIO, path: Path) -> Head:
    """(seq, hash) of the last entry, read from the end of the file; AuditLogError when the last line is not a
    whole entry (a log cut short in the middle of a line): chaining on it would hide the damage."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    if size == 0:
        return Head(0, GENESIS_HASH)
    block = min(size, 65536)
    while True:
        fh.seek(size - block)
        lines = fh.read(block).rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or block == size:
            try:
                last = json.loads(lines[-1])
                return Head(int(last["seq"]), str(last["hash"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditLogError(f"{path}: the last line is not a whole entry ({type(exc).__name__}: the log "
                                    "was cut or damaged); refusing to append (see python -m "
                                    "pipelines.orchestration.audit_cli verify)") from None
        block = min(size, block * 2)


def _write_anchor(path: Path, anchor: Mapping[str, object]) -> None:
    # Replaced whole so a reader or a crash sees the old anchor or the new one, never a mix (the caller holds the
    # log's lock).
    write_atomically(path, _canonical(anchor) + b"\n")


def _read_anchor(path: Path) -> Head | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise AuditLogError(f"head anchor {path} is unreadable: {exc}") from None
    seq, hash_ = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if type(seq) is not int or seq < 1 or not isinstance(hash_, str) or len(hash_) != 64:
        raise AuditLogError(f"head anchor {path} does not hold a seq and a hash: {data!r}")
    return Head(seq, hash_)


def _anchor_mismatch(anchor: Head, last_seq: int, hash_at_anchor: str | None) -> str:
    """Why a log ending at `last_seq`, whose entry at the anchor's seq has `hash_at_anchor` (None: not known),
    contradicts its anchor; "" when it does not."""
    if last_seq < anchor.seq:
        return (f"log ends at seq {last_seq} but its head anchor says seq {anchor.seq}: "
                "entries were removed from the end")
    if hash_at_anchor is not None and hash_at_anchor != anchor.hash:
        return (f"entry seq {anchor.seq} has hash {hash_at_anchor} but its head anchor says {anchor.hash}: "
                "the log was rewritten at or before that entry")
    return ""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, line.rstrip("\n")


def verify(path: Path, *, check_anchor: bool = True, expect_heads: Iterable[str] = (),
           key: bytes | None = None) -> VerifyResult:
    """Walk the chain; the first entry whose seq, prev_hash or own hash does not fit is reported (with `key`,
    also its HMAC). Then the end of the log must agree with its head anchor (unless `check_anchor` is false)
    and every hash of `expect_heads` must be an entry of the chain."""
    # The anchor is read before the log: an append lengthens the log before it moves the anchor, so the log
    # read next is at least as long as this anchor even while another process appends.
    try:
        anchor = _read_anchor(anchor_path(path)) if check_anchor else None
    except AuditLogError as exc:
        return VerifyResult(False, 0, reason=str(exc))
    # The head published for an empty log is the genesis hash, which every chain starts from.
    missing = set(expect_heads) - {GENESIS_HASH}
    prev, expected_seq, count, hash_at_anchor = GENESIS_HASH, 1, 0, None
    for number, line in _lines(path) if path.exists() else ():
        try:
            entry = json.loads(line)
            seq = int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            return VerifyResult(False, count, number, number, "unreadable line")
        if entry.get("hash") != entry_hash(entry):
            return VerifyResult(False, count, seq, number, "content does not match its hash (edited)")
        if key is not None and "mac" not in entry:
            return VerifyResult(False, count, seq, number, "HMAC check: the entry carries no HMAC (written "
                                "without the audit key, or its HMAC was stripped)")
        if key is not None and not hmac.compare_digest(str(entry["mac"]), entry_mac(entry["hash"], key)):
            return VerifyResult(False, count, seq, number, "HMAC check: the HMAC does not match the entry "
                                "(rewritten by someone without the audit key)")
        if seq != expected_seq:
            return VerifyResult(False, count, seq, number,
                                f"sequence {seq} where {expected_seq} was expected (removed or reordered)")
        if entry.get("prev_hash") != prev:
            return VerifyResult(False, count, seq, number, "prev_hash does not match the previous entry")
        if anchor and seq == anchor.seq:
            hash_at_anchor = entry["hash"]
        missing.discard(entry["hash"])
        prev, expected_seq, count = entry["hash"], expected_seq + 1, count + 1
    if anchor and (problem := _anchor_mismatch(anchor, count, hash_at_anchor)):
        return VerifyResult(False, count, reason=problem, anchor_seq=anchor.seq)
    if check_anchor and anchor is None and count:
        return VerifyResult(False, count, reason=(
            f"no head anchor {anchor_path(path).name} beside the log, so entries removed from its end would go "
            "unnoticed (--no-anchor verifies a copy made without its anchor)"))
    if missing:
        return VerifyResult(False, count, anchor_seq=anchor.seq if anchor else None, reason=(
            f"expected head {', '.join(sorted(missing))} is not an entry of the chain: entries were removed or "
            "rewritten since it was published, or this is not the log it was published from"))
    return VerifyResult(True, count, anchor_seq=anchor.seq if anchor else None)
