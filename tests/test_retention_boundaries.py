"""Every purpose of policies/purposes.yaml at the boundaries of its periods, from the sources to the analysts' file
and the transfers outside the EU, on SQLite and on PostgreSQL.

The cases are generated from the policy: for each purpose and each dataset it serves, a record whose active
period, and one whose archive period (when it has one), ends on DAY. Its other purposes ended long ago, so the
planted rule decides; the member, contract, prospect, contribution or cookie choice the record needs is planted
with it and checked too. Where calendar arithmetic cannot end a period on DAY (25 months back from 31 December
is 30 November, and 30 November + 25 months is 30 December), two records end on DAY - 1 and DAY + 1 instead.

One tiny world per source flavour; three nights in a row, as of DAY - 1, DAY and DAY + 1, each the real
sequence (ingest, identity, ledger, retention with push-back, transfers, analytics). After each night, every
record is compared, column by column, with what the policy says (a reference model written here, independent of
the SQL): in its source, in the active base (`raw`), in the restricted archive; in the rows each analysts' table
is built from (and nothing else in the published file); held or not by each transfer recipient, and what that
night's delivery sent or told it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
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
from pipelines.policy.models import Dataset, duration_parts
from pipelines.pseudo.keys import KeyProvider
from pipelines.pseudo.policy import load_pseudonymisation_policy
from pipelines.pseudo.publish import prepare_builders, publish_analytics
from pipelines.pseudo.tables import BUILDERS
from pipelines.pseudo.tokens import normalise_sql, tokenise_table
from pipelines.refresh import ingest_all
from pipelines.retention.apply import apply_retention
from pipelines.retention.columns import column_groups, structural_columns
from pipelines.retention.ledger import build_ledger
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, NAVIGATION_EVENT_SCHEMA, SQL_SYSTEMS
from pipelines.transfers import (
    DELETION,
    DELETIONS,
    ERASURE_NOTICE,
    RELEASED,
    SENT,
    build_transfer,
    transfer_recipients,
)
from tests.conftest import TEST_KEY_HEX, core_context, identity_rules

POLICY = load_policy(PROJECT_ROOT / "policies")
PSEUDO = load_pseudonymisation_policy(PROJECT_ROOT / "policies" / "pseudonymisation.yaml")
DAY = dt.date(2026, 12, 31)  # a year end, so the accounting clock (31 December) can end on it too
NIGHTS = (DAY - dt.timedelta(days=1), DAY, DAY + dt.timedelta(days=1))
LONG_AGO = dt.date(2009, 12, 31)  # the clock of every purpose a record is not planted for
RECENT = DAY - dt.timedelta(days=40)  # cookie choice of a planted page view's visitor: still valid
ACTIVE, ARCHIVE, ENDED = 2, 1, 0


def _span(duration: str) -> relativedelta:
    years, months, days = duration_parts(duration)
    return relativedelta(years=years, months=months, days=days)


def _last_days(purpose: str, dataset: str, start: dt.date) -> tuple[dt.date, dt.date]:
    """(last day active, last day archived) of the purpose's rule from a clock event: whole days."""
    rule = POLICY.rule_for(purpose, dataset)
    active = start + _span(rule.active)
    return active, active + _span(rule.archive)


def _clock_day(clock: str, day: dt.date) -> dt.date:
    return day.replace(month=12, day=31) if POLICY.clocks[clock].transform == "year_end" else day


# ------------------------------------------------------------------ the cases, generated from the policy


@dataclass(frozen=True)
class Case:
    purpose: str
    dataset: str
    period: str  # "active" | "archive": the period that ends on `last_day`
    last_day: dt.date

    @property
    def rule(self):
        return POLICY.rule_for(self.purpose, self.dataset)

    @property
    def event(self) -> dt.date:
        rule = self.rule
        back = _span(rule.active) + (_span(rule.archive) if self.period == "archive" else relativedelta())
        return self.last_day - back

    def reaches(self) -> bool:
        """Whether the clock event found backwards gives `last_day` forwards (calendar months may not)."""
        event = self.event
        if _clock_day(self.rule.clock, event) != event:
            return False
        active, archive = _last_days(self.purpose, self.dataset, event)
        return (active if self.period == "active" else archive) == self.last_day

    @property
    def name(self) -> str:
        return f"{self.purpose}/{self.dataset}/{self.period}@{self.last_day}"


