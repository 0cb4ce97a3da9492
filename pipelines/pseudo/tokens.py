"""Keyed tokens, computed in DuckDB SQL: token = lowercase hex HMAC-SHA256(domain key, normalised value).

HMAC(K, m) = SHA256((K' ⊕ opad) || SHA256((K' ⊕ ipad) || m)) with K' the key (hashed first when longer
than the 64-byte block) padded with zeros (RFC 2104). The two padded key blocks are computed here and
bound as query parameters, so key material is never part of a SQL text, a table or a log line.
Tokens are computed once per distinct value and mapped back to the rows. DuckDB's sha256 already returns lowercase hex.
"""

from __future__ import annotations

import hashlib

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.normalise import email_sql, phone_sql
from pipelines.pseudo.keys import SecretKey

BLOCK_SIZE = 64
SCAN_BATCH_ROWS = 65_536

# How each kind of source value is normalised before hashing (documented in pipelines/normalise.py).
NORMALISERS = {
    "email": email_sql,
    "phone": phone_sql,
    "id": lambda col: f"nullif(trim(CAST({col} AS VARCHAR)), '')",
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


def tokenise_series(values: pd.Series, kind: str, key: bytes) -> pd.Series:
    """Tokens of a pandas Series, row for row (null where the value normalises to null).

    Arrow's dictionary encoding gives the distinct values and, for each row, the index of its value;
    DuckDB hashes the distinct values (a plain projection keeps their order) and Arrow maps them back.
    """
    con = duckdb.connect()
    try:
        con.register("source", pa.table({"value": pa.array(values, type=pa.string())}))
        normalised = con.sql(f"SELECT {normalise_sql(kind, 'value')} AS value FROM source").to_arrow_table()
        encoded = pc.dictionary_encode(normalised.column("value").combine_chunks())
        # Batches, so DuckDB's scan of the distinct values runs on every core.
        uniques = pa.table({"value": encoded.dictionary}).to_batches(max_chunksize=SCAN_BATCH_ROWS)
        con.register("uniques", pa.Table.from_batches(uniques, schema=pa.schema([("value", pa.string())])))
        tokens = con.sql(
            f"SELECT {hmac_sql('encode(value)')} AS token FROM uniques", params=key_params(key)
        ).to_arrow_table().column("token").combine_chunks()
    finally:
        con.close()
    return pd.Series(pc.take(tokens, encoded.indices), index=values.index, dtype=pd.ArrowDtype(pa.string()))
