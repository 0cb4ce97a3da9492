"""k-anonymity (and l-diversity) by optimal full-domain generalisation then suppression, in DuckDB SQL.

A class is a combination of generalised quasi-identifiers (row tables) or a cell, i.e. all dimension
columns (aggregate tables); its size is the number of distinct people in it (`subject`), not of rows, so
ten page views of one visitor are one person. A row-level table may also declare sensitive attributes that
each class must show at least l times over (distinct values, or entropy >= ln l).

Search (pipelines/pseudo/lattice.py holds the node algebra): a node gives one level to every quasi-
identifier; the lattice is every combination of the declared hierarchies. A node *satisfies* the table when
at most `max_suppression_ratio` of the rows sit in classes that are too small (or not diverse enough);
those rows are then suppressed. Hierarchies are nested, so satisfying is monotone: a node whose predecessor
satisfies satisfies too and is never the cheapest, so it is pruned unevaluated. The lattice is walked
bottom-up one height at a time, all candidates of a height counted in one DuckDB query over a roll-up of
the base (one row per distinct person x every level of every quasi-identifier), and the node with the
least information loss under the table's declared measure wins (ties: fewer rows suppressed).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass

import duckdb

from pipelines.pseudo.cells import CellReport, publish_cells
from pipelines.pseudo.generalise import bound, level_sql
from pipelines.pseudo.lattice import Node, height, layer, predecessors
from pipelines.pseudo.policy import ColumnPolicy, TablePolicy
from pipelines.sqltext import ident, literal

RUNNER_UPS = 3


@dataclass(frozen=True)
class NodeResult:
    levels: dict[str, str]
    loss: float
    rows_suppressed: int


@dataclass(frozen=True)
class KAnonymityReport:
    k: int
    achieved_k: int | None  # None when nothing is published
    rows_in: int
    rows_suppressed: int
    levels: dict[str, str]
    generalisation_loss: float  # information loss of the chosen node under the table's declared measure
    loss_measure: str = "height"
    runner_ups: tuple[NodeResult, ...] = ()
    nodes_in_lattice: int = 1
    nodes_evaluated: int = 1
    cells: CellReport | None = None  # aggregate tables: cells suppressed (primary, complementary), totals

    @property
    def suppression_ratio(self) -> float:
        return self.rows_suppressed / self.rows_in if self.rows_in else 0.0


def runner_ups_json(report: KAnonymityReport) -> str:
    """The next-best nodes of the search, as JSON (levels, loss, rows suppressed)."""
    return json.dumps([asdict(node) for node in report.runner_ups])



def class_columns(table: TablePolicy) -> list[ColumnPolicy]:
    roles = ("quasi_identifier",) if table.kind == "rows" else ("quasi_identifier", "attribute")
    return table.by_role(*roles)


def subject_sql(table: TablePolicy) -> str:
    """Expression over the prepared base counting people: the token (rows) or the counted source column."""
    subject = table.column(table.subject)
    return ident(subject.name) if table.kind == "rows" else ident(subject.source)


def column_sql(column: ColumnPolicy, level: int) -> str:
    if column.role == "pseudonym":
        return ident(column.name)
    if column.role == "measure":
        source = ident(column.source)
        if column.aggregate == "count_distinct":
            return f"count(DISTINCT {source})"
        if column.aggregate == "count":
            return f"count({source})"
        # Sums and means of amounts and scores: two decimals, not float noise.
        return f"round({column.aggregate}({source}), 2)"
    return level_sql(column.levels[level], ident(column.source))


def classes_sql(
    relation: str, keys: list[str], subject: str, k: int, table: TablePolicy, weight: str = "1"
) -> str:
    """One row per class of `relation` (its `keys`): `_rows`, the published rows it holds, and `_small`, true
    when the class has fewer than k people or too little diversity.

    `keys` are column names of `relation`; sensitive columns are read under their published names. `weight`
    is how many published rows a row of `relation` stands for (the roll-up's `n`). Distinct values are counted
    by grouping twice (hash aggregates): a windowed count(DISTINCT) re-sorts the relation for every node the
    search counts, and a grouped one keeps a set per class.
    """
    group = ", ".join(keys)
    ctes = [f"_class AS (SELECT {group}, count({subject}) AS _people, sum(_w) AS _rows FROM (SELECT {group}, "
            f"{subject}, sum({weight}) AS _w FROM {relation} GROUP BY {group}, {subject}) GROUP BY {group})"]
    joins, small = [], [f"c._people < {k}"]
    for i, rule in enumerate(table.l_diversity):
        s = ident(rule.column)
        if rule.measure == "distinct":
            ctes.append(f"_l{i} AS (SELECT {group}, count({s}) AS _v FROM (SELECT DISTINCT {group}, {s} "
                        f"FROM {relation}) GROUP BY {group})")
            small.append(f"l{i}._v < {rule.l}")
        else:
            # Entropy of the class's sensitive values, shares p = w_s / W of its rows:
            # -sum(p ln p) = ln W - sum(w_s ln w_s) / W >= ln l.
            ctes.append(f"_l{i} AS (SELECT {group}, sum(_w * ln(_w)) AS _v FROM (SELECT {group}, {s}, "
                        f"sum({weight}) AS _w FROM {relation} GROUP BY {group}, {s}) GROUP BY {group})")
            small.append(f"ln(c._rows) - l{i}._v / c._rows < {literal(math.log(rule.l) - 1e-9)}")
        # Keys may be NULL (a postal code that names no département): NULL matches NULL.
        on = " AND ".join(f"c.{key} IS NOT DISTINCT FROM l{i}.{key}" for key in keys)
        joins.append(f"JOIN _l{i} l{i} ON {on}")
    select = ", ".join(f"c.{key}" for key in keys)
    return (f"WITH {', '.join(ctes)} SELECT {select}, c._rows, ({' OR '.join(small)}) AS _small "
            f"FROM _class c {' '.join(joins)}")


class Lattice:
    """The generalisation lattice of one table over its roll-up `relation`, with each node's loss."""

    def __init__(
        self, con: duckdb.DuckDBPyConnection, base: str, table: TablePolicy, k: int, max_suppression: float,
        params: dict,
    ) -> None:
        self.con, self.table, self.k = con, table, k
        self.qis = table.by_role("quasi_identifier")
        self.fixed = [c for c in class_columns(table) if c.role != "quasi_identifier"]
        self.heights = tuple(len(c.levels) - 1 for c in self.qis)
        self.relation = f"_lattice_{uuid.uuid4().hex}"
        levels = [
            f"{level_sql(level, ident(c.source))} AS q{i}_{j}"
            for i, c in enumerate(self.qis) for j, level in enumerate(c.levels)
        ]
        fixed = [f"{column_sql(c, 0)} AS a{j}" for j, c in enumerate(self.fixed)]
        sensitive = [f"{column_sql(table.column(r.column), 0)} AS {ident(r.column)}" for r in table.l_diversity]
        select = ", ".join([*levels, *fixed, *sensitive, f"{subject_sql(table)} AS _subject"])
        # The roll-up every node is counted from: rows that no level of any column tells apart are one row.
        sql = f"CREATE OR REPLACE TEMP TABLE {self.relation} AS SELECT {select}, count(*) AS n FROM {base} GROUP BY ALL"
        con.execute(sql, bound(sql, params))
        self.total = int(con.execute(f"SELECT coalesce(sum(n), 0) FROM {self.relation}").fetchall()[0][0])
        self.budget = math.floor(max_suppression * self.total + 1e-9)
        self.column_loss = [self._column_loss(i) for i in range(len(self.qis))]

    def _column_loss(self, i: int) -> list[float]:
        """Loss of each level of quasi-identifier i, 0 (finest) .. 1 (one value for all)."""
        levels = range(self.heights[i] + 1)
        if self.table.loss == "height":
            return [level / self.heights[i] if self.heights[i] else 0.0 for level in levels]
        # Normalised certainty penalty: the share of the finest values a published value could be.
        # Counted over the column's distinct values (a few hundred), not over the roll-up's rows.
        values = f"SELECT {', '.join(f'q{i}_{j}' for j in levels)}, sum(n) AS w FROM {self.relation} GROUP BY ALL"
        sums = ", ".join(f"(SELECT sum(w * greatest(c - 1, 0)) FROM (SELECT sum(w) AS w, count(DISTINCT q{i}_0) "
                         f"AS c FROM _values GROUP BY q{i}_{j}))" for j in levels)
        row = self.con.execute(
            f"WITH _values AS ({values}) "
            f"SELECT {sums}, (SELECT sum(w) FROM _values), (SELECT count(DISTINCT q{i}_0) FROM _values)"
        ).fetchall()[0]
        *penalties, rows, distinct = row
        if not rows or distinct is None or distinct < 2:
            return [1.0 if self.qis[i].levels[j] == "suppress" else 0.0 for j in levels]
        return [float(p) / (float(rows) * (distinct - 1)) for p in penalties]

    def loss(self, node: Node) -> float:
        weights = [c.weight for c in self.qis]
        total = sum(w * self.column_loss[i][level] for i, (w, level) in enumerate(zip(weights, node, strict=True)))
        return round(total / sum(weights), 6) if weights else 0.0

    def keys(self, node: Node) -> list[str]:
        return [f"q{i}_{level}" for i, level in enumerate(node)] + [f"a{j}" for j in range(len(self.fixed))]

    def suppressed(self, nodes: list[Node]) -> dict[Node, int]:
        """Rows in too-small (or too-uniform) classes, for each node, in one query."""
        if not nodes:
            return {}
        parts = [
            f"SELECT {index} AS node, coalesce(sum(_rows) FILTER (WHERE _small), 0) AS rows "
            f"FROM ({classes_sql(self.relation, self.keys(node), '_subject', self.k, self.table, 'n')})"
            for index, node in enumerate(nodes)
        ]
        found = dict(self.con.execute(" UNION ALL ".join(parts)).fetchall())
        return {node: int(found[index]) for index, node in enumerate(nodes)}

    def names(self, node: Node) -> dict[str, str]:
        return {c.name: c.levels[level] for c, level in zip(self.qis, node, strict=True)}

    def drop(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self.relation}")


@dataclass(frozen=True)
class Search:
    chosen: Node
    rows_suppressed: int
    ranked: list[tuple[Node, int]]  # every minimal satisfying node, best first
    evaluated: int


def search(lattice: Lattice) -> Search:
    """Bottom-up walk by height; nodes above a satisfying node are pruned (monotonicity)."""
    top = lattice.heights
    evaluated: dict[Node, int] = {}
    satisfying: set[Node] = set()
    for h in range(height(top) + 1):
        # A node above a satisfying one satisfies too (monotone): known without counting, and never cheapest.
        candidates = []
        for node in layer(top, h):
            if any(p in satisfying for p in predecessors(node)):
                satisfying.add(node)
            else:
                candidates.append(node)
        for node, rows in lattice.suppressed(candidates).items():
            evaluated[node] = rows
            if rows <= lattice.budget:
                satisfying.add(node)
    # Evaluated satisfying nodes are exactly the minimal ones: the optimum (loss is monotone) is among them.
    minimal = [n for n in evaluated if n in satisfying]
    ranked = sorted(((n, evaluated[n]) for n in minimal), key=lambda nr: (lattice.loss(nr[0]), nr[1], nr[0]))
    # No node meets the budget (fewer than k people in all): publish the top node, suppressing its classes.
    chosen, rows = ranked[0] if ranked else (top, evaluated[top])
    return Search(chosen=chosen, rows_suppressed=rows, ranked=ranked, evaluated=len(evaluated))


def anonymised_rows_sql(base: str, table: TablePolicy, levels: dict[str, int], k: int) -> str:
    """SELECT producing a published row-level table: generalised, without the classes under k (or l)."""
    select = ", ".join(f"{column_sql(c, levels[c.name])} AS {ident(c.name)}" for c in table.columns)
    # Generalise once, then count people (and sensitive values) per class over the generalised columns.
    keys = [ident(c.name) for c in class_columns(table)]
    classes = classes_sql("generalised", keys, ident(table.subject), k, table)
    on = " AND ".join(f"g.{key} IS NOT DISTINCT FROM c.{key}" for key in keys)
    columns = ", ".join(f"g.{ident(c.name)}" for c in table.columns)
    return (f"WITH generalised AS (SELECT {select} FROM {base}) SELECT {columns} FROM generalised g "
            f"JOIN ({classes}) c ON {on} WHERE NOT c._small")


def achieved_k_sql(relation: str, table: TablePolicy) -> str:
    """Smallest class size of a published table (NULL when empty), computed on the published columns only."""
    if table.kind == "aggregate":
        return f"SELECT min({ident(table.subject)}) FROM {relation}"
    keys = ", ".join(ident(c.name) for c in class_columns(table))
    people = f"SELECT count(DISTINCT {ident(table.subject)}) AS people FROM {relation} GROUP BY {keys}"
    return f"SELECT min(people) FROM ({people})"


def anonymise(
    con: duckdb.DuckDBPyConnection,
    base: str,
    target: str,
    table: TablePolicy,
    k: int,
    max_suppression: float,
    params: dict,
) -> KAnonymityReport:
    """Create `target` from the prepared `base` as a k-anonymous (l-diverse) table and report what it cost."""
    lattice = Lattice(con, base, table, k, max_suppression, params)
    try:
        found = search(lattice)
    finally:
        lattice.drop()
    levels = {c.name: 0 for c in table.columns} | {
        c.name: level for c, level in zip(lattice.qis, found.chosen, strict=True)
    }
    cells = None
    if table.kind == "aggregate":
        cells = publish_cells(
            con, base, target, table, {c.name: column_sql(c, levels[c.name]) for c in class_columns(table)},
            {c.name: column_sql(c, 0) for c in table.by_role("measure")}, subject_sql(table), k, params,
        )
    else:
        sql = f"CREATE TABLE {target} AS {anonymised_rows_sql(base, table, levels, k)}"
        con.execute(sql, bound(sql, params))
    achieved = con.execute(achieved_k_sql(target, table)).fetchall()[0][0]
    runner_ups = tuple(
        NodeResult(levels=lattice.names(node), loss=lattice.loss(node), rows_suppressed=rows)
        for node, rows in found.ranked[1 : 1 + RUNNER_UPS]
    )
    return KAnonymityReport(
        k=k,
        achieved_k=None if achieved is None else int(achieved),
        rows_in=lattice.total,
        rows_suppressed=cells.rows_suppressed if cells else found.rows_suppressed,
        levels={c.name: c.levels[levels[c.name]] for c in class_columns(table)},
        generalisation_loss=lattice.loss(found.chosen),
        loss_measure=table.loss,
        runner_ups=runner_ups,
        nodes_in_lattice=math.prod(h + 1 for h in lattice.heights),
        nodes_evaluated=found.evaluated,
        cells=cells,
    )
