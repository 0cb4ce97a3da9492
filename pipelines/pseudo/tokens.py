"""Keyed tokens, computed in DuckDB SQL: token = lowercase hex HMAC-SHA256(domain key, normalised value).

HMAC(K, m) = SHA256((K' ⊕ opad) || SHA256((K' ⊕ ipad) || m)) with K' the key (hashed first when longer
than the 64-byte block) padded with zeros (RFC 2104). The two padded key blocks are computed here and
bound as query parameters, so key material is never part of a SQL text, a table or a log line.
Tables are tokenised once per distinct value and joined back (`tokenise_table`). DuckDB's sha256
already returns lowercase hex.
"""

from __future__ import annotations

import hashlib

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.duck import connect_memory
from pipelines.normalise import email_sql, id_sql, phone_sql
from pipelines.pseudo.keys import SecretKey

BLOCK_SIZE = 64
SCAN_BATCH_ROWS = 65_536
# Above this share of distinct values, hashing every row is cheaper than encoding and mapping back.
DISTINCT_RATIO_FOR_ROW_HASHING = 0.5

# How each kind of source value is normalised before hashing (documented in pipelines/normalise.py).
NORMALISERS = {
    "email": email_sql,
    "phone": phone_sql,
    "id": id_sql,
    # Values a table builder has already normalised (e.g. a contact that is an e-mail or a phone).
    "as_is": lambda col: col,
}


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """(K' ⊕ ipad, K' ⊕ opad), each one 64-byte block."""
    if len(key) > BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = bytes(key).ljust(BLOCK_SIZE, b"\0")
    return SecretKey(bytes(b ^ 0x36 for b in key)), SecretKey(bytes(b ^ 0x5C for b in key))


def key_params(key: bytes) -> dict[str, bytes]:
    """The query parameters `hmac_sql` refers to."""
    ipad, opad = hmac_pads(key)
    return {"k_ipad": ipad, "k_opad": opad}


def hmac_sql(blob_expr: str) -> str:
    """SQL for the hex HMAC of a BLOB expression under the key bound by `key_params(key)`."""
    return f"sha256($k_opad || unhex(sha256($k_ipad || {blob_expr})))"


def normalise_sql(kind: str, column: str) -> str:
    """SQL normalising `column` as an e-mail, a phone or an id before it is tokenised."""
    return NORMALISERS[kind](column)


def tokenise_table(con: duckdb.DuckDBPyConnection, target: str, values_sql: str, key: bytes) -> int:
    """Create temp table `target(value, token)` for the distinct non-null values of `values_sql`.

    `values_sql` is a query with one column named `value`, already normalised (`normalise_sql`).
    Returns the number of distinct values tokenised.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT value, {hmac_sql('encode(value)')} AS token
        FROM (SELECT DISTINCT value FROM ({values_sql}) WHERE value IS NOT NULL)
        """,
        key_params(key),
    )
    return con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]


def _batched(column: pa.Array | pa.ChunkedArray) -> pa.Table:
    """One-column table in batches, so DuckDB scans it on every core."""
    table = pa.table({"value": column})
    return pa.Table.from_batches(table.to_batches(max_chunksize=SCAN_BATCH_ROWS), schema=table.schema)


def tokenise_series(values: pd.Series, kind: str, key: bytes) -> pd.Series:
    """Tokens of a pandas Series, row for row (null where the value normalises to null).

    When values repeat, each distinct value is hashed once: Arrow's dictionary encoding gives the
    distinct values and each row's index into them, DuckDB hashes the distinct values (a plain
    projection keeps their order) and Arrow maps them back. When nearly every value is distinct, the
    encoding costs more than it saves, and every row is hashed in one projection instead.
    """
    con = connect_memory()
    try:
        con.register("source", pa.table({"value": pa.array(values, type=pa.string())}))
        normalised = con.sql(f"SELECT {normalise_sql(kind, 'value')} AS value FROM source").to_arrow_table()
        con.register("normalised", _batched(normalised.column("value")))
        rows, distinct = con.execute("SELECT count(*), approx_count_distinct(value) FROM normalised").fetchall()[0]
        hashed = "SELECT {} AS token FROM {}"
        if distinct > DISTINCT_RATIO_FOR_ROW_HASHING * rows:
            tokens = con.sql(hashed.format(hmac_sql("encode(value)"), "normalised"), params=key_params(key))
            return _series(tokens.to_arrow_table().column("token"), values.index)
        encoded = pc.dictionary_encode(normalised.column("value").combine_chunks())
        con.register("uniques", _batched(encoded.dictionary))
        tokens = con.sql(hashed.format(hmac_sql("encode(value)"), "uniques"), params=key_params(key))
        return _series(pc.take(tokens.to_arrow_table().column("token").combine_chunks(), encoded.indices), values.index)
    finally:
        con.close()


def _series(tokens: pa.Array | pa.ChunkedArray, index: pd.Index) -> pd.Series:
    return pd.Series(tokens, index=index, dtype=pd.ArrowDtype(pa.string()))
