"""Transfers outside the EU/EEA (policy: "Transferts de données hors Union européenne"), as outbox extracts.

Everything comes from `policies/recipients.yaml`: a recipient with a `transfer` block receives, per purpose and
dataset, exactly the columns it lists; a disclosure with a `condition` (SQL over the dataset, e.g. the
complaints handled by the Morocco provider) selects the rows, and the recipient's other disclosures only
cover the subjects of those rows (the members whose complaints or settlements are sent). Restricted and
erased people are never sent (SPEC §4), whatever system flagged them: exclusions are spread to every record of
the person through identity.person_links (pipelines.pseudo.tables).

Each file is written under a temporary name and renamed into place; the manifest (files, rows, columns,
SHA-256, safeguard) is written last, so a recipient that only picks up manifested files never reads a
half-written extract. The transfer is logged in the audit trail with its legal mechanism and safeguards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from pipelines.audit import AuditLog
from pipelines.durable import replace_durably
from pipelines.policy.models import Dataset, Disclosure, Policy, Recipient
from pipelines.pseudo.tables import exclusions_sql

# Reasons of rights.exclusions that forbid a transfer: a restricted person's data is stored only (art. 18),
# an erased person's data is gone. An objection to prospecting does not stop a complaint being handled.
TRANSFER_EXCLUDED_REASONS = ("restricted", "erased")
MANIFEST = "manifest.json"


class NotATransferError(ValueError):
    """The recipient has no `transfer` block in recipients.yaml: nothing leaves the EU/EEA for it."""


@dataclass(frozen=True)
class ExtractFile:
    purpose: str
    dataset: str
    file: str
    rows: int
    columns: list[str]
    sha256: str


@dataclass(frozen=True)
class TransferReport:
    recipient: str
    country: str
    mechanism: str
    safeguards: list[str]
    as_of: str
    folder: Path
    files: list[ExtractFile]
    excluded_records: int


def transfer_recipients(policy: Policy) -> list[Recipient]:
    """Recipients the policy declares a transfer outside the EU/EEA for."""
    return [r for r in policy.recipients if r.transfer is not None]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _subject(dataset: Dataset) -> tuple[str, str]:
    """(column, subject type) naming the person a row of `dataset` is about."""
    if not dataset.subjects:
        raise ValueError(f"dataset {dataset.name!r} declares no subject: cannot exclude anyone from it")
    first = dataset.subjects[0]
    return first.column, first.type


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, table]
    ).fetchall()[0][0] > 0


def _select(disclosure: Disclosure, dataset: Dataset, scope: str | None) -> str:
    """The rows and columns of one disclosure, minus excluded subjects, limited to `scope` subjects if given."""
    column, subject_type = _subject(dataset)
    subject = f"CAST(t.{_q(column)} AS VARCHAR)"
    where = [
        f"{subject} IS NOT NULL",
        f"{subject} NOT IN (SELECT node_value FROM _transfer_excluded WHERE node_type = '{subject_type}')",
    ]
    if disclosure.condition:
        where.append(f"({disclosure.condition})")
    if scope:
        where.append(f"{subject} IN (SELECT subject FROM {scope} WHERE subject_type = '{subject_type}')")
    columns = ", ".join(f"t.{_q(c)}" for c in disclosure.columns)
    return f"SELECT {columns} FROM raw.{_q(dataset.name)} t WHERE {' AND '.join(where)} ORDER BY 1"


def _write_atomically(folder: Path, name: str, write) -> Path:
    target = folder / name
    temp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temp)
        replace_durably(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _copy_csv(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    target = str(path).replace("'", "''")
    con.execute(f"COPY ({query}) TO '{target}' (FORMAT csv, HEADER true)").fetchall()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_transfer(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    recipient_key: str,
    outbox_dir: Path,
    as_of: dt.date,
    audit: AuditLog,
) -> TransferReport:
    """Write the recipient's extract for `as_of` under `outbox_dir/transfers/<recipient>/<as_of>/` and audit it."""
    recipient = next((r for r in policy.recipients if r.key == recipient_key), None)
    if recipient is None or recipient.transfer is None:
        raise NotATransferError(f"recipients.yaml declares no transfer outside the EU/EEA for {recipient_key!r}")
    con.execute(exclusions_sql(_table_exists(con, "rights", "exclusions")))
    reasons = ", ".join(f"'{r}'" for r in TRANSFER_EXCLUDED_REASONS)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _transfer_excluded AS "
        f"SELECT DISTINCT node_type, node_value FROM _exclusions WHERE reason IN ({reasons})"
    )
    # Subjects of the conditioned disclosures (the complaints, the Monaco settlements) bound the others.
    drivers = [d for d in recipient.receives if d.condition]
    con.execute("CREATE OR REPLACE TEMP TABLE _transfer_scope (subject_type VARCHAR, subject VARCHAR)")
    for disclosure in drivers:
        dataset = policy.dataset(disclosure.dataset)
        column, subject_type = _subject(dataset)
        con.execute(
            f"INSERT INTO _transfer_scope SELECT DISTINCT '{subject_type}', CAST({_q(column)} AS VARCHAR) "
            f"FROM ({_select(disclosure, dataset, None)})"
        )
    folder = outbox_dir / "transfers" / recipient.key / as_of.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for disclosure in recipient.receives:
        dataset = policy.dataset(disclosure.dataset)
        query = _select(disclosure, dataset, None if disclosure.condition or not drivers else "_transfer_scope")
        name = f"{disclosure.purpose}__{dataset.name}.csv"
        path = _write_atomically(folder, name, lambda temp, q=query: _copy_csv(con, q, temp))
        rows = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
        files.append(ExtractFile(disclosure.purpose, dataset.name, name, rows, list(disclosure.columns), _sha256(path)))
    excluded = con.execute("SELECT count(*) FROM _transfer_excluded").fetchall()[0][0]
    transfer = recipient.transfer
    report = TransferReport(
        recipient=recipient.key, country=transfer.country, mechanism=transfer.mechanism,
        safeguards=list(transfer.safeguards), as_of=as_of.isoformat(), folder=folder, files=files,
        excluded_records=excluded,
    )
    manifest = {k: v for k, v in asdict(report).items() if k != "folder"}
    manifest["policy"] = policy.version_label
    text = json.dumps(manifest, indent=2, ensure_ascii=False)
    _write_atomically(folder, MANIFEST, lambda temp: temp.write_text(text, encoding="utf-8"))
    audit.append(
        "transfer.outside_eu",
        reason=transfer.mechanism,
        details={
            "recipient": recipient.key, "country": transfer.country, "safeguards": list(transfer.safeguards),
            "as_of": as_of.isoformat(), "policy": policy.version_label,
            "files": [{"file": f.file, "rows": f.rows, "sha256": f.sha256} for f in files],
        },
    )
    return report
