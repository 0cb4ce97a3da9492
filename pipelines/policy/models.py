"""Typed models of the policy files (purposes, datasets, recipients) and the cross-file `Policy`.

The models only describe and check shapes; cross-file rules (a purpose referenced but not defined, a column
that is not in the source schema, an unknown data category) are checked in `pipelines.policy.load`.
"""

from __future__ import annotations

import datetime as dt
import graphlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

import pydantic

from pipelines import sqltext

_DURATION = re.compile(r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?$")
SLUG = sqltext.NAME_PATTERN
# Every table, column, clock, purpose and recipient name of a policy file: it reaches SQL and file names.
Name = Annotated[str, pydantic.StringConstraints(pattern=SLUG)]
# A retention period longer than this is a typo (P99999Y), not a policy.
MAX_DURATION_YEARS = 100
SubjectType = Literal["member", "prospect", "visitor"]
System = Literal["members", "prospects", "navigation"]


def _check_duration(value: str) -> str:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f"{value!r} is not an ISO-8601 duration in years/months/days such as P3Y, P25M or P0D")
    years, months, days = duration_parts(value)
    # Measured from 1 January 2000 so P100Y, P1200M and P36525D all end exactly at the bound.
    year, month = divmod(years * 12 + months, 12)
    limit = dt.date(2000 + MAX_DURATION_YEARS, 1, 1)
    if year > MAX_DURATION_YEARS or days > (limit - dt.date(2000 + year, month + 1, 1)).days:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION_YEARS} years: not a plausible retention period")
    return value


IsoDuration = Annotated[str, pydantic.AfterValidator(_check_duration)]


def duration_parts(value: str) -> tuple[int, int, int]:
    """(years, months, days) of an ISO-8601 duration such as P2Y6M."""
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not an ISO-8601 duration")
    years, months, days = (int(g or 0) for g in match.groups())
    return years, months, days


def sql_interval(value: str) -> str:
    """A DuckDB INTERVAL literal for an ISO-8601 duration (calendar arithmetic: P1Y from 29 Feb is 28 Feb)."""
    return sqltext.interval(*duration_parts(value))


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class _Versioned(_Strict):
    version: int = pydantic.Field(ge=1)
    effective_date: dt.date


# ---------------------------------------------------------------- purposes.yaml


class LegalBasis(_Strict):
    article_6: str = pydantic.Field(pattern=r"^6\(1\)\([a-f]\)$")
    article_9: str | None = pydantic.Field(default=None, pattern=r"^9\(2\)\([a-j]\)$")
    detail: str


class RetentionRule(_Strict):
    """How long a purpose keeps a record: active period from the clock event, then archive, then end action."""

    active: IsoDuration
    clock: str = pydantic.Field(pattern=SLUG)
    archive: IsoDuration
    end_action: Literal["delete", "anonymise"]
    legal_source: str
    why: str | None = None

    def describe(self) -> str:
        return f"active {self.active} from {self.clock}, archive {self.archive}, then {self.end_action}"


class Purpose(_Strict):
    key: str = pydantic.Field(pattern=SLUG)
    name: str
    legal_basis: LegalBasis
    data_categories: list[str] = pydantic.Field(min_length=1)
    retention: RetentionRule
    # A dataset whose own clock differs (e.g. the suppression list inside prospecting).
    dataset_rules: dict[Name, RetentionRule] = {}


class Controller(_Strict):
    name: str
    identifier: str
    address: str
    rights_contact: str
    security_measures: list[str] = pydantic.Field(min_length=1)


class PurposesFile(_Versioned):
    controller: Controller
    purposes: list[Purpose] = pydantic.Field(min_length=1)


# ---------------------------------------------------------------- datasets.yaml


class Column(_Strict):
    name: Name
    category: str
    # direct: names, contacts, birth date, IP, documents; key: an id that points at the person;
    # quasi: combinable attributes (postal code, city, timestamps, free text). All three go at anonymisation.
    identifying: Literal["direct", "key", "quasi", "none"] = "none"
    purposes: list[str] = []

    @pydantic.model_validator(mode="after")
    def _mapped(self) -> Column:
        if not self.purposes and not self.category.startswith("system"):
            raise ValueError(f"column {self.name!r} serves no purpose (only system.* columns may)")
        return self


class Subject(_Strict):
    column: Name
    type: SubjectType


class RowPurposes(_Strict):
    """Rows meeting every condition of `where` serve only `purposes` (the ID copy sent with a rights request
    serves the request, not the membership); a row meeting no entry serves the purposes no entry names."""

    description: str
    where: list[Condition] = pydantic.Field(min_length=1)
    purposes: list[Name] = pydantic.Field(min_length=1)


