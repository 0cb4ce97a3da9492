"""Every retention rule at its boundaries, from the sources to the warehouse, on SQLite and on PostgreSQL.

For each purpose whose clock is carried by the dataset itself (policies/), two records are planted: one whose
active period ends on DAY and one whose archive period ends on DAY. Three nights run in a row, as of DAY - 1,
DAY and DAY + 1, and after each one the record is looked for in its source, in the active base (raw) and in
the restricted archive. A record whose other purposes would keep it longer belongs to a member whose
membership ended long ago, so the planted rule alone decides.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from pipelines.identity import resolve_identities
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.policy.models import Policy, duration_parts
from pipelines.refresh import ingest_all
from pipelines.retention.apply import apply_retention
from pipelines.retention.ledger import build_ledger
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, NAVIGATION_EVENT_SCHEMA, SQL_SYSTEMS
from tests.conftest import core_context, identity_rules

POLICY = load_policy(PROJECT_ROOT / "policies")
DAY = dt.date(2026, 12, 31)  # a year end, so the accounting clock (31 December) can end on it too
GONE_LONG_AGO = "2010-01-31"  # membership end of the members the planted records belong to


def _span(duration: str) -> relativedelta:
    years, months, days = duration_parts(duration)
    return relativedelta(years=years, months=months, days=days)


def _back(day: dt.date, *durations: str) -> dt.date:
    for d in durations:
        years, months, days = duration_parts(d)
        day = day - relativedelta(years=years, months=months) - dt.timedelta(days=days)
    return day


@dataclass(frozen=True)
class Planted:
    purpose: str
    dataset: str
    period: str  # "active" | "archive": whose last day is DAY
    key: int

    @property
    def rule(self):
        return POLICY.rule_for(self.purpose, self.dataset)

    @property
    def event(self) -> dt.date:
        rule = self.rule
        durations = (rule.active,) if self.period == "active" else (rule.active, rule.archive)
        return _back(DAY, *durations)

    @property
    def same_clock(self) -> list[str]:
        """The dataset's purposes timed by the same event (navigation: audience 25 months, risk control 12)."""
        return [p for p in POLICY.dataset(self.dataset).purposes
                if POLICY.rule_for(p, self.dataset).clock == self.rule.clock]

    def expected(self, night: dt.date) -> str:
        """Where the record must be after the night: source + raw, archive only, or nowhere. The longest of the
        purposes sharing its clock decides (the planted rule's own columns are checked by `own_columns`)."""
        stages = []
        for purpose in self.same_clock:
            rule = POLICY.rule_for(purpose, self.dataset)
            start = self.event.replace(month=12, day=31) if POLICY.clocks[rule.clock].transform else self.event
            active_end = start + _span(rule.active)
            archive_end = start + _span(rule.active) + _span(rule.archive)
            stages.append(2 if night <= active_end else 1 if night <= archive_end else 0)
        return ("gone", "archive", "active")[max(stages)]

    @property
    def own_columns(self) -> list[str]:
        """Columns only this purpose uses, when other purposes keep the record longer (the IP of a page view)."""
        def end(purpose: str) -> dt.date:
            rule = POLICY.rule_for(purpose, self.dataset)
            return self.event + _span(rule.active) + _span(rule.archive)

        if end(self.purpose) >= max(end(p) for p in self.same_clock):
            return []
        return [c.name for c in POLICY.dataset(self.dataset).columns if c.purposes == [self.purpose]]


def _own_clock_rules(policy: Policy) -> list[tuple[str, str]]:
    return [(p.key, ds.name) for p in policy.purposes for ds in policy.datasets
            if p.key in ds.purposes and ds.subjects
            and policy.clocks[policy.rule_for(p.key, ds.name).clock].table == ds.name]


PLANTED = [Planted(purpose, dataset, period, 100 + 2 * i + (period == "archive"))
           for i, (purpose, dataset) in enumerate(_own_clock_rules(POLICY))
           for period in ("active", "archive")
           if period == "active" or any(duration_parts(POLICY.rule_for(purpose, dataset).archive))]


def _ts(day: dt.date) -> str:
    return f"{day.isoformat()} 15:30:00"


