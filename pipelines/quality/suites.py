"""Great Expectations 1.x suites, as plain functions returning an `ExpectationSuite`.

Each expectation carries a readable `label` in its meta, used in the summaries. Suites describe the frames
that pipelines.quality.checks builds from DuckDB: only the columns an expectation needs, with comparisons
that GX handles poorly on pandas timestamps (dates against a reference day) already turned into integers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipelines.quality.patterns import EMAIL_WELL_FORMED, IDENTIFIER_PATTERNS, TOKEN_PATTERN

if TYPE_CHECKING:  # imported where a suite is built (pipelines.quality.gx_runner says why)
    import great_expectations as gx

# Typed dates outside this range are parse accidents (year 0001, 9999, swapped fields), not real events.
PLAUSIBLE_YEARS = (1900, 2100)
HAD_TEXT_SUFFIX = "__source_had_text"
YEAR_SUFFIX = "__year"


def _meta(label: str) -> dict[str, str]:
    return {"label": label}


def raw_table_suite(
    table: str,
    keys: Iterable[str],
    required: Iterable[str],
    emails: Iterable[str],
    temporal: Iterable[str],
    compared_to_source: bool,
    unique: bool = True,
) -> gx.ExpectationSuite:
    """Keys unique (unless `unique` is false: checked in SQL over the whole table when the frame is a batch of
    it) and not null, required columns present, e-mails well formed, dates parsed.

    "Dates parsed": every typed date/timestamp column has a plausible year (frame column `<col>__year`) and,
    when the frame was joined to the source (`<col>__source_had_text`), is not null where the source held text.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    keys = list(keys)
    expectations: list[gxe.Expectation] = []
    if unique and len(keys) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=keys[0], meta=_meta(f"{keys[0]} unique")))
    elif unique:
        expectations.append(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=keys, meta=_meta(f"{'+'.join(keys)} unique"))
        )
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column=c, meta=_meta(f"{c} not null")) for c in [*keys, *required]
    ]
    expectations += [
        gxe.ExpectColumnValuesToMatchRegex(column=c, regex=EMAIL_WELL_FORMED, meta=_meta(f"{c} well formed"))
        for c in emails
    ]
    for column in temporal:
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column + YEAR_SUFFIX,
                min_value=PLAUSIBLE_YEARS[0],
                max_value=PLAUSIBLE_YEARS[1],
                meta=_meta(f"{column} has a plausible year"),
            )
        )
        if compared_to_source:
            expectations.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=column + YEAR_SUFFIX,
                    row_condition=f"`{column}{HAD_TEXT_SUFFIX}` == True",
                    condition_parser="pandas",
                    meta=_meta(f"{column} parsed wherever the source had text"),
                )
            )
    return gx.ExpectationSuite(name=f"raw_{table}", expectations=expectations)


def ledger_suite() -> gx.ExpectationSuite:
    """No active ledger row is past its active-until date (frame: active rows, `days_left_active`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name="retention_ledger",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="days_left_active", min_value=0, meta=_meta("no active row past its active_until")
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="subject_id", meta=_meta("subject_id not null")),
            gxe.ExpectColumnValuesToNotBeNull(column="purpose", meta=_meta("purpose not null")),
        ],
    )


def analytics_identifier_suite() -> gx.ExpectationSuite:
    """No value of an analytics file's text columns is an e-mail, phone, IPv4 or French postal address.

    Frame: the distinct values of every text column stacked, `value` beside its `column_ref` ("table.column"):
    four expectations whatever the number of columns (one set per column cost GX ~15 ms an expectation, 2 s a
    file), their unexpected rows told apart by column afterwards (pipelines.quality.gx_runner.outcomes_by).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name="analytics_identifiers",
        expectations=[
            gxe.ExpectColumnValuesToNotMatchRegex(column="value", regex=pattern, meta=_meta(f"no {kind}"))
            for kind, pattern in IDENTIFIER_PATTERNS.items()
        ],
    )


def analytics_token_suite(table: str, token_columns: Iterable[str]) -> gx.ExpectationSuite:
    """Every pseudonym column holds 64 lowercase hex characters (a keyed HMAC-SHA256)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name=f"analytics_{table}_tokens",
        expectations=[
            gxe.ExpectColumnValuesToMatchRegex(
                column=column, regex=TOKEN_PATTERN, meta=_meta(f"{table}.{column}: 64 lowercase hex")
            )
            for column in token_columns
        ],
    )


def analytics_catalogue_suite() -> gx.ExpectationSuite:
    """Every column of the file is catalogued, and every token-like column is catalogued as a pseudonym.

    Frame: one row per (table, column) of the file with `column_ref` ("table.column"), `role` (null when not
    catalogued) and `looks_like_token`.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx.ExpectationSuite(
        name="analytics_catalogue",
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(
                column="role", meta={**_meta("every column is in the catalogue"), "show": "column_ref"}
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="role",
                value_set=["pseudonym"],
                row_condition="looks_like_token == True",
                condition_parser="pandas",
                meta={**_meta("token columns are catalogued with role 'pseudonym'"), "show": "column_ref"},
            ),
        ],
    )