class Dataset(_Strict):
    name: Name
    system: System
    description: str
    primary_key: Name
    # Ordered: the first non-null column names the row's subject (campaign selections: prospect or member).
    subjects: list[Subject] = []
    references: dict[Name, str] = {}  # column -> table.column, as in Fides datasets
    rectifiable: list[Name] = []  # what a rectification request (art. 16) may correct or complete
    row_purposes: list[RowPurposes] = []  # first entry whose `where` holds; none: every purpose of the columns

    columns: list[Column] = pydantic.Field(min_length=1)
    # A column the source sets on every insert and update (ISO timestamp text, `*_at`): ingestion then reads only
    # the rows changed since its watermark, plus a key-only read for deletions; none: the table is copied whole.
    change_marker: Name | None = None

    @pydantic.field_validator("change_marker")
    @classmethod
    def _marker_known(cls, value: str | None, info: pydantic.ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("system") == "navigation":
            raise ValueError("the navigation log has no change marker: its file manifest says what changed")
        if value not in {c.name for c in info.data.get("columns", [])}:
            raise ValueError(f"{value!r} is not a column of this dataset")
        if not value.endswith("_at"):
            raise ValueError(f"{value!r} is not a timestamp column (named `*_at`, read as a timestamp at ingestion)")
        return value

    @pydantic.model_validator(mode="after")
    def _rectifiable_known(self) -> Dataset:
        names = {c.name for c in self.columns}
        wrong = [c for c in self.rectifiable if c not in names or c == self.primary_key
                 or (self.column(c).category.startswith("system"))]
        if wrong:
            raise ValueError(f"rectifiable: {wrong} are not person data columns of {self.name}")
        return self

    @pydantic.field_validator("references")
    @classmethod
    def _ref_shape(cls, value: dict[str, str]) -> dict[str, str]:
        for column, target in value.items():
            if target.count(".") != 1 or not all(sqltext.is_name(part) for part in target.split(".")):
                raise ValueError(f"reference {column} -> {target!r} must be written table.column (plain names)")
        return value

    @cached_property
    def purposes(self) -> list[str]:
        return sorted({p for c in self.columns for p in c.purposes})

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def unconditional_purposes(self) -> list[str]:
        """The purposes of the rows no `row_purposes` entry claims."""
        named = {p for entry in self.row_purposes for p in entry.purposes}
        return [p for p in self.purposes if p not in named]

    def row_purposes_sql(self, alias: str | None = None) -> str:
        """SQL VARCHAR[]: the purposes a row (aliased `alias`) serves."""
        whens = " ".join(f"WHEN {sqltext.all_of(c.sql(alias) for c in entry.where)} "
                         f"THEN {sqltext.list_literal(entry.purposes)}" for entry in self.row_purposes)
        otherwise = sqltext.list_literal(self.unconditional_purposes)
        return f"CASE {whens} ELSE {otherwise} END" if whens else otherwise

    @property
    def anonymised_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.identifying != "none"]


Operator = Literal["equals", "not_equals", "in", "not_in", "below", "at_most", "above", "at_least", "is_null",
                   "is_not_null"]
Value = str | int | float | bool | dt.date


class Condition(_Strict):
    """`column operator value`, compiled by `pipelines.sqltext` with the value as a literal, never as SQL text.

    equals / not_equals / in / not_in compare the column as text; below / at_most / above / at_least compare it
    in its own type; is_null / is_not_null take no value."""

    column: Name
    operator: Operator = "equals"
    value: Value | list[Value] | None = None

    @pydantic.model_validator(mode="after")
    def _value_fits(self) -> Condition:
        listed = isinstance(self.value, list)
        if self.operator in ("is_null", "is_not_null"):
            if self.value is not None:
                raise ValueError(f"{self.operator} takes no value")
        elif self.operator in ("in", "not_in"):
            if not listed or not self.value:
                raise ValueError(f"{self.operator} takes a non-empty list of values")
        elif self.value is None or listed:
            raise ValueError(f"{self.operator} takes one value")
        return self

    def sql(self, alias: str | None = None) -> str:
        return sqltext.condition(self.column, self.operator, self.value, alias=alias)

    def describe(self) -> str:
        return f"{self.column} {self.operator.replace('_', ' ')}" + (
            "" if self.value is None else f" {self.value}")


class ClockFallback(Condition):
    """Rows meeting the condition whose clock columns are empty (a closed case without a final-decision date)
    start their clock the first night the pipeline sees them so (kept in retention.clock_events), not never."""

    description: str


class Clock(_Strict):
    """The event that starts a retention clock, declared so the ledger SQL can be generated from it."""

    description: str
    table: Name
    columns: list[Name] = pydantic.Field(min_length=1)  # several: the latest of them (greatest)
    per: Literal["subject", "record"]
    aggregate: Literal["max", "min"] = "max"  # per subject: over the subject's rows
    open_when_null: bool = False  # a null value means the event has not happened yet (e.g. contract running)
    transform: Literal["year_end"] | None = None  # fiscal_year 2024 -> 2024-12-31
    fallback: ClockFallback | None = None


