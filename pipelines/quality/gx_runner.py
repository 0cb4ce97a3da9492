"""Run a Great Expectations 1.x suite on a pandas frame and summarise it without raw values.

GX runs in an ephemeral, in-memory context with usage statistics and progress bars off; a fresh context per
validation keeps runs independent (creating one costs a few milliseconds). The summary carries counts and
masked examples only (pipelines.quality.masking), so it can go into Dagster metadata and logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.quality.masking import mask_value

# GX is imported where a suite is built or run: whatever only loads the Dagster definitions (the webserver, the
# daemon, code servers, sensors) skips its import, 3 to 5 s per process on this machine.
if TYPE_CHECKING:
    import great_expectations as gx

MAX_EXAMPLES = 3


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result: what was expected, how many values broke it, masked examples."""

    label: str
    success: bool
    element_count: int
    unexpected_count: int
    examples: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class SuiteOutcome:
    """A suite's result over one frame."""

    suite: str
    row_count: int
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def metadata(self) -> dict[str, Any]:
        """Plain JSON-able summary for Dagster check metadata (counts and masked examples only)."""
        return {
            "suite": self.suite,
            "rows_checked": self.row_count,
            "expectations": len(self.outcomes),
            "failed_expectations": len(self.failed),
            "failures": [
                {
                    "expectation": o.label,
                    "unexpected_count": o.unexpected_count,
                    "examples": o.examples,
                    **({"error": o.error} if o.error else {}),
                }
                for o in self.failed
            ],
        }


def combine(suite: str, parts: list[SuiteOutcome]) -> SuiteOutcome:
    """One outcome of the suite over several frames (batches of one relation): counts added up per expectation,
    the first examples kept; an expectation fails if it failed on any frame."""
    merged: dict[str, ExpectationOutcome] = {}
    for outcome in (o for part in parts for o in part.outcomes):
        seen = merged.get(outcome.label)
        merged[outcome.label] = outcome if seen is None else ExpectationOutcome(
            label=outcome.label, success=seen.success and outcome.success,
            element_count=seen.element_count + outcome.element_count,
            unexpected_count=seen.unexpected_count + outcome.unexpected_count,
            examples=(seen.examples + outcome.examples)[:MAX_EXAMPLES], error=seen.error or outcome.error)
    return SuiteOutcome(suite=suite, row_count=sum(p.row_count for p in parts), outcomes=list(merged.values()))


def ephemeral_context() -> Any:
    """An in-memory GX context: nothing written to disk, no usage statistics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _label(config: Any) -> str:
    return str((config.meta or {}).get("label") or config.type)


def _examples(frame: pd.DataFrame, config: Any, details: dict[str, Any]) -> list[str]:
    """Masked unexpected values, or, when the expectation names a `show` column of structural names (table.column,
    never personal data), that column's value on the unexpected rows."""
    show = (config.meta or {}).get("show")
    if show:
        rows = details.get("partial_unexpected_index_list") or []
        return [str(frame[show].iloc[i]) for i in rows[:MAX_EXAMPLES]]
    return [mask_value(v) for v in details.get("partial_unexpected_list", [])[:MAX_EXAMPLES]]


def _validate(frame: pd.DataFrame, suite: gx.ExpectationSuite, result_format: dict[str, Any]) -> list[Any]:
    context = ephemeral_context()
    batch = (
        context.data_sources.add_pandas("frame")
        .add_dataframe_asset(suite.name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    return list(batch.validate(suite, result_format=result_format).results)


def _error(item: Any) -> str | None:
    """The message of an expectation that raised (it then counts as failed)."""
    if item.exception_info and item.exception_info.get("raised_exception"):
        return str(item.exception_info.get("exception_message"))
    # Bundled metric failures are reported per metric id; keep only the message.
    nested = [v for v in (item.exception_info or {}).values() if isinstance(v, dict)]
    return next((str(v.get("exception_message")) for v in nested if v.get("raised_exception")), None)


def run_suite(frame: pd.DataFrame, suite: gx.ExpectationSuite) -> SuiteOutcome:
    """Validate `frame` against `suite`; an expectation that raises counts as failed, with its message."""
    outcomes = []
    for item in _validate(frame, suite, {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}):
        details = item.result or {}
        error = _error(item)
        outcomes.append(
            ExpectationOutcome(
                label=_label(item.expectation_config),
                success=bool(item.success) and error is None,
                element_count=int(details.get("element_count", len(frame))),
                unexpected_count=int(details.get("unexpected_count", 0) or 0),
                examples=_examples(frame, item.expectation_config, details),
                error=error,
            )
        )
    return SuiteOutcome(suite=suite.name, row_count=len(frame), outcomes=outcomes)


def outcomes_by(frame: pd.DataFrame, suite: gx.ExpectationSuite, by: str, value: str, names: Sequence[str]
                ) -> list[SuiteOutcome]:
    """Validate `frame` (several relations stacked, told apart by the `by` column) against `suite`, whose
    expectations are on the `value` column, and give one outcome per name of `names` (a value of `by`; one
    without rows passes): its rows, and per expectation a label prefixed with the name (``members_pseudo.comment:
    no email``), its unexpected rows and masked examples of them. One validation for all relations instead of
    one each (GX's cost is per expectation)."""
    rows = frame[by].value_counts()
    checked = []  # per expectation: its label, its error, its unexpected rows by name
    for item in _validate(frame, suite, {"result_format": "COMPLETE"}):
        unexpected: dict[str, list[int]] = {}
        found = sorted(set((item.result or {}).get("unexpected_index_list") or []))
        for i, name in zip(found, frame[by].iloc[found], strict=True):
            unexpected.setdefault(name, []).append(i)
        checked.append((_label(item.expectation_config), _error(item), unexpected))
    return [
        SuiteOutcome(suite=f"{suite.name}: {name}", row_count=int(rows.get(name, 0)), outcomes=[
            ExpectationOutcome(
                label=f"{name}: {label}",
                success=name not in unexpected and error is None,
                element_count=int(rows.get(name, 0)),
                unexpected_count=len(unexpected.get(name, [])),
                examples=[mask_value(v) for v in frame[value].iloc[unexpected.get(name, [])[:MAX_EXAMPLES]]],
                error=error,
            )
            for label, error, unexpected in checked
        ])
        for name in names
    ]
