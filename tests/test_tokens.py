"""Token scheme (SPEC §6): HMAC in DuckDB SQL against RFC 4231, HKDF against RFC 5869, domain separation."""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import pandas as pd
import pytest

from pipelines.bench.tokens import bench_tokens
from pipelines.normalise import normalise_email, normalise_phone
from pipelines.pseudo.keys import derive_domain_key
from pipelines.pseudo.tokens import hmac_sql, key_params, normalise_sql, tokenise_series, tokenise_table

# RFC 4231 test cases 1-4, 6 and 7 (case 5 tests truncated output, which the scheme does not use).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data. The key needs"
     b" to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize(("key", "data", "expected"), RFC4231, ids=["1", "2", "3", "4", "6", "7"])
def test_sql_hmac_matches_rfc4231(key: bytes, data: bytes, expected: str) -> None:
    con = duckdb.connect()
    got = con.execute(f"SELECT {hmac_sql('$data')}", {**key_params(key), "data": data}).fetchall()[0][0]
    assert got == expected


def _hkdf_rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 extract-then-expand, written from the RFC with hmac/hashlib only."""
    prk = hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_reference_hkdf_reproduces_rfc5869_case_3() -> None:
    okm = _hkdf_rfc5869(b"\x0b" * 22, b"", b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


@pytest.mark.parametrize(("domain", "version"), [("statistics", 1), ("marketing", 1), ("statistics", 7)])
def test_domain_key_is_hkdf_with_documented_info(domain: str, version: int) -> None:
    master = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)
    expected = _hkdf_rfc5869(master, b"", f"sem-privacy/{domain}/v{version}".encode(), 32)
    assert derive_domain_key(master, domain, version) == expected


def _reference_token(master: bytes, domain: str, value: str) -> str:
    key = _hkdf_rfc5869(master, b"", f"sem-privacy/{domain}/v1".encode(), 32)
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_tokens_are_reproducible_with_the_standard_library_after_normalisation() -> None:
    master = b"\x42" * 32
    key = derive_domain_key(master, "statistics", 1)
    raw = pd.Series([" Alice.Martin@Example.FR ", "06 12 34 56 78", None, "alice.martin@example.fr"])
    con = duckdb.connect()
    con.register("src", pd.DataFrame({"email": raw}))
    count = tokenise_table(con, "_tok", f"SELECT {normalise_sql('email', 'email')} AS value FROM src", key)
    tokens = dict(con.execute("SELECT value, token FROM _tok").fetchall())
    assert count == 2  # the two spellings of Alice's address are one value; null is not tokenised
    assert tokens["alice.martin@example.fr"] == _reference_token(master, "statistics", "alice.martin@example.fr")

    phones = tokenise_series(pd.Series(["06 12 34 56 78", "+33 (0)6.12.34.56.78", "n/a"]), "phone", key)
    expected = _reference_token(master, "statistics", normalise_phone("06 12 34 56 78"))
    assert phones.iloc[0] == phones.iloc[1] == expected
    assert pd.isna(phones.iloc[2])

    ids = tokenise_series(pd.Series([" 123", "123"]), "id", key)
    assert ids.tolist() == [_reference_token(master, "statistics", "123")] * 2


def test_statistics_and_marketing_tokens_cannot_be_joined() -> None:
    master = b"\x07" * 32
    values = pd.Series([f"person{i}@example.org" for i in range(50)])
    stats = tokenise_series(values, "email", derive_domain_key(master, "statistics", 1))
    marketing = tokenise_series(values, "email", derive_domain_key(master, "marketing", 1))
    rotated = tokenise_series(values, "email", derive_domain_key(master, "statistics", 2))
    assert set(stats) & set(marketing) == set()
    assert set(stats) & set(rotated) == set()
    assert marketing.iloc[3] == _reference_token(master, "marketing", normalise_email(values.iloc[3]))


def test_benchmark_compares_identical_outputs_of_both_tokenisers() -> None:
    result = bench_tokens(n=3_000, repeat=1)
    assert result["emails"]["distinct_values"] == 2_700
    assert result["visitor_ids"]["distinct_values"] == 300
    assert result["speedup"] == min(result["emails"]["speedup"], result["visitor_ids"]["speedup"])


@pytest.mark.parametrize("repeats", [1, 20], ids=["mostly-distinct: every row hashed", "repeated: distinct values"])
def test_series_tokeniser_agrees_with_hmac_whether_values_repeat_or_not(repeats: int) -> None:
    key = derive_domain_key(b"\x11" * 32, "statistics", 1)
    values = pd.Series([f" Visitor-{i // repeats} " for i in range(2_000)] + [None])
    tokens = tokenise_series(values, "id", key)
    expected = [hmac.new(key, v.strip().encode(), hashlib.sha256).hexdigest() for v in values.iloc[:-1]]
    assert tokens.iloc[:-1].tolist() == expected
    assert pd.isna(tokens.iloc[-1])
