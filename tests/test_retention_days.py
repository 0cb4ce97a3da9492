"""Whole days, for every purpose and dataset rule of policies/: a period ending on day D keeps the record on D - 1
and D and lets it go on D + 1, for the active period and for the archive period.

Ledger level on a tiny in-memory warehouse (one planted record per rule); the sources-to-warehouse scenarios are
in test_retention_boundaries.py.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from dateutil.relativedelta import relativedelta

from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy, source_columns
from pipelines.policy.models import Policy, duration_parts
from pipelines.retention.ledger import compute

POLICY = load_policy(PROJECT_ROOT / "policies")
EVENT = dt.datetime(2023, 3, 15, 10, 30)  # mid-day: the time of the event must not move the boundary


def _rules(policy: Policy) -> list[tuple[str, str]]:
    """(purpose, dataset) pairs whose record carries its own clock, one per distinct rule."""
    pairs = []
    for purpose in policy.purposes:
        for ds in policy.datasets:
            if purpose.key in ds.purposes and ds.subjects:
                rule = policy.rule_for(purpose.key, ds.name)
                if policy.clocks[rule.clock].table == ds.name:
                    pairs.append((purpose.key, ds.name))
    return pairs


def _shift(day: dt.date, *durations: str) -> dt.date:
    for d in durations:
        years, months, days = duration_parts(d)
        day = day + relativedelta(years=years, months=months) + dt.timedelta(days=days)
    return day


def _plant(con: duckdb.DuckDBPyConnection, policy: Policy, dataset: str) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for (_, table), columns in source_columns().items():
        con.execute(f"CREATE OR REPLACE TABLE raw.{table} ({', '.join(f'{c} VARCHAR' for c in columns)})")
    ds = policy.dataset(dataset)
    values = {ds.primary_key: "1", ds.subjects[0].column: "42"}
    for clock in policy.clocks.values():
        if clock.table == dataset:
            for column in clock.columns:
                values[column] = str(EVENT.year) if clock.transform == "year_end" else EVENT.isoformat(" ")
    con.execute(f"INSERT INTO raw.{dataset} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                list(values.values()))


@pytest.mark.parametrize(("purpose", "dataset"), _rules(POLICY))
def test_each_period_keeps_its_last_day_and_ends_the_next(purpose: str, dataset: str):
    rule = POLICY.rule_for(purpose, dataset)
    clock = POLICY.clocks[rule.clock]
    start = dt.date(EVENT.year, 12, 31) if clock.transform == "year_end" else EVENT.date()
    active_end, archive_end = _shift(start, rule.active), _shift(start, rule.active, rule.archive)
    ended = "to_anonymise" if rule.end_action == "anonymise" else "to_erase"
    expected = {active_end - dt.timedelta(days=1): "active", active_end: "active",
                archive_end + dt.timedelta(days=1): ended}
    if archive_end > active_end:
        expected |= {active_end + dt.timedelta(days=1): "archived", archive_end - dt.timedelta(days=1): "archived",
                     archive_end: "archived"}
    con = duckdb.connect()
    _plant(con, POLICY, dataset)
    for day, status in sorted(expected.items()):
        compute(con, POLICY, day)
        found = con.execute("SELECT purpose_status, active_until, archive_until FROM _ret_purposes "
                            "WHERE purpose = ? AND dataset = ?", [purpose, dataset]).fetchall()
        assert found == [(status, active_end, archive_end)], (day, found)
