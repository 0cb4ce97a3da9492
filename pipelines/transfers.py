"""Transfers outside the EU/EEA (policy: "Transferts de données hors Union européenne"), sent once, as deltas.

Everything comes from `policies/recipients.yaml`: a recipient with a `transfer` block receives, per purpose and
dataset, exactly the columns it lists. A disclosure with `where` conditions (column, operator, value, compiled
with literals by pipelines.sqltext; e.g. the complaints handled by the Morocco provider) selects the rows, and
the recipient's other disclosures only cover the subjects of those rows (the members whose complaints or
settlements are sent). A row is only sent while the recipient's purpose is active for it, as the retention
ledger computes it from the policy (`pipelines.retention.ledger.compute`: an open complaint, an unsettled
claim); restricted and erased people are never sent (SPEC §4), whatever system flagged them
(identity.person_links, pipelines.pseudo.tables).

Each night a recipient gets only what changed since its last delivery (`transfers.delivered_rows` keeps, per
row, what was last done with it and the hash of the columns sent):
- rows new to the recipient, or whose sent columns changed, are sent;
- a row the recipient holds that left the purpose (a closed complaint) gets one deletion instruction when the
  transfer declares `on_purpose_end: deletion_instruction` (art. 28(3)(g)), else it is simply no longer followed;
- a row the recipient holds whose person was erased or restricted since gets one art. 19 notice in the outbox
  (`notices.jsonl`, keyed subject token), unless the push-back already wrote the same notice.

`transfers.delivered_rows` has its own retention (policies/own_records.yaml `delivered_rows`, applied nightly by
pipelines.purge through `forget_delivered_rows`).

A delivery is written under `outbox/transfers/<recipient>/<as_of>/`: one CSV per disclosure with rows, a
`deletions.csv`, and `manifest.json` last (files, rows, SHA-256, safeguard), each file atomically; then it is
recorded in `transfers.deliveries`, then audited (`transfer.outside_eu`). A delivery recorded for a day is
final: a re-run of the same day (after a kill, or the rights job re-running the stage) rebuilds nothing and
only appends the audit entry if the kill came before it, so nothing is delivered or audited twice. A day with
nothing to send writes no folder and no audit entry, but is recorded.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from pipelines.audit import AuditLog
from pipelines.context import CoreContext
from pipelines.duck import scalar
from pipelines.durable import sha256_of
from pipelines.policy.models import Dataset, Disclosure, Policy, Recipient
from pipelines.private import write_atomically
from pipelines.pseudo.tables import exclusions_sql, prepare_exclusions
from pipelines.pushback.notices import read_notices, write_notices
from pipelines.retention.ledger import compute as compute_purposes
from pipelines.retention.until import kept_on_sql, last_day_sql
from pipelines.sqltext import ident, literal, transaction

# Reasons of rights.exclusions that forbid a transfer: a restricted person's data is stored only (art. 18),
# an erased person's data is gone. An objection to prospecting does not stop a complaint being handled.
TRANSFER_EXCLUDED_REASONS = ("restricted", "erased")
MANIFEST = "manifest.json"
DELETIONS = "deletions.csv"
AUDIT_ACTION = "transfer.outside_eu"
# What was last done with a row for a recipient; only "sent" means the recipient holds it.
SENT, DELETION, ERASURE_NOTICE, RESTRICTION_NOTICE, RELEASED = (
    "sent", "deletion_instruction", "erasure_notice", "restriction_notice", "released")
NOTICE_ACTION = {ERASURE_NOTICE: "erase", RESTRICTION_NOTICE: "restrict"}

STATE_DDL = """
CREATE SCHEMA IF NOT EXISTS transfers;
CREATE TABLE IF NOT EXISTS transfers.deliveries (
    delivery_id VARCHAR PRIMARY KEY, recipient VARCHAR, as_of DATE, folder VARCHAR, rows_sent BIGINT,
    deletions BIGINT, notices BIGINT, mechanism VARCHAR, safeguards VARCHAR[], policy VARCHAR,
    manifest_sha256 VARCHAR, recorded_at TIMESTAMP, audited BOOLEAN
);
CREATE TABLE IF NOT EXISTS transfers.delivered_rows (
    recipient VARCHAR, as_of DATE, part VARCHAR, record_key VARCHAR, subject_type VARCHAR, subject_id VARCHAR,
    row_hash VARCHAR, action VARCHAR
);
"""


class NotATransferError(ValueError):
    """The recipient has no `transfer` block in recipients.yaml: nothing leaves the EU/EEA for it."""


class DeliveryOrderError(RuntimeError):
    """A delivery for a later day is already recorded: deltas only go forward."""


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
    folder: Path | None  # None: nothing to send that day
    files: list[ExtractFile]
    excluded_records: int
    deletions: int = 0
    notices: int = 0  # art. 19 notices owed by this delivery (written now or already in the outbox)
    held_rows: int = 0  # rows the recipient holds after this delivery
    already_delivered: bool = False  # the day was delivered by an earlier run: nothing rebuilt
    audited: bool = False  # this call appended the audit entry
    counts: dict[str, int] = field(default_factory=dict)  # action -> rows of this delivery

    @property
    def rows_sent(self) -> int:
        return sum(f.rows for f in self.files)


def transfer_recipients(policy: Policy) -> list[Recipient]:
    """Recipients the policy declares a transfer outside the EU/EEA for."""
    return [r for r in policy.recipients if r.transfer is not None]


def delivery_id(recipient: str, as_of: dt.date) -> str:
    return f"transfer:{recipient}:{as_of.isoformat()}"


def _part(disclosure: Disclosure) -> str:
    return f"{disclosure.purpose}__{disclosure.dataset}"


def _subject(dataset: Dataset) -> tuple[str, str]:
    """(column, subject type) naming the person a row of `dataset` is about."""
    if not dataset.subjects:
        raise ValueError(f"dataset {dataset.name!r} declares no subject: cannot exclude anyone from it")
    first = dataset.subjects[0]
    return first.column, first.type


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    return scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                  [schema, table]) > 0


def _current_sql(policy: Policy, disclosure: Disclosure, scoped: bool) -> str:
    """The rows of one disclosure the recipient should hold today: (part, record_key, subject, row_hash)."""
    dataset = policy.dataset(disclosure.dataset)
    column, subject_type = _subject(dataset)
    subject = f"CAST(t.{ident(column)} AS VARCHAR)"
    key = f"CAST(t.{ident(dataset.primary_key)} AS VARCHAR)"
    where = [f"{subject} IS NOT NULL",
             f"{subject} NOT IN (SELECT node_value FROM _transfer_excluded WHERE node_type = {literal(subject_type)})"]
    if disclosure.where:
        where.append(disclosure.where_sql("t"))
    if disclosure.purpose in dataset.purposes:  # the dataset serves the purpose: the ledger says if it still does
        where.append(f"{key} IN (SELECT record_key FROM _transfer_purposes WHERE dataset = {literal(dataset.name)} "
                     f"AND purpose = {literal(disclosure.purpose)} AND purpose_status = 'active')")
    if scoped:
        where.append(f"{subject} IN (SELECT subject FROM _transfer_scope WHERE subject_type = {literal(subject_type)})")
    sent = ", ".join(f"{ident(c)} := t.{ident(c)}" for c in disclosure.columns)
    return (f"SELECT {literal(_part(disclosure))} AS part, {key} AS record_key, "
            f"{literal(subject_type)} AS subject_type, "
            f"{subject} AS subject_id, sha256(CAST(to_json(struct_pack({sent})) AS VARCHAR)) AS row_hash "
            f"FROM raw.{ident(dataset.name)} t WHERE {' AND '.join(where)}")


def _present_sql(con: duckdb.DuckDBPyConnection, policy: Policy, recipient: Recipient) -> str:
    """(part, record_key) still held anywhere by SEM (active base or restricted archive)."""
    parts = []
    for disclosure in recipient.receives:
        dataset = policy.dataset(disclosure.dataset)
        for schema in ("raw", "archive"):
            if _table_exists(con, schema, dataset.name):
                parts.append(f"SELECT {literal(_part(disclosure))} AS part, "
                             f"CAST({ident(dataset.primary_key)} AS VARCHAR) AS record_key "
                             f"FROM {schema}.{ident(dataset.name)}")
    return " UNION ".join(parts) or "SELECT NULL::VARCHAR AS part, NULL::VARCHAR AS record_key WHERE false"


def forget_delivered_rows(con: duckdb.DuckDBPyConnection, policy: Policy, keep: str, as_of: dt.date) -> int:
    """Apply the retention of `transfers.delivered_rows` (policies/own_records.yaml) as of `as_of`; return the
    lines deleted. The last line of a row the recipient still holds (sent) stays: the next deltas, deletion
    instruction and art. 19 notice depend on it. Any other line goes once `keep` from its delivery day is over,
    and at once when its record is no longer held by SEM (erased) or its person is erased, the recipient
    having been told (its last line is not `sent`). Each delivery's proof (transfers.deliveries, manifest)
    stays: it names no one."""
    if not _table_exists(con, "transfers", "delivered_rows"):
        return 0
    present = " UNION ".join(
        f"SELECT {literal(r.key)} AS recipient, part, record_key FROM ({_present_sql(con, policy, r)})"
        for r in transfer_recipients(policy)) or "SELECT NULL AS recipient, NULL AS part, NULL AS record_key"
    prepare_exclusions(con)
    aged = f"NOT {kept_on_sql(literal(as_of), last_day_sql('d.as_of', keep))}"
    return con.execute(f"""
        DELETE FROM transfers.delivered_rows d USING (
            SELECT recipient, part, record_key, max(as_of) AS last_day, arg_max(action, as_of) AS last_action
            FROM transfers.delivered_rows GROUP BY ALL) l
        WHERE d.recipient = l.recipient AND d.part = l.part AND d.record_key = l.record_key
          AND NOT (d.as_of = l.last_day AND l.last_action = {literal(SENT)})
          AND ({aged}
               OR (l.last_action <> {literal(SENT)} AND (
                   (d.recipient, d.part, d.record_key) NOT IN (SELECT (recipient, part, record_key) FROM ({present}))
                   OR (d.subject_type, d.subject_id) IN (
                       SELECT (node_type, node_value) FROM _exclusions WHERE reason = 'erased'))))""").fetchall()[0][0]


def _copy_csv(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO {literal(path)} (FORMAT csv, HEADER true)").fetchall()


def _stage(con: duckdb.DuckDBPyConnection, policy: Policy, recipient: Recipient, as_of: dt.date,
           exclusions_only: bool = False) -> None:
    """Temp tables `_transfer_excluded` (people not to send), `_transfer_current` (rows due today) and
    `_transfer_actions` (what this delivery does)."""
    con.execute(exclusions_sql(_table_exists(con, "rights", "exclusions")))
    con.execute("CREATE OR REPLACE TEMP TABLE _transfer_excluded AS SELECT DISTINCT node_type, node_value, reason "
                "FROM _exclusions WHERE list_contains(?, reason)", [list(TRANSFER_EXCLUDED_REASONS)])
    if exclusions_only:
        return
    # Only the datasets whose purpose the ledger decides for a disclosure (see _current_sql), not the population.
    compute_purposes(con, policy, as_of, prefix="_transfer_ledger", datasets={
        d.dataset for d in recipient.receives if d.purpose in policy.dataset(d.dataset).purposes})
    con.execute("CREATE OR REPLACE TEMP TABLE _transfer_purposes AS SELECT dataset, record_key, purpose, "
                "purpose_status FROM _transfer_ledger_purposes")
    con.execute("DROP TABLE _transfer_ledger_purposes; DROP TABLE _transfer_ledger_records")
    # Subjects of the conditioned disclosures (the complaints, the Monaco settlements) bound the others.
    drivers = [d for d in recipient.receives if d.where]
    con.execute("CREATE OR REPLACE TEMP TABLE _transfer_scope (subject_type VARCHAR, subject VARCHAR)")
    for disclosure in drivers:
        con.execute("INSERT INTO _transfer_scope SELECT DISTINCT subject_type, subject_id "
                    f"FROM ({_current_sql(policy, disclosure, scoped=False)})")
    current = " UNION ALL ".join(
        _current_sql(policy, d, scoped=bool(drivers) and not d.where) for d in recipient.receives)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _transfer_current AS {current}")
    on_end = DELETION if recipient.transfer and recipient.transfer.on_purpose_end == DELETION else RELEASED
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _transfer_actions AS
        WITH last AS (
            SELECT part, record_key, arg_max(action, as_of) AS action, arg_max(row_hash, as_of) AS row_hash,
                   arg_max(subject_type, as_of) AS subject_type, arg_max(subject_id, as_of) AS subject_id
            FROM transfers.delivered_rows WHERE recipient = $recipient AND as_of < $as_of GROUP BY ALL
        ),
        present AS ({_present_sql(con, policy, recipient)})
        SELECT c.part, c.record_key, c.subject_type, c.subject_id, c.row_hash, {literal(SENT)} AS action
        FROM _transfer_current c LEFT JOIN last l USING (part, record_key)
        WHERE l.action IS DISTINCT FROM {literal(SENT)} OR l.row_hash <> c.row_hash
        UNION ALL
        SELECT l.part, l.record_key, l.subject_type, l.subject_id, l.row_hash,
               CASE WHEN (l.subject_type, l.subject_id) IN (
                        SELECT (node_type, node_value) FROM _transfer_excluded WHERE reason = 'erased')
                      OR (l.part, l.record_key) NOT IN (SELECT (part, record_key) FROM present)
                    THEN {literal(ERASURE_NOTICE)}
                    WHEN (l.subject_type, l.subject_id) IN (SELECT (node_type, node_value) FROM _transfer_excluded)
                    THEN {literal(RESTRICTION_NOTICE)}
                    ELSE {literal(on_end)} END
        FROM last l
        WHERE l.action = {literal(SENT)}
          AND (l.part, l.record_key) NOT IN (SELECT (part, record_key) FROM _transfer_current)
    """, {"recipient": recipient.key, "as_of": as_of})


