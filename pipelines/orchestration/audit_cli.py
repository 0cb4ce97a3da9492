"""`python -m pipelines.orchestration.audit_cli verify`: the audit log's command line (the chain, its head
anchor, published heads and, given the master key, every entry's HMAC; see pipelines.audit).

Without a path it verifies the configured log (SEM_AUDIT_LOG, else `<SEM_DATA_DIR>/audit/audit.jsonl`, else
`data/audit/audit.jsonl` under the project folder), wherever it is run from; a log that is not there is an
error naming the path, not an empty chain.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.audit import AUDIT_DOMAIN, verify
from pipelines.orchestration import settings
from pipelines.pseudo.keys import KeyProvider, read_key_file

NO_LOG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.orchestration.audit_cli",
                                     description="Verify the hash-chained, keyed audit log.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="verify the hash chain, its head anchor and published heads")
    check.add_argument("path", nargs="?", type=Path,
                       help="the audit log (default: SEM_AUDIT_LOG, else <SEM_DATA_DIR>/audit/audit.jsonl, else "
                            "data/audit/audit.jsonl under the project folder)")
    check.add_argument("--expect-head", action="append", default=[], metavar="HASH",
                       help="a head hash published earlier; fails unless it is an entry of the chain (repeatable)")
    check.add_argument("--master-key-file", type=Path, metavar="PATH",
                       help="hex master key file (0600): also check every entry's HMAC under the audit domain key")
    check.add_argument("--key-version", type=int, default=1, help="the key version the log was written with")
    check.add_argument("--no-anchor", action="store_true",
                       help="do not read the head anchor (a copy of the log made without it)")
    args = parser.parse_args(argv)
    path = args.path or settings.audit_log_path()
    if not path.is_file():
        how = "" if args.path else " (the configured log: set SEM_AUDIT_LOG or SEM_DATA_DIR, or name the log)"
        print(f"FAILED: no audit log at {path.resolve()}{how}", file=sys.stderr)
        return NO_LOG
    key = None
    if args.master_key_file:
        key = KeyProvider(read_key_file(args.master_key_file), args.key_version).domain_key(AUDIT_DOMAIN)
    result = verify(path, check_anchor=not args.no_anchor, expect_heads=args.expect_head, key=key)
    if not result.ok:
        if result.line is None:
            print(f"FAILED: {path}: {result.reason}", file=sys.stderr)
        else:
            print(f"TAMPERED: {path}: first bad entry seq={result.bad_seq} (line {result.line}): {result.reason}; "
                  f"{result.entries} entries verified before it", file=sys.stderr)
        return 1
    notes = [f"{result.entries} entries, chain intact" + (", every HMAC matches" if key else "")]
    if args.no_anchor:
        notes.append("head anchor not checked (--no-anchor)")
    elif result.anchor_seq == result.entries:
        notes.append("head anchor agrees")
    elif result.anchor_seq is not None:
        notes.append(f"head anchor agrees at seq {result.anchor_seq} "
                     f"({result.entries - result.anchor_seq} entries appended after it was last written)")
    if args.expect_head:
        notes.append("expected head found" if len(args.expect_head) == 1 else "expected heads found")
    print(f"OK: {path}: {'; '.join(notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
