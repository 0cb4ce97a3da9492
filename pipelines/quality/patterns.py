"""Regular expressions for direct identifiers that must never appear in the analytics file, and for tokens.

They search inside free text (a comment that quotes an e-mail counts). Word boundaries keep the phone and IP
patterns from firing inside 64-hex tokens, whose letters and digits are all word characters.
"""

from __future__ import annotations

IDENTIFIER_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    # French national (0X XX XX XX XX, any separator) or international (+33 / 0033 …) numbers.
    "phone": r"(?:\+|\b00)[1-9]\d{0,2}[\s.-]?\d(?:[\s.-]?\d{2}){4}\b|\b0[1-9](?:[\s.-]?\d{2}){4}\b",
    "ipv4": r"\b(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\b",
    # A street number, optional bis/ter, then a French street type: "12 rue …", "3 bis avenue …".
    "postal_address": (
        r"(?i)\b\d{1,4}(?:\s*(?:bis|ter))?,?\s+(?:rue|avenue|av\.|boulevard|bd|place|chemin|impasse|"
        r"all[ée]e|quai|route|cours|passage|square|voie|villa|cit[ée]|sentier|faubourg|r[ée]sidence)\s+\w"
    ),
}

TOKEN_PATTERN = r"^[0-9a-f]{64}$"

# Well-formed e-mail as the member and prospect systems hold it: surrounding spaces and casing are tolerated
# (normalisation removes them), a missing "@", a space inside or a missing domain are not.
EMAIL_WELL_FORMED = r"^\s*[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\s*$"
