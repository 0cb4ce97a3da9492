"""Aggregate tables: cells at the chosen generalisation, totals, and small-cell suppression, in DuckDB SQL.

A cell is one combination of the table's dimensions (quasi-identifiers and attributes); it is published
only if it counts at least k people. With `small_cells.totals_over: <dimension>` the table also publishes,
for each value of the other dimensions, a total row with that dimension set to `*` (e.g. a day's audience
over all pages). A total minus the published cells of its group would give back a lone suppressed cell, so
when exactly one cell of a group is suppressed and its total is published, the group's smallest published
cell is suppressed too (complementary suppression); a total under k is itself suppressed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import duckdb

from pipelines.pseudo.generalise import SUPPRESSED, bound
from pipelines.pseudo.policy import TablePolicy
from pipelines.sqltext import ident, literal


@dataclass(frozen=True)
class CellReport:
    cells: int  # detail cells before suppression
    primary: int  # detail cells under k
    complementary: int  # published-size cells suppressed so totals reveal no single small cell
    totals: int  # total rows published
    rows_suppressed: int  # base rows in suppressed detail cells



def publish_cells(
    con: duckdb.DuckDBPyConnection, base: str, target: str, table: TablePolicy, keys: dict[str, str],
    measures: dict[str, str], subject: str, k: int, params: dict,
) -> CellReport:
    """Create `target` from `base`: one row per cell of `keys` (name -> SQL over base) with `measures`."""
    over = table.small_cells.totals_over if table.small_cells else None
    if over is not None and keys[over] == literal(SUPPRESSED):
        over = None  # the search suppressed that dimension: every cell already is its total
    dims = ", ".join(f"{expr} AS {ident(name)}" for name, expr in keys.items())
    values = ", ".join(f"{expr} AS {ident(name)}" for name, expr in measures.items())
    stats = f"count(DISTINCT {subject}) AS _people, count(*) AS _rows"
    cells = f"SELECT {dims}, {values}, {stats}, false AS _total FROM {base} GROUP BY ALL"
    others = [name for name in keys if name != over]
    if over is not None:
        total_dims = ", ".join(literal(SUPPRESSED) if name == over else f"{keys[name]}" for name in keys)
        cells += f" UNION ALL SELECT {total_dims}, {values}, {stats}, true FROM {base} GROUP BY ALL"
    group = f"PARTITION BY {', '.join(ident(n) for n in others)}" if others else ""
    order = f"_people, {ident(over)}" if over is not None else "_people"
    work = f"_cells_{uuid.uuid4().hex}"
    sql = f"""
        CREATE OR REPLACE TEMP TABLE {work} AS
        WITH flagged AS (SELECT *, _people < {k} AS _primary FROM ({cells})),
        grouped AS (
            SELECT *,
                   count(*) FILTER (WHERE _primary AND NOT _total) OVER ({group}) AS _lone,
                   bool_or(_total AND NOT _primary) OVER ({group}) AS _total_published,
                   row_number() OVER ({group}{',' if group else 'PARTITION BY'} _primary OR _total ORDER BY {order})
                       AS _rank
            FROM flagged
        )
        SELECT *, NOT _primary AND NOT _total AND _lone = 1 AND _total_published AND _rank = 1 AS _complementary
        FROM grouped
    """
    con.execute(sql, bound(sql, params))
    published = ", ".join(ident(c.name) for c in table.columns)
    con.execute(f"CREATE TABLE {target} AS SELECT {published} FROM {work} "
                "WHERE NOT _primary AND NOT _complementary ORDER BY ALL")
    row = con.execute(f"""
        SELECT count(*) FILTER (WHERE NOT _total), count(*) FILTER (WHERE _primary AND NOT _total),
               count(*) FILTER (WHERE _complementary), count(*) FILTER (WHERE _total AND NOT _primary),
               coalesce(sum(_rows) FILTER (WHERE NOT _total AND (_primary OR _complementary)), 0)
        FROM {work}
    """).fetchall()[0]
    con.execute(f"DROP TABLE {work}")
    return CellReport(*(int(v) for v in row))