class World:
    def __init__(self, root: Path, urls: dict[str, str]) -> None:
        self.root, self.navigation, self.warehouse = root, root / "navigation", root / "warehouse.duckdb"
        self.engines = {s: sa.create_engine(urls[s]) for s in SQL_SYSTEMS}
        for system, metadata in SQL_SYSTEMS.items():
            metadata.create_all(self.engines[system])
        self.events: list[dict] = []
        self.consents: list[dict] = []

    def insert(self, system: str, table: str, row: dict[str, object]) -> None:
        with self.engines[system].begin() as con:
            con.execute(SQL_SYSTEMS[system].tables[table].insert(), [row])

    def plant(self, p: Planted) -> None:
        k, e = p.key, p.event
        member = {"member_id": k}
        if p.dataset != "contracts":  # the member's other purposes ended long ago
            self.insert("members", "contracts", {"contract_id": k, "member_id": k, "end_date": GONE_LONG_AGO})
        rows = {
            "contracts": lambda: {"contract_id": k, **member, "end_date": e.isoformat(), "status": "terminated"},
            "interactions": lambda: {"interaction_id": k, **member, "kind": "complaint", "body": "texte",
                                     "created_at": _ts(e - dt.timedelta(days=30)), "closed_at": _ts(e)},
            "reimbursements": lambda: {"reimbursement_id": k, **member, "act_code": "C", "amount_eur": 25.0,
                                       "care_date": (e - dt.timedelta(days=9)).isoformat(), "paid_at": _ts(e)},
            "contributions": lambda: {"contribution_id": k, **member, "due_date": e.isoformat(), "amount_eur": 20.0},
            "accounting_entries": lambda: {"entry_id": k, **member, "fiscal_year": e.year, "account": "706",
                                           "entry_date": e.isoformat(), "amount_eur": 20.0},
            "litigation_cases": lambda: {"case_id": k, **member, "status": "closed", "final_decision_at": _ts(e),
                                         "opened_at": _ts(e - dt.timedelta(days=300))},
            "prospects": lambda: {"prospect_id": k, "email": f"p{k}@example.org", "collected_at": _ts(e)},
            "suppression_list": lambda: {"suppression_id": k, "contact_hash": f"h{k}", "channel": "email",
                                         "objected_at": _ts(e)},
        }
        if p.dataset == "navigation_events":
            self.events.append({"event_id": str(k), "visitor_id": f"v{k}", "url": "/", "ip_address": "10.1.1.1",
                                "ts": dt.datetime.combine(e, dt.time(15, 30))})
        elif p.dataset == "cookie_consents":
            self.consents.append({"consent_id": str(k), "visitor_id": f"v{k}", "analytics": True,
                                  "consented_at": dt.datetime.combine(e, dt.time(15, 30))})
        else:
            system = POLICY.dataset(p.dataset).system
            self.insert(system, p.dataset, rows[p.dataset]())

    def write_logs(self) -> None:
        for row in self.events:
            folder = self.navigation / "events" / f"day={row['ts']:%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([row], schema=NAVIGATION_EVENT_SCHEMA),
                           folder / f"{row['event_id']}.parquet")
        (self.navigation / "consents").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.consents, schema=COOKIE_CONSENT_SCHEMA),
                       self.navigation / "consents" / "part-0.parquet")

    def nightly(self, as_of: dt.date) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            ingest_all(con, self.engines, self.navigation, POLICY)
            resolve_identities(con, identity_rules())
            build_ledger(con, POLICY, as_of)
            outcome = apply_retention(con, core_context(self.root, POLICY, self.navigation), as_of,
                                      members=self.engines["members"], prospects=self.engines["prospects"])
        assert not outcome.decisions_failed

    def in_source(self, p: Planted) -> bool:
        ds = POLICY.dataset(p.dataset)
        if ds.system == "navigation":
            folder = "events" if p.dataset == "navigation_events" else "consents"
            found = duckdb.sql(f"SELECT count(*) FROM read_parquet('{self.navigation}/{folder}/**/*.parquet') "
                               f"WHERE {ds.primary_key} = '{p.key}'").fetchall()
        else:
            with self.engines[ds.system].connect() as con:
                found = con.execute(sa.text(f"SELECT count(*) FROM {p.dataset} WHERE {ds.primary_key} = {p.key}"
                                            )).fetchall()
        return found[0][0] > 0

    def in_warehouse(self, schema: str, p: Planted) -> bool:
        ds = POLICY.dataset(p.dataset)
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
                                 "AND table_name = ?", [schema, p.dataset]).fetchall()[0][0]
            return bool(exists) and con.execute(
                f"SELECT count(*) FROM {schema}.{p.dataset} WHERE CAST({ds.primary_key} AS VARCHAR) = ?",
                [str(p.key)]).fetchall()[0][0] > 0

    def value(self, p: Planted, column: str) -> object:
        """The column in the source and in raw, which must agree."""
        ds = POLICY.dataset(p.dataset)
        assert ds.system == "navigation"  # the only dataset where a rule covers part of a record's columns
        source = duckdb.sql(f"SELECT {column} FROM read_parquet('{self.navigation}/events/**/*.parquet') "
                            f"WHERE {ds.primary_key} = '{p.key}'").fetchall()
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            raw = con.execute(f"SELECT {column} FROM raw.{p.dataset} WHERE {ds.primary_key} = ?",
                              [str(p.key)]).fetchall()
        assert source == raw
        return source[0][0]

    def where(self, p: Planted) -> str:
        found = (self.in_source(p), self.in_warehouse("raw", p), self.in_warehouse("archive", p))
        return {(True, True, False): "active", (False, False, True): "archive",
                (False, False, False): "gone"}.get(found, f"inconsistent {found}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", "5e" * 32)  # keyed tokens of the art. 19 notices
    if request.param == "postgres":
        make_pg_url = request.getfixturevalue("make_pg_url")
        urls = {s: make_pg_url() for s in SQL_SYSTEMS}
    else:
        urls = {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in SQL_SYSTEMS}
    w = World(tmp_path, urls)
    for p in PLANTED:
        w.plant(p)
    w.write_logs()
    return w


def test_every_rule_keeps_its_last_day_and_lets_go_the_next(world: World):
    for night in (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1)):
        world.nightly(night)
        found = {f"{p.purpose}/{p.dataset}/{p.period}": world.where(p) for p in PLANTED}
        expected = {f"{p.purpose}/{p.dataset}/{p.period}": p.expected(night) for p in PLANTED}
        assert found == expected, night
        for p in PLANTED:
            for column in p.own_columns:  # still there through DAY, cleared from source and raw the day after
                assert world.value(p, column) == (None if night > DAY else "10.1.1.1"), (night, p, column)