def _clock_reaches(policy_clock: str, dataset: Dataset) -> bool:
    clock = POLICY.clocks[policy_clock]
    if clock.per == "subject":
        return bool({s.type for s in POLICY.dataset(clock.table).subjects} & {s.type for s in dataset.subjects})
    target = f"{clock.table}.{POLICY.dataset(clock.table).primary_key}"
    return clock.table == dataset.name or target in dataset.references.values()


def generate_cases() -> list[Case]:
    cases = []
    for purpose in POLICY.purposes:
        for ds in POLICY.datasets:
            if purpose.key not in ds.purposes or not ds.subjects:
                continue
            rule = POLICY.rule_for(purpose.key, ds.name)
            for period in ("active", "archive"):
                if period == "archive" and not any(duration_parts(rule.archive)):
                    continue
                exact = Case(purpose.key, ds.name, period, DAY)
                around = [Case(purpose.key, ds.name, period, DAY + dt.timedelta(days=d)) for d in (-1, 1)]
                chosen = [exact] if exact.reaches() else around
                assert all(c.reaches() for c in chosen), f"no clock event ends {chosen[0].name} near {DAY}"
                cases.append(chosen)
    return [c for group in cases for c in group]


CASES = generate_cases()


# ------------------------------------------------------------------ rows of the tiny world


def _value(column: str, day: dt.date, parquet: bool) -> object:
    """A clock column's value for an event on `day`, in the column's source type."""
    if column == "fiscal_year":
        return day.year
    moment = dt.datetime.combine(day, dt.time(15, 30))
    if parquet:
        return moment
    return day.isoformat() if column.endswith("_date") else moment.isoformat(sep=" ")


def _template(dataset: str, k: int) -> dict[str, object]:
    """Every column filled (so a cleared one shows); clocks are set by the planting."""
    stamp = "2009-06-01 10:00:00"
    return {
        "members": {"civility": "Mme", "first_name": f"Prenom{k}", "last_name": f"Nom{k}",
                    "email": f"m{k}@example.org", "phone": f"06{k:08d}", "street": f"{k} rue des Lilas",
                    "postal_code": "75011", "city": "Paris", "birth_date": "2001-02-03", "establishment_id": 1,
                    "activity": "student", "iban": f"FR76{k:023d}", "marketing_consent": True,
                    "created_at": stamp, "updated_at": stamp},
        "contracts": {"member_id": k, "product": "essentiel", "start_date": "2008-09-01", "status": "terminated",
                      "termination_reason": "fin des études"},
        "id_documents": {"member_id": k, "doc_type": "cni", "doc_number": f"ID{k:07d}", "received_at": stamp,
                         "reason": "membership", "request_id": k},
        "rights_requests": {"member_id": k, "email": f"m{k}@example.org", "request_type": "access",
                            "received_at": stamp, "identity_verified_at": stamp, "details": "{}",
                            "status": "answered"},
        "reimbursements": {"member_id": k, "care_date": "2009-05-02", "act_code": "G", "act_label": "consultation",
                           "amount_eur": 25.0, "reimbursed_eur": 17.5, "professional_name": "Dr Martin",
                           "professional_country": "FR"},
        "contributions": {"member_id": k, "amount_eur": 20.0, "paid_at": stamp},
        "debt_recoveries": {"member_id": k, "contribution_id": k, "opened_at": stamp, "closed_at": stamp,
                            "sued": False},
        "accounting_entries": {"member_id": k, "entry_date": "2009-06-01", "account": "706", "label": "cotisation",
                               "amount_eur": 20.0},
        "interactions": {"member_id": k, "kind": "complaint", "channel": "email", "handled_by": "sem",
                         "subject": "retard", "body": f"texte {k}", "created_at": stamp},
        "survey_answers": {"member_id": k, "survey": "satisfaction", "answered_at": stamp, "score": 8,
                           "comment": "merci"},
        "litigation_cases": {"member_id": k, "opened_at": stamp, "status": "closed", "subject": "impayés"},
        "prospects": {"first_name": f"Pp{k}", "last_name": f"Pn{k}", "email": f"p{k}@example.org",
                      "phone": f"07{k:08d}", "school": "Sorbonne", "lead_source": "salon", "marketing_consent": True},
        "campaign_selections": {"campaign_id": 1, "selected_at": stamp},
        "suppression_list": {"contact_hash": f"h{k}", "channel": "email"},
        "navigation_events": {"visitor_id": f"v{k}", "url": "/garanties", "referrer": "https://www.qwant.com/",
                              "ip_address": "10.1.1.1", "user_agent": "Mozilla/5.0", "city": "Paris",
                              "latitude": 48.85, "longitude": 2.35},
        "cookie_consents": {"visitor_id": f"v{k}", "analytics": True, "advertising": False},
    }[dataset]