def _notices(con: duckdb.DuckDBPyConnection, recipient: Recipient, as_of: dt.date, outbox_dir: Path,
             tokenise: Callable[[str], str]) -> int:
    """Write the art. 19 notices this delivery owes (one per person and action); return how many are owed."""
    owed = con.execute(
        "SELECT DISTINCT subject_type, subject_id, action FROM _transfer_actions WHERE list_contains(?, action) "
        "ORDER BY ALL", [list(NOTICE_ACTION)]).fetchall()
    if not owed:
        return 0
    # The push-back already tells a recipient about the people it erases or restricts; say it once.
    told = {(n["subject_token"], n["action"]) for n in read_notices(outbox_dir) if n["recipient"] == recipient.key}
    found = []
    for subject_type, subject_id, action in owed:
        notice = NOTICE_ACTION[action]
        if (tokenise(f"{subject_type}:{subject_id}"), notice) not in told:
            found.append({"recipient": recipient.key, "decision_id": delivery_id(recipient.key, as_of),
                          "action": notice, "key_column": f"{subject_type}_id", "key_value": subject_id})
    write_notices(outbox_dir, found, tokenise)
    return len(owed)


def _write_files(con: duckdb.DuckDBPyConnection, policy: Policy, recipient: Recipient, folder: Path
                 ) -> tuple[list[ExtractFile], dict[str, object] | None]:
    files = []
    for disclosure in recipient.receives:
        dataset = policy.dataset(disclosure.dataset)
        part = _part(disclosure)
        rows = scalar(con, "SELECT count(*) FROM _transfer_actions WHERE part = ? AND action = ?", [part, SENT])
        if not rows:
            continue
        columns = ", ".join(f"t.{ident(c)}" for c in disclosure.columns)
        query = (f"SELECT {columns} FROM raw.{ident(dataset.name)} t WHERE CAST(t.{ident(dataset.primary_key)} "
                 f"AS VARCHAR) IN (SELECT record_key FROM _transfer_actions WHERE part = {literal(part)} "
                 f"AND action = {literal(SENT)}) ORDER BY 1")
        name = f"{part}.csv"
        path = write_atomically(folder / name, lambda temp, q=query: _copy_csv(con, q, temp))
        files.append(ExtractFile(disclosure.purpose, dataset.name, name, rows, list(disclosure.columns),
                                 sha256_of(path)))
    deletions = None
    n = scalar(con, f"SELECT count(*) FROM _transfer_actions WHERE action = {literal(DELETION)}")
    if n:
        keys = {_part(d): policy.dataset(d.dataset).primary_key for d in recipient.receives}
        key_column = "CASE part " + " ".join(f"WHEN {literal(p)} THEN {literal(k)}" for p, k in keys.items()) + " END"
        query = (f"SELECT split_part(part, '__', 2) AS dataset, {key_column} AS key_column, record_key AS key_value, "
                 f"'end of purpose ' || split_part(part, '__', 1) || ': delete your copy (GDPR art. 28(3)(g))' "
                 f"AS instruction FROM _transfer_actions WHERE action = {literal(DELETION)} ORDER BY ALL")
        path = write_atomically(folder / DELETIONS, lambda temp: _copy_csv(con, query, temp))
        deletions = {"file": DELETIONS, "rows": n, "sha256": sha256_of(path)}
    return files, deletions


