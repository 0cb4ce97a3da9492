"""Push-back to the append-only navigation logs (day-partitioned Parquet events, cookie-consent log).

Each affected file is rewritten whole, once for all the decisions with rows in it (several files at a time),
to a temporary name in the same folder, fsynced, then swapped in with os.replace, so a reader or a crash never
sees a half-written file; it keeps the mode the source system gave the file it replaces
(pipelines.private.write_atomically). The decisions applied are recorded
afterwards in a manifest (`_privacy_applied_decisions.json`, also written atomically). A crash between a
file swap and the manifest leaves decisions unrecorded: the re-run re-filters, which is a no-op on the
files already rewritten (erase and anonymise are idempotent), so the end state is the same. What each decision
changes (rows, tables) is counted before any file is touched and recorded in a journal
(`_privacy_pending_decisions.json`), which the manifest takes its figures from, so a re-run finishing a killed
run's decisions records what they changed, not only what was left; the journal goes once they are recorded.
The art. 19 notices the decisions owe are persisted at that point too, before any file changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.navigation import Stat
from pipelines.private import write_atomically
from pipelines.pushback.sql import NoticeRule
from pipelines.pushback.targets import TargetSet
from pipelines.sqltext import all_of, ident, list_literal, literal

MANIFEST_NAME = "_privacy_applied_decisions.json"
JOURNAL_NAME = "_privacy_pending_decisions.json"  # decision -> rows and tables, counted before any rewrite
TABLE_DIRS = {"navigation_events": "events", "cookie_consents": "consents"}
REWRITERS = 8  # files rewritten at once


def _stat(path: Path) -> Stat:
    found = path.stat()
    return found.st_size, found.st_mtime_ns


@dataclass
class NavigationOutcome:
    newly_applied: list[str] = field(default_factory=list)
    rows_affected: int = 0
    # files read for the newly applied decisions that held none of their rows, as they were before that read:
    # re-reading them for those decisions is needless while they are unchanged (unconfirmed_navigation `clear`)
    clear: dict[str, Stat] = field(default_factory=dict)
    # files this run rewrote: as they were just before the rewrite read them, and as the rewrite left them
    rewritten: dict[str, tuple[Stat, Stat]] = field(default_factory=dict)


def _files(navigation_dir: Path, table_name: str) -> list[Path]:
    return sorted((navigation_dir / TABLE_DIRS[table_name]).rglob("*.parquet"))


def read_manifest(navigation_dir: Path) -> dict[str, dict[str, object]]:
    path = navigation_dir / MANIFEST_NAME
    return json.loads(path.read_text())["decisions"] if path.exists() else {}


def _write_manifest(navigation_dir: Path, decisions: dict[str, dict[str, object]]) -> None:
    path = navigation_dir / MANIFEST_NAME
    write_atomically(path, json.dumps({"decisions": decisions}, sort_keys=True, indent=1), in_source=True)


def _read_journal(navigation_dir: Path) -> dict[str, dict[str, object]]:
    path = navigation_dir / JOURNAL_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _close_journal(navigation_dir: Path, manifest: dict[str, dict[str, object]]) -> None:
    """Drop from the journal what the manifest records (the whole file once nothing is left)."""
    journal = _read_journal(navigation_dir)
    left = {d: entry for d, entry in journal.items() if d not in manifest}
    if left == journal:
        return
    if left:
        write_atomically(navigation_dir / JOURNAL_NAME, json.dumps(left, sort_keys=True, indent=1), in_source=True)
    else:
        (navigation_dir / JOURNAL_NAME).unlink()


Operation = tuple[dict[str, str], pa.Array]  # a decision group, and the keys of its targets found in one file


def _rewrite(path: Path, operations: Sequence[Operation]) -> tuple[Stat, Stat] | None:
    """Rewrite one file once for every group with rows in it; each group's hash set holds only the keys found in
    this file (a set of the group's every key, rebuilt for each of hundreds of files, cost the first night more
    than reading and writing them). Returns the file's size and time before it was read and after the swap; None
    when nothing in it changes (every row to anonymise already holds nothing there), and the file is left alone."""
    before = _stat(path)
    table = pq.read_table(path)
    changed = False
    for group, keys in operations:
        hit = pc.fill_null(pc.is_in(pc.cast(table[group["key_column"]], pa.string()), value_set=keys), False)
        if group["action"] == "erase":
            table, changed = table.filter(pc.invert(hit)), True
            continue
        for name in group["columns_key"].split(","):
            index = table.schema.get_field_index(name)
            column = table[name]
            changed = changed or bool(pc.any(pc.and_(hit, pc.is_valid(column))).as_py())
            table = table.set_column(index, table.schema.field(index),
                                     pc.if_else(hit, pa.scalar(None, column.type), column))
    if not changed:
        return None
    write_atomically(path, lambda temp: pq.write_table(table, temp), in_source=True)
    return before, _stat(path)


def _matches(files: list[Path], key_column: str, columns: str = "t.decision_id, t.key_value, e.filename",
             extra_where: str = "") -> str:
    """SQL: rows of `files` whose key is among `group_targets`, as `columns` (t: the target, e: the row)."""
    paths = [str(f) for f in files]
    return (
        f"SELECT {columns} "
        f"FROM read_parquet({list_literal(paths)}, filename = true, hive_partitioning = false) e"
        f" JOIN group_targets t ON CAST(e.{ident(key_column)} AS VARCHAR) = t.key_value {extra_where}"
    )


GROUP_COLUMNS = ("table_name", "key_column", "action", "columns_key")
FILES_AT_ONCE = 64  # files whose keys are read from the matches, then rewritten, at a time
MATCHES, FILES, DECISIONS = "_nav_matches", "_nav_files", "_nav_decisions"  # temp tables of apply_to_navigation


def _use_group(targets: TargetSet, group: dict[str, str]) -> None:
    """Point the view `group_targets` at the group's targets, where they are (no copy)."""
    targets.con.execute("CREATE OR REPLACE TEMP VIEW group_targets AS "
                        + targets.narrowed(**{c: group[c] for c in GROUP_COLUMNS}).select("decision_id, key_value"))