def _transferred(dataset: str) -> dict[str, object]:
    """Column values that put a row in a transfer (recipients.yaml `where`, equals): each transferred dataset's
    rows are all candidates, the purposes then decide."""
    values = {}
    for recipient in transfer_recipients(POLICY):
        for disclosure in recipient.receives:
            if disclosure.dataset == dataset:
                values |= {c.column: c.value for c in disclosure.where if c.operator == "equals"}
    return values


@dataclass
class Row:
    dataset: str
    key: int
    values: dict[str, object]
    clocks: dict[str, dt.date]  # clock name -> event (every clock that times this record)
    case: Case

    @property
    def ds(self) -> Dataset:
        return POLICY.dataset(self.dataset)

    @property
    def label(self) -> str:
        return f"{self.dataset}:{self.key} ({self.case.name})"

    @property
    def purposes(self) -> list[str]:
        """The purposes the row serves: those of its columns, or of the first `row_purposes` entry it meets."""
        for entry in self.ds.row_purposes:
            assert all(c.operator == "equals" for c in entry.where), "the model reads equals conditions only"
            if all(str(self.values.get(c.column)) == str(c.value) for c in entry.where):
                return entry.purposes
        return self.ds.unconditional_purposes

    def stage(self, purpose: str, night: dt.date, main_rule: bool = False) -> int | None:
        """Where `purpose` stands for this record on `night`; None when its clock does not time the record."""
        rule = POLICY.purpose(purpose).retention if main_rule else POLICY.rule_for(purpose, self.dataset)
        start = self.clocks.get(rule.clock)
        if start is None:
            return None
        active = start + _span(rule.active)
        return ACTIVE if night <= active else ARCHIVE if night <= active + _span(rule.archive) else ENDED

    def stages(self, night: dt.date) -> dict[str, int]:
        return {p: s for p in self.purposes if (s := self.stage(p, night)) is not None}


def plant_case(case: Case, k: int) -> list[Row]:
    """The planted record and the records it needs, all keyed `k` (member k, contract k, visitor vk...): the
    person's own row, the rows their clock is read from, a referenced record about them (a recovery's
    contribution), a page view's cookie choice."""
    ds = POLICY.dataset(case.dataset)
    clock = POLICY.clocks[case.rule.clock]
    # the subject the planted clock speaks for (a campaign selection: member or prospect)
    types = {s.type for s in POLICY.dataset(clock.table).subjects} if clock.per == "subject" else None
    subject = next(s for s in ds.subjects if types is None or s.type in types)

    def at(name: str) -> dt.date:
        return _clock_day(name, case.event if name == case.rule.clock else LONG_AGO)

    def speaks_for(target: Dataset) -> bool:
        return (subject.column, subject.type) in {(s.column, s.type) for s in target.subjects}

    subject_clocks = {name: at(name) for name, c in POLICY.clocks.items()
                      if c.per == "subject" and speaks_for(POLICY.dataset(c.table))}

    def row(dataset: str, overrides: dict[str, dt.date] | None = None) -> Row:
        target = POLICY.dataset(dataset)
        clocks = {}
        for purpose in target.purposes:
            name = POLICY.rule_for(purpose, dataset).clock
            if name in subject_clocks:
                clocks[name] = subject_clocks[name]
            elif POLICY.clocks[name].per == "record" and _clock_reaches(name, target):
                clocks[name] = (overrides or {}).get(name, at(name))
        # the clock columns the row carries, for itself or for the rows pointing at it (a request's handling)
        carried = {name: subject_clocks.get(name, (overrides or {}).get(name, at(name)))
                   for name, c in POLICY.clocks.items() if c.table == dataset}
        values = {target.primary_key: str(k) if target.system == "navigation" else k,
                  **_template(dataset, k), **_transferred(dataset),
                  **{c: _value(c, day, target.system == "navigation")
                     for name, day in carried.items() for c in POLICY.clocks[name].columns}}
        if target.column(subject.column) is not None:
            values[subject.column] = f"v{k}" if subject.type == "visitor" else values.get(subject.column, k)
        if dataset == case.dataset:  # the row serves the planted purpose (datasets.yaml row_purposes)
            values |= {c.column: c.value for entry in target.row_purposes if case.purpose in entry.purposes
                       for c in entry.where}
        return Row(dataset, k, values, clocks, case)

    subject_columns = {s.column for s in ds.subjects}
    clock_tables = {c.table for c in POLICY.clocks.values()}
    needed = [d.name for d in POLICY.datasets if d.name != case.dataset and (
        (d.primary_key == subject.column and speaks_for(d))  # the person's own row
        or any(c.table == d.name for n, c in POLICY.clocks.items() if n in subject_clocks)  # their clock
        or any(target == f"{d.name}.{d.primary_key}" and column not in subject_columns
               and (d.subjects or d.name in clock_tables)
               for column, target in ds.references.items()))]  # a record about them or a clock it points at
    rows = [row(d) for d in needed] + [row(case.dataset)]
    if case.dataset == "navigation_events":  # the visitor's choice lets the page view reach the statistics
        rows.append(row("cookie_consents", {"consent_given": RECENT}))
    return rows


