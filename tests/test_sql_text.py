"""The one SQL module: identifiers, literals, lists, conditions and transactions behave as SQL expects, and no
other module builds a quoted literal, a quoted identifier or a Python-repr list by hand."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from pipelines import sqltext
from pipelines.orchestration.settings import PROJECT_ROOT
from tests.conftest import parse_source

TRICKY = ["", "it's", "''", "a'; DROP TABLE t; --", 'say "hi"', "back\\slash", "new\nline", "nul\x00byte",
          "unicode é ☃ 𝄞", "$1", "?", "%s", "{}", "E'x'"]


@pytest.mark.parametrize("value", TRICKY)
def test_any_string_is_one_literal_that_reads_back_unchanged(value):
    with duckdb.connect() as con:
        assert con.execute(f"SELECT {sqltext.literal(value)}").fetchall() == [(value,)]


@pytest.mark.parametrize("name", [v for v in TRICKY if v] + ["select", "x AS SELECT 1; DROP TABLE t"])
def test_any_name_is_one_identifier_that_reads_back_unchanged(name):
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE {sqltext.ident(name)} ({sqltext.ident(name)} INTEGER)")
        assert con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal").fetchall() == [
            (name, name)]


def test_an_empty_identifier_is_refused():
    with pytest.raises(ValueError):
        sqltext.ident("")


def test_typed_literals_and_lists():
    quoted = "b'c"
    parts = [sqltext.literal(None), sqltext.literal(True), sqltext.literal(-3), sqltext.literal(2.5),
             sqltext.literal(dt.date(2024, 2, 29)), sqltext.literal(dt.datetime(2024, 2, 29, 23, 59, 1)),
             sqltext.list_literal(["a", quoted]), f"'x' IN {sqltext.in_list([])}",
             f"'x' NOT IN {sqltext.in_list([])}", f"{sqltext.literal(quoted)} IN {sqltext.in_list([quoted, 'y'])}"]
    with duckdb.connect() as con:
        row = con.execute(f"SELECT {', '.join(parts)}").fetchall()
    assert row == [(None, True, -3, 2.5, dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 23, 59, 1), ["a", quoted],
                    False, True, True)]
    with pytest.raises(ValueError):
        sqltext.literal(float("nan"))


CONDITIONS = [("equals", "it's", [2]), ("not_equals", "it's", [1, 3, 4]), ("in", ["it's", "z"], [2, 4]),
              ("not_in", ["it's"], [1, 3, 4]), ("is_null", None, [3]), ("is_not_null", None, [1, 2, 4]),
              ("below", "b", [1]), ("at_least", "b", [2, 4])]


@pytest.mark.parametrize(("operator", "value", "expected"), CONDITIONS)
def test_conditions_select_the_same_rows_in_duckdb_and_through_sqlalchemy(operator, value, expected):
    rows = [(1, "a"), (2, "it's"), (3, None), (4, "z")]
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t (id INTEGER, v VARCHAR)")
        con.executemany("INSERT INTO t VALUES (?, ?)", rows)
        found = con.execute(f"SELECT id FROM t WHERE {sqltext.condition('v', operator, value, alias='t')} "
                            "ORDER BY id").fetchall()
    assert [r[0] for r in found] == expected
    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("v", sa.Text))
    table.metadata.create_all(engine)
    with engine.begin() as con:
        con.execute(table.insert(), [{"id": i, "v": v} for i, v in rows])
        query = sa.select(table.c.id).where(sqltext.bound_condition(table.c.v, operator, value)).order_by(table.c.id)
        assert list(con.execute(query).scalars()) == expected


def test_a_transaction_rolls_back_everything_on_error():
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(RuntimeError), sqltext.transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("half-way")
        with sqltext.transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
        assert con.execute("SELECT x FROM t").fetchall() == [(2,)]


# ---------------------------------------------------------------- no hand-made SQL text elsewhere

SQL_WORDS = ("SELECT ", "WHERE ", " FROM ", "INSERT ", "UPDATE ", "DELETE ", "ATTACH ", "COPY ", "CASE ", " THEN ",
             "CAST(", " AND ", " IS NULL", "INTERVAL ", "TIMESTAMP ", "DATE ")


def _hand_built(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, problem) for every piece of SQL text that quotes, lists or reprs a value by hand."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace" \
                and [getattr(a, "value", None) for a in node.args] in (["'", "''"], ['"', '""']):
            found.append((node.lineno, "quotes doubled by hand"))
        if not isinstance(node, ast.JoinedStr):
            continue
        text = "".join(p.value for p in node.values if isinstance(p, ast.Constant))
        if not any(word in text for word in SQL_WORDS):
            continue
        quote = None  # the quote character whose literal or identifier is open at this point of the f-string
        for before, part in itertools.pairwise([None, *node.values]):
            if isinstance(part, ast.Constant):
                text_part, i = part.value, 0
                while i < len(text_part):
                    if quote is None and text_part.startswith("--", i):  # an SQL comment may say "request's"
                        i = text_part.find("\n", i) % (len(text_part) + 1)
                    elif quote is None and text_part[i] in "'\"":
                        quote = text_part[i]
                    elif text_part[i] == quote:
                        quote = None
                    i += 1
                continue
            if quote is not None:
                found.append((node.lineno, "a value pasted inside a quoted literal or identifier"))
            called = part.value.func.id if isinstance(part.value, ast.Call) and isinstance(
                part.value.func, ast.Name) else None
            if isinstance(before, ast.Constant) and before.value.endswith(" IN ") and called != "in_list":
                found.append((node.lineno, "an IN list not built by sqltext.in_list"))
            if part.conversion == ord("r"):
                found.append((node.lineno, "a Python repr in SQL"))
    return found


def test_the_lint_finds_hand_built_sql():
    bad = '''
a = f"SELECT * FROM t WHERE x = '{value}'"
b = f"SELECT * FROM t WHERE x IN {tuple(values)}"
c = name.replace('"', '""')
d = f"SELECT * FROM t WHERE x = {value!r}"
e = f'SELECT count(*) FROM "{schema}"."{name}"'
f = (f"SELECT CASE WHEN {ident(c)} IS NULL THEN 'missing "
     f"{c}' END FROM t")
ok = f"SELECT * FROM t WHERE x IN {in_list(values)} AND y = {literal(v)} AND z = 'it''s {{}}'"
comment = f"""SELECT {ident(c)},  -- the request's
    x FROM {ident(t)}"""
prose = f"dataset {name!r} is not declared in {path}"
'''
    assert sorted(line for line, _ in _hand_built(ast.parse(bad))) == [2, 3, 4, 5, 6, 6, 7]


def test_no_module_outside_sqltext_builds_sql_literals_by_hand():
    offenders = []
    for folder in ("pipelines", "assets", "sensors"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path == Path(sqltext.__file__):
                continue
            offenders += [f"{path.relative_to(PROJECT_ROOT)}:{line}: {what}"
                          for line, what in _hand_built(parse_source(path))]
    assert offenders == []
