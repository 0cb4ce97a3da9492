"""Mask example values before they reach check metadata or a log line.

An example shows the shape of a bad value, never the value: e-mails keep their first character and top-level
domain ("a***@***.fr"), everything else becomes a character-class shape ("99 aaa aaa aaaaa") cut to a few
characters, so a data engineer sees what kind of value broke a rule without seeing whose it is.
"""

from __future__ import annotations

import math
import re

_SHAPE_LENGTH = 16


def mask_value(value: object) -> str:
    """The masked form of one example value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<null>"
    text = str(value).strip()
    if "@" in text:
        local, _, domain = text.rpartition("@")
        tld = domain.rsplit(".", 1)[1] if "." in domain else ""
        return f"{local[:1]}***@***.{tld}" if tld else f"{local[:1]}***@***"
    shape = re.sub(r"[^\W\d_]", "a", re.sub(r"\d", "9", text))
    return shape[:_SHAPE_LENGTH] + ("…" if len(shape) > _SHAPE_LENGTH else "")
