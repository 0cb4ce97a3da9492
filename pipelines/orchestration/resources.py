"""Dagster resources: the warehouse, the analytics file, the three source systems and the compliance stores.

Every field is optional: an unset field falls back to the environment variable, then to the default
under the project root (pipelines.orchestration.settings), so `dagster dev` works with no variable set.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import sqlalchemy as sa
from pydantic import PrivateAttr

from pipelines.audit import AUDIT_DOMAIN, AuditLog, current_head
from pipelines.context import CoreContext, Paths
from pipelines.duck import connect_warehouse
from pipelines.orchestration import settings
from pipelines.policy.load import load_policy
from pipelines.policy.models import Policy
from pipelines.private import make_private, private_dir
from pipelines.pseudo.keys import KeyProvider
from pipelines.retention.ledger import SLICE_RECORDS


class WarehouseResource(dg.ConfigurableResource):
    """The pipeline's DuckDB warehouse (raw copies, ledger, restricted archive). Not for analysts.

    While another process holds the file, a step waits with back-off up to `lock_timeout_s` (default
    SEM_WAREHOUSE_LOCK_TIMEOUT, then 300 s), then fails saying who holds it.
    """

    path: str | None = None
    lock_timeout_s: float | None = None
    # records per slice of the retention ledger (default SEM_LEDGER_SLICE_RECORDS, then the library's)
    ledger_slice_records: int | None = None

    @property
    def resolved_ledger_slice_records(self) -> int:
        return self.ledger_slice_records or settings.ledger_slice_records() or SLICE_RECORDS

    @property
    def resolved_lock_timeout_s(self) -> float:
        return self.lock_timeout_s if self.lock_timeout_s is not None else settings.warehouse_lock_timeout_s()

    @property
    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else settings.warehouse_path()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        path = self.resolved_path
        private_dir(path.parent)
        con = connect_warehouse(path, read_only=read_only, memory_limit=settings.duckdb_memory_limit(),
                                lock_timeout_s=self.resolved_lock_timeout_s)
        # The raw copies and the restricted archive: the owner's only, from the moment DuckDB creates the file
        # (and narrowed again if an earlier version left it readable).
        make_private(path)
        try:
            yield con
        finally:
            con.close()


class AnalyticsFileResource(dg.ConfigurableResource):
    """Where the analysts' pseudonymised DuckDB file is published (atomically swapped in)."""

    path: str | None = None

    @property
    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else settings.analytics_path()


class SqlSourceResource(dg.ConfigurableResource):
    """A SQL source system (member system or prospecting platform) by SQLAlchemy URL.

    `system` is "members" or "prospects"; `url` defaults to SEM_MEMBERS_URL / SEM_PROSPECTS_URL, then to
    the SQLite file under data/sources/.
    """

    system: str
    url: str | None = None
    _engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def resolved_url(self) -> str:
        if self.url:
            return self.url
        return settings.members_url() if self.system == "members" else settings.prospects_url()

    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.resolved_url)
        return self._engine

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()


class NavigationSourceResource(dg.ConfigurableResource):
    """The navigation logs: a folder of day-partitioned Parquet events and the cookie-consent log."""

    path: str | None = None

    @property
    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else settings.navigation_dir()


class ComplianceStoreResource(dg.ConfigurableResource):
    """Folders for the DPO: audit log, recipients' outbox, access-request exports and reports."""

    data_dir: str | None = None

    def _under(self, default: Path, name: str) -> Path:
        return Path(self.data_dir) / name if self.data_dir else default

    @property
    def audit_log_path(self) -> Path:
        return self._under(settings.audit_log_path(), "audit/audit.jsonl")

    @property
    def outbox_dir(self) -> Path:
        return self._under(settings.outbox_dir(), "outbox")

    @property
    def exports_dir(self) -> Path:
        return self._under(settings.exports_dir(), "exports")

    @property
    def reports_dir(self) -> Path:
        return self._under(settings.reports_dir(), "reports")

    def audit_head_metadata(self) -> dict[str, dg.MetadataValue]:
        """The audit log's head, published in run metadata so `audit verify --expect-head` can later prove
        that no entry written by this run was cut from the end of the log (a hash identifies no one)."""
        head = current_head(self.audit_log_path)
        return {"audit_head_seq": dg.MetadataValue.int(head.seq), "audit_head_hash": dg.MetadataValue.text(head.hash)}


class PoliciesResource(dg.ConfigurableResource):
    """The policy folder (default SEM_POLICIES_DIR, then policies/); `load()` refuses a bad file clearly."""

    path: str | None = None

    @property
    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else settings.policies_dir()

    def load(self) -> Policy:
        return load_policy(self.resolved_path)


class PseudonymisationKeyResource(dg.ConfigurableResource):
    """Serves the keys (a `KeyProvider`). Its config holds a path and a version, never key material.

    `key_file` defaults to SEM_PSEUDONYMISATION_KEY_FILE, then `.secrets/pseudonymisation.key`;
    `version` defaults to SEM_PSEUDONYMISATION_KEY_VERSION, then 1. Raising the version rotates every
    domain key (and so every token) without a new master key.
    """

    key_file: str | None = None
    version: int | None = None

    def provider(self) -> KeyProvider:
        return settings.key_provider(Path(self.key_file) if self.key_file else None, self.version)

    @property
    def key_version(self) -> int:
        return self.provider().version

    def domain_keys(self, domains: list[str]) -> dict[str, bytes]:
        """Derive the keys of `domains` at the configured version (the master key is read once)."""
        return self.provider().domain_keys(domains)


def core_context(policies: PoliciesResource, keys: PseudonymisationKeyResource,
                 compliance: ComplianceStoreResource, navigation: NavigationSourceResource,
                 actor: str = "pipeline") -> CoreContext:
    """The privacy core's explicit inputs, from the run's resources."""
    provider = keys.provider()
    audit = AuditLog(compliance.audit_log_path, actor=actor, key=provider.domain_key(AUDIT_DOMAIN))
    audit.settle()  # a run killed between its last entry and the head anchor: the anchor catches up
    return CoreContext(
        policy=policies.load(), keys=provider, audit=audit,
        paths=Paths(navigation=navigation.resolved_path, outbox=compliance.outbox_dir,
                    exports=compliance.exports_dir))


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Every resource with its paths/URLs unset: each resolves its env var, then the project default."""
    return {
        "policies": PoliciesResource(),
        "pseudonymisation_key": PseudonymisationKeyResource(),
        "warehouse": WarehouseResource(),
        "analytics": AnalyticsFileResource(),
        "member_source": SqlSourceResource(system="members"),
        "prospect_source": SqlSourceResource(system="prospects"),
        "navigation": NavigationSourceResource(),
        "compliance": ComplianceStoreResource(),
    }