def _notices(con: duckdb.DuckDBPyConnection, files: list[Path], group: dict[str, str],
             rules: Sequence[NoticeRule]) -> list[dict[str, str]]:
    """Art. 19 notices the group's decisions owe: the subject has rows of the table the recipient receives."""
    found = []
    for rule in rules:
        if (rule.system, rule.table_name, rule.key_column) != ("navigation", group["table_name"], group["key_column"]) \
                or group["action"] not in rule.actions:
            continue
        where = f"WHERE {all_of(c.sql('e') for c in rule.where)}"
        matches = _matches(files, group["key_column"], extra_where=where)
        pairs = con.execute(f"SELECT DISTINCT decision_id, key_value FROM ({matches}) ORDER BY ALL").fetchall()
        found += [{"recipient": rule.recipient, "decision_id": d, "action": group["action"],
                   "key_column": group["key_column"], "key_value": k} for d, k in pairs]
    return found


def _operations(con: duckdb.DuckDBPyConnection, groups: list[dict[str, str]], first: int, last: int
                ) -> dict[str, list[Operation]]:
    """What to do in the files numbered first..last: each group's keys found in each, groups in order."""
    found = con.sql(f"SELECT f.filename, m.grp, list(DISTINCT m.key_value) AS keys FROM {MATCHES} m "
                    f"JOIN {FILES} f USING (file) WHERE m.file BETWEEN {literal(first)} AND {literal(last)} "
                    "GROUP BY ALL ORDER BY f.filename, m.grp").to_arrow_table()
    operations: dict[str, list[Operation]] = {}
    for filename, grp, keys in zip(found["filename"].to_pylist(), found["grp"].to_pylist(), found["keys"],
                                   strict=True):
        operations.setdefault(filename, []).append((groups[grp], keys.values))
    return operations


