"""Where things live: every path and URL, from an environment variable or a default under the project root.

Defaults make `dagster dev` and `dagster job execute` work from a fresh checkout with no variable set;
production overrides them through the environment (see README, "Configuration").
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def duckdb_memory_limit() -> str:
    """DuckDB's memory cap for warehouse connections, as DuckDB reads it ('8GB', '50%')."""
    return os.environ.get("SEM_DUCKDB_MEMORY_LIMIT") or "50%"
