"""What the privacy core is given, never looks up: the policy, the keys, the audit log and the folders.

The orchestration layer (pipelines.orchestration) builds one from its resources; tests build their own.
Nothing in the core reads the environment or pipelines.orchestration.settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.audit import AUDIT_DOMAIN, AuditLog, subject_token
from pipelines.policy.models import Policy
from pipelines.pseudo.keys import KeyProvider
from pipelines.pushback.notices import notice_rules
from pipelines.pushback.sql import NoticeRule


@dataclass(frozen=True)
class Paths:
    """The folders the core writes to besides the warehouse (given as an open connection)."""

    navigation: Path  # the navigation logs (a source: push-back rewrites its files)
    outbox: Path  # recipients' notices and transfer extracts
    exports: Path  # access-request bundles


@dataclass(frozen=True)
class CoreContext:
    policy: Policy
    keys: KeyProvider
    audit: AuditLog
    paths: Paths

    def tokenise(self, value: str) -> str:
        """Keyed token of a subject reference ("member:42") in the audit domain."""
        return subject_token(value, self.keys.domain_key(AUDIT_DOMAIN))

    @property
    def notice_rules(self) -> tuple[NoticeRule, ...]:
        return notice_rules(self.policy)
