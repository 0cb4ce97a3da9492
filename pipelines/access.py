"""Habilitations: who may read which store (policies/roles.yaml), and the only door to the restricted archive.

`open_archive(role, reason)` refuses a role without the archive right and an empty reason, writes the access
(role, actor, reason, tables) to the audit trail before any data is read, and returns a read-only DuckDB
connection whose default schema is the warehouse's `archive`. `open_analytics(role)` is the analysts' door.
This is accountability inside the code; on disk, file permissions keep the warehouse away from analysts
(docs/deployment.md).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import duckdb
import pydantic

from pipelines.audit import AuditLog
from pipelines.duck import connect_memory
from pipelines.policy.loader import load_policy_file
from pipelines.policy.models import SLUG
from pipelines.sqltext import literal

ROLES_FILE = "roles.yaml"
ARCHIVE_SCHEMA = "archive"
Store = Literal["warehouse", "archive", "analytics", "audit_log", "reports", "exports", "outbox"]


class Role(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    key: str = pydantic.Field(pattern=SLUG)
    description: str
    reads: list[Store]
    reason_required_for: list[Store] = []
    outbox_recipients: list[str] | None = None  # None: every recipient's outbox (if `outbox` is read)

    @pydantic.model_validator(mode="after")
    def _reasons_only_for_readable_stores(self) -> Role:
        extra = set(self.reason_required_for) - set(self.reads)
        if extra:
            raise ValueError(f"reason_required_for lists stores the role cannot read: {sorted(extra)}")
        return self


class RolesFile(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    version: int = pydantic.Field(ge=1)
    effective_date: dt.date
    roles: list[Role] = pydantic.Field(min_length=1)

    @pydantic.model_validator(mode="after")
    def _unique(self) -> RolesFile:
        keys = [r.key for r in self.roles]
        if len(keys) != len(set(keys)):
            raise ValueError("role keys must be unique")
        return self

    def role(self, key: str) -> Role:
        found = next((r for r in self.roles if r.key == key), None)
        if found is None:
            raise AccessDenied(f"unknown role {key!r} (roles.yaml declares {[r.key for r in self.roles]})")
        return found


class AccessDenied(PermissionError):
    """The role may not read the store, or a required reason is missing."""


def load_roles(path: Path) -> RolesFile:
    """Load a roles file (policies/roles.yaml); a bad file is refused with file, key and line (PolicyError)."""
    return load_policy_file(path, RolesFile)


def can_read(roles: RolesFile, role: str, store: Store, recipient: str | None = None) -> bool:
    """Whether `role` may read `store` (for `outbox`, the given recipient's folder)."""
    declared = roles.role(role)
    if store not in declared.reads:
        return False
    if store == "outbox" and declared.outbox_recipients is not None:
        return recipient in declared.outbox_recipients
    return True


def _require(roles: RolesFile, role: str, store: Store, reason: str | None) -> None:
    if not can_read(roles, role, store):
        raise AccessDenied(f"role {role!r} may not read the {store} (policies/{ROLES_FILE})")
    if store in roles.role(role).reason_required_for and not (reason or "").strip():
        raise AccessDenied(f"reading the {store} requires a reason")


def open_archive(
    role: str,
    reason: str,
    *,
    actor: str | None = None,
    warehouse_path: Path,
    roles: RolesFile,
    audit: AuditLog,
) -> duckdb.DuckDBPyConnection:
    """A read-only connection on the restricted archive, for a role allowed to read it, with a reason; logged."""
    _require(roles, role, "archive", reason)
    path = Path(warehouse_path)
    con = connect_memory()
    try:
        con.execute(f"ATTACH {literal(path)} AS warehouse (READ_ONLY)")
        tables = [
            name for (name,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'warehouse' AND schema_name = ? "
                "ORDER BY 1", [ARCHIVE_SCHEMA],
            ).fetchall()
        ]
        # Logged before the caller can read anything: an access that is not in the audit trail did not happen.
        audit.append(
            "archive.read", actor=actor or role, reason=reason.strip(),
            details={"role": role, "tables": tables, "warehouse": path.name},
        )
        con.execute(f"USE warehouse.{ARCHIVE_SCHEMA}")
        # No other file can be opened from this connection.
        con.execute("SET enable_external_access = false")
    except Exception:
        con.close()
        raise
    return con


def open_analytics(role: str, *, analytics_path: Path, roles: RolesFile) -> duckdb.DuckDBPyConnection:
    """A read-only connection on the analysts' pseudonymised file, for a role allowed to read it."""
    _require(roles, role, "analytics", None)
    return duckdb.connect(str(analytics_path), read_only=True)