# ------------------------------------------------------------------ the reference model


@dataclass
class Expected:
    source: frozenset[str] | None  # the columns holding a value, or None: no row
    raw: frozenset[str] | None
    archive: frozenset[str] | None


def expected_place(row: Row, night: dt.date) -> Expected:
    filled = {c for c, v in row.values.items() if v is not None and c != row.ds.change_marker}  # see World._present
    if not row.ds.subjects:  # not about a person as such (a rights request): the rights pipeline runs it
        return Expected(frozenset(filled), frozenset(filled), None)
    stages = row.stages(night)
    record = max(stages.values())
    fixed = structural_columns(POLICY, row.ds)
    group_of = {c: g for g in column_groups(POLICY) if g.dataset == row.dataset for c in g.columns}

    def stage_of(column: str) -> int:
        if column in fixed or column not in group_of:
            return record
        evaluated = [stages[p] for p in group_of[column].purposes if p in stages]
        return max(evaluated) if evaluated else record

    if record == ACTIVE:
        here = frozenset(c for c in filled if stage_of(c) == ACTIVE or c in fixed)
        moved = frozenset(c for c in filled if c in fixed or stage_of(c) == ARCHIVE)
        return Expected(here, here, moved if moved - fixed else None)
    if record == ARCHIVE:
        return Expected(None, None, frozenset(c for c in filled if c in fixed or stage_of(c) >= ARCHIVE))
    anonymise = any(POLICY.rule_for(p, row.dataset).end_action == "anonymise" for p in stages)
    if anonymise:
        kept = frozenset(c for c in filled if row.ds.column(c).identifying == "none")
        return Expected(kept, kept, None)
    return Expected(None, None, None)


# analytics table -> how its base rows name a planted record ("dataset:key")
ANALYTICS_KEYS = {
    "members_pseudo": "'members:' || member_id",
    "reimbursement_stats": "'reimbursements:' || reimbursement_id",
    "survey_stats": "'survey_answers:' || answer_id",
    "navigation_pseudo": "'navigation_events:' || substr(visitor_id, 2)",
    "audience_daily": "'navigation_events:' || substr(visitor_id, 2)",
    "audience_weekly_area": "'navigation_events:' || substr(visitor_id, 2)",
    "marketing_audience": "CASE WHEN contact LIKE 'm%' THEN 'members:' ELSE 'prospects:' END "
                          "|| regexp_extract(contact, '[0-9]+') FROM (SELECT * FROM base WHERE channel = 'email')",
}
ANALYTICS_SOURCES = {"members_pseudo": {"members"}, "reimbursement_stats": {"reimbursements"},
                     "survey_stats": {"survey_answers"}, "navigation_pseudo": {"navigation_events"},
                     "audience_daily": {"navigation_events"}, "audience_weekly_area": {"navigation_events"},
                     "marketing_audience": {"members", "prospects"}}