def apply_to_navigation(navigation_dir: Path, targets: TargetSet, *, now: str, notice_rules: Sequence[NoticeRule],
                        before_commit: Callable[[list[dict[str, str]]], None],
                        checkpoint: Callable[[str], None]) -> NavigationOutcome:
    """Apply the navigation targets not yet in the manifest. `before_commit` receives the art. 19 notices and
    persists them before any file is rewritten.

    The matches (file, group, decision, key) stay in a DuckDB temp table, which spills beyond the memory budget;
    files are then rewritten FILES_AT_ONCE at a time with only their own keys in memory: the first night at
    1,000,000 members erases tens of millions of page views."""
    manifest = read_manifest(navigation_dir)
    _close_journal(navigation_dir, manifest)  # a run killed between the manifest and the journal's end
    pending_ids = [d for d in targets.decision_ids() if d not in manifest]
    outcome = NavigationOutcome()
    if not pending_ids:
        return outcome
    pending = targets.of_decisions(pending_ids)
    con = targets.con
    listed = {table: _files(navigation_dir, table) for table in TABLE_DIRS}
    every_file = sorted({str(f) for files in listed.values() for f in files})
    con.execute(f"CREATE OR REPLACE TEMP TABLE {FILES} AS SELECT (generate_subscripts(f, 1) - 1)::INTEGER AS file, "
                f"unnest(f) AS filename FROM (SELECT {list_literal(every_file)}::VARCHAR[] AS f)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {DECISIONS} AS SELECT (generate_subscripts(d, 1) - 1)::INTEGER AS "
                f"decision, unnest(d) AS decision_id FROM (SELECT {list_literal(pending_ids)}::VARCHAR[] AS d)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {MATCHES} (grp INTEGER, file INTEGER, decision INTEGER, "
                "key_value VARCHAR)")
    groups = pending.distinct(GROUP_COLUMNS)
    notices: list[dict[str, str]] = []
    seen: dict[str, Stat] = {}  # every file read, as it was before its first read
    for grp, group in enumerate(groups):
        files = listed[group["table_name"]]
        if not files:
            continue
        seen |= {str(f): _stat(f) for f in files if str(f) not in seen}
        _use_group(pending, group)
        notices += _notices(con, files, group, notice_rules)
        # a temp table, so never in the warehouse file when the connection is the warehouse's
        con.execute(f"INSERT INTO {MATCHES} SELECT {literal(grp)}, f.file, d.decision, m.key_value FROM "
                    f"({_matches(files, group['key_column'])}) m JOIN {FILES} f USING (filename) "
                    f"JOIN {DECISIONS} d USING (decision_id)")
    counted: dict[str, dict[str, object]] = {}
    for decision_id, grp, n in con.execute(
            f"SELECT d.decision_id, m.grp, count(*) FROM {MATCHES} m JOIN {DECISIONS} d USING (decision) "
            "GROUP BY ALL ORDER BY ALL").fetchall():
        entry = counted.setdefault(decision_id, {"rows_affected": 0, "tables": []})
        entry["rows_affected"] += n
        entry["tables"] = sorted({*entry["tables"], groups[grp]["table_name"]})
    changed = [r[0] for r in con.execute(f"SELECT DISTINCT file FROM {MATCHES} ORDER BY file").fetchall()]
    with_matches = {every_file[i] for i in changed}
    outcome.clear = {f: stat for f, stat in seen.items() if f not in with_matches}
    # Recorded before any file changes; what an interrupted run recorded first stands (it counted the whole).
    journal = {**counted, **_read_journal(navigation_dir)}
    write_atomically(navigation_dir / JOURNAL_NAME, json.dumps(journal, sort_keys=True, indent=1), in_source=True)
    # The notices too go out before any file changes: a re-run no longer finds the rows a killed run erased.
    before_commit(notices)
    # Files rewritten side by side: each waits mostly on its own fsync (pipelines.durable), and pyarrow's reads and
    # writes release the GIL. The crash hook runs here, as each file is swapped in.
    with ThreadPoolExecutor(max_workers=REWRITERS) as pool:
        for start in range(0, len(changed), FILES_AT_ONCE):
            chunk = changed[start:start + FILES_AT_ONCE]
            rewrites = _operations(con, groups, chunk[0], chunk[-1])
            futures = {pool.submit(_rewrite, Path(path), rewrites[path]): path for path in sorted(rewrites)}
            for done in as_completed(futures):
                if (stats := done.result()) is not None:
                    outcome.rewritten[futures[done]] = stats
                checkpoint("navigation_file")
    con.execute(f"DROP TABLE {MATCHES}")
    for decision_id in pending_ids:
        entry = journal.get(decision_id, {"rows_affected": 0, "tables": []})
        manifest[decision_id] = {"applied_at": now, "rows_affected": entry["rows_affected"],
                                 "table_name": ",".join(entry["tables"])}
        outcome.rows_affected += entry["rows_affected"]
        outcome.newly_applied.append(decision_id)
    _write_manifest(navigation_dir, manifest)
    _close_journal(navigation_dir, manifest)
    return outcome


def unconfirmed_navigation(navigation_dir: Path, targets: TargetSet, clear: Mapping[str, Stat] | None = None
                           ) -> set[str]:
    """Re-read the logs: the decision ids whose rows are still there (erase) or still carry a value in a
    column they had to null (anonymise), plus those missing from the manifest. `clear`: files known to hold none
    of the targets' rows when they had this size and modification time (NavigationOutcome.clear); those still
    so are not read again (any rewrite or append changes them)."""
    ids = targets.decision_ids()
    if not ids:
        return set()
    failed = set(ids) - set(read_manifest(navigation_dir))
    clear = clear or {}
    for group in targets.distinct(GROUP_COLUMNS):
        files = [f for f in _files(navigation_dir, group["table_name"]) if clear.get(str(f)) != _stat(f)]
        if not files:
            continue
        _use_group(targets, group)
        where = ""
        if group["action"] == "anonymise":
            where = "WHERE " + " OR ".join(f"e.{ident(c)} IS NOT NULL" for c in group["columns_key"].split(","))
        failed |= {r[0] for r in targets.con.execute(
            f"SELECT DISTINCT decision_id FROM ({_matches(files, group['key_column'], 't.decision_id', where)})"
        ).fetchall()}
    return failed
