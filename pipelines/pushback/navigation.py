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

from pipelines.duck import scratch
from pipelines.navigation import Stat
from pipelines.private import write_atomically
from pipelines.pushback.sql import NoticeRule
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


def _matches(files: list[Path], key_column: str, extra_where: str = "") -> str:
    """SQL: rows of `files` whose key is among the registered `group_targets`, with their file name."""
    paths = [str(f) for f in files]
    return (
        f"SELECT t.decision_id, t.key_value, e.filename "
        f"FROM read_parquet({list_literal(paths)}, filename = true, hive_partitioning = false) e"
        f" JOIN group_targets t ON CAST(e.{ident(key_column)} AS VARCHAR) = t.key_value {extra_where}"
    )


GROUP_COLUMNS = ("table_name", "key_column", "action", "columns_key")


def _groups(targets: pa.Table) -> list[dict[str, str]]:
    return targets.group_by(list(GROUP_COLUMNS)).aggregate([]).to_pylist()


def _use_group(con: duckdb.DuckDBPyConnection, group: dict[str, str]) -> None:
    """Point the view `group_targets` at the group's rows of the registered `targets`: DuckDB scans the Arrow
    table in place (a filtered Arrow copy per group held the first night's 4 million targets twice more)."""
    con.execute("CREATE OR REPLACE TEMP VIEW group_targets AS SELECT decision_id, key_value FROM targets "
                f"WHERE {all_of(f'{ident(c)} = {literal(group[c])}' for c in GROUP_COLUMNS)}")


def _notices(con: duckdb.DuckDBPyConnection, files: list[Path], group: dict[str, str],
             rules: Sequence[NoticeRule]) -> list[dict[str, str]]:
    """Art. 19 notices the group's decisions owe: the subject has rows of the table the recipient receives."""
    found = []
    for rule in rules:
        if (rule.system, rule.table_name, rule.key_column) != ("navigation", group["table_name"], group["key_column"]) \
                or group["action"] not in rule.actions:
            continue
        where = f"WHERE {all_of(c.sql('e') for c in rule.where)}"
        matches = _matches(files, group["key_column"], where)
        pairs = con.execute(f"SELECT DISTINCT decision_id, key_value FROM ({matches})").fetchall()
        found += [{"recipient": rule.recipient, "decision_id": d, "action": group["action"],
                   "key_column": group["key_column"], "key_value": k} for d, k in pairs]
    return found


