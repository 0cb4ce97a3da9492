"""The pseudonymisation policy (policies/pseudonymisation.yaml) as a validated pydantic model.

Per analytics table: its kind (row-level or aggregate), token domain, k, the column whose distinct values
count the people in a class (`subject`), and every published column with its role, source column,
generalisation hierarchy (finest first) or aggregate. Per domain: which `rights.exclusions` reasons keep a
person out. Also the direct-identifier columns of the warehouse that must never reach the analytics file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from pipelines.policy.loader import PolicyError, load_policy_file, locate
from pipelines.pseudo.generalise import parse_level
from pipelines.sources.schema import DIRECT_IDENTIFIERS

Role = Literal["pseudonym", "quasi_identifier", "attribute", "measure"]
ExclusionReason = Literal["restricted", "objection", "objection_prospecting", "erased"]
# Table and column names end up in SQL identifiers: plain lower-case names only.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]

POLICY_FILE = "pseudonymisation.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnPolicy(_Strict):
    name: Name
    role: Role
    description: str = Field(min_length=1)
    source: Name
    normalise: Literal["id", "email", "phone", "as_is"] | None = None
    levels: tuple[str, ...] = ("keep",)
    aggregate: Literal["count", "count_distinct", "sum", "avg"] | None = None
    # How much analysts value this quasi-identifier's precision: its share of the table's information loss.
    weight: float = Field(default=1.0, gt=0, le=100)

    @field_validator("levels")
    @classmethod
    def _levels_parse(cls, levels: tuple[str, ...]) -> tuple[str, ...]:
        if not levels:
            raise ValueError("at least one level is needed (use [keep])")
        for level in levels:
            parse_level(level)
        return levels

    @model_validator(mode="after")
    def _role_fits(self) -> ColumnPolicy:
        if (self.role == "pseudonym") != (self.normalise is not None):
            raise ValueError("a pseudonym needs `normalise` (id, email, phone, as_is); other roles take none")
        if (self.role == "measure") != (self.aggregate is not None):
            raise ValueError("a measure needs `aggregate` (count, count_distinct, sum, avg); other roles take none")
        return self


class DiversityPolicy(_Strict):
    """Each class must show the sensitive column's values at least l times over (distinct, or entropy >= ln l)."""

    column: Name
    l: int = Field(ge=2)  # noqa: E741 - the l of l-diversity
    measure: Literal["distinct", "entropy"] = "distinct"


class SmallCellPolicy(_Strict):
    """How an aggregate table handles cells under k: suppressed, and with `totals_over` a total row per
    value of the other dimensions (that column set to `*`) plus complementary suppression, so that no
    total minus the published cells gives back a single suppressed cell."""

    method: Literal["suppress"] = "suppress"
    totals_over: Name | None = None


class TablePolicy(_Strict):
    kind: Literal["rows", "aggregate"]
    domain: str
    # The purposes (purposes.yaml) the rows serve: a row is published only while one of them is active for it.
    # Required at publication (pipelines.pseudo.purposes); optional here so k-anonymity runs on its own.
    purposes: tuple[Name, ...] = ()
    description: str = Field(min_length=1)
    k: int | None = Field(default=None, ge=2)
    subject: Name
    columns: tuple[ColumnPolicy, ...] = Field(min_length=1)
    dropped: tuple[str, ...] = ()
    # Information loss minimised by the generalisation search: normalised certainty penalty (share of the
    # finest values a published value could stand for) or height (level / number of levels), per column,
    # averaged with the columns' weights.
    loss: Literal["ncp", "height"] = "ncp"
    l_diversity: tuple[DiversityPolicy, ...] = ()
    max_suppression_ratio: float | None = Field(default=None, ge=0, le=1)  # default: the policy's
    small_cells: SmallCellPolicy | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TablePolicy:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names must be unique")
        by_name = {c.name: c for c in self.columns}
        subject = by_name.get(self.subject)
        if self.kind == "rows":
            if subject is None or subject.role != "pseudonym":
                raise ValueError("`subject` of a row-level table must name one of its pseudonym columns")
            if any(c.role == "measure" for c in self.columns):
                raise ValueError("a row-level table has no measures (aggregate tables do)")
        else:
            if subject is None or subject.aggregate != "count_distinct":
                raise ValueError("`subject` of an aggregate table must name its count_distinct measure of people")
            if any(c.role == "pseudonym" for c in self.columns):
                raise ValueError("an aggregate table publishes no pseudonym")
        if not any(c.role == "quasi_identifier" for c in self.columns):
            raise ValueError("declare at least one quasi_identifier: k-anonymity is measured on them")
        over = self.small_cells.totals_over if self.small_cells else None
        dimension = over is None or (over in by_name and by_name[over].role in ("quasi_identifier", "attribute"))
        if self.small_cells and (self.kind != "aggregate" or not dimension):
            raise ValueError("small_cells is for aggregate tables; totals_over must name one of its dimensions")
        for rule in self.l_diversity:
            if self.kind != "rows" or rule.column not in by_name or by_name[rule.column].role != "attribute":
                raise ValueError(f"l_diversity column {rule.column!r} must be an attribute of a row-level table")
        return self

    def by_role(self, *roles: Role) -> list[ColumnPolicy]:
        return [c for c in self.columns if c.role in roles]

    def column(self, name: str) -> ColumnPolicy:
        return next(c for c in self.columns if c.name == name)