def expected_analytics(row: Row, night: dt.date, place: Expected) -> set[str]:
    """The analysts' tables built from the record: it is in the active base and one purpose of the table that
    times it is active (statistics from the end of membership, audience from the page view...)."""
    tables = set()
    for name, table in PSEUDO.tables.items():
        if row.dataset not in ANALYTICS_SOURCES[name] or place.raw is None:
            continue
        stages = [s for p in table.purposes if (s := row.stage(p, night, main_rule=True)) is not None]
        if stages and max(stages) == ACTIVE:
            tables.add(name)
    return tables


def _delivery(recipient: str, was: bool, held: bool, place: Expected) -> str | None:
    """What the night's delivery does with the record: sends it when it becomes held, and when it leaves the
    purpose, a deletion instruction (or nothing more, per recipients.yaml), an art. 19 notice if erased."""
    if held and not was:
        return SENT
    if was and not held:
        transfer = next(r.transfer for r in transfer_recipients(POLICY) if r.key == recipient)
        if place == Expected(None, None, None):
            return ERASURE_NOTICE
        return DELETION if transfer.on_purpose_end == DELETION else RELEASED
    return None


def expected_held(row: Row, night: dt.date, place: Expected) -> dict[str, bool]:
    """Transfer recipient -> whether it holds the record after the night's delivery."""
    held = {}
    for recipient in transfer_recipients(POLICY):
        for d in recipient.receives:
            if d.dataset != row.dataset or not d.where:
                continue
            meets = place.raw is not None and {c.column for c in d.where} <= place.raw
            active = d.purpose not in row.ds.purposes or row.stage(d.purpose, night) == ACTIVE
            held[recipient.key] = meets and active
    return held


# ------------------------------------------------------------------ the world and its nights


