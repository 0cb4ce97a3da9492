"""Aggregate tables with totals: cells under k suppressed, and complementary suppression so a total minus
the published cells never gives back one suppressed cell."""

from __future__ import annotations

import datetime as dt

import duckdb
import pandas as pd

from pipelines.pseudo.kanon import anonymise
from pipelines.pseudo.policy import TablePolicy

PARAMS = {"as_of": dt.date(2026, 11, 27)}


def _audience(totals_over: str | None) -> TablePolicy:
    return TablePolicy.model_validate({
        "kind": "aggregate", "domain": "statistics", "description": "audience", "subject": "visitors",
        "small_cells": {"method": "suppress", "totals_over": totals_over},
        "columns": [
            {"name": "day", "role": "quasi_identifier", "source": "ts", "levels": ["day"], "description": "d"},
            {"name": "page", "role": "attribute", "source": "url", "levels": ["url_path"], "description": "p"},
            {"name": "visitors", "role": "measure", "source": "visitor_id", "aggregate": "count_distinct",
             "description": "v"},
            {"name": "views", "role": "measure", "source": "url", "aggregate": "count", "description": "n"},
        ],
    })


def _views(day: str, page: str, visitors: int, first: int = 0) -> list[dict]:
    return [{"visitor_id": f"v{first + i}", "url": f"https://x.fr{page}", "ts": dt.datetime.fromisoformat(day)}
            for i in range(visitors)]


def _publish(table: TablePolicy, rows: list[dict]) -> tuple[list[tuple], object]:
    con = duckdb.connect()
    con.register("frame", pd.DataFrame(rows))
    con.execute("CREATE TEMP TABLE base AS SELECT * FROM frame")
    report = anonymise(con, "base", "out", table, 5, 1.0, PARAMS)
    return con.execute("SELECT day, page, visitors, views FROM out ORDER BY ALL").fetchall(), report


def test_a_lone_small_cell_takes_its_smallest_neighbour_with_it_when_the_total_is_published() -> None:
    rows = (_views("2026-03-02", "/a", 6) + _views("2026-03-02", "/b", 7, 100) + _views("2026-03-02", "/c", 2, 200)
            + _views("2026-03-03", "/a", 3) + _views("2026-03-04", "/a", 5) + _views("2026-03-04", "/b", 8, 100))
    published, report = _publish(_audience("page"), rows)
    assert published == [
        ("2026-03-02", "*", 15, 15),  # /c (2) is suppressed, and /a (6) with it: 15 - 7 gives 8, not 2
        ("2026-03-02", "/b", 7, 7),
        ("2026-03-04", "*", 13, 13),  # nothing suppressed that day: every cell stays
        ("2026-03-04", "/a", 5, 5),
        ("2026-03-04", "/b", 8, 8),
    ]  # 2026-03-03: 3 visitors in all, the total is under k too
    assert (report.cells.primary, report.cells.complementary, report.cells.totals) == (2, 1, 2)
    assert report.rows_suppressed == 2 + 6 + 3
    assert report.achieved_k == 5


def test_without_totals_only_the_small_cells_go() -> None:
    rows = _views("2026-03-02", "/a", 6) + _views("2026-03-02", "/c", 2, 200)
    published, report = _publish(_audience(None), rows)
    assert published == [("2026-03-02", "/a", 6, 6)]
    assert (report.cells.primary, report.cells.complementary, report.cells.totals) == (1, 0, 0)
