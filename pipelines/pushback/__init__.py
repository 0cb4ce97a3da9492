"""Push-back: apply privacy decisions to the source systems set-based, transactionally, idempotently.

API
---
    apply_decisions(targets: pa.Table, *, members: sa.Engine | None = None, prospects: sa.Engine | None = None,
                    navigation_dir: Path | None = None, outbox_dir: Path | None = None,
                    audit: AuditLog | None = None, tokenise: Callable[[str], str],
                    notice_rules: Sequence[NoticeRule],
                    table_order: Mapping[str, Sequence[str]] | None = None,
                    now: datetime | None = None, checkpoint: Callable[[str], None] | None = None,
                    shared: duckdb.DuckDBPyConnection | None = None) -> PushbackReport

`targets` follows TARGET_SCHEMA (build one with `make_targets`), one row per (decision, source row key):
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

`shared`: the caller's DuckDB connection (the warehouse's), whose cursors do push-back's own work on the targets
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
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.audit import AuditLog, logged
from pipelines.duck import scratch
from pipelines.navigation import Stat
from pipelines.pushback.navigation import apply_to_navigation, unconfirmed_navigation
from pipelines.pushback.notices import write_notices
from pipelines.pushback.sql import NoticeRule, apply_to_source, unconfirmed
from pipelines.pushback.targets import TARGET_SCHEMA, dependency_order, make_targets, validate_targets
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, NAVIGATION_EVENT_SCHEMA, SQL_SYSTEMS
from pipelines.sqltext import literal

__all__ = [
    "TARGET_SCHEMA",
    "NoticeRule",
    "PushbackReport",
    "apply_decisions",
    "make_targets",
]

NAVIGATION_SCHEMAS = {"navigation_events": NAVIGATION_EVENT_SCHEMA, "cookie_consents": COOKIE_CONSENT_SCHEMA}


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

    @property
    def ok(self) -> bool:
        return not self.failed


def _checkpoint(name: str) -> None:
    """The default crash point hook: nothing happens there."""


# What an anonymise or rectify payload names, as the sorted columns joined by ','.
COLUMNS_OF = {"anonymise": "list_sort(CAST(CAST(payload AS JSON) AS VARCHAR[]))",
              "rectify": "list_sort(json_keys(CAST(payload AS JSON)))"}


def _prepare(targets: pa.Table, shared: duckdb.DuckDBPyConnection | None) -> pa.Table:
    """Validated targets plus `columns_key`, the sorted columns an anonymise/rectify payload names.

    Worked out once per distinct payload of each action, then set on the rows by lookup, beside the targets as they
    came: a copy of the whole table was 0.7 GB the first night at 100,000 members (4 million targets)."""
    validated = validate_targets(targets)
    columns_key = pa.repeat("", validated.num_rows)
    with scratch(shared) as con:
        con.register("t", validated)
        for action, columns in COLUMNS_OF.items():
            of_action = pc.equal(validated["action"], action)
            if not pc.any(of_action).as_py():
                continue
            named = con.sql(f"SELECT payload, array_to_string({columns}, ',') AS columns_key FROM "
                            f"(SELECT DISTINCT payload FROM t WHERE action = {literal(action)})").to_arrow_table()
            found = pc.take(named["columns_key"], pc.index_in(validated["payload"], value_set=named["payload"]))
            columns_key = pc.if_else(of_action, found, columns_key)
    prepared = validated.append_column("columns_key", columns_key)
    for combo in prepared.group_by(["system", "table_name", "action", "columns_key"]).aggregate([]).to_pylist():
        _check_columns(**combo)
    return prepared


def _check_columns(system: str, table_name: str, action: str, columns_key: str) -> None:
    if action not in ("anonymise", "rectify"):
        return
    names = set(NAVIGATION_SCHEMAS[table_name].names) if system == "navigation" \
        else set(SQL_SYSTEMS[system].tables[table_name].c.keys())
    unknown = [c for c in columns_key.split(",") if c not in names]
    if not columns_key or unknown:
        raise ValueError(f"decision targets: {action} on {system}.{table_name} names no or unknown columns "
                         f"{unknown}")


def _of_system(targets: pa.Table, system: str) -> pa.Table:
    mine = pc.equal(targets["system"], system)
    # no copy when the caller passed one system's targets (the rights stage pushes system by system)
    return (targets if pc.all(mine).as_py() else targets.filter(mine)).drop_columns(["system"])


def apply_decisions(
    targets: pa.Table,
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
    prepared = _prepare(targets, shared)
    checkpoint = checkpoint or _checkpoint
    now_text = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M:%S")
    report = PushbackReport(batch_id=uuid.uuid4().hex)
    engines = {"members": members, "prospects": prospects}
    systems = sorted(set(pc.unique(prepared["system"]).to_pylist()))
    def persist_notices(found: list[dict[str, str]]) -> None:
        if found and outbox_dir is None:
            raise ValueError("art. 19 notices are owed but no outbox_dir was given")
        if found:
            report.notices += write_notices(outbox_dir, found, tokenise)

    unconfirmed_by: dict[str, set[str]] = {}
    for system in systems:
        part = _of_system(prepared, system)
        if system == "navigation":
            if navigation_dir is None:
                raise ValueError("decision targets name the navigation logs but no navigation_dir was given")
            nav = apply_to_navigation(navigation_dir, part, now=now_text, notice_rules=notice_rules,
                                      before_commit=persist_notices, checkpoint=checkpoint, shared=shared)
            report.applied[system], report.rows_affected[system] = nav.newly_applied, nav.rows_affected
            report.rewritten = nav.rewritten
            # what this run applied is re-read where its rows were or may have come since; the rest everywhere
            fresh = pc.is_in(part["decision_id"], value_set=pa.array(nav.newly_applied, pa.string()))
            unconfirmed_by[system] = (
                unconfirmed_navigation(navigation_dir, part.filter(fresh), nav.clear, shared=shared)
                | unconfirmed_navigation(navigation_dir, part.filter(pc.invert(fresh)), shared=shared))
            continue
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

    all_ids = pc.unique(prepared["decision_id"]).to_pylist()
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