class LegalHold(Condition):
    """Rows of `table` meeting the condition put their subject on legal hold (erasure suspended), until
    `until_set` (if given) has a value on the row (e.g. the judgment enforced and the recovery closed)."""

    description: str
    table: Name
    until_set: Name | None = None

    def where_sql(self, alias: str | None = None) -> str:
        """SQL condition over a row of `table` (aliased `alias`) that keeps its subject on hold."""
        until = [sqltext.condition(self.until_set, "is_null", alias=alias)] if self.until_set else []
        return sqltext.all_of([self.sql(alias), *until])


class IdentityRule(_Strict):
    """Two records are one person when this rule joins them: a visitor logged in as a member, or a prospect
    sharing a contact (normalised e-mail or phone) with a member or another prospect. A contact held by
    several members never joins anything: two members are never one person through a contact."""

    description: str
    records: tuple[Literal["visitor", "prospect"], Literal["member", "prospect"]]
    through: Literal["login", "email", "phone"]

    @pydantic.model_validator(mode="after")
    def _supported(self) -> IdentityRule:
        if (self.records[0] == "visitor") != (self.through == "login") or self.records == ("visitor", "prospect"):
            raise ValueError(f"identity rule {self.records} through {self.through}: a visitor joins a member "
                             "through login; prospects join through email or phone")
        return self


class DatasetsFile(_Versioned):
    clocks: dict[Name, Clock]
    legal_holds: list[LegalHold] = []
    identity: list[IdentityRule] = []  # none: every record is a person of its own
    datasets: list[Dataset] = pydantic.Field(min_length=1)


# ---------------------------------------------------------------- recipients.yaml


class Transfer(_Strict):
    country: str = pydantic.Field(pattern=r"^[A-Z]{2}$")
    adequacy_decision: bool
    mechanism: str
    safeguards: list[str] = pydantic.Field(min_length=1)
    # What the recipient is told when a row it holds leaves the purpose (e.g. a complaint closes): a processor
    # deletes or returns the data at the end of the service (art. 28(3)(g)); others are simply sent no more.
    on_purpose_end: Literal["deletion_instruction", "none"] = "none"


class Disclosure(_Strict):
    purpose: Name
    dataset: Name
    columns: list[Name] = pydantic.Field(min_length=1)
    # Only the rows meeting every condition are disclosed (structured: no SQL text in policy files).
    where: list[Condition] = []

    def where_sql(self, alias: str | None = None) -> str:
        return sqltext.all_of(c.sql(alias) for c in self.where)


class Recipient(_Strict):
    key: str = pydantic.Field(pattern=SLUG)
    name: str
    kind: Literal["internal_service", "processor", "authorised_body", "health_professional", "authority"]
    country: str = pydantic.Field(pattern=r"^[A-Z]{2}$")
    contract: str | None = None
    transfer: Transfer | None = None
    notified_of: list[Literal["rectification", "erasure", "restriction"]] = []  # art. 19
    receives: list[Disclosure] = []


class RecipientsFile(_Versioned):
    recipients: list[Recipient] = pydantic.Field(min_length=1)


# ---------------------------------------------------------------- the whole policy


@dataclass(frozen=True)
class Policy:
    """The three policy files, cross-checked. Built by `pipelines.policy.load_policy`."""

    purposes_file: PurposesFile
    datasets_file: DatasetsFile
    recipients_file: RecipientsFile

    @property
    def purposes(self) -> list[Purpose]:
        return self.purposes_file.purposes

    @property
    def datasets(self) -> list[Dataset]:
        return self.datasets_file.datasets

    @property
    def clocks(self) -> dict[str, Clock]:
        return self.datasets_file.clocks

    @property
    def recipients(self) -> list[Recipient]:
        return self.recipients_file.recipients

    @property
    def effective_date(self) -> dt.date:
        return max(f.effective_date for f in (self.purposes_file, self.datasets_file, self.recipients_file))

    @property
    def version_label(self) -> str:
        return (f"purposes v{self.purposes_file.version}, datasets v{self.datasets_file.version}, "
                f"recipients v{self.recipients_file.version}")

    def purpose(self, key: str) -> Purpose:
        return next(p for p in self.purposes if p.key == key)

    def dataset(self, name: str) -> Dataset:
        return next(d for d in self.datasets if d.name == name)

    def rule_for(self, purpose: str, dataset: str) -> RetentionRule:
        p = self.purpose(purpose)
        return p.dataset_rules.get(dataset, p.retention)

    def deletion_order(self, system: str) -> list[str]:
        """Tables of `system`, children before parents, from the declared `references`."""
        tables = {d.name for d in self.datasets if d.system == system}
        waits_for: dict[str, set[str]] = {t: set() for t in tables}
        for d in self.datasets:
            for target in d.references.values():
                parent = target.split(".")[0]
                if d.name in tables and parent in tables and parent != d.name:
                    waits_for[parent].add(d.name)  # a parent is deleted once its children are
        return list(graphlib.TopologicalSorter(waits_for).static_order())