def apply_to_navigation(navigation_dir: Path, targets: pa.Table, *, now: str, notice_rules: Sequence[NoticeRule],
                        before_commit: Callable[[list[dict[str, str]]], None],
                        checkpoint: Callable[[str], None],
                        shared: duckdb.DuckDBPyConnection | None = None) -> NavigationOutcome:
    """Apply the navigation targets (prepared: columns_key added) not yet in the manifest. `before_commit`
    receives the art. 19 notices and persists them before any file is rewritten. `shared`: see
    pipelines.duck.scratch."""
    manifest = read_manifest(navigation_dir)
    _close_journal(navigation_dir, manifest)  # a run killed between the manifest and the journal's end
    done = pc.is_in(targets["decision_id"], value_set=pa.array(list(manifest), pa.string()))
    pending = targets.filter(pc.invert(done)) if pc.any(done).as_py() else targets
    outcome = NavigationOutcome()
    if pending.num_rows == 0:
        return outcome
    counted: dict[str, dict[str, object]] = {}
    rewrites: dict[str, list[Operation]] = {}  # file -> what to do in it
    notices: list[dict[str, str]] = []
    seen: dict[str, Stat] = {}  # every file read, as it was before its first read
    listed = {table: _files(navigation_dir, table) for table in TABLE_DIRS}
    with scratch(shared) as con:
        con.register("targets", pending)
        for group in _groups(pending):
            files = listed[group["table_name"]]
            if not files:
                continue
            seen |= {str(f): _stat(f) for f in files if str(f) not in seen}
            _use_group(con, group)
            notices += _notices(con, files, group, notice_rules)
            # the logs are read once per group; a temp table, so never in the warehouse file when `shared` is its
            con.execute(f"CREATE OR REPLACE TEMP TABLE group_matches AS {_matches(files, group['key_column'])}")
            per_file = con.sql("SELECT filename, list(DISTINCT key_value) AS keys FROM group_matches "
                               "GROUP BY filename").to_arrow_table()
            for filename, keys in zip(per_file["filename"].to_pylist(), per_file["keys"], strict=True):
                rewrites.setdefault(filename, []).append((group, keys.values))
            for decision_id, n in con.sql("SELECT decision_id, count(*) FROM group_matches GROUP BY ALL").fetchall():
                entry = counted.setdefault(decision_id, {"rows_affected": 0, "tables": []})
                entry["rows_affected"] += n
                entry["tables"] = sorted({*entry["tables"], group["table_name"]})
            con.execute("DROP TABLE group_matches")
    outcome.clear = {f: stat for f, stat in seen.items() if f not in rewrites}
    # Recorded before any file changes; what an interrupted run recorded first stands (it counted the whole).
    journal = {**counted, **_read_journal(navigation_dir)}
    write_atomically(navigation_dir / JOURNAL_NAME, json.dumps(journal, sort_keys=True, indent=1), in_source=True)
    # The notices too go out before any file changes: a re-run no longer finds the rows a killed run erased.
    before_commit(notices)
    # Files rewritten side by side: each waits mostly on its own fsync (pipelines.durable), and pyarrow's reads and
    # writes release the GIL. The crash hook runs here, as each file is swapped in.
    with ThreadPoolExecutor(max_workers=REWRITERS) as pool:
        futures = {pool.submit(_rewrite, Path(path), rewrites[path]): path for path in sorted(rewrites)}
        for done in as_completed(futures):
            if (stats := done.result()) is not None:
                outcome.rewritten[futures[done]] = stats
            checkpoint("navigation_file")
    for decision_id in pc.unique(pending["decision_id"]).to_pylist():
        entry = journal.get(decision_id, {"rows_affected": 0, "tables": []})
        manifest[decision_id] = {"applied_at": now, "rows_affected": entry["rows_affected"],
                                 "table_name": ",".join(entry["tables"])}
        outcome.rows_affected += entry["rows_affected"]
        outcome.newly_applied.append(decision_id)
    _write_manifest(navigation_dir, manifest)
    _close_journal(navigation_dir, manifest)
    return outcome


def unconfirmed_navigation(navigation_dir: Path, targets: pa.Table, clear: Mapping[str, Stat] | None = None,
                           shared: duckdb.DuckDBPyConnection | None = None) -> set[str]:
    """Re-read the logs: the decision ids whose rows are still there (erase) or still carry a value in a
    column they had to null (anonymise), plus those missing from the manifest. `clear`: files known to hold none
    of the targets' rows when they had this size and modification time (NavigationOutcome.clear); those still
    so are not read again (any rewrite or append changes them)."""
    if targets.num_rows == 0:
        return set()
    failed = set(pc.unique(targets["decision_id"]).to_pylist()) - set(read_manifest(navigation_dir))
    clear = clear or {}
    with scratch(shared) as con:
        con.register("targets", targets)
        for group in _groups(targets):
            files = [f for f in _files(navigation_dir, group["table_name"]) if clear.get(str(f)) != _stat(f)]
            if not files:
                continue
            _use_group(con, group)
            where = ""
            if group["action"] == "anonymise":
                where = "WHERE " + " OR ".join(f"e.{c} IS NOT NULL" for c in group["columns_key"].split(","))
            failed |= {r[0] for r in con.execute(_matches(files, group["key_column"], where)).fetchall()}
    return failed