class ReportPolicy(_Strict):
    """Thresholds of the utility and risk report of each release (pipelines/pseudo/report.py)."""

    small_class: int = Field(default=10, ge=2)  # the report counts rows in classes under this many people
    max_prosecutor_risk: float = Field(default=0.2, gt=0, le=1)
    max_query_error: float = Field(default=0.5, ge=0)  # mean relative error of each standard analyst query


class DomainPolicy(_Strict):
    description: str = Field(min_length=1)
    excluded_reasons: tuple[ExclusionReason, ...]


class PseudonymisationPolicy(_Strict):
    version: int = Field(ge=1)
    default_k: int = Field(default=5, ge=2)
    max_suppression_ratio: float = Field(default=0.05, ge=0, le=1)
    domains: dict[Name, DomainPolicy]
    direct_identifiers: dict[Name, tuple[Name, ...]]
    # Health data (art. 9) at the granularity analytics may see: act codes grouped into categories, and the
    # detailed columns only a table whose purposes state an art. 9(2) condition may publish.
    act_categories: dict[Name, tuple[str, ...]] = {}
    health_detail: tuple[Name, ...] = ()
    tables: dict[Name, TablePolicy]
    report: ReportPolicy = ReportPolicy()

    @model_validator(mode="after")
    def _domains_known(self) -> PseudonymisationPolicy:
        for name, table in self.tables.items():
            if table.domain not in self.domains:
                raise ValueError(f"table {name}: domain {table.domain!r} is not declared under `domains`")
        codes = [code for codes in self.act_categories.values() for code in codes]
        if len(codes) != len(set(codes)):
            raise ValueError("act_categories: an act code is listed in more than one category")
        return self

    def k_of(self, table: str) -> int:
        return self.tables[table].k or self.default_k

    def suppression_budget(self, table: str) -> float:
        """Share of a table's rows that may be suppressed (the table's own budget, else the policy's)."""
        own = self.tables[table].max_suppression_ratio
        return self.max_suppression_ratio if own is None else own


def load_pseudonymisation_policy(path: Path) -> PseudonymisationPolicy:
    """Load and validate the policy (default: policies/pseudonymisation.yaml); PolicyError if it is wrong.

    The direct identifiers the source schema marks cannot be left out of `direct_identifiers`."""
    policy = load_policy_file(path, PseudonymisationPolicy)
    for table, columns in DIRECT_IDENTIFIERS.items():
        missing = [c for c in columns if c not in policy.direct_identifiers.get(table, ())]
        if missing:
            loc = ("direct_identifiers", table)
            raise PolicyError(path, ".".join(loc), f"{', '.join(missing)} of {table} are direct identifiers "
                              "(schema.py DIRECT_IDENTIFIERS) and cannot be removed from the list",
                              line=locate(path, loc) or locate(path, loc[:1]))
    return policy
