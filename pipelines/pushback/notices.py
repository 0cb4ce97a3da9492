"""Art. 19 notices to recipients (processors, the Morocco complaints provider, Monaco professionals).

Notices land in `<outbox>/notices.jsonl`, one JSON line each: notice_id, recipient, decision_id, action,
subject_token (keyed token, never a direct identifier), created_at. The notice_id is derived from
(recipient, decision, subject), and lines already in the outbox are not written again, so a run that
dies after writing its notices but before committing re-sends nothing twice.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pipelines.policy.models import Policy
from pipelines.private import open_private
from pipelines.pushback.sql import NoticeRule

OUTBOX_FILE = "notices.jsonl"

# Art. 19 names rectification, erasure and restriction; lifting a restriction is told to the same recipients.
NOTICE_ACTIONS = {"rectification": ("rectify",), "erasure": ("erase", "anonymise"),
                  "restriction": ("restrict", "lift_restriction")}


def notice_rules(policy: Policy) -> tuple[NoticeRule, ...]:
    """Who is owed which notices, from policies/recipients.yaml: a recipient is notified about a subject
    whose rows of a dataset it receives. A recipient whose disclosures carry conditions (e.g. only the
    complaints it handles) receives data on the subjects meeting them only, so only those conditions count."""
    rules = []
    for recipient in policy.recipients:
        actions = tuple(a for kind in recipient.notified_of for a in NOTICE_ACTIONS[kind])
        conditioned = [d for d in recipient.receives if d.where]
        for disclosure in conditioned or recipient.receives:
            dataset = policy.dataset(disclosure.dataset)
            rules += [NoticeRule(recipient.key, dataset.system, subject.column, dataset.name, actions,
                                 tuple(disclosure.where))
                      for subject in dataset.subjects if actions]
    return tuple(rules)


ID_LENGTH = 32
KEY_KIND = {"member_id": "member", "prospect_id": "prospect", "visitor_id": "visitor"}  # token prefix


def notice_id(recipient: str, decision_id: str, subject_token: str) -> str:
    return hashlib.sha256(f"{recipient}|{decision_id}|{subject_token}".encode()).hexdigest()[:ID_LENGTH]


_ID_MARK = '"notice_id": "'  # as json.dumps writes the key; inside a value its quotes would be escaped


def _notice_ids(lines: Iterable[str]) -> set[str]:
    """The ids of the notices already in the outbox. Cut from each line as write_notices wrote it, parsed only
    where it is not: the outbox keeps every notice ever owed (1.5 million lines after the first night at
    1,000,000 members), and parsing each line as JSON cost 6 s per push-back, five times a night."""
    seen = set()
    for line in lines:
        at = line.find(_ID_MARK) + len(_ID_MARK)
        if at >= len(_ID_MARK) and line[at + ID_LENGTH:at + ID_LENGTH + 1] == '"':
            seen.add(line[at:at + ID_LENGTH])
        elif line.strip():
            seen.add(json.loads(line)["notice_id"])
    return seen


def write_notices(outbox_dir: Path, found: Sequence[dict[str, str]], tokenise: Callable[[str], str]) -> int:
    """Append the notices not yet in the outbox (fsynced); return how many were new."""
    if not found:
        return 0
    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path = outbox_dir / OUTBOX_FILE
    with open_private(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        seen = _notice_ids(fh)
        lines = []
        for item in found:
            token = tokenise(f"{KEY_KIND.get(item['key_column'], item['key_column'])}:{item['key_value']}")
            nid = notice_id(item["recipient"], item["decision_id"], token)
            if nid in seen:
                continue
            seen.add(nid)
            lines.append(json.dumps({
                "notice_id": nid, "recipient": item["recipient"], "decision_id": item["decision_id"],
                "action": item["action"], "subject_token": token, "article": "GDPR art. 19",
                "created_at": created_at,
            }, sort_keys=True) + "\n")
        fh.seek(0, os.SEEK_END)
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())
    return len(lines)


def read_notices(outbox_dir: Path) -> list[dict[str, str]]:
    path = outbox_dir / OUTBOX_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
