"""The ADBC reader of the SQL sources gives the same text table as the DB-API one, on real SQLite and PostgreSQL."""

import datetime as dt
import math
from collections.abc import Iterator

import psycopg.conninfo
import pyarrow as pa
import pytest
import sqlalchemy as sa

from pipelines.ingest import adbc_uri, read_sql_table, read_sql_table_dbapi
from pipelines.sources.schema import member_metadata, prospect_metadata

awkward_metadata = sa.MetaData()
awkward = sa.Table(
    "awkward", awkward_metadata,
    sa.Column("row_id", sa.Integer, primary_key=True),
    sa.Column("note", sa.Text),  # NULL in the first rows: the SQLite driver would type it int64
    sa.Column("amount_eur", sa.Float),
    sa.Column("consent", sa.Boolean),
    sa.Column("birth_date", sa.Text),  # ISO text as the generator stores it, and a malformed one
    sa.Column("created_at", sa.Text),
    sa.Column("paid_on", sa.Date),
    sa.Column("Mixed Case", sa.Text),  # a name the dialect has to quote
)

AWKWARD_ROWS = [
    {"row_id": 1, "amount_eur": 0.1, "consent": True, "birth_date": "1999-02-28", "created_at": "2026-01-31 23:59:59"},
    {"row_id": 2, "amount_eur": 1 / 3, "consent": False, "birth_date": "1999-02-30", "created_at": None},
    {"row_id": 3, "amount_eur": -0.0, "consent": None, "birth_date": None, "created_at": "2026-11-01 00:00:00"},
    {"row_id": 4, "note": "Éloïse d'Hérouville « ça » 😀", "amount_eur": 1e-300, "paid_on": dt.date(2026, 2, 1)},
    {"row_id": 5, "note": "", "amount_eur": 123456789.125, "Mixed Case": 'say "hi"; DROP TABLE awkward; --'},
    {"row_id": 6, "note": "line\nbreak\ttab \\ backslash", "amount_eur": 1e20, "birth_date": "not a date"},
    {"row_id": 7, "note": "007", "amount_eur": None, "consent": True, "Mixed Case": "O'Brien"},
    {"row_id": 2**31 - 1, "note": "NULL", "amount_eur": -math.pi, "birth_date": "2026-11-01T08:30:00+01:00"},
]


def _fill(url: str, rows: list[dict]) -> sa.Engine:
    engine = sa.create_engine(url)
    awkward_metadata.create_all(engine)
    if rows:
        with engine.begin() as con:
            con.execute(awkward.insert(), [{c.name: row.get(c.name) for c in awkward.columns} for row in rows])
    return engine


def assert_adbc_matches_dbapi(engine: sa.Engine, table: sa.Table, batch_size: int = 250_000) -> pa.Table:
    assert adbc_uri(engine.url) is not None, "this engine must be read through ADBC"
    through_adbc = read_sql_table(engine, table, batch_size)
    through_dbapi = read_sql_table_dbapi(engine, table)
    assert through_adbc.schema == pa.schema([(c.name, pa.string()) for c in table.columns])
    assert through_adbc.schema == through_dbapi.schema
    adbc_rows, dbapi_rows = through_adbc.to_pylist(), through_dbapi.to_pylist()
    if engine.dialect.name == "sqlite":
        _align_sqlite_real_text(engine, table, adbc_rows, dbapi_rows)
    assert adbc_rows == dbapi_rows, table.name
    return through_adbc


def _align_sqlite_real_text(engine: sa.Engine, table: sa.Table, adbc_rows: list[dict], dbapi_rows: list[dict]) -> None:
    """Accept the one known difference between the two SQLites, and only where it is a gain.

    Python's sqlite3 links the system SQLite, ADBC's wheel a newer one, whose CAST(real AS TEXT) writes up to
    17 significant digits where 15 would not give the stored double back (0.33333333333333332, not
    0.333333333333333). Such a cell may differ if the ADBC text is exactly the stored double and the
    DB-API text is not; it is then aligned so that every other cell is still compared exactly.
    """
    reals = [c.name for c in table.columns if isinstance(c.type, sa.Float)]
    if not reals:
        return
    with engine.connect() as con:
        stored = con.execute(sa.select(table)).mappings().all()  # a table scan: the rows' order above
    assert len(stored) == len(adbc_rows) == len(dbapi_rows)
    for row, adbc, dbapi in zip(stored, adbc_rows, dbapi_rows, strict=True):
        for name in reals:
            if adbc[name] != dbapi[name]:
                assert float(adbc[name]) == row[name] != float(dbapi[name]), (table.name, name, adbc, dbapi)
                dbapi[name] = adbc[name]


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[sa.Engine]:
    engine = _fill(f"sqlite:///{tmp_path / 'awkward.db'}", AWKWARD_ROWS)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url) -> Iterator[sa.Engine]:
    engine = _fill(pg_url, AWKWARD_ROWS)
    yield engine
    engine.dispose()


