"""The nightly retention of the pipeline's own records (policies/own_records.yaml), outside the sources.

- `raw.quarantine`: past its period (from the first time the row was quarantined) a row loses its `fix` (the
  offending values a person needed to fix it) and keeps only its key, reason, ids and retention dates, as long
  as its source row exists malformed, which its table's retention decides (pipelines.retention reads it); the
  rows of an erased person are deleted (ingest brings them back only while the source still holds them); the
  rows of a restricted person are flagged `restricted` (storage only, art. 18), every night, so a lift clears
  the flag. `raw.quarantine_resolved` (key, reason and dates of a row found fixed or gone by ingest) loses an
  entry past `resolved_keep` from that day, and at once when its key is an erased person's id.
- access bundles (`<exports>/<request_id>/`): past `keep`, `proof.json` (request, generation date, files with
  size and SHA-256) is written, then every data file deleted; past `proof_keep`, the folder goes.
- transfer deliveries (`<outbox>/transfers/<recipient>/<day>/`): past `keep`, every file but `manifest.json`
  (files, rows, SHA-256, safeguard) is deleted; past `proof_keep`, the folder goes.
- art. 19 notices (`<outbox>/notices.jsonl`): past `keep`, a notice loses its subject token; past `proof_keep`,
  the line goes. The file is rewritten atomically under the lock its writers take.
- `transfers.delivered_rows` (what each recipient outside the EU was sent, row by row): pipelines.transfers.
  forget_delivered_rows, past `keep` or with the erased record, never the line of a row the recipient holds.

Which item is due is decided in DuckDB with the one definition of "until" (pipelines.retention.until: the last
day of a period is kept whole). Each step is idempotent: a run killed half-way is finished by the next one (a
proof already written is never rewritten over fewer files).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.context import CoreContext
from pipelines.duck import scalar
from pipelines.durable import sha256_of
from pipelines.ingest import QUARANTINE_DDL
from pipelines.policy.models import Policy
from pipelines.policy.own_records import OwnRecordRule, OwnRecordsPolicy, QuarantineRule
from pipelines.private import write_atomically
from pipelines.pseudo.tables import prepare_exclusions
from pipelines.pushback.notices import OUTBOX_FILE
from pipelines.retention.until import kept_on_sql, last_day_sql
from pipelines.sqltext import literal, transaction
from pipelines.transfers import MANIFEST, forget_delivered_rows

PROOF = "proof.json"
AUDIT_ACTION = "own_records.retention"


@dataclass
class PurgeReport:
    quarantine_fix_cleared: int = 0
    quarantine_erased: int = 0
    quarantine_resolved_removed: int = 0
    quarantine_restricted: int = 0
    exports_data_deleted: int = 0
    exports_proofs_removed: int = 0
    extracts_data_deleted: int = 0
    extracts_proofs_removed: int = 0
    delivered_rows_removed: int = 0
    notice_tokens_removed: int = 0
    notices_removed: int = 0

    def changed(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "quarantine_restricted")


def _due(con: duckdb.DuckDBPyConnection, clocks: dict[str, dt.date], rule: OwnRecordRule, as_of: dt.date
         ) -> tuple[set[str], set[str]]:
    """(items past `keep`, items past `proof_keep`) among `clocks` (item -> clock day), as of `as_of`."""
    if not clocks:
        return set(), set()
    con.register("_own_clocks", pa.table({"item": list(clocks), "clock": list(clocks.values())}))
    day = literal(as_of)
    proof = f"NOT {kept_on_sql(day, last_day_sql('clock', rule.proof_keep))}" if rule.proof_keep else "false"
    try:
        rows = con.execute(f"SELECT item, NOT {kept_on_sql(day, last_day_sql('clock', rule.keep))}, {proof} "
                           "FROM _own_clocks").fetchall()
    finally:
        con.unregister("_own_clocks")
    return {i for i, past, _ in rows if past}, {i for i, _, gone in rows if gone}


def _subject_match(policy: Policy, node: str) -> str:
    """SQL: quarantine row `q` carries one of the ids of `node` (a row of _exclusions)."""
    pairs = sorted({(s.column, s.type) for d in policy.datasets for s in d.subjects})
    return " OR ".join(f"({node}.node_type = {literal(t)} AND {node}.node_value = q.record->>{literal(c)})"
                       for c, t in pairs) or "false"


def _erased_keys(policy: Policy) -> str:
    """SQL: resolved entry `r` is keyed by the id of a person on the erased list (members, prospects...)."""
    tables = [(d.system, d.name, s.type) for d in policy.datasets for s in d.subjects if s.column == d.primary_key]
    return " OR ".join(
        f"(r.system = {literal(system)} AND r.table_name = {literal(table)} AND EXISTS (SELECT 1 FROM _exclusions "
        f"x WHERE x.reason = 'erased' AND x.node_type = {literal(kind)} AND x.node_value = r.record_key))"
        for system, table, kind in tables) or "false"


def purge_quarantine(con: duckdb.DuckDBPyConnection, policy: Policy, rule: QuarantineRule, as_of: dt.date,
                     report: PurgeReport) -> None:
    con.execute(QUARANTINE_DDL)
    prepare_exclusions(con)
    expired = f"NOT {kept_on_sql(literal(as_of), last_day_sql('quarantined_at', rule.keep))}"
    erased = f"EXISTS (SELECT 1 FROM _exclusions x WHERE x.reason = 'erased' AND ({_subject_match(policy, 'x')}))"
    restricted = (f"EXISTS (SELECT 1 FROM _exclusions x WHERE x.reason = 'restricted' "
                  f"AND ({_subject_match(policy, 'x')}))")
    with transaction(con):
        report.quarantine_erased += con.execute(f"DELETE FROM raw.quarantine q WHERE {erased}").fetchall()[0][0]
        report.quarantine_fix_cleared += con.execute(
            f"UPDATE raw.quarantine SET fix = NULL, fix_cleared_on = ? WHERE fix_cleared_on IS NULL AND {expired}",
            [as_of]).fetchall()[0][0]
        con.execute(f"UPDATE raw.quarantine q SET restricted = {restricted}")
        resolved_past = f"NOT {kept_on_sql(literal(as_of), last_day_sql('resolved_on', rule.resolved_keep))}"
        report.quarantine_resolved_removed += con.execute(
            f"DELETE FROM raw.quarantine_resolved r WHERE {resolved_past} OR {_erased_keys(policy)}"
        ).fetchall()[0][0]
    report.quarantine_restricted = scalar(con, "SELECT count(*) FROM raw.quarantine WHERE restricted")


def _data_files(folder: Path, proof: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != proof)


def _bundle_day(folder: Path) -> dt.date | None:
    for name in (PROOF, "bundle.json"):
        if (folder / name).exists():
            generated = json.loads((folder / name).read_text(encoding="utf-8")).get("generated_at")
            if generated:
                return dt.datetime.fromisoformat(generated).date()
    return None


def purge_exports(con: duckdb.DuckDBPyConnection, exports_dir: Path, rule: OwnRecordRule, as_of: dt.date,
                  report: PurgeReport) -> None:
    folders = {p.name: p for p in sorted(exports_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")} \
        if exports_dir.exists() else {}
    clocks = {name: day for name, p in folders.items() if (day := _bundle_day(p)) is not None}
    past_keep, past_proof = _due(con, clocks, rule, as_of)
    for name in sorted(past_proof):
        shutil.rmtree(folders[name])
        report.exports_proofs_removed += 1
    for name in sorted(past_keep - past_proof):
        folder = folders[name]
        data = _data_files(folder, PROOF)
        if not data:
            continue
        if not (folder / PROOF).exists():  # written once, over every file, before any is deleted
            write_atomically(folder / PROOF, json.dumps({
                "request_id": name, "generated_at": clocks[name].isoformat(), "data_deleted_on": as_of.isoformat(),
                "rule": f"keep {rule.keep}, proof {rule.proof_keep} ({rule.legal_source})",
                "files": [{"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in data],
            }, indent=1, ensure_ascii=False))
        for path in data:
            path.unlink()
        report.exports_data_deleted += 1


def purge_extracts(con: duckdb.DuckDBPyConnection, outbox_dir: Path, rule: OwnRecordRule, as_of: dt.date,
                   report: PurgeReport) -> None:
    root = outbox_dir / "transfers"
    folders: dict[str, Path] = {}
    clocks: dict[str, dt.date] = {}
    for folder in sorted(root.glob("*/*")) if root.exists() else []:
        try:
            day = dt.date.fromisoformat(folder.name)
        except ValueError:
            continue  # not a delivery folder
        key = f"{folder.parent.name}/{folder.name}"
        folders[key], clocks[key] = folder, day
    past_keep, past_proof = _due(con, clocks, rule, as_of)
    for key in sorted(past_proof):
        shutil.rmtree(folders[key])
        report.extracts_proofs_removed += 1
    for key in sorted(past_keep - past_proof):
        data = _data_files(folders[key], MANIFEST)
        for path in data:
            path.unlink()
        report.extracts_data_deleted += bool(data)


def purge_notices(con: duckdb.DuckDBPyConnection, outbox_dir: Path, rule: OwnRecordRule, as_of: dt.date,
                  report: PurgeReport) -> None:
    path = outbox_dir / OUTBOX_FILE
    if not path.exists():
        return
    with open(path, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # the lock write_notices takes; steps writing notices are serialised too
        notices = [json.loads(line) for line in fh if line.strip()]
        clocks = {str(i): dt.datetime.fromisoformat(n["created_at"]).date() for i, n in enumerate(notices)}
        past_keep, past_proof = _due(con, clocks, rule, as_of)
        kept = []
        for i, notice in enumerate(notices):
            if str(i) in past_proof:
                report.notices_removed += 1
                continue
            if str(i) in past_keep and notice.get("subject_token"):
                notice = {**notice, "subject_token": None, "token_removed_on": as_of.isoformat()}
                report.notice_tokens_removed += 1
            kept.append(notice)
        if len(kept) == len(notices) and kept == notices:
            return
        write_atomically(path, "".join(json.dumps(n, sort_keys=True) + "\n" for n in kept))


def purge_own_records(con: duckdb.DuckDBPyConnection, ctx: CoreContext, rules: OwnRecordsPolicy,
                      as_of: dt.date) -> PurgeReport:
    """Apply policies/own_records.yaml as of `as_of` (see the module doc) to the warehouse and to the context's
    exports and outbox; audit what changed in the context's log."""
    report = PurgeReport()
    purge_quarantine(con, ctx.policy, rules.quarantine, as_of, report)
    purge_exports(con, ctx.paths.exports, rules.access_exports, as_of, report)
    purge_extracts(con, ctx.paths.outbox, rules.transfer_extracts, as_of, report)
    report.delivered_rows_removed = forget_delivered_rows(con, ctx.policy, rules.delivered_rows.keep, as_of)
    purge_notices(con, ctx.paths.outbox, rules.notices, as_of, report)
    if report.changed():
        ctx.audit.append(AUDIT_ACTION, reason="policies/own_records.yaml",
                     details={"as_of": as_of.isoformat(), **asdict(report)})
    return report
