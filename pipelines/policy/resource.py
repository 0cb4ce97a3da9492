"""Dagster resource `policies`: where the policy YAML lives, and the validated `Policy` loaded from it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pipelines import settings
from pipelines.policy.load import load_policy
from pipelines.policy.models import Policy


class PoliciesResource(dg.ConfigurableResource):
    """The policy folder (default SEM_POLICIES_DIR, then policies/); `load()` refuses a bad file clearly."""

    path: str | None = None

    @property
    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else settings.policies_dir()

    def load(self) -> Policy:
        return load_policy(self.resolved_path)
