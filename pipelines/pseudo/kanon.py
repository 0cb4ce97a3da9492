"""k-anonymity by generalisation then suppression, in DuckDB SQL, for row-level and aggregate tables.

A class is a combination of generalised quasi-identifiers (row tables) or a cell, i.e. all dimension
columns (aggregate tables); its size is the number of distinct people in it (`subject`), not of rows, so
ten page views of one visitor are one person. Starting from each column's finest level, the
quasi-identifier with the most distinct values is coarsened until at most `max_suppression_ratio` of the
rows sit in classes smaller than k (Datafly-style); those rows (or cells) are then suppressed.
Information loss is reported as the precision loss of the chosen levels (0 = finest everywhere,
1 = every quasi-identifier at its coarsest level) and the share of rows suppressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb

from pipelines.pseudo.generalise import level_sql
from pipelines.pseudo.policy import ColumnPolicy, TablePolicy


@dataclass(frozen=True)
class KAnonymityReport:
    k: int
    achieved_k: int | None  # None when nothing is published
    rows_in: int
    rows_suppressed: int
    levels: dict[str, str]
    generalisation_loss: float

    @property
    def suppression_ratio(self) -> float:
        return self.rows_suppressed / self.rows_in if self.rows_in else 0.0


def bound(sql: str, params: dict[str, object]) -> dict[str, object]:
    """The subset of `params` that `sql` references (DuckDB refuses unused named parameters)."""
    return {name: value for name, value in params.items() if re.search(rf"\${name}\b", sql)}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def class_columns(table: TablePolicy) -> list[ColumnPolicy]:
    roles = ("quasi_identifier",) if table.kind == "rows" else ("quasi_identifier", "attribute")
    return table.by_role(*roles)


def subject_sql(table: TablePolicy) -> str:
    """Expression over the prepared base counting people: the token (rows) or the counted source column."""
    subject = table.column(table.subject)
    return _q(subject.name) if table.kind == "rows" else _q(subject.source)


def column_sql(column: ColumnPolicy, level: int) -> str:
    if column.role == "pseudonym":
        return _q(column.name)
    if column.role == "measure":
        source = _q(column.source)
        if column.aggregate == "count_distinct":
            return f"count(DISTINCT {source})"
        if column.aggregate == "count":
            return f"count({source})"
        # Sums and means of amounts and scores: two decimals, not float noise.
        return f"round({column.aggregate}({source}), 2)"
    return level_sql(column.levels[level], _q(column.source))


def _suppressed_rows(
    con: duckdb.DuckDBPyConnection, base: str, table: TablePolicy, levels: dict[str, int], k: int, params: dict
) -> tuple[int, int]:
    keys = ", ".join(column_sql(c, levels[c.name]) for c in class_columns(table))
    sql = f"""
        SELECT coalesce(sum(n) FILTER (WHERE people < {k}), 0), coalesce(sum(n), 0)
        FROM (SELECT count(*) AS n, count(DISTINCT {subject_sql(table)}) AS people FROM {base} GROUP BY {keys})
    """
    small, total = con.execute(sql, bound(sql, params)).fetchall()[0]
    return int(small), int(total)


def _most_distinct(
    con: duckdb.DuckDBPyConnection, base: str, candidates: list[ColumnPolicy], levels: dict[str, int], params: dict
) -> ColumnPolicy:
    counts = ", ".join(f"count(DISTINCT {column_sql(c, levels[c.name])})" for c in candidates)
    sql = f"SELECT {counts} FROM {base}"
    distinct = con.execute(sql, bound(sql, params)).fetchall()[0]
    return max(zip(candidates, distinct, strict=True), key=lambda pair: pair[1])[0]


def choose_levels(
    con: duckdb.DuckDBPyConnection, base: str, table: TablePolicy, k: int, max_suppression: float, params: dict
) -> tuple[dict[str, int], int, int]:
    """Greedy generalisation; returns (level index per column, rows still in small classes, rows)."""
    levels = {c.name: 0 for c in table.columns}
    while True:
        small, total = _suppressed_rows(con, base, table, levels, k, params)
        coarsenable = [c for c in table.by_role("quasi_identifier") if levels[c.name] < len(c.levels) - 1]
        if small <= max_suppression * total or not coarsenable:
            return levels, small, total
        levels[_most_distinct(con, base, coarsenable, levels, params).name] += 1


def anonymised_sql(base: str, table: TablePolicy, levels: dict[str, int], k: int) -> str:
    """SELECT producing the published table: generalised, and without the classes under k."""
    select = ", ".join(f"{column_sql(c, levels[c.name])} AS {_q(c.name)}" for c in table.columns)
    if table.kind == "aggregate":
        keys = ", ".join(column_sql(c, levels[c.name]) for c in class_columns(table))
        return (
            f"SELECT {select} FROM {base} GROUP BY {keys} "
            f"HAVING count(DISTINCT {subject_sql(table)}) >= {k} ORDER BY ALL"
        )
    # Generalise once, then count people per class over the generalised columns.
    keys = ", ".join(_q(c.name) for c in class_columns(table))
    return (
        f"WITH generalised AS (SELECT {select} FROM {base}) SELECT * FROM generalised "
        f"QUALIFY count(DISTINCT {_q(table.subject)}) OVER (PARTITION BY {keys}) >= {k}"
    )


def achieved_k_sql(relation: str, table: TablePolicy) -> str:
    """Smallest class size of a published table (NULL when empty), computed on the published columns only."""
    if table.kind == "aggregate":
        return f"SELECT min({_q(table.subject)}) FROM {relation}"
    keys = ", ".join(_q(c.name) for c in class_columns(table))
    people = f"SELECT count(DISTINCT {_q(table.subject)}) AS people FROM {relation} GROUP BY {keys}"
    return f"SELECT min(people) FROM ({people})"


def generalisation_loss(table: TablePolicy, levels: dict[str, int]) -> float:
    heights = [(levels[c.name], len(c.levels) - 1) for c in table.by_role("quasi_identifier")]
    ratios = [level / height for level, height in heights if height]
    return round(sum(ratios) / len(heights), 4) if heights else 0.0


def anonymise(
    con: duckdb.DuckDBPyConnection,
    base: str,
    target: str,
    table: TablePolicy,
    k: int,
    max_suppression: float,
    params: dict,
) -> KAnonymityReport:
    """Create `target` from the prepared `base` as a k-anonymous table and report what it cost."""
    levels, small, total = choose_levels(con, base, table, k, max_suppression, params)
    sql = f"CREATE TABLE {target} AS {anonymised_sql(base, table, levels, k)}"
    con.execute(sql, bound(sql, params))
    achieved = con.execute(achieved_k_sql(target, table)).fetchall()[0][0]
    return KAnonymityReport(
        k=k,
        achieved_k=None if achieved is None else int(achieved),
        rows_in=total,
        rows_suppressed=small,
        levels={c.name: c.levels[levels[c.name]] for c in table.columns if c.role in ("quasi_identifier", "attribute")},
        generalisation_loss=generalisation_loss(table, levels),
    )
