"""Where things live: every path and URL, from an environment variable or a default under the project root.

Defaults make `dagster dev` and `dagster job execute` work from a fresh checkout with no variable set;
production overrides them through the environment (see README, "Configuration").
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.audit import AUDIT_DOMAIN
from pipelines.duck import DEFAULT_MEMORY_LIMIT
from pipelines.pseudo.keys import KeyProvider, PseudonymisationKeyError, parse_hex_key, read_key_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else default


def data_dir() -> Path:
    return _env_path("SEM_DATA_DIR", PROJECT_ROOT / "data")


def sources_dir() -> Path:
    return data_dir() / "sources"


def warehouse_path() -> Path:
    return _env_path("SEM_WAREHOUSE_PATH", data_dir() / "warehouse.duckdb")


def analytics_path() -> Path:
    return _env_path("SEM_ANALYTICS_PATH", data_dir() / "analytics.duckdb")


def members_url() -> str:
    return os.environ.get("SEM_MEMBERS_URL") or f"sqlite:///{sources_dir() / 'members.db'}"


def prospects_url() -> str:
    return os.environ.get("SEM_PROSPECTS_URL") or f"sqlite:///{sources_dir() / 'prospects.db'}"


def navigation_dir() -> Path:
    return _env_path("SEM_NAVIGATION_DIR", sources_dir() / "navigation")


def policies_dir() -> Path:
    return _env_path("SEM_POLICIES_DIR", PROJECT_ROOT / "policies")


def key_file() -> Path:
    return _env_path("SEM_PSEUDONYMISATION_KEY_FILE", PROJECT_ROOT / ".secrets" / "pseudonymisation.key")


def outbox_dir() -> Path:
    return _env_path("SEM_OUTBOX_DIR", data_dir() / "outbox")


def exports_dir() -> Path:
    return _env_path("SEM_EXPORTS_DIR", data_dir() / "exports")


def audit_log_path() -> Path:
    return _env_path("SEM_AUDIT_LOG", data_dir() / "audit" / "audit.jsonl")


def reports_dir() -> Path:
    return _env_path("SEM_REPORTS_DIR", data_dir() / "reports")


KEY_ENV = "SEM_PSEUDONYMISATION_KEY"
VERSION_ENV = "SEM_PSEUDONYMISATION_KEY_VERSION"


def load_master_key(path: Path | None = None) -> bytes:
    """The master key: SEM_PSEUDONYMISATION_KEY (hex) wins, then the key file (default `key_file()`)."""
    from_env = os.environ.get(KEY_ENV)
    if from_env:
        return parse_hex_key(from_env, KEY_ENV)
    return read_key_file(path or key_file())


def key_version_from_env(default: int = 1) -> int:
    """SEM_PSEUDONYMISATION_KEY_VERSION, else `default`."""
    raw = os.environ.get(VERSION_ENV)
    if not raw:
        return default
    try:
        version = int(raw)
    except ValueError:
        raise PseudonymisationKeyError(f"{VERSION_ENV}={raw!r} is not an integer") from None
    if version < 1:
        raise PseudonymisationKeyError(f"{VERSION_ENV} must be at least 1")
    return version


def key_provider(path: Path | None = None, version: int | None = None) -> KeyProvider:
    """The configured keys: master from the environment or the key file, version from the environment."""
    return KeyProvider(load_master_key(path), version if version is not None else key_version_from_env())


def audit_token_key() -> bytes:
    """The audit domain key of the configured master key (subject tokens in the audit log)."""
    return key_provider().domain_key(AUDIT_DOMAIN)


def warehouse_lock_timeout_s() -> float:
    """How long a run waits for a warehouse another process holds (SEM_WAREHOUSE_LOCK_TIMEOUT, seconds)."""
    return float(os.environ.get("SEM_WAREHOUSE_LOCK_TIMEOUT") or 300)


def duckdb_memory_limit() -> str:
    """DuckDB's memory cap for warehouse connections, as DuckDB reads it ('8GB', '50%')."""
    return os.environ.get("SEM_DUCKDB_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT


def ledger_slice_records() -> int | None:
    """Records per slice of the retention ledger's computation (SEM_LEDGER_SLICE_RECORDS); None: the library's
    default (pipelines.retention.ledger.SLICE_RECORDS)."""
    value = os.environ.get("SEM_LEDGER_SLICE_RECORDS")
    return int(value) if value else None
