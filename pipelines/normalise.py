"""Normalisation of contact identifiers, as SQL (DuckDB) expressions and as the Python reference.

One definition serves identity resolution, tokenisation and the suppression list, so the same person
normalises to the same value everywhere. Documented in README ("Token scheme"):
- e-mail: trim, lower-case; empty -> null.
- phone: E.164. Spaces, dots, dashes, parentheses and a French trunk "(0)" are removed; "00" becomes "+";
  a 10-digit national number starting with 0 becomes +33 followed by the 9 digits; anything that is not
  "+" then 8 to 15 digits after that is null (not a phone).
- ids: decimal text of the integer, or the trimmed string for visitor cookie ids; empty -> null.

"Trim" and "lower-case" mean the same on both sides for every string (tests/test_properties.py):
- trim removes the characters of `WHITESPACE` at both ends: exactly those Python's str.isspace() accepts.
  DuckDB's trim() alone leaves the ASCII controls \\t \\n \\v \\f \\r, the separators \\x1c-\\x1f, \\x85, U+2028 and
  U+2029, so SQL is given the set explicitly (and Python's strip() is too: the set is this module's, not a
  library's).
- lower-case is Unicode's simple mapping, one code point at a time, as DuckDB's lower() does. Python's
  str.lower() applies two full mappings on top (a capital sigma at the end of a word becomes ς, İ becomes i
  followed by a combining dot), which the Python reference therefore does not use.
"""

from __future__ import annotations

import re

from pipelines.sqltext import literal

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SIMPLE_LOWER = {"\u0130": "i"}  # the one code point whose str.lower() is not its simple mapping


def trim_sql(col: str) -> str:
    # DuckDB's trim with an explicit set is about 6 times slower than none at all; a value whose first and last
    # characters are printable ASCII (never white space) is already trimmed, which is nearly every value.
    return (f"CASE WHEN ord(left({col}, 1)) BETWEEN 33 AND 126 AND ord(right({col}, 1)) BETWEEN 33 AND 126 "
            f"THEN {col} ELSE trim({col}, {literal(WHITESPACE)}) END")


def email_sql(col: str) -> str:
    return f"nullif(lower({trim_sql(col)}), '')"


def phone_sql(col: str) -> str:
    # Only a leading "00" is an international prefix, so it is replaced after the separators are gone.
    digits = (
        f"regexp_replace(regexp_replace(replace({trim_sql(col)}, '(0)', ''), '[^0-9+]', '', 'g'), '^00', '+')"
    )
    e164 = f"CASE WHEN {digits} ~ '^0[1-9][0-9]{{8}}$' THEN '+33' || substr({digits}, 2) ELSE {digits} END"
    return f"CASE WHEN ({e164}) ~ '^\\+[1-9][0-9]{{7,14}}$' THEN ({e164}) END"


def id_sql(col: str) -> str:
    return f"nullif({trim_sql(f'CAST({col} AS VARCHAR)')}, '')"


def trim(value: str) -> str:
    return value.strip(WHITESPACE)


def lower(value: str) -> str:
    return "".join(_SIMPLE_LOWER.get(c) or c.lower() for c in value)


def normalise_email(value: str | None) -> str | None:
    if value is None:
        return None
    return lower(trim(value)) or None


def normalise_phone(value: str | None) -> str | None:
    if value is None:
        return None
    digits = re.sub(r"[^0-9+]", "", trim(value).replace("(0)", ""))
    digits = re.sub(r"^00", "+", digits)
    if re.fullmatch(r"0[1-9][0-9]{8}", digits):
        digits = "+33" + digits[1:]
    return digits if re.fullmatch(r"\+[1-9][0-9]{7,14}", digits) else None


def normalise_id(value: str | None) -> str | None:
    if value is None:
        return None
    return trim(value) or None
