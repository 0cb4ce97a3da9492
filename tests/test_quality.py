"""GX checks: raw tables, the ledger and the analytics file — what fails, what passes, what metadata shows."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import sqlalchemy as sa

from assets.quality_checks import analytics_checks, ledger_check, raw_table_checks
from pipelines.ingest import duckdb_type
from pipelines.orchestration.resources import AnalyticsFileResource, SqlSourceResource, WarehouseResource
from pipelines.quality.checks import (
    MissingCatalogueError,
    check_analytics_identifiers,
    check_analytics_tokens,
    check_ledger,
    check_raw_table,
    raw_table_specs,
)
from pipelines.quality.masking import mask_value
from pipelines.sources.schema import member_metadata, members

PLANTED_EMAIL = "jeanne.martin@example.fr"


def _spec(table: str):
    return next(s for s in raw_table_specs() if s.table == table)


@pytest.fixture
def member_source(tmp_path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'members.db'}")
    member_metadata.create_all(engine)
    rows = [
        {"member_id": 1, "email": " Jeanne.Martin@Example.FR ", "birth_date": "2003-04-05", "created_at": "2024-01-02"},
        {"member_id": 2, "email": "paul@example.com", "birth_date": "2001-12-31", "created_at": "2024-01-03 11:00:00"},
        {"member_id": 3, "email": None, "birth_date": None, "created_at": "2024-01-04 12:00:00"},
    ]
    with engine.begin() as con:
        con.execute(members.insert(), rows)
    return engine


def _ingest_members(engine: sa.Engine, warehouse: Path) -> duckdb.DuckDBPyConnection:
    """A typed copy of the members table, as ingest makes it (`*_date` DATE, `*_at` TIMESTAMP)."""
    with engine.connect() as source:
        frame = pd.read_sql(sa.select(members), source)
    con = duckdb.connect(str(warehouse))
    con.register("source_rows", frame)
    typed = ", ".join(f"TRY_CAST({c.name} AS {duckdb_type(c)}) AS {c.name}" for c in members.columns)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute(f"CREATE TABLE raw.members AS SELECT {typed} FROM source_rows")
    con.unregister("source_rows")
    return con


def test_raw_members_pass_when_ingest_kept_every_date_and_key(member_source, tmp_path):
    con = _ingest_members(member_source, tmp_path / "w.duckdb")
    outcome = check_raw_table(con, _spec("members"), member_source)
    assert outcome.success, outcome.metadata()
    assert outcome.row_count == 3


def test_raw_check_catches_a_date_lost_in_ingest_and_a_duplicate_key(member_source, tmp_path):
    con = _ingest_members(member_source, tmp_path / "w.duckdb")
    # What a faulty ingest would do: null a date the source held, and duplicate a row.
    con.execute("UPDATE raw.members SET birth_date = NULL WHERE member_id = 2")
    con.execute("INSERT INTO raw.members SELECT * FROM raw.members WHERE member_id = 1")
    outcome = check_raw_table(con, _spec("members"), member_source)
    failed = {o.label: o.unexpected_count for o in outcome.failed}
    assert failed == {"member_id unique": 2, "birth_date parsed wherever the source had text": 1}


def test_malformed_email_is_reported_masked(member_source, tmp_path):
    with member_source.begin() as con:
        con.execute(members.insert(), [{"member_id": 4, "email": "jean dupont@gmail", "created_at": "2024-01-05"}])
    con = _ingest_members(member_source, tmp_path / "w.duckdb")
    outcome = check_raw_table(con, _spec("members"), member_source)
    [failure] = outcome.failed
    assert failure.label == "email well formed"
    assert failure.unexpected_count == 1
    assert failure.examples == ["j***@***"]
    assert "dupont" not in json.dumps(outcome.metadata())


def _ledger(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS retention")
    con.execute(
        "CREATE TABLE retention.ledger (subject_type VARCHAR, subject_id VARCHAR, purpose VARCHAR, dataset VARCHAR, "
        "clock_start DATE, active_until DATE, archive_until DATE, status VARCHAR, reason VARCHAR)"
    )
    con.executemany("INSERT INTO retention.ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def test_ledger_check_flags_only_active_rows_past_active_until():
    con = duckdb.connect()
    as_of = dt.date(2026, 11, 1)
    _ledger(con, [
        ("member", "1", "membership", "members", "2020-01-01", "2026-12-31", "2031-12-31", "active", None),
        ("member", "2", "membership", "members", "2015-01-01", "2021-01-01", "2026-01-01", "archived", None),
        ("member", "3", "prospecting", "members", "2019-01-01", "2022-01-01", "2022-01-01", "active", None),
    ])
    outcome = check_ledger(con, as_of)
    assert [(o.label, o.unexpected_count) for o in outcome.failed] == [("no active row past its active_until", 1)]
    con.execute("UPDATE retention.ledger SET status = 'archived' WHERE subject_id = '3'")
    assert check_ledger(con, as_of).success


def _analytics_file(path: Path, comment: str = "rendez-vous pris") -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE members_pseudo AS SELECT sha256('m' || i::VARCHAR) AS member_token, "
            "'75' AS departement, '18-25' AS age_band, i % 7 AS visits FROM range(50) t(i)"
        )
        con.execute("INSERT INTO members_pseudo VALUES (sha256('x'), '13', '26-35', 1)")
        con.execute("ALTER TABLE members_pseudo ADD COLUMN comment VARCHAR")
        con.execute("UPDATE members_pseudo SET comment = ?", [comment])
        con.execute(
            "CREATE TABLE catalogue (table_name VARCHAR, column_name VARCHAR, role VARCHAR, description VARCHAR)"
        )
        con.execute(
            "INSERT INTO catalogue VALUES ('members_pseudo', 'member_token', 'pseudonym', 'keyed token'), "
            "('members_pseudo', 'departement', 'quasi_identifier', ''), ('members_pseudo', 'age_band', "
            "'quasi_identifier', ''), ('members_pseudo', 'visits', 'measure', ''), "
            "('members_pseudo', 'comment', 'attribute', '')"
        )
    return path


@pytest.mark.parametrize(
    ("planted", "kind"),
    [
        (f"écrire à {PLANTED_EMAIL}", "email"),
        ("rappeler au 06 12 34 56 78", "phone"),
        ("connexion depuis 192.168.10.42", "ipv4"),
        ("habite 12 rue des Lilas", "postal_address"),
    ],
)
def test_identifier_planted_in_analytics_is_found_and_never_shown(tmp_path, planted, kind):
    path = _analytics_file(tmp_path / "a.duckdb", comment=planted)
    failed = [o for o in check_analytics_identifiers(path) if not o.success]
    [outcome] = failed
    # Counted over distinct values: the same comment on 51 rows is one leaking value.
    assert [(o.label, o.unexpected_count) for o in outcome.failed] == [(f"members_pseudo.comment: no {kind}", 1)]
    shown = json.dumps(outcome.metadata(), ensure_ascii=False)
    for fragment in ("jeanne", "martin", "12 34 56", "192.168", "Lilas"):
        assert fragment not in shown


def test_identifier_values_are_counted_distinct_per_column(tmp_path):
    path = _analytics_file(tmp_path / "a.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE members_pseudo SET member_token = 'x' || member_token")  # no longer whole tokens
        con.execute("UPDATE members_pseudo SET departement = '06 12 34 56 78' WHERE visits = 4")
    outcomes = check_analytics_identifiers(path)
    assert [(f.label, f.unexpected_count) for o in outcomes for f in o.failed] == [
        ("members_pseudo.departement: no phone", 1)]
    # distinct values per column, added up: 51 tokens + 3 départements + 2 age bands + 1 comment
    members = [o for o in outcomes if o.suite.startswith("analytics_identifiers: members_pseudo.")]
    assert sum(o.row_count for o in members) == 51 + 3 + 2 + 1


def test_identifier_hidden_among_tokens_is_found(tmp_path):
    path = _analytics_file(tmp_path / "a.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE members_pseudo SET member_token = ? WHERE visits = 3", [PLANTED_EMAIL])
    failed = [f.label for o in check_analytics_identifiers(path) for f in o.failed]
    assert failed == ["members_pseudo.member_token: no email"]


def test_clean_analytics_file_passes_identifier_token_and_catalogue_suites(tmp_path):
    path = _analytics_file(tmp_path / "a.duckdb")
    assert all(o.success for o in check_analytics_identifiers(path))
    assert all(o.success for o in check_analytics_tokens(path))


def test_uncatalogued_token_and_bad_token_fail_the_token_suite(tmp_path):
    path = _analytics_file(tmp_path / "a.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE members_pseudo ADD COLUMN visitor_token VARCHAR")
        con.execute("UPDATE members_pseudo SET visitor_token = sha256(departement)")
        con.execute("UPDATE members_pseudo SET member_token = upper(member_token) WHERE visits = 1")
    failures = {o.label: o.examples for r in check_analytics_tokens(path) for o in r.failed}
    assert failures["every column is in the catalogue"] == ["members_pseudo.visitor_token"]
    assert failures["members_pseudo.member_token: 64 lowercase hex"]
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE catalogue")
    with pytest.raises(MissingCatalogueError):
        check_analytics_tokens(path)


def test_masking_keeps_shape_not_value():
    assert mask_value("Jeanne.Martin@Example.FR") == "J***@***.FR"
    assert mask_value("06 12 34 56 78") == "99 99 99 99 99"
    assert mask_value(None) == "<null>"


# --- In Dagster: the blocking check stops publication --------------------------------------------------------

STAGED = dg.AssetKey(["analytics", "members_pseudo"])


def _pipeline(comment: str) -> list:
    @dg.asset(key=STAGED)
    def staged(analytics: AnalyticsFileResource) -> None:
        _analytics_file(analytics.resolved_path, comment=comment)

    @dg.asset(deps=[STAGED])
    def published(analytics: AnalyticsFileResource) -> None:
        analytics.resolved_path.with_suffix(".published").write_text("ok")

    return [staged, published, *analytics_checks(STAGED)]


def _run(tmp_path: Path, comment: str) -> tuple[dg.ExecuteInProcessResult, Path]:
    path = tmp_path / "analytics.duckdb"
    assets = _pipeline(comment)
    result = dg.materialize(
        assets, resources={"analytics": AnalyticsFileResource(path=str(path))}, raise_on_error=False
    )
    return result, path.with_suffix(".published")


def test_planted_email_blocks_publication_in_a_real_materialisation(tmp_path):
    result, published = _run(tmp_path, comment=f"contact {PLANTED_EMAIL}")
    assert not result.success
    assert not published.exists()
    evaluation = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "gx_no_direct_identifier"
    )
    assert not evaluation.passed
    assert evaluation.metadata["unexpected_values"].value == 1
    assert PLANTED_EMAIL not in json.dumps(evaluation.metadata["failures"].value)


def test_clean_file_passes_checks_and_is_published(tmp_path):
    result, published = _run(tmp_path, comment="rendez-vous pris")
    assert result.success
    assert published.read_text() == "ok"
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_raw_and_ledger_checks_run_as_dagster_checks(member_source, tmp_path):
    warehouse = tmp_path / "w.duckdb"
    _ingest_members(member_source, warehouse).close()
    with duckdb.connect(str(warehouse)) as con:
        _ledger(con, [("member", "3", "prospecting", "members", None, "2022-01-01", None, "active", None)])
    members_check = next(
        c for c in raw_table_checks if any(k.asset_key == dg.AssetKey(["raw", "members"]) for k in c.check_keys)
    )
    resources = {
        "warehouse": WarehouseResource(path=str(warehouse)),
        "member_source": SqlSourceResource(system="members", url=str(member_source.url)),
    }
    raw = dg.materialize(
        [dg.AssetSpec(["raw", "members"]), dg.AssetSpec(["retention", "ledger"]), members_check, ledger_check],
        resources=resources,
        selection=dg.AssetSelection.checks(members_check, ledger_check),
        run_config={"ops": {ledger_check.node_def.name: {"config": {"as_of": "2026-11-01"}}}},
        raise_on_error=False,
    )
    evaluations = {e.asset_key.path[0]: e for e in raw.get_asset_check_evaluations()}
    assert evaluations["raw"].passed
    assert not evaluations["retention"].passed
    assert evaluations["retention"].metadata["as_of"].value == "2026-11-01"

