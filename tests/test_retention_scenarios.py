"""Retention scenarios on a tiny hand-built world (real SQLite sources, Parquet logs, real ingest), fixed as_of.

Each subject is built so one rule decides its fate: a member gone for 3 years, a member in open litigation, a
restricted member, prospects 3 years ± 1 day after their last own contact, old and recent navigation events,
a survey answer past its purpose.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from assets.compliance_register import policy_change_preview, processing_register
from assets.retention import no_clock_from_fallback, nothing_past_retention, retention_applied, retention_ledger
from pipelines.identity import resolve_identities
from pipelines.orchestration.resources import (
    ComplianceStoreResource,
    NavigationSourceResource,
    PoliciesResource,
    PseudonymisationKeyResource,
    SqlSourceResource,
    WarehouseResource,
)
from pipelines.orchestration.settings import PROJECT_ROOT
from pipelines.policy.load import load_policy
from pipelines.policy.models import Policy
from pipelines.policy.preview import preview
from pipelines.refresh import ingest_all
from pipelines.retention.apply import apply_retention, audit_applied, residue
from pipelines.retention.ledger import build_ledger, fallback_clocks
from pipelines.sources.schema import (
    COOKIE_CONSENT_SCHEMA,
    NAVIGATION_EVENT_SCHEMA,
    SQL_SYSTEMS,
)
from tests.conftest import core_context, identity_rules, retention_night

AS_OF = dt.date(2026, 11, 1)
ENDED, LITIGANT, ACTIVE, RESTRICTED, LEFT_RECENTLY = 1, 2, 3, 4, 5
OLD_PROSPECT, YOUNG_PROSPECT = 10, 11


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.engines = {s: sa.create_engine(f"sqlite:///{root / (s + '.db')}") for s in SQL_SYSTEMS}
        self.navigation = root / "navigation"
        self.warehouse = root / "warehouse.duckdb"
        for system, metadata in SQL_SYSTEMS.items():
            metadata.create_all(self.engines[system])

    def insert(self, system: str, table: str, *rows: dict[str, object]) -> None:
        with self.engines[system].begin() as con:
            con.execute(SQL_SYSTEMS[system].tables[table].insert(), list(rows))

    def source_keys(self, system: str, table: str, column: str) -> list[object]:
        with self.engines[system].connect() as con:
            return sorted(r[0] for r in con.execute(sa.text(f"SELECT {column} FROM {table}")))

    def ingest(self) -> None:
        with duckdb.connect(str(self.warehouse)) as con:
            ingest_all(con, self.engines, self.navigation, load_policy(PROJECT_ROOT / "policies"))
            resolve_identities(con, identity_rules())

    def events(self, *rows: dict[str, object]) -> None:
        """Add page views, one Parquet file per event (day folders as the website writes them)."""
        for row in rows:
            folder = self.navigation / "events" / f"day={row['ts']:%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([row], schema=NAVIGATION_EVENT_SCHEMA),
                           folder / f"part-{row['event_id']}.parquet")

    def event_ids(self) -> list[str]:
        return sorted(r[0] for r in duckdb.sql(
            f"SELECT event_id FROM read_parquet('{self.navigation}/events/**/*.parquet')").fetchall())

    def nightly(self, policy: Policy) -> None:
        """What the nightly job does for retention: ingest, ledger, apply (sources then warehouse)."""
        self.ingest()
        retention_night(self.warehouse, self.root, policy, self.navigation, self.engines, AS_OF)

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.execute(sql).fetchall()


def _member(member_id: int, **extra: object) -> dict[str, object]:
    return {"member_id": member_id, "first_name": f"Prenom{member_id}", "last_name": f"Nom{member_id}",
            "email": f"m{member_id}@example.org", "phone": f"06000000{member_id:02d}", "birth_date": "2003-04-05",
            "created_at": "2019-09-01 10:00:00", **extra}


def _ended_member_rows(world: World, member_id: int, end_date: str) -> None:
    year = int(end_date[:4])
    world.insert("members", "members", _member(member_id))
    world.insert("members", "contracts", {"contract_id": member_id, "member_id": member_id, "product": "essentiel",
                                          "start_date": "2019-09-01", "end_date": end_date, "status": "terminated"})
    world.insert("members", "contributions", {"contribution_id": member_id, "member_id": member_id,
                                              "due_date": f"{year}-01-05", "amount_eur": 20.0,
                                              "paid_at": f"{year}-01-05 09:00:00"})
    world.insert("members", "accounting_entries", {"entry_id": member_id, "member_id": member_id,
                                                   "entry_date": f"{year}-01-05", "fiscal_year": year,
                                                   "account": "706", "label": "cotisation", "amount_eur": 20.0})


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("SEM_PSEUDONYMISATION_KEY", "5e" * 32)
    w = World(tmp_path)
    _ended_member_rows(w, ENDED, "2023-10-01")
    w.insert("members", "survey_answers", {"answer_id": 1, "member_id": ENDED, "survey": "satisfaction-2023",
                                           "answered_at": "2023-05-01 12:00:00", "score": 9, "comment": "merci"})
    w.insert("members", "interactions", {"interaction_id": 1, "member_id": ENDED, "kind": "complaint",
                                         "channel": "email", "handled_by": "morocco_complaints_provider",
                                         "subject": "retard", "body": "texte", "created_at": "2023-05-01 10:00:00",
                                         "closed_at": "2023-06-01 10:00:00"})
    _ended_member_rows(w, LEFT_RECENTLY, "2024-05-01")
    _ended_member_rows(w, LITIGANT, "2019-06-30")
    w.insert("members", "litigation_cases", {"case_id": 1, "member_id": LITIGANT, "opened_at": "2019-07-01 09:00:00",
                                             "status": "open", "subject": "impayés"})
    _ended_member_rows(w, RESTRICTED, "2019-06-30")
    with w.engines["members"].begin() as con:
        con.execute(sa.text("UPDATE members SET restricted_at = '2026-10-01 09:00:00' WHERE member_id = 4"))
    w.insert("members", "members", _member(ACTIVE))
    w.insert("members", "contracts", {"contract_id": ACTIVE, "member_id": ACTIVE, "product": "essentiel",
                                      "start_date": "2025-09-01", "status": "active"})
    w.insert("members", "survey_answers", {"answer_id": 2, "member_id": ACTIVE, "survey": "satisfaction-2026",
                                           "answered_at": "2026-05-01 12:00:00", "score": 7, "comment": "bien"})
    for prospect_id, last in ((OLD_PROSPECT, "2023-10-31 08:00:00"), (YOUNG_PROSPECT, "2023-11-02 08:00:00")):
        w.insert("prospects", "prospects", {"prospect_id": prospect_id, "first_name": "P", "last_name": "Q",
                                            "email": f"p{prospect_id}@example.org",
                                            "collected_at": "2021-03-01 10:00:00",
                                            "last_inbound_contact_at": last, "marketing_consent": True})
    events = pa.Table.from_pylist([
        {"event_id": "old", "visitor_id": "v1", "ts": dt.datetime(2024, 9, 1, 10), "url": "/",
         "ip_address": "10.0.0.1"},
        {"event_id": "new", "visitor_id": "v1", "ts": dt.datetime(2026, 10, 1, 10), "url": "/",
         "ip_address": "10.0.0.1"},
    ], schema=NAVIGATION_EVENT_SCHEMA)
    for day in ("2024-09-01", "2026-10-01"):
        folder = w.navigation / "events" / f"day={day}"
        folder.mkdir(parents=True)
        pq.write_table(events.filter(pa.compute.equal(pa.compute.strftime(events["ts"], "%Y-%m-%d"), day)),
                       folder / "part-0.parquet")
    (w.navigation / "consents").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"consent_id": "c-old", "visitor_id": "v1", "consented_at": dt.datetime(2025, 1, 1), "analytics": True,
         "advertising": False},
        {"consent_id": "c-new", "visitor_id": "v1", "consented_at": dt.datetime(2026, 6, 1), "analytics": True,
         "advertising": False},
    ], schema=COOKIE_CONSENT_SCHEMA), w.navigation / "consents" / "part-0.parquet")
    return w


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(PROJECT_ROOT / "policies")


def test_member_ended_three_years_ago_leaves_active_base_accounting_only_in_archive(world: World, policy: Policy):
    world.nightly(policy)
    assert ENDED not in world.source_keys("members", "members", "member_id")
    assert ENDED not in world.source_keys("members", "contracts", "member_id")
    assert ENDED not in world.source_keys("members", "accounting_entries", "member_id")
    assert world.query(f"SELECT count(*) FROM raw.members WHERE member_id = {ENDED}") == [(0,)]
    assert world.query(f"SELECT count(*) FROM raw.accounting_entries WHERE member_id = {ENDED}") == [(0,)]
    assert world.query(f"SELECT count(*) FROM archive.accounting_entries WHERE member_id = {ENDED}") == [(1,)]
    assert world.query(f"SELECT count(*) FROM archive.members WHERE member_id = {ENDED}") == [(0,)]


def test_a_day_is_audited_once_with_the_figures_of_its_first_application(world: World, policy: Policy):
    """The nightly run of a day, then the same day run again (an operator's re-execution): the second run finds
    everything done, changes nothing and appends no second `retention.applied` entry."""
    ctx = core_context(world.root, policy, world.navigation)
    for _ in range(2):
        world.ingest()
        with duckdb.connect(str(world.warehouse)) as con:
            build_ledger(con, policy, AS_OF)
            outcome = apply_retention(con, ctx, AS_OF, members=world.engines["members"],
                                      prospects=world.engines["prospects"])
            audit_applied(con, ctx, AS_OF, outcome)
    entries = [json.loads(line) for line in ctx.audit.path.read_text().splitlines()]
    applied = [e for e in entries if e["action"] == "retention.applied"]
    assert [e["decision_id"] for e in applied] == ["retention:2026-11-01"]
    assert applied[0]["details"]["warehouse_rows"]["erase"] > 0 and applied[0]["details"]["source_rows"] > 0
    assert not outcome.changed


def test_contract_goes_at_its_own_date_while_its_end_date_still_times_marketing(world: World, policy: Policy):
    """Membership ended 2.5 years ago: the contract's own 2-year archive is over, so it leaves the source, the
    active base and the archive; the member may still be prospected (3 years from that end date), which the
    dated clock fact keeps timing over a second run. Only the columns marketing uses stay on the member row."""
    world.insert("members", "contracts", {"contract_id": 99, "member_id": ACTIVE, "product": "essentiel",
                                          "start_date": "2024-09-01", "end_date": "2025-08-31", "status": "ended"})
    for _ in range(2):
        world.nightly(policy)
    assert LEFT_RECENTLY in world.source_keys("members", "members", "member_id")
    assert LEFT_RECENTLY not in world.source_keys("members", "contracts", "member_id")
    assert world.query(f"SELECT count(*) FROM archive.contracts WHERE member_id = {LEFT_RECENTLY}") == [(0,)]
    ledger = world.query("SELECT clock_start::DATE, active_until, status FROM retention.ledger WHERE "
                         f"subject_id = '{LEFT_RECENTLY}' AND dataset = 'members' "
                         "AND purpose = 'communication_marketing'")
    assert ledger == [(dt.date(2024, 5, 1), dt.date(2027, 5, 1), "active")]
    assert world.query("SELECT clock_name, clock::DATE FROM retention.clock_events WHERE clock_subject_type = "
                       f"'member' AND clock_key = '{LEFT_RECENTLY}'") == [("membership_end", dt.date(2024, 5, 1))]
    # a member with a running contract has no fact: an older ended contract does not close the membership
    assert world.query(f"SELECT count(*) FROM retention.clock_events WHERE clock_key = '{ACTIVE}' "
                       "AND clock_name = 'membership_end'") == [(0,)]
    assert ACTIVE in world.source_keys("members", "contracts", "member_id")


def test_open_litigation_and_restriction_keep_everything(world: World, policy: Policy):
    world.nightly(policy)
    for member in (LITIGANT, RESTRICTED):
        assert member in world.source_keys("members", "members", "member_id")
        assert member in world.source_keys("members", "accounting_entries", "member_id")
        assert world.query(f"SELECT count(*) FROM raw.contracts WHERE member_id = {member}") == [(1,)]
    statuses = dict(world.query("SELECT subject_id, list_distinct(list(status)) FROM retention.ledger "
                                "WHERE subject_type = 'member' AND subject_id IN ('2', '4') "
                                "AND dataset <> 'litigation_cases' GROUP BY 1"))
    assert statuses == {"2": ["legal_hold"], "4": ["restricted"]}
    reasons = world.query("SELECT reason FROM retention.ledger WHERE subject_id = '2' AND dataset = 'members' "
                          "AND purpose = 'membership'")
    assert reasons == [("delete after 2021-06-30 (active P0D from membership_end, archive P2Y, then delete); "
                        "record legal_hold: open litigation: legal hold suspends to_erase",)]


def test_prospect_erased_one_day_after_three_years_kept_one_day_before(world: World, policy: Policy):
    world.nightly(policy)
    assert world.source_keys("prospects", "prospects", "prospect_id") == [YOUNG_PROSPECT]
    assert world.query("SELECT prospect_id FROM raw.prospects") == [(YOUNG_PROSPECT,)]


def test_navigation_events_past_25_months_are_gone_from_parquet(world: World, policy: Policy):
    world.nightly(policy)
    remaining = duckdb.sql(f"SELECT event_id FROM read_parquet('{world.navigation}/events/**/*.parquet')").fetchall()
    assert remaining == [("new",)]
    consents = duckdb.sql(f"SELECT consent_id FROM read_parquet('{world.navigation}/consents/*.parquet')").fetchall()
    assert consents == [("c-new",)]


def test_survey_answer_is_anonymised_not_deleted_and_still_counted(world: World, policy: Policy):
    world.nightly(policy)
    rows = world.query("SELECT answer_id, member_id, comment, answered_at, score FROM raw.survey_answers ORDER BY 1")
    assert rows[0] == (1, None, None, None, 9)
    assert rows[1][1] == ACTIVE
    with world.engines["members"].connect() as con:
        assert con.execute(sa.text("SELECT member_id, comment, score FROM survey_answers WHERE answer_id = 1")
                           ).fetchall() == [(None, None, 9)]
    assert world.query("SELECT avg(score) FROM raw.survey_answers") == [(8.0,)]


def _state(world: World) -> dict[str, object]:
    """Sources, raw and archive; not the ingest bookkeeping (the file manifest, what the last load read)."""
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                             "WHERE table_schema IN ('raw', 'archive') AND table_name NOT IN "
                             "('ingested_files', 'quarantine', 'ingest_scope') ORDER BY ALL").fetchall()
        state = {f"{s}.{t}": sorted(map(str, con.execute(f'SELECT * EXCLUDE (source_file) FROM {s}."{t}"'
                                                          if t in ('navigation_events', 'cookie_consents')
                                                          else f'SELECT * FROM {s}."{t}"').fetchall()))
                 for s, t in tables}
    for system, metadata in SQL_SYSTEMS.items():
        with world.engines[system].connect() as con:
            for table in metadata.sorted_tables:
                state[f"{system}.{table.name}"] = sorted(map(str, con.execute(table.select()).fetchall()))
    state["parquet"] = sorted(p.name + str(pq.read_table(p).num_rows) for p in world.navigation.rglob("*.parquet"))
    return state


def test_second_run_with_same_as_of_changes_nothing(world: World, policy: Policy):
    world.nightly(policy)
    first = _state(world)
    world.nightly(policy)
    assert _state(world) == first


def test_a_night_with_nothing_newly_due_pushes_no_decision_and_changes_nothing(world: World, policy: Policy):
    """The day's decisions carried out, the next night's ledger decides nothing new: applying it records and sends
    no push-back decision and leaves the sources and the warehouse as they were."""
    world.nightly(policy)
    quiet = AS_OF + dt.timedelta(days=1)
    world.ingest()
    with duckdb.connect(str(world.warehouse)) as con:
        build_ledger(con, policy, quiet)
    before = _state(world)
    with duckdb.connect(str(world.warehouse)) as con:
        outcome = apply_retention(con, core_context(world.root, policy, world.navigation), quiet,
                                  members=world.engines["members"], prospects=world.engines["prospects"])
        assert con.execute("SELECT count(*) FROM retention.pushback_targets").fetchall() == [(0,)]
    assert outcome.source_rows == 0 and not outcome.changed and not outcome.touched
    for engine in world.engines.values():
        with engine.connect() as con:
            applied = con.execute(sa.text("SELECT decision_id FROM privacy_applied_decisions")).scalars().all()
        assert not [d for d in applied if d.startswith(f"retention:{quiet.isoformat()}")]
    assert _state(world) == before


def test_preview_counts_what_a_longer_prospect_period_would_keep_and_touches_nothing(
        world: World, policy: Policy, tmp_path: Path):
    world.ingest()
    proposal = tmp_path / "proposed"
    proposal.mkdir()
    text = (PROJECT_ROOT / "policies" / "purposes.yaml").read_text()
    (proposal / "purposes.yaml").write_text(text.replace("version: 1", "version: 2", 1).replace(
        "active: P3Y\n      clock: prospect_last_contact", "active: P4Y\n      clock: prospect_last_contact"))
    proposed = load_policy(proposal, fallback=PROJECT_ROOT / "policies")
    before = world.query("SELECT count(*) FROM information_schema.tables")
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        table = preview(policy, proposed, con, AS_OF)
    rows = [r for r in table.to_pylist() if r["dataset"] == "prospects"]
    assert rows == [{"purpose": "prospecting", "dataset": "prospects", "status_now": "to_erase",
                     "status_proposed": "active", "records": 1, "why": "active P3Y -> P4Y"}]
    assert all(r["purpose"] == "prospecting" for r in table.to_pylist())
    assert world.query("SELECT count(*) FROM information_schema.tables") == before
    assert world.source_keys("prospects", "prospects", "prospect_id") == [OLD_PROSPECT, YOUNG_PROSPECT]


def test_assets_materialise_with_ui_counts_and_reports(world: World, tmp_path: Path):
    world.ingest()
    resources = {
        "warehouse": WarehouseResource(path=str(world.warehouse)),
        "policies": PoliciesResource(),
        "member_source": SqlSourceResource(system="members", url=f"sqlite:///{world.root / 'members.db'}"),
        "prospect_source": SqlSourceResource(system="prospects", url=f"sqlite:///{world.root / 'prospects.db'}"),
        "navigation": NavigationSourceResource(path=str(world.navigation)),
        "compliance": ComplianceStoreResource(data_dir=str(tmp_path / "compliance")),
        "pseudonymisation_key": PseudonymisationKeyResource(),
    }
    result = dg.materialize(
        [retention_ledger, retention_applied, nothing_past_retention, no_clock_from_fallback, processing_register,
         policy_change_preview],
        resources=resources,
        run_config={"ops": {"retention__ledger": {"config": {"as_of": AS_OF.isoformat()}},
                            "compliance__policy_change_preview": {"config": {"as_of": AS_OF.isoformat()}}}},
    )
    assert result.success
    ledger = result.asset_materializations_for_node("retention__ledger")[0].metadata
    # the member gone 2.5 years ago keeps only what marketing uses: the rest of the row is cleared
    assert ledger["column_groups_out_of_stage"].value["members: membership"] == {"cleared": 1}
    applied = result.asset_materializations_for_node("retention__applied")[0].metadata
    assert applied["erased_rows"].value > 0 and applied["anonymised_rows"].value == 1
    assert "| prospecting | 1 | 0 | 1 | 0 | 0 |" in applied["by_purpose"].value
    checks = result.get_asset_check_evaluations()
    assert sorted((c.check_name, c.passed) for c in checks) == [
        ("no_clock_from_fallback", True), ("nothing_past_retention_in_active_base", True)]
    reports = tmp_path / "compliance" / "reports"
    assert "Registre des activités de traitement" in (reports / "processing_register.md").read_text()
    assert "No record would change status" in (reports / "policy_change_preview.md").read_text()


OLD_VIEW = dt.datetime(2024, 9, 1, 10)  # 26 months before AS_OF: past the 25 months of audience data


def test_hold_and_restriction_reach_the_whole_person(world: World, policy: Policy):
    """The litigant's and the restricted member's page views logged in as them (also one quarantined for its
    missing visitor id), and the prospect record sharing the litigant's e-mail, are all kept; a stranger's
    page view of the same day and an unlinked old prospect go."""
    world.events(
        {"event_id": "lit", "visitor_id": "v-lit", "member_id": LITIGANT, "ts": OLD_VIEW, "url": "/espace"},
        {"event_id": "lit-later", "visitor_id": "v-lit", "ts": OLD_VIEW, "url": "/"},
        {"event_id": "lit-no-visitor", "member_id": LITIGANT, "ts": OLD_VIEW, "url": "/espace"},
        {"event_id": "res", "visitor_id": "v-res", "member_id": RESTRICTED, "ts": OLD_VIEW, "url": "/espace"},
        {"event_id": "stranger", "visitor_id": "v-x", "ts": OLD_VIEW, "url": "/"},
    )
    for prospect_id, email in ((20, f"m{LITIGANT}@example.org"), (21, "nobody@example.org")):
        world.insert("prospects", "prospects", {"prospect_id": prospect_id, "first_name": "P", "last_name": "Q",
                                                "email": email, "collected_at": "2020-01-01 10:00:00"})
    world.nightly(policy)
    kept = set(world.event_ids())
    assert {"lit", "lit-later", "lit-no-visitor", "res"} <= kept and "stranger" not in kept
    assert world.source_keys("prospects", "prospects", "prospect_id") == [YOUNG_PROSPECT, 20]
    statuses = dict(world.query("SELECT record_key, status FROM retention.record_status WHERE dataset = "
                                "'navigation_events' AND record_key IN ('lit', 'res', 'lit-no-visitor')"))
    assert statuses == {"lit": "legal_hold", "lit-no-visitor": "legal_hold", "res": "restricted"}


def test_restriction_verified_by_the_rights_stage_suspends_retention(world: World, policy: Policy):
    """rights.exclusions (written by the rights stage, which runs before retention) restricts the whole person,
    although no source row carries the restriction yet."""
    world.ingest()
    with duckdb.connect(str(world.warehouse)) as con:
        person = con.execute("SELECT person_id FROM identity.person_links WHERE node_type = 'member' "
                             f"AND node_value = '{ENDED}'").fetchall()[0][0]
        con.execute("CREATE SCHEMA rights")
        con.execute("CREATE TABLE rights.exclusions AS SELECT ? AS person_id, 'restricted' AS reason, "
                    "TIMESTAMP '2026-10-31 23:00:00' AS since", [person])
    world.nightly(policy)
    assert ENDED in world.source_keys("members", "members", "member_id")
    assert world.query(f"SELECT DISTINCT status FROM retention.record_status WHERE subject_id = '{ENDED}'") == [
        ("restricted",)]


def test_ledger_runs_after_the_rights_stage():
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    upstream = graph.get_ancestor_asset_keys(dg.AssetKey(["retention", "ledger"]))
    assert {dg.AssetKey(["rights", "exclusions"]), dg.AssetKey(["identity", "person_links"])} <= upstream


def test_quarantined_source_rows_are_under_their_tables_retention(world: World, policy: Policy):
    """A page view without visitor id, 26 months old, and a claim with an unreadable care date of a member gone
    for 3 years are quarantined at ingest, yet leave the navigation log, the member system and raw.quarantine
    when their table's rule says so; a recent page view without visitor id stays."""
    world.events({"event_id": "orphan-old", "ts": OLD_VIEW, "url": "/", "ip_address": "10.0.0.9"},
                 {"event_id": "orphan-new", "ts": dt.datetime(2026, 10, 20, 9), "url": "/"})
    world.insert("members", "reimbursements", {"reimbursement_id": 7, "member_id": ENDED, "care_date": "31/02/2023",
                                               "act_code": "C", "amount_eur": 25.0, "paid_at": "2023-03-05 10:00:00"})
    world.ingest()
    quarantined = ("SELECT coalesce(record_key, record->>'event_id') FROM raw.quarantine "
                   "WHERE table_name IN ('navigation_events', 'reimbursements') ORDER BY 1")
    assert world.query(quarantined) == [("7",), ("orphan-new",), ("orphan-old",)]
    world.nightly(policy)
    assert "orphan-old" not in world.event_ids() and "orphan-new" in world.event_ids()
    assert world.source_keys("members", "reimbursements", "reimbursement_id") == []
    assert world.query(quarantined) == [("orphan-new",)]


def _source_row(world: World, table: str, key: str, value: object, columns: str) -> list[tuple]:
    with world.engines["members"].connect() as con:
        return [tuple(r) for r in con.execute(sa.text(f"SELECT {columns} FROM {table} WHERE {key} = :v"), {"v": value})]


def _former_member_with_address(world: World, member_id: int, end: str, more: str) -> None:
    """A member whose membership ended on `end`, with an IBAN, a postal address and the `more` assignments."""
    _ended_member_rows(world, member_id, end)
    with world.engines["members"].begin() as con:
        con.execute(sa.text("UPDATE members SET iban = 'FR7630006000011234567890189', street = '1 rue X', "
                            f"postal_code = '75001', city = 'Paris', {more} WHERE member_id = :m"), {"m": member_id})


def test_former_member_keeps_only_what_a_running_purpose_uses(world: World, policy: Policy):
    """Membership ended 2 years ago to the day (D = AS_OF): IBAN, birth date and postal address have left the
    member system and the active base for the restricted archive; one day later (ended 2 years + 1 day ago)
    they are nowhere. Names and e-mail stay on both: marketing (3 years) still uses them."""
    on_d, after_d = 30, 31
    for member_id, end in ((on_d, "2024-11-01"), (after_d, "2024-10-31")):
        _former_member_with_address(world, member_id, end, "activity = 'etudiant', establishment_id = 3")
    world.nightly(policy)
    wide = "email, iban, birth_date, street, postal_code, activity, establishment_id"
    assert _source_row(world, "members", "member_id", on_d, wide) == [(f"m{on_d}@example.org",) + (None,) * 6]
    assert _source_row(world, "members", "member_id", after_d, wide) == [(f"m{after_d}@example.org",) + (None,) * 6]
    assert world.query(f"SELECT {wide} FROM raw.members WHERE member_id IN ({on_d}, {after_d})") == [
        (f"m{on_d}@example.org",) + (None,) * 6, (f"m{after_d}@example.org",) + (None,) * 6]
    assert world.query(f"SELECT member_id, iban, birth_date::VARCHAR, street, email FROM archive.members "
                       f"WHERE member_id IN ({on_d}, {after_d})") == [
        (on_d, "FR7630006000011234567890189", "2003-04-05", "1 rue X", None)]
    reasons = world.query("SELECT column_group, state, reason FROM retention.column_status "
                          f"WHERE dataset = 'members' AND record_key = '{after_d}' ORDER BY 1")
    assert [(g, s) for g, s, _ in reasons] == [("customer_relationship+membership", "cleared"),
                                               ("membership", "cleared")]
    assert world.query(f"SELECT establishment_id FROM archive.members WHERE member_id = {on_d}") == [(3,)]
    assert "membership: delete after 2026-10-31" in reasons[1][2]


def test_quarantined_member_loses_what_ended_and_keeps_what_is_archived(world: World, policy: Policy):
    """Two members quarantined for an unreadable birth date (the quarantine keeps only key, ids and dates), both
    still under marketing. Membership ended 2 years + 1 day ago: IBAN and postal address leave the member system
    although the warehouse never saw them. Membership ended 1 year ago: they are in their archive period, and
    the warehouse has no copy to archive, so they stay at the source until the row is fixed (nothing lost), and
    the blocking check does not count them as left behind."""
    cleared, archived = 32, 33
    for member_id, end in ((cleared, "2024-10-31"), (archived, "2025-11-01")):
        _former_member_with_address(world, member_id, end, "birth_date = '31/02/2003'")
    world.ingest()
    assert world.query("SELECT record_key FROM raw.quarantine WHERE table_name = 'members' ORDER BY 1") == [
        (str(cleared),), (str(archived),)]
    world.nightly(policy)
    wide = "email, iban, street, postal_code, city, birth_date"
    assert _source_row(world, "members", "member_id", cleared, wide) == [(f"m{cleared}@example.org",) + (None,) * 5]
    assert _source_row(world, "members", "member_id", archived, wide) == [
        (f"m{archived}@example.org", "FR7630006000011234567890189", "1 rue X", "75001", "Paris", "31/02/2003")]
    world.ingest()  # the cleared row now reads well: it leaves the quarantine for raw, as cleared at the source
    assert world.query(f"SELECT email, iban, street FROM raw.members WHERE member_id = {cleared}") == [
        (f"m{cleared}@example.org", None, None)]
    assert world.query("SELECT record_key FROM raw.quarantine WHERE table_name = 'members'") == [(str(archived),)]
    assert residue_after(world, policy) == {}


def residue_after(world: World, policy: Policy) -> dict[str, int]:
    """What the blocking check `nothing_past_retention_in_active_base` finds once the ledger is rebuilt."""
    with duckdb.connect(str(world.warehouse)) as con:
        build_ledger(con, policy, AS_OF)
        return residue(con, policy)


def test_ip_address_goes_after_its_own_period_page_view_stays(world: World, policy: Policy):
    """The IP serves risk control only (12 months, CNIL logging recommendation): cleared from the log the day
    after, while the page view stays for audience statistics (25 months)."""
    world.events({"event_id": "ip-d", "visitor_id": "v9", "ts": dt.datetime(2025, 11, 1, 23), "url": "/",
                  "ip_address": "10.0.0.7"},
                 {"event_id": "ip-d1", "visitor_id": "v9", "ts": dt.datetime(2025, 10, 31, 23), "url": "/",
                  "ip_address": "10.0.0.8"})
    world.nightly(policy)
    found = duckdb.sql(f"SELECT event_id, ip_address, url FROM read_parquet('{world.navigation}/events/**/*.parquet') "
                       "WHERE event_id LIKE 'ip-%' ORDER BY 1").fetchall()
    assert found == [("ip-d", "10.0.0.7", "/"), ("ip-d1", None, "/")]
    assert world.query("SELECT event_id, ip_address FROM raw.navigation_events WHERE event_id LIKE 'ip-%' "
                       "ORDER BY 1") == [("ip-d", "10.0.0.7"), ("ip-d1", None)]


def test_closed_case_without_decision_date_is_timed_from_the_night_it_is_first_seen_closed(
        world: World, policy: Policy):
    """Not kept forever, not erased at once: the first night it is seen closed starts its clock (kept as a fact),
    the next night it is in the restricted archive for 2 years, and the check names it."""
    world.insert("members", "litigation_cases", {"case_id": 5, "member_id": ENDED, "status": "closed",
                                                 "opened_at": "2019-01-01 09:00:00", "subject": "impayés"})
    world.nightly(policy)
    assert world.query("SELECT status FROM retention.record_status WHERE dataset = 'litigation_cases' "
                       "AND record_key = '5'") == [("active",)]
    with duckdb.connect(str(world.warehouse), read_only=True) as con:
        assert fallback_clocks(con, policy) == {"litigation_final_decision": ["5"]}
    world.ingest()
    with duckdb.connect(str(world.warehouse)) as con:
        build_ledger(con, policy, AS_OF + dt.timedelta(days=1))
        apply_retention(con, core_context(world.root, policy, world.navigation), AS_OF + dt.timedelta(days=1),
                        members=world.engines["members"], prospects=world.engines["prospects"])
    assert world.query("SELECT clock_start::DATE, archive_until, status FROM retention.ledger "
                       f"WHERE dataset = 'litigation_cases' AND subject_id = '{ENDED}'") == [
        (AS_OF, dt.date(2028, 11, 1), "archived")]
    assert world.query("SELECT case_id FROM archive.litigation_cases") == [(5,)]
    assert world.source_keys("members", "litigation_cases", "case_id") == [1]


def test_sued_debt_holds_the_member_until_the_recovery_closes_without_a_case(world: World, policy: Policy):
    """Two members gone for 7 years, each with a debt taken to court and no litigation case: the one whose
    recovery is still open keeps everything (legal hold); the one whose judgment was enforced is erased."""
    for member_id, closed in ((40, None), (41, "2021-03-01 10:00:00")):
        _ended_member_rows(world, member_id, "2019-06-30")
        world.insert("members", "debt_recoveries", {"recovery_id": member_id, "member_id": member_id,
                                                    "contribution_id": member_id, "opened_at": "2019-08-01 10:00:00",
                                                    "closed_at": closed, "sued": True})
    world.nightly(policy)
    assert 40 in world.source_keys("members", "members", "member_id")
    assert 40 in world.source_keys("members", "debt_recoveries", "member_id")
    assert 41 not in world.source_keys("members", "members", "member_id")
    assert 41 not in world.source_keys("members", "debt_recoveries", "member_id")
    assert world.query("SELECT DISTINCT status FROM retention.record_status WHERE subject_id = '40'") == [
        ("legal_hold",)]


def test_objection_of_the_night_ends_marketing_for_the_whole_person(world: World, policy: Policy):
    """The member gone 2.5 years ago is kept only for marketing (3 years); an objection the rights stage put in
    force tonight ends that purpose before retention runs, so the member row leaves the source, while the same
    member without objection (see test_contract_goes_at_its_own_date...) keeps name and e-mail."""
    world.ingest()
    with duckdb.connect(str(world.warehouse)) as con:
        person = con.execute("SELECT person_id FROM identity.person_links WHERE node_type = 'member' "
                             f"AND node_value = '{LEFT_RECENTLY}'").fetchall()[0][0]
        con.execute("CREATE SCHEMA rights")
        con.execute("CREATE TABLE rights.exclusions AS SELECT ? AS person_id, 'objection' AS reason, "
                    "TIMESTAMP '2026-10-31 23:00:00' AS since", [person])
    world.nightly(policy)
    assert LEFT_RECENTLY not in world.source_keys("members", "members", "member_id")
    reason = world.query("SELECT reason FROM retention.ledger WHERE purpose = 'communication_marketing' "
                         f"AND subject_id = '{LEFT_RECENTLY}' AND dataset = 'members'")
    assert reason[0][0].startswith("objection to direct marketing in force (GDPR art. 21(3))")
