"""The throw-away PostgreSQL cluster really runs, and gives each test its own empty database."""

import pytest
import sqlalchemy as sa


@pytest.mark.postgres
def test_fresh_databases_are_isolated(make_pg_url):
    first, second = make_pg_url(), make_pg_url()
    assert first != second
    engine = sa.create_engine(first)
    with engine.begin() as con:
        con.execute(sa.text("CREATE TABLE t (x int)"))
        version = con.execute(sa.text("SHOW server_version")).scalar_one()
    engine.dispose()
    assert version.startswith("15")
    other = sa.create_engine(second)
    with other.connect() as con:
        assert not sa.inspect(con).has_table("t")
    other.dispose()
