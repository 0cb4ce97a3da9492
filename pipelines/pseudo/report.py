"""Utility and risk of one release of the analysts' file, per table, as numbers only (no value, no key).

Computed while the candidate file is built, from the published table and the table's prepared base (the
warehouse rows allowed into the table, before generalisation and suppression):
- loss: the chosen node's information loss, rows (and cells) suppressed, distinct values kept per column
  (published / finest level);
- risk: prosecutor risk of a record = 1 / people in its class (the attacker knows the target is in the
  file); journalist risk = 1 / people of the same generalised class among the table's records before anyone
  was excluded (the attacker does not know whether the target is in the file);
  max, average over published rows, and the share of rows in classes of fewer than `small_class` people;
- error of a standard set of analyst queries (ANALYST_QUERIES) answered from the published table against
  the same query on the base: the share of the true answer's keys that the file answers, and the mean
  relative error over all of them (an unanswered key counts as 100 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import duckdb

from pipelines.pseudo.generalise import SUPPRESSED, bound, level_sql
from pipelines.pseudo.kanon import KAnonymityReport, class_columns, column_sql
from pipelines.pseudo.policy import ReportPolicy, TablePolicy
from pipelines.sqltext import ident, literal


@dataclass(frozen=True)
class AnalystQuery:
    table: str
    name: str
    published: str  # SQL over {t} (the published table) returning (key, value)
    truth: str  # SQL over {b} (the table's prepared base) returning (key, value)


LAST_90_DAYS = "ts >= CAST($as_of AS DATE) - INTERVAL 90 DAY"
ANALYST_QUERIES = (
    AnalystQuery("members_pseudo", "members per departement",
                 "SELECT departement, count(*) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('departement', 'postal_code')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("members_pseudo", "members per 5-year age band",
                 "SELECT age_band, count(*) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('age_band:5', 'birth_date')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("members_pseudo", "members per cohort month",
                 "SELECT cohort, count(*) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('month', 'membership_start')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("navigation_pseudo", "page views per day",
                 "SELECT day, count(*) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('day', 'ts')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("audience_daily", "visitors per day, last 90 days",
                 f"SELECT day, max(visitors) FROM {{t}} WHERE page = {literal(SUPPRESSED)} GROUP BY 1",
                 f"SELECT {level_sql('day', 'ts')}, count(DISTINCT visitor_id) FROM {{b}} WHERE {LAST_90_DAYS} "
                 "GROUP BY 1"),
    AnalystQuery("audience_daily", "page views per page",
                 f"SELECT page, sum(page_views) FROM {{t}} WHERE page <> {literal(SUPPRESSED)} GROUP BY 1",
                 f"SELECT {level_sql('url_path', 'url')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("audience_weekly_area", "page views per week",
                 f"SELECT week, sum(page_views) FROM {{t}} WHERE area = {literal(SUPPRESSED)} GROUP BY 1",
                 f"SELECT {level_sql('week', 'ts')}, count(*) FROM {{b}} GROUP BY 1"),
    AnalystQuery("reimbursement_stats", "reimbursed euros per month",
                 "SELECT care_month, sum(reimbursed_eur) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('month', 'care_date')}, sum(reimbursed_eur) FROM {{b}} GROUP BY 1"),
    AnalystQuery("survey_stats", "survey answers per month",
                 "SELECT answer_month, sum(answers) FROM {t} GROUP BY 1",
                 f"SELECT {level_sql('month', 'answered_at')}, count(*) FROM {{b}} GROUP BY 1"),
)


@dataclass(frozen=True)
class QueryError:
    answered_share: float
    mean_relative_error: float


@dataclass(frozen=True)
class ReleaseQuality:
    information_loss: float
    rows_in: int
    rows_suppressed: int
    suppression_ratio: float
    cells_suppressed: int
    quasi_identifiers_fully_suppressed: int
    distinct_kept: dict[str, list[int]]  # column -> [published, finest]
    prosecutor_max: float
    prosecutor_avg: float
    journalist_max: float
    journalist_avg: float
    small_class_share: float
    queries: dict[str, QueryError]

    def as_dict(self) -> dict:
        return asdict(self)



def _one(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> tuple:
    return con.execute(sql, bound(sql, params or {})).fetchall()[0]


def _risks(
    con: duckdb.DuckDBPyConnection, table: TablePolicy, published: str, population: str | None,
    levels: dict[str, int],
    small_class: int, params: dict,
) -> tuple[float, float, float, float, float]:
    """(prosecutor max, avg, journalist max, avg, share of rows in classes under `small_class` people)."""
    if population is None:
        # An aggregate: a cell counts people, its risk is 1 / people, averaged over the people it counts.
        row = _one(con, f"""
            SELECT max(1.0 / p), count(*) / nullif(sum(p), 0),
                   coalesce(sum(p) FILTER (WHERE p < {small_class}), 0) / nullif(sum(p), 0)
            FROM (SELECT {ident(table.subject)} AS p FROM {published})""")
        risk = (float(row[0] or 0.0), float(row[1] or 0.0))
        return (*risk, *risk, float(row[2] or 0.0))
    dims = class_columns(table)
    keys = ", ".join(ident(c.name) for c in dims)
    generalised = ", ".join(f"{column_sql(c, levels[c.name])} AS {ident(c.name)}" for c in dims)
    person = ident(table.column(table.subject).source)
    on = " AND ".join(f"p.{ident(c.name)} IS NOT DISTINCT FROM w.{ident(c.name)}" for c in dims)
    class_on = " AND ".join(f"r.{ident(c.name)} IS NOT DISTINCT FROM c.{ident(c.name)}" for c in dims)
    row = _one(con, f"""
        WITH classes AS (  -- people per class, grouped twice (hash aggregates, no windowed count(DISTINCT))
            SELECT {keys}, count({ident(table.subject)}) AS people
            FROM (SELECT DISTINCT {keys}, {ident(table.subject)} FROM {published}) GROUP BY ALL
        ),
        published AS (
            SELECT {', '.join(f"r.{ident(c.name)}" for c in dims)}, c.people
            FROM {published} r JOIN classes c ON {class_on}
        ),
        population AS (
            SELECT {keys}, count(DISTINCT _person) AS people
            FROM (SELECT {generalised}, {person} AS _person FROM {population}) GROUP BY ALL
        )
        SELECT max(1.0 / p.people), avg(1.0 / p.people), max(1.0 / w.people), avg(1.0 / w.people),
               avg(CASE WHEN p.people < {small_class} THEN 1.0 ELSE 0.0 END)
        FROM published p JOIN population w ON {on}""", params)
    return tuple(float(v or 0.0) for v in row)  # type: ignore[return-value]


def _query_errors(
    con: duckdb.DuckDBPyConnection, name: str, published: str, base: str, params: dict
) -> dict[str, QueryError]:
    errors = {}
    for query in (q for q in ANALYST_QUERIES if q.table == name):
        sql = f"""
            WITH truth AS (SELECT CAST(k AS VARCHAR) AS k, CAST(v AS DOUBLE) AS v
                           FROM ({query.truth.replace("{b}", base)}) AS t(k, v) WHERE v <> 0),
                 file AS (SELECT CAST(k AS VARCHAR) AS k, CAST(v AS DOUBLE) AS v
                          FROM ({query.published.replace("{t}", published)}) AS f(k, v))
            SELECT count(f.k) / nullif(count(*), 0),
                   avg(abs(coalesce(f.v, 0) - t.v) / abs(t.v))
            FROM truth t LEFT JOIN file f ON f.k IS NOT DISTINCT FROM t.k
        """
        answered, error = _one(con, sql, params)
        errors[query.name] = QueryError(round(float(answered or 0.0), 4), round(float(error or 0.0), 4))
    return errors


def measure_release(
    con: duckdb.DuckDBPyConnection, name: str, table: TablePolicy, kanon: KAnonymityReport, published: str,
    base: str, population: str | None, rules: ReportPolicy, params: dict,
) -> ReleaseQuality:
    """Loss, risk and query error of the table `published`, built from `base` with the levels of `kanon`.

    `population` (row tables) holds the same records as `base` before the rights exclusions (objection,
    erasure): the people a journalist's target may be among without being in the file.
    """
    levels = {c.name: c.levels.index(kanon.levels[c.name]) for c in class_columns(table)}
    dims = class_columns(table)
    kept = "(SELECT count(DISTINCT {c}) FILTER (WHERE {c} <> " + literal(SUPPRESSED) + ") FROM " + published + ")"
    distinct = _one(con, "SELECT " + ", ".join(
        f"{kept.format(c=ident(c.name))}, (SELECT count(DISTINCT {column_sql(c, 0)}) FROM {base})" for c in dims
    ), params)
    risks = _risks(con, table, published, population, levels, rules.small_class, params)
    cells = kanon.cells
    return ReleaseQuality(
        information_loss=kanon.generalisation_loss,
        rows_in=kanon.rows_in,
        rows_suppressed=kanon.rows_suppressed,
        suppression_ratio=round(kanon.suppression_ratio, 4),
        cells_suppressed=cells.primary + cells.complementary if cells else 0,
        quasi_identifiers_fully_suppressed=sum(kanon.levels[c.name] == "suppress"
                                               for c in table.by_role("quasi_identifier")),
        distinct_kept={c.name: [int(distinct[2 * i]), int(distinct[2 * i + 1])] for i, c in enumerate(dims)},
        prosecutor_max=round(risks[0], 4),
        prosecutor_avg=round(risks[1], 4),
        journalist_max=round(risks[2], 4),
        journalist_avg=round(risks[3], 4),
        small_class_share=round(risks[4], 4),
        queries=_query_errors(con, name, published, base, params),
    )
