"""Optimal generalisation: the pruned lattice search finds the exhaustive optimum, Datafly never beats it;
l-diversity suppresses uniform classes."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from pipelines.pseudo.kanon import Lattice, anonymise, search
from pipelines.pseudo.lattice import Node, nodes
from pipelines.pseudo.policy import TablePolicy

PARAMS = {"as_of": dt.date(2026, 11, 27)}


def _table(loss: str = "ncp", **extra) -> TablePolicy:
    return TablePolicy.model_validate({
        "kind": "rows", "domain": "statistics", "description": "test", "subject": "person", "loss": loss,
        "columns": [
            {"name": "person", "role": "pseudonym", "source": "pid", "normalise": "id", "description": "token"},
            {"name": "age_band", "role": "quasi_identifier", "source": "birth_date", "weight": 2,
             "levels": ["age_band:5", "age_band:10", "age_band:20", "suppress"], "description": "age"},
            {"name": "departement", "role": "quasi_identifier", "source": "postal_code",
             "levels": ["departement", "postal_zone", "suppress"], "description": "area"},
            {"name": "day", "role": "quasi_identifier", "source": "ts",
             "levels": ["day", "month", "quarter", "suppress"], "description": "day"},
            {"name": "care", "role": "attribute", "source": "care", "description": "care category"},
        ],
    } | extra)


def _frame(seed: int, people: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Skewed like real data: most people in a few départements and ages, a long tail elsewhere.
    dep = np.where(rng.random(people) < 0.7, rng.integers(75, 78, people), rng.integers(1, 95, people))
    return pd.DataFrame({
        "pid": [f"p{i}" for i in range(people)],
        "person": [f"t{i}" for i in range(people)],
        "birth_date": [dt.date(1990 + int(y), 6, 1) for y in rng.integers(0, 16, people)],
        "postal_code": [f"{d:02d}{rng.integers(0, 1000):03d}" for d in dep],
        "ts": [dt.date(2026, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 300, people)],
        "care": rng.choice(["dental", "optical", "gp"], people, p=[0.2, 0.2, 0.6]),
    })


def _lattice(con: duckdb.DuckDBPyConnection, frame: pd.DataFrame, table: TablePolicy, k: int, budget: float):
    con.register("frame", frame)
    con.execute("CREATE OR REPLACE TEMP TABLE base AS SELECT * FROM frame")
    return Lattice(con, "base", table, k, budget, PARAMS)


def _exhaustive(lattice: Lattice) -> tuple[float, dict[Node, int]]:
    every = lattice.suppressed(nodes(lattice.heights))
    return min(lattice.loss(n) for n, rows in every.items() if rows <= lattice.budget), every


def _datafly(lattice: Lattice) -> Node:
    """Sweeney's Datafly: coarsen the quasi-identifier with the most distinct values until the budget holds."""
    node = [0] * len(lattice.heights)
    while lattice.suppressed([tuple(node)])[tuple(node)] > lattice.budget:
        open_ = [i for i, h in enumerate(lattice.heights) if node[i] < h]
        counts = lattice.con.execute(
            "SELECT " + ", ".join(f"count(DISTINCT q{i}_{node[i]})" for i in open_) + f" FROM {lattice.relation}"
        ).fetchall()[0]
        node[max(zip(counts, open_, strict=True))[1]] += 1
    return tuple(node)


@pytest.mark.parametrize("loss", ["ncp", "height"])
@pytest.mark.parametrize(("seed", "people", "k", "budget"), [(1, 150, 5, 0.05), (2, 300, 5, 0.02), (3, 200, 8, 0.1)])
def test_pruned_search_finds_the_exhaustive_optimum_and_datafly_is_never_better(seed, people, k, budget, loss):
    con = duckdb.connect()
    lattice = _lattice(con, _frame(seed, people), _table(loss), k, budget)
    found = search(lattice)
    best, every = _exhaustive(lattice)
    assert lattice.loss(found.chosen) == best
    assert every[found.chosen] == found.rows_suppressed <= lattice.budget
    # Monotonicity pruned part of the lattice: fewer nodes were counted than exist.
    assert found.evaluated < len(every)
    assert lattice.loss(_datafly(lattice)) >= best


