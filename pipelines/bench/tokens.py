"""Benchmark: the project's tokeniser (HMAC in DuckDB SQL) against a plain Python `hmac` loop (SPEC §7).

Both tokenise the same pandas Series of e-mail addresses, with the same normalisation, in the same run;
their outputs are compared before any number is reported. Run: `python -m pipelines.bench.tokens [n]`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import time

import pandas as pd

from pipelines.normalise import normalise_email
from pipelines.pseudo.tokens import tokenise_series


def sample_emails(n: int) -> pd.Series:
    """n e-mails with messy casing and whitespace; about one in ten repeats, as in real member data."""
    ids = pd.RangeIndex(n) % max(1, n - n // 10)
    return pd.Series(" User" + ids.astype(str) + "@Example.ORG ")


def python_loop_tokens(values: pd.Series, key: bytes) -> list[str | None]:
    """The naive approach: one `hmac` call per row."""
    out: list[str | None] = []
    for value in values:
        norm = normalise_email(value)
        out.append(hmac.new(key, norm.encode(), hashlib.sha256).hexdigest() if norm is not None else None)
    return out


def bench_tokens(n: int = 1_000_000, repeat: int = 3) -> dict[str, float | int]:
    """Time both tokenisers on the same n values, best of `repeat` runs each; raise if they disagree.

    The best run is reported because the machine is shared: the slower runs measure the neighbours.
    """
    key = secrets.token_bytes(32)
    values = sample_emails(n)
    project_s = naive_s = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        project = tokenise_series(values, "email", key)
        project_s = min(project_s, time.perf_counter() - start)

        start = time.perf_counter()
        naive = python_loop_tokens(values, key)
        naive_s = min(naive_s, time.perf_counter() - start)

        if project.tolist() != naive:
            raise AssertionError("the SQL tokeniser and the Python hmac loop disagree")
    return {
        "values": n,
        "repeats": repeat,
        "distinct_values": int(values.nunique()),
        "project_seconds": round(project_s, 3),
        "python_loop_seconds": round(naive_s, 3),
        "project_values_per_s": round(n / project_s),
        "python_loop_values_per_s": round(n / naive_s),
        "speedup": round(naive_s / project_s, 2),
    }


def main(argv: list[str]) -> None:
    result = bench_tokens(int(argv[0]) if argv else 1_000_000)
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:<{width}}  {value:,}")


if __name__ == "__main__":
    main(sys.argv[1:])