@dataclass
class World:
    root: Path
    urls: dict[str, str]
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.navigation, self.warehouse = self.root / "navigation", self.root / "warehouse.duckdb"
        self.analytics, self.outbox = self.root / "analytics.duckdb", self.root / "outbox"
        self.engines = {s: sa.create_engine(self.urls[s]) for s in SQL_SYSTEMS}
        for system, metadata in SQL_SYSTEMS.items():
            metadata.create_all(self.engines[system])
        self.keys = KeyProvider(bytes.fromhex(TEST_KEY_HEX))

    def plant(self, rows: list[Row]) -> None:
        self.rows += rows
        for system, metadata in SQL_SYSTEMS.items():
            with self.engines[system].begin() as con:
                for table in metadata.sorted_tables:
                    batch = [r.values for r in rows if r.dataset == table.name]
                    if batch:
                        con.execute(table.insert(), [{c.name: v.get(c.name) for c in table.columns} for v in batch])
        for dataset, schema in (("navigation_events", NAVIGATION_EVENT_SCHEMA), ("cookie_consents",
                                                                                COOKIE_CONSENT_SCHEMA)):
            for r in (r for r in rows if r.dataset == dataset):
                if dataset == "navigation_events":
                    folder = self.navigation / "events" / f"day={r.values['ts']:%Y-%m-%d}"
                else:
                    folder = self.navigation / "consents"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pylist([{c: r.values.get(c) for c in schema.names}], schema=schema),
                               folder / f"{r.key}.parquet")

    def nightly(self, night: dt.date) -> None:
        ctx = core_context(self.root, POLICY, self.navigation)
        with duckdb.connect(str(self.warehouse)) as con:
            ingest_all(con, self.engines, self.navigation, POLICY)
            resolve_identities(con, identity_rules())
            build_ledger(con, POLICY, night)
            outcome = apply_retention(con, ctx, night, members=self.engines["members"],
                                      prospects=self.engines["prospects"])
            assert not outcome.decisions_failed
            for recipient in transfer_recipients(POLICY):
                build_transfer(con, ctx, recipient.key, night)
        domains = self.keys.domain_keys(sorted(PSEUDO.domains))
        publish_analytics(self.warehouse, self.analytics, PSEUDO, domains, self.keys.version, night, POLICY)

    # --- what is found

    @staticmethod
    def _present(row: Row, found: dict[str, object] | None) -> frozenset[str] | None:
        """The dataset's columns holding a value (not the partition or lineage columns around them, nor the change
        marker the source sets on every update)."""
        return None if found is None else frozenset(
            c for c, v in found.items() if v is not None and row.ds.column(c) is not None and c != row.ds.change_marker)

    def in_source(self, row: Row) -> dict[str, object] | None:
        ds = row.ds
        if ds.system == "navigation":
            folder = "events" if row.dataset == "navigation_events" else "consents"
            rel = duckdb.sql(f"SELECT * FROM read_parquet('{self.navigation}/{folder}/**/*.parquet', "
                             f"union_by_name = true) WHERE {ds.primary_key} = '{row.key}'")
            found = rel.fetchall()
            return dict(zip(rel.columns, found[0], strict=True)) if found else None
        with self.engines[ds.system].connect() as con:
            found = con.execute(sa.text(f"SELECT * FROM {row.dataset} WHERE {ds.primary_key} = :k"),
                                {"k": row.key}).mappings().fetchall()
        return dict(found[0]) if found else None

    def in_warehouse(self, con: duckdb.DuckDBPyConnection, schema: str, row: Row) -> dict[str, object] | None:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
                             "AND table_name = ?", [schema, row.dataset]).fetchall()[0][0]
        if not exists:
            return None
        rel = con.execute(f"SELECT * FROM {schema}.{row.dataset} WHERE CAST({row.ds.primary_key} AS VARCHAR) = ?",
                          [str(row.key)])
        found = rel.fetchall()
        return dict(zip([d[0] for d in rel.description], found[0], strict=True)) if found else None

    def places(self) -> dict[str, Expected]:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return {r.label: Expected(self._present(r, self.in_source(r)),
                                      self._present(r, self.in_warehouse(con, "raw", r)),
                                      self._present(r, self.in_warehouse(con, "archive", r))) for r in self.rows}

    def analytics_bases(self, night: dt.date) -> tuple[dict[str, set[str]], dict[str, bool]]:
        """Per analysts' table, the planted records its rows are built from; and per rows table, whether every
        token published is one of those rows' tokens."""
        con = duckdb.connect()
        con.execute(f"ATTACH '{self.warehouse}' AS wh (READ_ONLY)")
        con.execute(f"ATTACH '{self.analytics}' AS published (READ_ONLY)")
        con.execute("USE wh")
        prepare_builders(con, PSEUDO, night, POLICY)
        bases, within = {}, {}
        for name, table in PSEUDO.tables.items():
            con.execute(f"CREATE OR REPLACE TEMP TABLE base AS {BUILDERS[name](table.domain)}")
            query = ANALYTICS_KEYS[name]
            query = f"SELECT {query}" + ("" if " FROM " in query else " FROM base")
            bases[name] = {k for (k,) in con.execute(query).fetchall()}
            for i, column in enumerate(table.by_role("pseudonym")):
                key = self.keys.domain_key(table.domain)
                tokenise_table(con, f"_tok{i}", f"SELECT {normalise_sql(column.normalise, column.source)} AS value "
                                                f"FROM base", key)
                within[f"{name}.{column.name}"] = not con.execute(
                    f"SELECT count(*) FROM published.main.{name} WHERE {column.name} NOT IN "
                    f"(SELECT token FROM _tok{i})").fetchall()[0][0]
        con.close()
        return bases, within

    def deliveries(self, night: dt.date) -> tuple[dict[tuple[str, str, str], str], dict[tuple[str, str, str], str]]:
        """(recipient, part, key) -> last action up to the night, and -> the night's action with the file that
        carries it (the part's CSV for a row sent, deletions.csv for a deletion instruction)."""
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            last = {(r, p, k): a for r, p, k, a in con.execute(
                "SELECT recipient, part, record_key, arg_max(action, as_of) FROM transfers.delivered_rows "
                "WHERE as_of <= ? GROUP BY ALL", [night]).fetchall()}
            tonight = {(r, p, k): a for r, p, k, a in con.execute(
                "SELECT recipient, part, record_key, action FROM transfers.delivered_rows WHERE as_of = ?",
                [night]).fetchall()}
        for (recipient, part, key), action in tonight.items():
            folder = self.outbox / "transfers" / recipient / night.isoformat()
            file = folder / (f"{part}.csv" if action == SENT else DELETIONS)
            if action in (SENT, DELETION):
                column = "key_value" if action != SENT else POLICY.dataset(part.split("__")[1]).primary_key
                keys = {str(k) for (k,) in duckdb.sql(f"SELECT {column} FROM read_csv('{file}', all_varchar = true)"
                                                      ).fetchall()}
                assert key in keys, (recipient, part, key, action, file)
        return last, tonight


