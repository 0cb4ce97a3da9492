"""Vectorised column builders of the demo generator: dates as legacy text, codes, phones, messy e-mails.

Every function takes numpy arrays (or Arrow arrays) and returns a whole column; nothing loops over rows.
Days are counted from 1970-01-01 and times in seconds since the epoch, so date arithmetic is integer math.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SECONDS_PER_DAY = 86_400
_ALPHABETS = {
    "D": np.frombuffer(b"0123456789", np.uint8),
    "L": np.frombuffer(b"ABCDEFGHJKLMNPRSTUVWXYZ", np.uint8),
    "A": np.frombuffer(b"0123456789ABCDEFGHJKLMNPRSTUVWXYZ", np.uint8),
}
# Byte value -> its two hex characters, as one 16-bit word so a single gather formats a whole byte.
_HEX_PAIRS = np.frombuffer("".join(f"{b:02x}" for b in range(256)).encode(), dtype=np.uint16)


def weighted_choice(rng: np.random.Generator, weights: Sequence[float], n: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def null_mask(n: int, idx: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def date_text(days: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """'YYYY-MM-DD' text (null where `null`)."""
    return pa.array(days.astype(np.int32), pa.date32(), mask=null).cast(pa.string())


def timestamp_text(seconds: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """'YYYY-MM-DD HH:MM:SS' text (null where `null`)."""
    return pa.array(seconds.astype(np.int64), pa.timestamp("s"), mask=null).cast(pa.string())


def at_office_hours(rng: np.random.Generator, days: np.ndarray) -> np.ndarray:
    """A second of the given days between 08:00 and 19:59, when people write, call and get paid."""
    return days.astype(np.int64) * SECONDS_PER_DAY + rng.integers(8 * 3600, 20 * 3600, len(days))


def between(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Uniform integers in [low, high] element-wise (high < low collapses to low)."""
    span = np.maximum(high - low, 0) + 1
    return low + np.floor(rng.random(len(low)) * span).astype(np.int64)


def year_of(days: np.ndarray) -> np.ndarray:
    return days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def month_start(days: np.ndarray) -> np.ndarray:
    return days.astype("datetime64[D]").astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)