def test_datafly_coarsens_the_day_where_the_optimum_keeps_it() -> None:
    con = duckdb.connect()
    # The case: `day` has the most distinct values, so Datafly coarsens it first although the only
    # small class is one person alone in Lyon, whom only the département's suppression hides.
    frame = _frame(4, 400).assign(postal_code="75001", birth_date=dt.date(2000, 6, 1))
    frame["ts"] = [dt.date(2026, 1, 1) + dt.timedelta(days=i % 30) for i in range(400)]
    frame.loc[0, "postal_code"] = "69001"
    lattice = _lattice(con, frame, _table(), 5, 0.0)
    datafly = lattice.names(_datafly(lattice))
    chosen = lattice.names(search(lattice).chosen)
    assert chosen == {"age_band": "age_band:5", "departement": "suppress", "day": "day"}
    assert datafly == {"age_band": "age_band:5", "departement": "suppress", "day": "month"}
    assert lattice.loss(search(lattice).chosen) < lattice.loss(_datafly(lattice))


@pytest.mark.parametrize("measure", ["distinct", "entropy"])
def test_a_class_whose_people_share_one_care_category_is_not_published(measure: str) -> None:
    con = duckdb.connect()
    frame = _frame(5, 20).assign(birth_date=dt.date(2000, 6, 1), ts=dt.date(2026, 3, 2))
    frame["postal_code"] = ["75001"] * 10 + ["69001"] * 10
    # Paris: 10 people, three categories; Lyon: 10 people, all dental.
    frame["care"] = ["dental", "optical", "gp", "gp", "gp", "dental", "gp", "optical", "gp", "dental"] + ["dental"] * 10
    table = _table(l_diversity=[{"column": "care", "l": 2, "measure": measure}])
    con.register("frame", frame)
    con.execute("CREATE TEMP TABLE base AS SELECT * FROM frame")
    report = anonymise(con, "base", "out", table, 5, 0.5, PARAMS)
    published = con.execute("SELECT departement, count(*) FROM out GROUP BY ALL").fetchall()
    assert published == [("75", 10)]
    assert report.rows_suppressed == 10
    # Without the rule, Lyon's class of 10 would have been published.
    con.execute("CREATE TEMP TABLE base2 AS SELECT * FROM frame")
    anonymise(con, "base2", "out2", _table(), 5, 0.5, PARAMS)
    assert con.execute("SELECT count(*) FROM out2").fetchall()[0][0] == 20


@pytest.mark.parametrize("measure", ["distinct", "entropy"])
def test_every_node_counts_the_rows_of_small_or_uniform_classes_as_defined(measure: str) -> None:
    con = duckdb.connect()
    frame = _frame(6, 250)
    # People with several rows (the roll-up weighs them), and postal codes that name no département (NULL keys).
    frame = pd.concat([frame, frame.iloc[:60].assign(care="gp")], ignore_index=True)
    frame.loc[frame.index % 17 == 0, "postal_code"] = "BP 12"
    table = _table(l_diversity=[{"column": "care", "l": 2, "measure": measure}])
    lattice = _lattice(con, frame, table, 5, 0.05)
    rollup = con.execute(f"SELECT * FROM {lattice.relation}").df()
    assert rollup.filter(like="q1_").isna().any().any() and (rollup["n"] > 1).any()
    counted = lattice.suppressed(nodes(lattice.heights))
    for node, rows in counted.items():
        keys = [f"q{i}_{level}" for i, level in enumerate(node)]
        classes = rollup.groupby(keys, dropna=False)
        people = classes["_subject"].transform("nunique")
        weight = classes["n"].transform("sum")
        if measure == "distinct":
            diverse = classes["care"].transform("nunique") >= 2
        else:
            share = rollup.groupby([*keys, "care"], dropna=False)["n"].transform("sum") / weight
            entropy = (-rollup["n"] * np.log(share)).groupby([rollup[k] for k in keys], dropna=False).transform("sum")
            diverse = entropy / weight >= np.log(2) - 1e-9
        assert rows == int(rollup["n"][(people < 5) | ~diverse].sum()), node