def _differences(found: dict, expected: dict) -> dict:
    return {k: {"found": found.get(k), "expected": expected.get(k)} for k in expected | found
            if found.get(k) != expected.get(k)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", TEST_KEY_HEX)
    if request.param == "postgres":
        make_pg_url = request.getfixturevalue("make_pg_url")
        urls = {s: make_pg_url() for s in SQL_SYSTEMS}
    else:
        urls = {s: f"sqlite:///{tmp_path / (s + '.db')}" for s in SQL_SYSTEMS}
    w = World(tmp_path, urls)
    w.plant([row for i, case in enumerate(CASES) for row in plant_case(case, 100 + i)])
    return w


def test_cases_cover_every_purpose_at_d_minus_1_d_and_d_plus_1_of_each_period():
    covered = {}
    for case in CASES:
        for night in NIGHTS:
            covered.setdefault((case.purpose, case.period), set()).add((night - case.last_day).days)
    for purpose in POLICY.purposes:
        assert covered[purpose.key, "active"] >= {-1, 0, 1}, purpose.key
        if any(any(duration_parts(POLICY.rule_for(purpose.key, d).archive)) for d in
               (ds.name for ds in POLICY.datasets if purpose.key in ds.purposes)):
            assert covered[purpose.key, "archive"] >= {-1, 0, 1}, purpose.key
    assert set(ANALYTICS_KEYS) == set(PSEUDO.tables) == set(ANALYTICS_SOURCES)


def test_every_purpose_keeps_its_last_day_and_lets_go_the_next(world: World):
    held_before: dict[tuple[str, str], bool] = {}
    analytics_seen: dict[str, set[bool]] = {}
    actions_seen: dict[str, set[str | None]] = {}
    parts = {(rec.key, d.dataset): f"{d.purpose}__{d.dataset}" for rec in transfer_recipients(POLICY)
             for d in rec.receives if d.where}
    for night in NIGHTS:
        world.nightly(night)
        expected = {r.label: expected_place(r, night) for r in world.rows}
        assert _differences(world.places(), expected) == {}, night

        bases, within = world.analytics_bases(night)
        found = {r.label: {t for t, keys in bases.items() if f"{r.dataset}:{r.key}" in keys} for r in world.rows}
        wanted = {r.label: expected_analytics(r, night, expected[r.label]) for r in world.rows}
        assert _differences(found, wanted) == {}, night
        assert all(within.values()), (night, within)  # the published file holds nothing else
        for r in world.rows:
            for name in PSEUDO.tables:
                if r.dataset in ANALYTICS_SOURCES[name]:
                    analytics_seen.setdefault(name, set()).add(name in wanted[r.label])

        last, tonight = world.deliveries(night)
        found, wanted = {}, {}
        for r in world.rows:
            for recipient, held in expected_held(r, night, expected[r.label]).items():
                key = (recipient, parts[recipient, r.dataset], str(r.key))
                was, held_before[recipient, r.label] = held_before.get((recipient, r.label), False), held
                found[f"{recipient} {r.label}"] = (last.get(key) == SENT, tonight.get(key))
                wanted[f"{recipient} {r.label}"] = (held, _delivery(recipient, was, held, expected[r.label]))
                actions_seen.setdefault(recipient, set()).add(wanted[f"{recipient} {r.label}"][1])
        assert _differences(found, wanted) == {}, night
    # not vacuous: every analysts' table had planted records in and out, every recipient was sent some and
    # saw some leave
    assert all(seen == {True, False} for seen in analytics_seen.values()), analytics_seen
    assert set(analytics_seen) == set(PSEUDO.tables)
    assert all(SENT in seen and len(seen - {SENT, None}) for seen in actions_seen.values()), actions_seen
    assert set(actions_seen) == {r.key for r in transfer_recipients(POLICY)}
