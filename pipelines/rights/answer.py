"""The answer to an erasure request (art. 12 and 17(3)): what was erased everywhere, and what a legal
obligation or a legal claim keeps in the restricted archive, with its legal basis, so the person knows what
was kept and why. `<exports_dir>/<request_id>/erasure-answer.json`, written whole (temporary file, rename),
the same content on a re-run."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from pipelines.private import write_atomically

KEPT_DDL = """
CREATE TABLE IF NOT EXISTS rights.kept (decision_id VARCHAR, table_name VARCHAR, reason VARCHAR, n BIGINT)
"""
ANSWER_FILE = "erasure-answer.json"


def record_kept(con: duckdb.DuckDBPyConnection) -> None:
    """Keep `_kept` (what erasure archives, per decision) beside the decisions (in their transaction)."""
    con.execute(KEPT_DDL)
    con.execute("INSERT INTO rights.kept SELECT * FROM _kept WHERE decision_id NOT IN "
                "(SELECT decision_id FROM rights.kept)")


def write_erasure_answers(con: duckdb.DuckDBPyConnection, decision_ids: list[str], exports_dir: Path,
                          tokens: dict[str, str], answered_at: str) -> list[Path]:
    """One answer per applied erasure decision of `decision_ids`; `tokens`: decision_id -> subject token."""
    con.execute(KEPT_DDL)
    rows = con.execute("""
        SELECT d.decision_id, d.request_id, k.table_name, k.reason, k.n
        FROM rights.decisions d LEFT JOIN rights.kept k USING (decision_id)
        WHERE d.action = 'erasure' AND list_contains(?, d.decision_id)
        ORDER BY d.decision_id, k.table_name""", [decision_ids]).fetchall()
    answers: dict[str, dict[str, object]] = {}
    for decision_id, request_id, table_name, reason, n in rows:
        answer = answers.setdefault(decision_id, {
            "request_id": request_id, "kind": "erasure (art. 17)", "subject_token": tokens.get(decision_id),
            "generated_at": answered_at,
            "erased": "every record of the person in every system, except what is listed under kept",
            "kept": []})
        if table_name is not None:
            answer["kept"].append({"data": table_name, "rows": n, "why": reason,
                                   "where": "restricted archive: storage only, authorised roles, logged access, "
                                            "erased at the end of the period the obligation sets"})
    written = []
    for answer in answers.values():
        path = exports_dir / str(answer["request_id"]) / ANSWER_FILE
        written.append(write_atomically(path, json.dumps(answer, indent=1, ensure_ascii=False)))
    return written