def _audited(audit: AuditLog, delivery: str) -> bool:
    """Whether the log already holds this delivery's entry (a run killed after auditing, before recording it)."""
    if not audit.path.exists():
        return False
    needle = json.dumps(delivery)
    with open(audit.path, encoding="utf-8") as fh:
        for line in fh:
            if needle in line:
                entry = json.loads(line)
                if entry.get("action") == AUDIT_ACTION and entry.get("details", {}).get("delivery_id") == delivery:
                    return True
    return False


def _audit(audit: AuditLog, manifest: dict[str, object], files: list[dict[str, object]]) -> None:
    audit.append(AUDIT_ACTION, decision_id=str(manifest["delivery_id"]), reason=str(manifest["mechanism"]), details={
        "delivery_id": manifest["delivery_id"], "recipient": manifest["recipient"], "country": manifest["country"],
        "safeguards": manifest["safeguards"], "as_of": manifest["as_of"], "policy": manifest["policy"],
        "files": [{"file": f["file"], "rows": f["rows"], "sha256": f["sha256"]} for f in files],
        "deletions": manifest["deletions"], "notices": manifest["notices"],
        "previous_delivery": manifest["previous_delivery"],
    })


def _finish_recorded(con: duckdb.DuckDBPyConnection, recipient: Recipient, as_of: dt.date, audit: AuditLog,
                     excluded: int) -> TransferReport:
    """The day is already delivered: append its audit entry if a kill came before it, rebuild nothing."""
    delivery = delivery_id(recipient.key, as_of)
    folder, audited, deletions, notices = con.execute(
        "SELECT folder, audited, deletions, notices FROM transfers.deliveries WHERE delivery_id = ?",
        [delivery]).fetchall()[0]
    manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")) if folder else None
    appended = False
    if manifest and not audited and not _audited(audit, delivery):
        _audit(audit, manifest, manifest["files"])
        appended = True
    con.execute("UPDATE transfers.deliveries SET audited = true WHERE delivery_id = ?", [delivery])
    t = recipient.transfer
    assert t is not None
    files = [ExtractFile(**f) for f in manifest["files"]] if manifest else []
    return TransferReport(recipient.key, t.country, t.mechanism, list(t.safeguards), as_of.isoformat(),
                          Path(folder) if folder else None, files, excluded, deletions, notices,
                          _held(con, recipient.key), already_delivered=True, audited=appended)


