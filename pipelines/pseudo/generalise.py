"""Generalisation levels: each turns a source column into a coarser VARCHAR value, as a DuckDB expression.

A column's hierarchy in policies/pseudonymisation.yaml is a list of levels, finest first, e.g.
``[age_band:5, age_band:10, age_band:20, suppress]``. A level is ``name`` or ``name:parameter``:
- ``keep``: the value as text;  ``suppress``: ``*`` (the column says nothing any more);
- ``column:<other>``: the value of another column of the table's base (e.g. an establishment's kind);
- ``age_band:<years>``: age at the run's as-of date (bound as ``$as_of``) in bands of that width;
- ``day`` / ``week`` / ``month`` / ``quarter`` / ``year``: a date or timestamp truncated, as a label;
- ``years:<n>``: the n-year period of a date, aligned on multiples of n (``2020-2024`` for n = 5);
- ``departement``: French postal code to département (2A/2B for Corsica, 3 digits overseas and Monaco);
- ``postal_zone``: the first digit of the postal code;
- ``url_path``: a URL without scheme, host, query string or fragment;
- ``url_section``: the first segment of that path (``/espace-adherent/documents`` -> ``/espace-adherent``);
- ``grid:<degrees>``: a [latitude, longitude] pair as the south-west corner of its cell in a grid of that
  many degrees (cells of a grid whose size is a multiple of another's contain whole cells of it).

The lattice search (kanon.py) relies on each hierarchy being nested: every value of a level must fall in
one value of the next (day -> month -> quarter, not day -> week -> month; grid 0.5 -> 1 -> 2 -> 4).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pipelines.sqltext import literal

SUPPRESSED = "*"


def _age_band(col: str, width: str) -> str:
    years = f"date_part('year', age(CAST($as_of AS DATE), CAST({col} AS DATE)))"
    lo = f"(CAST(floor({years} / {width}) AS INTEGER) * {width})"
    return f"CAST({lo} AS VARCHAR) || '-' || CAST({lo} + {width} - 1 AS VARCHAR)"


def _date_label(fmt: str) -> Callable[[str, str], str]:
    return lambda col, _: f"strftime({col}, {literal(fmt)})"


def _quarter(col: str, _: str) -> str:
    return f"CAST(year({col}) AS VARCHAR) || '-Q' || CAST(quarter({col}) AS VARCHAR)"


def _years(col: str, n: str) -> str:
    lo = f"(CAST(floor(year({col}) / {n}) AS INTEGER) * {n})"
    return f"CAST({lo} AS VARCHAR) || '-' || CAST({lo} + {n} - 1 AS VARCHAR)"


def _departement(col: str, _: str) -> str:
    pc = f"trim({col})"
    return (
        f"CASE WHEN NOT regexp_full_match({pc}, '[0-9]{{5}}') THEN NULL "
        f"WHEN {pc} LIKE '20%' THEN CASE WHEN {pc} < '20200' THEN '2A' ELSE '2B' END "
        f"WHEN {pc} LIKE '97%' OR {pc} LIKE '98%' THEN substr({pc}, 1, 3) "
        f"ELSE substr({pc}, 1, 2) END"
    )


def _postal_zone(col: str, _: str) -> str:
    pc = f"trim({col})"
    return f"CASE WHEN regexp_full_match({pc}, '[0-9]{{5}}') THEN substr({pc}, 1, 1) || 'xxxx' END"


def _url_path(col: str, _: str) -> str:
    path = f"regexp_replace(regexp_replace({col}, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*', ''), '[?#].*$', '')"
    return f"CASE WHEN {col} IS NOT NULL THEN coalesce(nullif({path}, ''), '/') END"


def _url_section(col: str, _: str) -> str:
    return f"regexp_extract({_url_path(col, '')}, '^/[^/]*')"


def _grid(col: str, degrees: str) -> str:
    def snap(i: int) -> str:
        # floor, not round, so that cells nest; "+ 0.0" turns IEEE -0.0 into 0.0 (one label per area).
        return f"printf('%.2f', floor({col}[{i}] / {degrees}) * {degrees} + 0.0)"

    return f"CASE WHEN {col}[1] IS NOT NULL AND {col}[2] IS NOT NULL THEN {snap(1)} || ',' || {snap(2)} END"


# name -> (expression builder, whether the level takes a parameter, parameter type)
_LEVELS: dict[str, tuple[Callable[[str, str], str], type | None]] = {
    "keep": (lambda col, _: f"CAST({col} AS VARCHAR)", None),
    "suppress": (lambda col, _: literal(SUPPRESSED), None),
    "column": (lambda _, other: f"CAST({other} AS VARCHAR)", str),
    "age_band": (_age_band, int),
    "day": (_date_label("%Y-%m-%d"), None),
    "week": (_date_label("%G-W%V"), None),
    "month": (_date_label("%Y-%m"), None),
    "quarter": (_quarter, None),
    "year": (_date_label("%Y"), None),
    "years": (_years, int),
    "departement": (_departement, None),
    "postal_zone": (_postal_zone, None),
    "url_path": (_url_path, None),
    "url_section": (_url_section, None),
    "grid": (_grid, float),
}


def parse_level(level: str) -> tuple[str, str]:
    """Split and validate ``name[:parameter]``; raise ValueError with what is wrong."""
    name, _, param = level.partition(":")
    if name not in _LEVELS:
        raise ValueError(f"unknown generalisation level {name!r} (known: {', '.join(sorted(_LEVELS))})")
    kind = _LEVELS[name][1]
    if kind is None:
        if param:
            raise ValueError(f"level {name!r} takes no parameter")
        return name, ""
    if kind is str:
        if not param.isidentifier():
            raise ValueError(f"level {name!r} needs a column name, e.g. {name}:establishment_kind")
        return name, param
    try:
        value = kind(param)
    except ValueError:
        raise ValueError(f"level {name!r} needs a {kind.__name__} parameter, e.g. {name}:5") from None
    if value <= 0:
        raise ValueError(f"level {name!r} needs a positive parameter")
    return name, str(value)


def level_sql(level: str, column: str) -> str:
    """DuckDB expression generalising `column` at `level` (VARCHAR; NULL stays NULL except for suppress)."""
    name, param = parse_level(level)
    return _LEVELS[name][0](column, param)


def bound(sql: str, params: dict[str, object]) -> dict[str, object]:
    """The subset of `params` that `sql` references (DuckDB refuses unused named parameters)."""
    return {name: value for name, value in params.items() if re.search(rf"\${name}\b", sql)}
