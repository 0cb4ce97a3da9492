"""Push-back: apply privacy decisions to the source systems set-based, transactionally, idempotently.

API
---
    apply_decisions(targets: pa.Table | str, *, members: sa.Engine | None = None, prospects: sa.Engine | None = None,
                    navigation_dir: Path | None = None, outbox_dir: Path | None = None,
                    audit: AuditLog | None = None, tokenise: Callable[[str], str],
                    notice_rules: Sequence[NoticeRule],
                    table_order: Mapping[str, Sequence[str]] | None = None,
                    now: datetime | None = None, checkpoint: Callable[[str], None] | None = None,
                    shared: duckdb.DuckDBPyConnection | None = None) -> PushbackReport

`targets` follows TARGET_SCHEMA (build one with `make_targets`), one row per (decision, source row key); an Arrow
table, or the name (SQL text) of a table of `shared` holding them, which push-back reads through DuckDB in batches
(pipelines.pushback.targets.TargetSet) without ever holding them all in memory:
    decision_id  stable id chosen by the caller (e.g. "rights:42:erase"); the unit recorded as applied
    system       members | prospects | navigation
    table_name   a table of pipelines.sources.schema (navigation: navigation_events | cookie_consents)
    key_column   the column selecting the rows (member_id, prospect_id, visitor_id, contact_hash, ...)
    key_value    its value as text
    action       erase | anonymise | restrict | lift_restriction | rectify | suppress
    payload      JSON: anonymise -> array of the columns to null, ["email", "phone"];
                 rectify -> object of new values, {"email": "x@y.fr"};
                 suppress (suppression_list.contact_hash) -> {"channel": "email", "objected_at": "...",
                 "source_request_id": "42"}; null otherwise.

Per SQL source (SQLite or PostgreSQL): one transaction; targets bulk-loaded into
`privacy_decision_staging` (COPY on PostgreSQL); decisions already in `privacy_applied_decisions` are
skipped; one set-based statement per (table, action, column set), children before parents
(`table_order[system]`, e.g. from the policy's declared references, else inferred from key names);
the applied decision ids recorded with their row counts. Navigation Parquet: affected files rewritten
atomically, then the manifest. Then every source is re-read and each decision reported confirmed or
failed. Art. 19 notices go to `<outbox_dir>/notices.jsonl` (see pipelines.pushback.notices), by the rules
the caller gives (`notice_rules(policy)`), subjects as tokens of the caller's `tokenise`.

`checkpoint(name)` is called at each point a crash could land (staged, after:<table>, before_commit,
navigation_file): the crash tests pass a hook that stops or breaks the process there; by default nothing.

`shared`: the caller's DuckDB connection (the warehouse's), whose cursor does push-back's own work on the targets
and the navigation files within the process's one memory budget (pipelines.duck.scratch); else an in-memory one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlalchemy as sa

from pipelines.audit import AuditLog, logged
from pipelines.duck import scratch
from pipelines.navigation import Stat
from pipelines.pushback.navigation import apply_to_navigation, unconfirmed_navigation
from pipelines.pushback.notices import write_notices
from pipelines.pushback.sql import NoticeRule, apply_to_source, unconfirmed
from pipelines.pushback.targets import TARGET_SCHEMA, TargetSet, dependency_order, make_targets, prepare
from pipelines.sources.schema import SQL_SYSTEMS
from pipelines.sqltext import ident

__all__ = [
    "TARGET_SCHEMA",
    "NoticeRule",
    "PushbackReport",
    "apply_decisions",
    "make_targets",
]

@dataclass
class PushbackReport:
    batch_id: str
    applied: dict[str, list[str]] = field(default_factory=dict)  # system -> decisions applied by this run
    rows_affected: dict[str, int] = field(default_factory=dict)  # system -> rows changed by this run
    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # decision_id -> reason
    skipped: list[str] = field(default_factory=list)  # already applied by an earlier run, nothing redone
    notices: int = 0
    # navigation files rewritten by this run: (size, mtime_ns) just before the rewrite read them, and after it
    rewritten: dict[str, tuple[Stat, Stat]] = field(default_factory=dict)
    touched: set[tuple[str, str]] = field(default_factory=set)  # (system, table) of the decisions applied here

    @property
    def ok(self) -> bool:
        return not self.failed


def _checkpoint(name: str) -> None:
    """The default crash point hook: nothing happens there."""


GIVEN = "_pushback_given"  # an Arrow table of targets, as registered on push-back's connection


def apply_decisions(
    targets: pa.Table | str,
    *,
    members: sa.Engine | None = None,
    prospects: sa.Engine | None = None,
    navigation_dir: Path | None = None,
    outbox_dir: Path | None = None,
    audit: AuditLog | None = None,
    tokenise: Callable[[str], str],
    notice_rules: Sequence[NoticeRule],
    table_order: Mapping[str, Sequence[str]] | None = None,
    now: dt.datetime | None = None,
    checkpoint: Callable[[str], None] | None = None,
    carried_over: Collection[str] = (),
    shared: duckdb.DuckDBPyConnection | None = None,
) -> PushbackReport:
    """Apply the decisions of `targets` to the sources, then re-read and confirm them (see module doc).

    `carried_over`: decisions an earlier, interrupted run already pushed; one it already audited as confirmed is
    not audited again."""
    checkpoint = checkpoint or _checkpoint
    with scratch(shared) as con:
        if isinstance(targets, pa.Table):
            con.register(GIVEN, targets)
        prepare(con, ident(GIVEN) if isinstance(targets, pa.Table) else targets)
        prepared = TargetSet(con)
        now_text = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S")
        report = PushbackReport(batch_id=uuid.uuid4().hex)
        engines = {"members": members, "prospects": prospects}
        systems = [c["system"] for c in prepared.distinct(["system"])]
        def persist_notices(found: list[dict[str, str]]) -> None:
            if found and outbox_dir is None:
                raise ValueError("art. 19 notices are owed but no outbox_dir was given")
            if found:
                report.notices += write_notices(outbox_dir, found, tokenise)

        unconfirmed_by: dict[str, set[str]] = {}
        for system in systems:
            part = prepared.narrowed(system=system)
            if system == "navigation":
                if navigation_dir is None:
                    raise ValueError("decision targets name the navigation logs but no navigation_dir was given")
                nav = apply_to_navigation(navigation_dir, part, now=now_text, notice_rules=notice_rules,
                                          before_commit=persist_notices, checkpoint=checkpoint)
                report.applied[system], report.rows_affected[system] = nav.newly_applied, nav.rows_affected
                report.rewritten = nav.rewritten
                # what this run applied is re-read where its rows were or may have come since; the rest everywhere
                unconfirmed_by[system] = (
                    unconfirmed_navigation(navigation_dir, part.of_decisions(nav.newly_applied), nav.clear)
                    | unconfirmed_navigation(navigation_dir, part.of_decisions(nav.newly_applied, keep=False)))
            else:
                engine = engines[system]
                if engine is None:
                    raise ValueError(f"decision targets name the {system} system but no engine was given for it")
                metadata = SQL_SYSTEMS[system]
                order = dependency_order(metadata, (table_order or {}).get(system))
                outcome = apply_to_source(engine, metadata, system, part, batch_id=report.batch_id, now=now_text,
                                          order=order, notice_rules=notice_rules, before_commit=persist_notices,
                                          checkpoint=checkpoint)
                report.applied[system], report.rows_affected[system] = outcome.newly_applied, outcome.rows_affected
                unconfirmed_by[system] = unconfirmed(engine, metadata, part, uuid.uuid4().hex)
            report.touched |= {(system, t["table_name"]) for t in
                               part.of_decisions(report.applied[system]).distinct(["table_name"])}

        all_ids = prepared.decision_ids()
        newly = {d for ids in report.applied.values() for d in ids}
        for decision_id in all_ids:
            bad = [s for s, ids in unconfirmed_by.items() if decision_id in ids]
            if bad:
                report.failed[decision_id] = f"effect not found on re-reading {', '.join(bad)}"
            else:
                report.confirmed.append(decision_id)
        report.skipped = [d for d in all_ids if d not in newly]
        if audit is not None:
            audited = logged(audit.path, set(carried_over) & set(report.confirmed), lambda e: e.get("decision_id"),
                             '"pushback.confirmed"')
            audit.extend([
                {"action": "pushback.confirmed" if d not in report.failed else "pushback.failed",
                 "decision_id": d, "reason": report.failed.get(d),
                 "details": {"batch_id": report.batch_id, "newly_applied": d in newly}}
                for d in all_ids if d not in audited
            ])
        return report