def _held(con: duckdb.DuckDBPyConnection, recipient: str) -> int:
    return scalar(con, f"""SELECT count(*) FROM (SELECT arg_max(action, as_of) AS action FROM transfers.delivered_rows
                          WHERE recipient = ? GROUP BY part, record_key) WHERE action = {literal(SENT)}""", [recipient])


def build_transfer(con: duckdb.DuckDBPyConnection, ctx: CoreContext, recipient_key: str,
                   as_of: dt.date) -> TransferReport:
    """Deliver to the recipient what changed for it up to `as_of` (see the module doc); record and audit it.

    `con` is the warehouse, writable (`transfers.*` holds the delivery state); `ctx` gives the policy, the
    outbox, the audit log and the keyed subject tokens of the art. 19 notices ("member:42" -> token).
    """
    policy, audit, outbox_dir, tokenise = ctx.policy, ctx.audit, ctx.paths.outbox, ctx.tokenise
    recipient = next((r for r in policy.recipients if r.key == recipient_key), None)
    if recipient is None or recipient.transfer is None:
        raise NotATransferError(f"recipients.yaml declares no transfer outside the EU/EEA for {recipient_key!r}")
    transfer = recipient.transfer
    con.execute(STATE_DDL)
    later = scalar(con, "SELECT max(as_of) FROM transfers.deliveries WHERE recipient = ? AND as_of > ?",
                   [recipient.key, as_of])
    if later is not None:
        raise DeliveryOrderError(f"{recipient.key}: a delivery for {later} is already recorded; the delivery of "
                                 f"{as_of} cannot be built after it (deltas only go forward)")
    delivery = delivery_id(recipient.key, as_of)
    done = scalar(con, "SELECT count(*) FROM transfers.deliveries WHERE delivery_id = ?", [delivery])
    _stage(con, policy, recipient, as_of, exclusions_only=bool(done))
    excluded = scalar(con, "SELECT count(*) FROM (SELECT DISTINCT node_type, node_value FROM _transfer_excluded)")
    if done:
        return _finish_recorded(con, recipient, as_of, audit, excluded)

    counts = dict(con.execute("SELECT action, count(*) FROM _transfer_actions GROUP BY 1").fetchall())
    notices = _notices(con, recipient, as_of, outbox_dir, tokenise)
    previous = scalar(con, "SELECT max(as_of) FROM transfers.deliveries WHERE recipient = ? AND folder IS NOT NULL",
                      [recipient.key])
    folder: Path | None = None
    files: list[ExtractFile] = []
    manifest_sha = None
    if counts.get(SENT) or counts.get(DELETION):
        folder = outbox_dir / "transfers" / recipient.key / as_of.isoformat()
        files, deletions = _write_files(con, policy, recipient, folder)
        # Deterministic (no clock time): a run killed before recording rewrites the same bytes.
        manifest = {
            "delivery_id": delivery, "recipient": recipient.key, "country": transfer.country,
            "mechanism": transfer.mechanism, "safeguards": list(transfer.safeguards), "as_of": as_of.isoformat(),
            "policy": policy.version_label, "previous_delivery": previous.isoformat() if previous else None,
            "files": [asdict(f) for f in files], "deletions": deletions, "notices": notices,
            "excluded_records": excluded,
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False)
        path = write_atomically(folder / MANIFEST, text)
        manifest_sha = sha256_of(path)
    with transaction(con):
        con.execute("INSERT INTO transfers.delivered_rows SELECT $recipient, $as_of, part, record_key, subject_type, "
                    "subject_id, row_hash, action FROM _transfer_actions", {"recipient": recipient.key, "as_of": as_of})
        con.execute("INSERT INTO transfers.deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), false)",
                    [delivery, recipient.key, as_of, str(folder) if folder else None, sum(f.rows for f in files),
                     counts.get(DELETION, 0), notices, transfer.mechanism, list(transfer.safeguards),
                     policy.version_label, manifest_sha])
    report = _finish_recorded(con, recipient, as_of, audit, excluded)
    return TransferReport(**{**{k: getattr(report, k) for k in report.__dataclass_fields__},
                             "already_delivered": False, "counts": counts})
