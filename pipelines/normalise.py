"""Normalisation of contact identifiers, as SQL (DuckDB) expressions and as the Python reference.

One definition serves identity resolution, tokenisation and the suppression list, so the same person
normalises to the same value everywhere. Documented in README ("Token scheme"):
- e-mail: trim, lower-case; empty -> null.
- phone: E.164. Spaces, dots, dashes, parentheses and a French trunk "(0)" are removed; "00" becomes "+";
  a 10-digit national number starting with 0 becomes +33 followed by the 9 digits; anything that is not
  "+" then 8 to 15 digits after that is null (not a phone).
- ids: decimal text of the integer, or the trimmed string for visitor cookie ids.
"""

from __future__ import annotations

import re


def email_sql(col: str) -> str:
    return f"nullif(lower(trim({col})), '')"


def phone_sql(col: str) -> str:
    # Only a leading "00" is an international prefix, so it is replaced after the separators are gone.
    digits = (
        f"regexp_replace(regexp_replace(replace(trim({col}), '(0)', ''), '[^0-9+]', '', 'g'), '^00', '+')"
    )
    e164 = f"CASE WHEN {digits} ~ '^0[1-9][0-9]{{8}}$' THEN '+33' || substr({digits}, 2) ELSE {digits} END"
    return f"CASE WHEN ({e164}) ~ '^\\+[1-9][0-9]{{7,14}}$' THEN ({e164}) END"


def normalise_email(value: str | None) -> str | None:
    if value is None:
        return None
    return value.strip().lower() or None


def normalise_phone(value: str | None) -> str | None:
    if value is None:
        return None
    digits = re.sub(r"[^0-9+]", "", value.strip().replace("(0)", ""))
    digits = re.sub(r"^00", "+", digits)
    if re.fullmatch(r"0[1-9][0-9]{8}", digits):
        digits = "+33" + digits[1:]
    return digits if re.fullmatch(r"\+[1-9][0-9]{7,14}", digits) else None