def random_codes(rng: np.random.Generator, n: int, pattern: str) -> pa.Array:
    """Strings shaped like `pattern`: D digit, L letter, A alphanumeric, else a literal character."""
    # Each position takes one byte of raw 64-bit draws (the slight modulo bias is irrelevant for fake codes).
    # Built position-major (contiguous rows of n bytes), then transposed once into n strings.
    words = rng.bit_generator.random_raw(((len(pattern) + 7) // 8, n))
    codes = np.empty((len(pattern), n), dtype=np.uint8)
    for j, ch in enumerate(pattern):
        alphabet = _ALPHABETS.get(ch)
        if alphabet is None:
            codes[j] = ord(ch)
        else:
            byte = ((words[j // 8] >> np.uint64(8 * (j % 8))) & np.uint64(0xFF)).astype(np.uint8)
            codes[j] = alphabet[byte % len(alphabet)]
    return _fixed_width_strings(np.ascontiguousarray(codes.T))


# The most bytes a string array with 32-bit offsets holds; the reference workload's 67 million page view ids
# (36 bytes each, 2.4 GB) need 64-bit offsets. Files read back the same either way: both are Parquet strings.
MAX_STRING_BYTES = np.iinfo(np.int32).max


def _fixed_width_strings(chars: np.ndarray) -> pa.Array:
    """An (n, width) matrix of ASCII bytes as n strings, sharing its memory (no per-string conversion): a string
    array, or a large_string array beyond MAX_STRING_BYTES."""
    n, width = chars.shape
    large = n * width > MAX_STRING_BYTES
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64 if large else np.int32)
    kind = pa.LargeStringArray if large else pa.StringArray
    return kind.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def random_uuids(rng: np.random.Generator, n: int) -> pa.Array:
    """Version-4-shaped uuids (cookie and event ids), built as one (n, 36) byte matrix from raw draws."""
    raw = rng.bit_generator.random_raw((n, 2)).view(np.uint8)
    hex_digits = _HEX_PAIRS[raw.ravel()].view(np.uint8).reshape(n, 32)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, stop, offset in ((0, 8, 0), (9, 13, 1), (14, 18, 2), (19, 23, 3), (24, 36, 4)):
        out[:, start:stop] = hex_digits[:, start - offset:stop - offset]
    out[:, 14] = ord("4")
    out[:, 19] = np.frombuffer(b"89ab", np.uint8)[raw[:, 9] & 3]  # the RFC 4122 variant
    return _fixed_width_strings(out)


def dictionary(values: Sequence[str | None], idx: np.ndarray) -> pa.DictionaryArray:
    """Dictionary-encoded text: long repeated values (user agents, URLs) cost 4 bytes a row, not their length."""
    present = [v for v in values if v is not None]
    code = np.array([present.index(v) if v is not None else -1 for v in values], dtype=np.int32)[idx]
    return pa.DictionaryArray.from_arrays(pa.array(code, mask=code < 0), pa.array(present, pa.string()))


def pick(values: pa.Array | Sequence[object], idx: np.ndarray) -> pa.Array:
    array = values if isinstance(values, pa.Array) else pa.array(values)
    return array.take(pa.array(idx))


def concat(*parts: pa.Array | str) -> pa.Array:
    """Element-wise string concatenation; a null part makes the result null."""
    return pc.binary_join_element_wise(*parts, "")


def replace_where(column: pa.Array, mask: np.ndarray, replacement: pa.Array) -> pa.Array:
    """`column` with `replacement` (same length) where mask is true."""
    return pc.if_else(pa.array(mask), replacement, column)


def with_nulls(column: pa.Array, mask: np.ndarray) -> pa.Array:
    """`column` with nulls where mask is true."""
    return replace_where(column, mask, pa.nulls(len(column), column.type))


def cycle_values(values: Sequence[str], n: int) -> pa.Array:
    """A text column of length n repeating `values`: deterministic variety for planted edge cases."""
    return pa.array(values, pa.string()).take(pa.array(np.arange(n) % len(values)))


def phone_numbers(index: np.ndarray) -> np.ndarray:
    """Distinct 8-digit subscriber numbers: a bijection of [0, 10**8) so two people never share a phone."""
    return (index.astype(np.int64) * 73_939_133 + 12_345_679) % 100_000_000


def format_phones(rng: np.random.Generator, mobile_digit: np.ndarray, number: np.ndarray) -> pa.Array:
    """French mobile numbers in the formats found in legacy systems ('06 12 34 56 78', '+33 (0)6…', …)."""
    eight = pc.utf8_lpad(pa.array(number).cast(pa.string()), 8, padding="0")
    pairs = [pc.utf8_slice_codeunits(eight, i, i + 2) for i in range(0, 8, 2)]
    lead = pa.array(mobile_digit).cast(pa.string())
    formats = [
        concat("0", lead, " ", pairs[0], " ", pairs[1], " ", pairs[2], " ", pairs[3]),
        concat("0", lead, eight),
        concat("+33 ", lead, " ", pairs[0], " ", pairs[1], " ", pairs[2], " ", pairs[3]),
        concat("+33 (0)", lead, " ", pairs[0], " ", pairs[1], " ", pairs[2], " ", pairs[3]),
        concat("0", lead, ".", pairs[0], ".", pairs[1], ".", pairs[2], ".", pairs[3]),
        concat("+33", lead, eight),
    ]
    choice = weighted_choice(rng, [55, 20, 10, 5, 5, 5], len(number))
    return pc.choose(pa.array(choice, pa.int8()), *formats)


def messy_emails(rng: np.random.Generator, emails: pa.Array) -> pa.Array:
    """The same addresses as typed by hand: capitals and stray spaces that normalisation removes."""
    title = pc.utf8_title(emails)
    variants = [
        title, pc.utf8_upper(emails), concat("  ", emails), concat(emails, " "), concat(" ", title, "  "),
        concat(pc.utf8_capitalize(emails), " "),
    ]
    choice = rng.integers(0, len(variants), len(emails))
    return pc.choose(pa.array(choice, pa.int8()), *variants)