def _check_awkward_values(table: pa.Table) -> None:
    by_id = {row["row_id"]: row for row in table.to_pylist()}
    assert len(by_id) == len(AWKWARD_ROWS)
    assert by_id["1"]["note"] is None and by_id["5"]["note"] == "", "NULL and empty text stay apart"
    assert by_id["4"]["note"] == AWKWARD_ROWS[3]["note"]
    assert by_id["5"]["Mixed Case"] == AWKWARD_ROWS[4]["Mixed Case"]
    assert by_id["7"]["Mixed Case"] == "O'Brien"
    assert by_id[str(2**31 - 1)]["note"] == "NULL"
    assert by_id["2"]["birth_date"] == "1999-02-30", "a malformed date reaches the warehouse, to be quarantined"
    assert by_id["1"]["amount_eur"] == "0.1"


def test_sqlite_adbc_reads_awkward_values_like_dbapi(sqlite_engine):
    _check_awkward_values(assert_adbc_matches_dbapi(sqlite_engine, awkward))


def test_sqlite_column_null_through_the_first_batch_stays_text(sqlite_engine):
    table = assert_adbc_matches_dbapi(sqlite_engine, awkward, batch_size=2)
    assert table.column("note").num_chunks > 1, "rows arrive as a stream of batches"
    _check_awkward_values(table)


def test_sqlite_empty_table_reads_as_text_columns(tmp_path):
    engine = _fill(f"sqlite:///{tmp_path / 'empty.db'}", [])
    assert assert_adbc_matches_dbapi(engine, awkward).num_rows == 0
    engine.dispose()


def test_sqlite_generated_sources_read_alike(generated_sources):
    for db, metadata in (("members.db", member_metadata), ("prospects.db", prospect_metadata)):
        engine = sa.create_engine(f"sqlite:///{generated_sources / db}")
        for table in metadata.sorted_tables:
            assert_adbc_matches_dbapi(engine, table, batch_size=97)
        engine.dispose()


def test_in_memory_sqlite_is_read_through_its_dbapi_driver():
    engine = _fill("sqlite://", AWKWARD_ROWS)  # the database lives in the engine's connection: ADBC can't see it
    assert adbc_uri(engine.url) is None
    table = read_sql_table(engine, awkward)
    _check_awkward_values(table)
    engine.dispose()


def test_adbc_uri_of_sqlite_is_the_file_and_other_urls_stay_with_dbapi():
    assert adbc_uri(sa.make_url("sqlite:////abs/members.db")) == "/abs/members.db"
    assert adbc_uri(sa.make_url("sqlite:///relative.db")) == "relative.db"
    assert adbc_uri(sa.make_url("sqlite:///x.db?timeout=30")) is None
    assert adbc_uri(sa.make_url("mysql+pymysql://u:p@host/db")) is None
    assert adbc_uri(sa.make_url("postgresql+psycopg://u@/db?host=h1:5432&host=h2:5433")) is None


def test_adbc_uri_of_postgresql_is_a_libpq_uri_keeping_the_password():
    # Checked with libpq's own parser (psycopg calls PQconninfoParse), as ADBC's driver connects with libpq.
    url = sa.URL.create(
        "postgresql+psycopg", username="sem@reader", password="p@ss:w/o+r%d é?#&= x",
        host="db.example", port=5433, database="members db", query={"sslmode": "disable"},
    )
    assert psycopg.conninfo.conninfo_to_dict(adbc_uri(url)) == {
        "user": "sem@reader", "password": "p@ss:w/o+r%d é?#&= x", "host": "db.example", "port": "5433",
        "dbname": "members db", "sslmode": "disable",
    }
    socket = sa.URL.create("postgresql+psycopg", username="postgres", database="t", query={"host": "/run/pg x+y"})
    assert psycopg.conninfo.conninfo_to_dict(adbc_uri(socket)) == {
        "user": "postgres", "host": "/run/pg x+y", "dbname": "t",
    }
    plain = adbc_uri(sa.make_url("postgresql+psycopg://postgres@127.0.0.1:5432/t_1"))
    assert plain == "postgresql://postgres@127.0.0.1:5432/t_1"


@pytest.mark.postgres
def test_postgresql_adbc_reads_awkward_values_like_dbapi(pg_engine):
    _check_awkward_values(assert_adbc_matches_dbapi(pg_engine, awkward))


@pytest.mark.postgres
def test_postgresql_empty_table_reads_as_text_columns(pg_url):
    engine = _fill(pg_url, [])
    assert assert_adbc_matches_dbapi(engine, awkward).num_rows == 0
    engine.dispose()


@pytest.mark.postgres
def test_postgresql_generated_sources_read_alike(pg_sandbox):
    for url, metadata in ((pg_sandbox.members_url, member_metadata), (pg_sandbox.prospects_url, prospect_metadata)):
        engine = sa.create_engine(url)
        for table in metadata.sorted_tables:
            assert_adbc_matches_dbapi(engine, table)
        engine.dispose()
