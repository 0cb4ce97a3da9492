"""Load `policies/` (purposes, datasets, recipients) into one cross-checked `Policy`.

Each file is validated by its model through `load_policy_file`; then the rules that span files or need the
source schema and the Fides taxonomy are checked here, each refusal naming file, key path and problem.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fideslang.default_taxonomy import DEFAULT_TAXONOMY

from pipelines.policy.loader import PolicyError, format_key_path, load_policy_file, locate
from pipelines.policy.models import DatasetsFile, Policy, PurposesFile, RecipientsFile
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, DIRECT_IDENTIFIERS, NAVIGATION_EVENT_SCHEMA, SQL_SYSTEMS

PURPOSES_FILE = "purposes.yaml"
DATASETS_FILE = "datasets.yaml"
RECIPIENTS_FILE = "recipients.yaml"


@cache
def fides_categories() -> frozenset[str]:
    return frozenset(c.fides_key for c in DEFAULT_TAXONOMY.data_category)


def source_columns() -> dict[tuple[str, str], list[str]]:
    """(system, table) -> columns, from the source-schema contract."""
    out = {
        (system, table.name): [c.name for c in table.columns]
        for system, metadata in SQL_SYSTEMS.items()
        for table in metadata.sorted_tables
    }
    out["navigation", "navigation_events"] = NAVIGATION_EVENT_SCHEMA.names
    out["navigation", "cookie_consents"] = COOKIE_CONSENT_SCHEMA.names
    return out


class _Checker:
    def __init__(self, paths: dict[str, Path], purposes: PurposesFile, datasets: DatasetsFile,
                 recipients: RecipientsFile):
        self.paths = paths
        self.p, self.d, self.r = purposes, datasets, recipients
        self.purpose_keys = {p.key for p in purposes.purposes}
        self.tables = {ds.name: ds for ds in datasets.datasets}

    def fail(self, file: str, loc: tuple[int | str, ...], problem: str) -> None:
        path = self.paths[file]
        raise PolicyError(path, format_key_path(loc), problem, line=locate(path, loc))

    def check(self) -> None:
        self._unique()
        self._purposes()
        self._clocks()
        self._datasets()
        self._reachable_clocks()
        self._recipients()

    def _unique(self) -> None:
        for file, items, attr, name in ((PURPOSES_FILE, self.p.purposes, "key", "purposes"),
                                        (DATASETS_FILE, self.d.datasets, "name", "datasets"),
                                        (RECIPIENTS_FILE, self.r.recipients, "key", "recipients")):
            seen: set[str] = set()
            for i, item in enumerate(items):
                value = getattr(item, attr)
                if value in seen:
                    self.fail(file, (name, i, attr), f"duplicate {attr} {value!r}")
                seen.add(value)

    def _purposes(self) -> None:
        for i, purpose in enumerate(self.p.purposes):
            for j, category in enumerate(purpose.data_categories):
                if category not in fides_categories():
                    self.fail(PURPOSES_FILE, ("purposes", i, "data_categories", j),
                              f"unknown data category {category!r} (not a fideslang data_category key)")
            rules = [(("retention",), purpose.retention)] + [
                (("dataset_rules", name), rule) for name, rule in purpose.dataset_rules.items()]
            for loc, rule in rules:
                if rule.clock not in self.d.clocks:
                    self.fail(PURPOSES_FILE, ("purposes", i, *loc, "clock"),
                              f"clock event {rule.clock!r} is not defined under clocks in {DATASETS_FILE}")
                if loc[0] == "dataset_rules" and loc[1] not in self.tables:
                    self.fail(PURPOSES_FILE, ("purposes", i, *loc), f"no dataset named {loc[1]!r}")

    def _clocks(self) -> None:
        for name, clock in self.d.clocks.items():
            ds = self.tables.get(clock.table)
            if ds is None:
                self.fail(DATASETS_FILE, ("clocks", name, "table"), f"no dataset named {clock.table!r}")
            for j, column in enumerate(clock.columns):
                if ds.column(column) is None:
                    self.fail(DATASETS_FILE, ("clocks", name, "columns", j),
                              f"column {column!r} is not declared in dataset {clock.table!r}")
            if clock.per == "subject" and not ds.subjects:
                self.fail(DATASETS_FILE, ("clocks", name, "per"), f"dataset {clock.table!r} declares no subject")
            if clock.fallback is not None and ds.column(clock.fallback.column) is None:
                self.fail(DATASETS_FILE, ("clocks", name, "fallback", "column"),
                          f"column {clock.fallback.column!r} is not declared in dataset {clock.table!r}")
        for i, hold in enumerate(self.d.legal_holds):
            ds = self.tables.get(hold.table)
            if ds is None or not ds.subjects or ds.column(hold.column) is None:
                self.fail(DATASETS_FILE, ("legal_holds", i, "column"),
                          f"{hold.table}.{hold.column} is not a declared column of a dataset with a subject")
            if ds is not None and hold.until_set is not None and ds.column(hold.until_set) is None:
                self.fail(DATASETS_FILE, ("legal_holds", i, "until_set"),
                          f"column {hold.until_set!r} is not declared in dataset {hold.table!r}")

    def _datasets(self) -> None:
        schema = source_columns()
        declared = {(ds.system, ds.name) for ds in self.d.datasets}
        for (system, table) in schema:
            if (system, table) not in declared:
                self.fail(DATASETS_FILE, ("datasets",), f"source table {system}.{table} is not mapped")
        for i, ds in enumerate(self.d.datasets):
            here = ("datasets", i)
            real = schema.get((ds.system, ds.name))
            if real is None:
                self.fail(DATASETS_FILE, (*here, "name"), f"{ds.system}.{ds.name} is not a table of schema.py")
            names = [c.name for c in ds.columns]
            for j, column in enumerate(ds.columns):
                if column.name not in real:
                    self.fail(DATASETS_FILE, (*here, "columns", j, "name"),
                              f"column {column.name!r} does not exist in {ds.system}.{ds.name} (schema.py)")
                if column.name in DIRECT_IDENTIFIERS.get(ds.name, ()) and column.identifying != "direct":
                    self.fail(DATASETS_FILE, (*here, "columns", j, "identifying"),
                              f"{ds.name}.{column.name} is a direct identifier (schema.py DIRECT_IDENTIFIERS): "
                              "it must stay `identifying: direct`")
                if column.category not in fides_categories():
                    self.fail(DATASETS_FILE, (*here, "columns", j, "category"),
                              f"unknown data category {column.category!r} (not a fideslang data_category key)")
                for k, purpose in enumerate(column.purposes):
                    if purpose not in self.purpose_keys:
                        self.fail(DATASETS_FILE, (*here, "columns", j, "purposes", k),
                                  f"purpose {purpose!r} is not defined in {PURPOSES_FILE}")
            for column in real:
                if column not in names:
                    self.fail(DATASETS_FILE, (*here, "columns"),
                              f"column {column!r} of {ds.name} is mapped to nothing (no category, no purpose)")
            for field, value in (("primary_key", ds.primary_key),
                                 *((f"subjects[{k}]", s.column) for k, s in enumerate(ds.subjects))):
                if value not in names:
                    self.fail(DATASETS_FILE, (*here, field), f"column {value!r} is not declared in {ds.name}")
            for j, entry in enumerate(ds.row_purposes):
                for k, purpose in enumerate(entry.purposes):
                    if purpose not in ds.purposes:
                        self.fail(DATASETS_FILE, (*here, "row_purposes", j, "purposes", k),
                                  f"purpose {purpose!r} is served by no column of {ds.name}")
                for k, condition in enumerate(entry.where):
                    if condition.column not in names:
                        self.fail(DATASETS_FILE, (*here, "row_purposes", j, "where", k, "column"),
                                  f"column {condition.column!r} is not declared in {ds.name}")
            if ds.row_purposes and not ds.unconditional_purposes:
                self.fail(DATASETS_FILE, (*here, "row_purposes"),
                          "every purpose is claimed by an entry: a row meeting none would serve no purpose "
                          "and never be let go")
            for column, target in ds.references.items():
                table, target_column = target.split(".")
                if column not in names:
                    self.fail(DATASETS_FILE, (*here, "references", column), f"no column {column!r} in {ds.name}")
                if table not in self.tables or self.tables[table].column(target_column) is None:
                    self.fail(DATASETS_FILE, (*here, "references", column), f"{target!r} is not a declared column")

    def _reachable_clocks(self) -> None:
        """Every dataset × purpose must find its clock: same subject type, same table, or a reference to it."""
        for i, ds in enumerate(self.d.datasets):
            if not ds.subjects:
                continue
            purposes = {p.key: p for p in self.p.purposes}
            for key in ds.purposes:
                rule = purposes[key].dataset_rules.get(ds.name, purposes[key].retention)
                clock = self.d.clocks[rule.clock]
                if clock.per == "subject":
                    clock_types = {s.type for s in self.tables[clock.table].subjects}
                    ok = bool(clock_types & {s.type for s in ds.subjects})
                else:
                    pk = f"{clock.table}.{self.tables[clock.table].primary_key}"
                    ok = clock.table == ds.name or pk in ds.references.values()
                if not ok:
                    self.fail(DATASETS_FILE, ("datasets", i, "columns"),
                              f"purpose {key!r} uses clock {rule.clock!r} ({clock.per} of {clock.table}) which "
                              f"{ds.name} cannot reach (no common subject type or reference)")

    def _recipients(self) -> None:
        for i, recipient in enumerate(self.r.recipients):
            for j, disclosure in enumerate(recipient.receives):
                here = ("recipients", i, "receives", j)
                if disclosure.purpose not in self.purpose_keys:
                    self.fail(RECIPIENTS_FILE, (*here, "purpose"),
                              f"purpose {disclosure.purpose!r} is not defined in {PURPOSES_FILE}")
                ds = self.tables.get(disclosure.dataset)
                if ds is None:
                    self.fail(RECIPIENTS_FILE, (*here, "dataset"), f"no dataset named {disclosure.dataset!r}")
                for k, column in enumerate(disclosure.columns):
                    if ds.column(column) is None:
                        self.fail(RECIPIENTS_FILE, (*here, "columns", k),
                                  f"column {column!r} is not declared in dataset {ds.name!r}")
                for k, condition in enumerate(disclosure.where):
                    if ds.column(condition.column) is None:
                        self.fail(RECIPIENTS_FILE, (*here, "where", k, "column"),
                                  f"column {condition.column!r} is not declared in dataset {ds.name!r}")
            if recipient.country != "FR" and recipient.transfer is None and recipient.country not in EU_EEA:
                self.fail(RECIPIENTS_FILE, ("recipients", i, "transfer"),
                          f"recipient in {recipient.country} (outside the EU/EEA) needs a transfer safeguard")


EU_EEA = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
})


def load_policy(folder: Path, fallback: Path | None = None) -> Policy:
    """Load and cross-check the three policy files of `folder`; raise PolicyError on the first problem.

    With `fallback` (a proposal folder that only holds the files it changes), a file missing from `folder`
    is read from `fallback`.
    """
    folder = Path(folder)

    def path(name: str) -> Path:
        return folder / name if fallback is None or (folder / name).exists() else Path(fallback) / name

    paths = {name: path(name) for name in (PURPOSES_FILE, DATASETS_FILE, RECIPIENTS_FILE)}
    purposes = load_policy_file(paths[PURPOSES_FILE], PurposesFile)
    datasets = load_policy_file(paths[DATASETS_FILE], DatasetsFile)
    recipients = load_policy_file(paths[RECIPIENTS_FILE], RecipientsFile)
    _Checker(paths, purposes, datasets, recipients).check()
    return Policy(purposes, datasets, recipients)
