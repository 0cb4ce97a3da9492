"""The one place SQL text is built: identifiers, literals, IN-lists, intervals, policy conditions, transactions.

Nothing read from a policy file, a request or a source becomes SQL text except through these functions.
Identifiers are always double-quoted with embedded quotes doubled; literals are single-quoted with embedded
quotes doubled (DuckDB and PostgreSQL do not treat the backslash as an escape in standard strings), numbers
are written from Python's own numbers only, and lists are lists of literals. `tests/test_sql_text.py` keeps
every other module from quoting by hand.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any, Protocol

import sqlalchemy as sa

# Names a policy file may give to tables, columns, clocks, purposes, recipients: they end up in SQL (always
# quoted), in temporary table names and in file names, so only plain lower-case names are accepted at load.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_NAME = re.compile(NAME_PATTERN)

Scalar = str | int | float | bool | dt.date | dt.datetime | PurePath | None


def is_name(value: str) -> bool:
    """True when `value` is a plain policy name (see NAME_PATTERN)."""
    return isinstance(value, str) and _NAME.match(value) is not None


def ident(name: str) -> str:
    """A quoted SQL identifier for any non-empty name (quotes doubled): `ident('a"b')` is `"a""b"`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an SQL identifier must be a non-empty string, not {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qualified(*parts: str) -> str:
    """A dotted, quoted name such as `"raw"."members"`."""
    return ".".join(ident(p) for p in parts)


def literal(value: Scalar) -> str:
    """A SQL literal for a Python value: NULL, true/false, a finite number, DATE/TIMESTAMP, or a quoted string."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be written as an SQL number")
        return repr(float(value))
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def in_list(values: Iterable[Scalar]) -> str:
    """`(v1, v2, …)` for `x IN …`; an empty list is an empty relation, so `IN` is false and `NOT IN` true."""
    items = [literal(v) for v in values]
    return f"({', '.join(items)})" if items else "(SELECT NULL WHERE false)"


def list_literal(values: Iterable[Scalar]) -> str:
    """A DuckDB list value `[v1, v2, …]`."""
    return "[" + ", ".join(literal(v) for v in values) + "]"


def interval(years: int, months: int, days: int) -> str:
    """A DuckDB INTERVAL of whole years, months and days (calendar arithmetic)."""
    for part in (years, months, days):
        if not isinstance(part, int) or isinstance(part, bool):
            raise TypeError("interval parts are integers")
    return f"INTERVAL '{years} years {months} months {days} days'"


# Operators of the structured conditions policies may declare (legal holds, transfer filters). Equality and
# membership compare text, as the policy values are text; ordering compares the column's own type. A null is
# "not equal" to any value and "not in" any list.
OPERATORS = ("equals", "not_equals", "in", "not_in", "below", "at_most", "above", "at_least", "is_null",
             "is_not_null")
_ORDERING = {"below": "<", "at_most": "<=", "above": ">", "at_least": ">="}
_SA_ORDERING = {"below": operator.lt, "at_most": operator.le, "above": operator.gt, "at_least": operator.ge}


def condition(column: str, operator: str, value: Any = None, *, alias: str | None = None) -> str:
    """SQL text for `column operator value` with the value as a literal (never pasted text)."""
    col = f"{ident(alias)}.{ident(column)}" if alias else ident(column)
    text = f"CAST({col} AS VARCHAR)"
    if operator == "equals":
        return f"{text} = {literal(str(value))}"
    if operator == "not_equals":
        return f"{text} IS DISTINCT FROM {literal(str(value))}"
    if operator == "in":
        return f"{text} IN {in_list(str(v) for v in value)}"
    if operator == "not_in":
        return f"({col} IS NULL OR {text} NOT IN {in_list(str(v) for v in value)})"
    if operator in _ORDERING:
        return f"{col} {_ORDERING[operator]} {literal(value)}"
    if operator == "is_null":
        return f"{col} IS NULL"
    if operator == "is_not_null":
        return f"{col} IS NOT NULL"
    raise ValueError(f"unknown operator {operator!r}; expected one of {OPERATORS}")


def bound_condition(column: sa.ColumnElement[Any], operator: str, value: Any = None) -> sa.ColumnElement[bool]:
    """The same condition as `condition`, as an SQLAlchemy expression with bound parameters (SQL sources)."""
    text = sa.cast(column, sa.Text)
    if operator == "equals":
        return text == str(value)
    if operator == "not_equals":
        return text.is_distinct_from(str(value))
    if operator == "in":
        return text.in_([str(v) for v in value])
    if operator == "not_in":
        return sa.or_(column.is_(None), text.not_in([str(v) for v in value]))
    if operator in _ORDERING:
        return column.operate(_SA_ORDERING[operator], value)
    if operator == "is_null":
        return column.is_(None)
    if operator == "is_not_null":
        return column.is_not(None)
    raise ValueError(f"unknown operator {operator!r}; expected one of {OPERATORS}")


def all_of(conditions: Iterable[str]) -> str:
    """The conjunction of SQL conditions (true when there are none)."""
    parts = [f"({c})" for c in conditions]
    return " AND ".join(parts) if parts else "true"


class _Executes(Protocol):
    def execute(self, sql: str, *args: Any) -> Any: ...


@contextmanager
def transaction(con: _Executes) -> Iterator[None]:
    """BEGIN … COMMIT on a DuckDB connection; ROLLBACK and re-raise on any error inside the block."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
