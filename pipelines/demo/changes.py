"""A realistic day of changes at the three sources, for the nights after the first (`make bench`, tests).

`day_of_changes(sources, day, seed)` writes what happens at SEM during `day` (every timestamp inside it), so the
nightly run as of `day` + 1 has a day's worth of news to take in, in proportion to the population:
- navigation log: the day's page views (a new `events/day=` folder, the generator's traffic for one day), by
  visitors seen the day before and by new ones, whose consent answers go to a new `consents/` file;
- member system, about 0.1 % of the members touched: new members (contract, proof of identity), memberships
  ended (contract terminated, member row updated), reimbursements paid, complaints, rights requests received
  and verified that day;
- prospecting platform: prospects collected, existing ones selected for a campaign, inbound contacts.

Same (sources, day, seed) -> same changes, but for the change markers (`updated_at`): the sources stamp every
row they insert or update with their own clock at the time of writing, as a real system does, so the nights
after the day see the changes whatever day is simulated. New rows take ids after the largest present; updates
are set-based statements with bound parameters. Nothing here is privacy logic: it only feeds the sources.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.demo import _vocabulary as vocab
from pipelines.demo._columns import (
    SECONDS_PER_DAY,
    at_office_hours,
    concat,
    date_text,
    dictionary,
    format_phones,
    phone_numbers,
    pick,
    random_codes,
    random_uuids,
    timestamp_text,
    weighted_choice,
)
from pipelines.demo.generate import (
    _EPOCH,
    _PROSPECT_PHONE_BASE,
    MONTH_WEIGHTS,
    OTHER_VISITS_SHARE,
    VISITS_PER_MEMBER_MONTH,
    _cities,
    _email_domains,
    _people,
)
from pipelines.sources.schema import COOKIE_CONSENT_SCHEMA, NAVIGATION_EVENT_SCHEMA, SQL_SYSTEMS

# Share of the members each kind of change touches in one day (about 0.1 % of members in all).
NEW_MEMBERS = 0.0003
ENDED_MEMBERSHIPS = 0.0002
REIMBURSEMENTS = 0.0003
COMPLAINTS = 0.0001
RIGHTS_REQUESTS = 0.00005
PROSPECTS_COLLECTED = 0.0005
PROSPECTS_CONTACTED = 0.001
INBOUND_CONTACTS = 0.0002
RETURNING_VISITS = 0.8  # share of the day's visits by a visitor of the day before
_ID_COLUMNS = {
    "members": "member_id", "contracts": "contract_id", "id_documents": "document_id",
    "reimbursements": "reimbursement_id", "interactions": "interaction_id", "rights_requests": "request_id",
    "prospects": "prospect_id", "campaign_selections": "selection_id",
}


_MARKED = {t.name for metadata in SQL_SYSTEMS.values() for t in metadata.sorted_tables if "updated_at" in t.c}


def _clock() -> str:
    """The source's clock, as its change markers hold it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _count(members: int, share: float) -> int:
    return max(1, round(members * share))


def _next_ids(con: sqlite3.Connection, table: str, n: int) -> np.ndarray:
    # Table and column names come from _ID_COLUMNS, never from data.
    (last,) = con.execute(f"SELECT coalesce(max({_ID_COLUMNS[table]}), 0) FROM {table}").fetchone()
    return np.arange(last + 1, last + 1 + n, dtype=np.int64)


def _insert(con: sqlite3.Connection, table: str, rows: pa.Table) -> int:
    if table in _MARKED:
        rows = rows.append_column("updated_at", pa.array([_clock()] * rows.num_rows, pa.string()))
    names = rows.column_names
    placeholders = ", ".join("?" * len(names))
    columns = [rows[name].to_pylist() for name in names]
    con.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})",
                    zip(*columns, strict=True))
    return rows.num_rows


def _pick_ids(con: sqlite3.Connection, rng: np.random.Generator, query: str, n: int) -> list[int]:
    ids = np.array([r[0] for r in con.execute(query).fetchall()], dtype=np.int64)
    return [] if not len(ids) else rng.choice(ids, min(n, len(ids)), replace=False).tolist()


def _member_system(path: Path, rng: np.random.Generator, words: vocab.Vocabulary, today: int) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        with con:
            (members,) = con.execute("SELECT count(*) FROM members").fetchone()
            counts = {"members": _count(members, NEW_MEMBERS)}
            n = counts["members"]
            ids = _next_ids(con, "members", n)
            male, first, first_slug, last, last_slug = _people(rng, words, n)
            city = _cities(rng, n)
            joined = at_office_hours(rng, np.full(n, today))
            _insert(con, "members", pa.table({
                "member_id": ids,
                "civility": pick(["Mme", "M."], male.astype(np.int8)),
                "first_name": first,
                "last_name": last,
                "email": concat(first_slug, ".", last_slug, pa.array(ids).cast(pa.string()), "@",
                                _email_domains(rng, n)),
                "phone": format_phones(rng, np.full(n, 6), phone_numbers(ids)),
                "street": concat(pa.array(rng.integers(1, 160, n)).cast(pa.string()), " ",
                                 pick(words.streets, rng.integers(0, len(words.streets), n))),
                "postal_code": pick([c[1] for c in vocab.CITIES], city),
                "city": pick([c[0] for c in vocab.CITIES], city),
                "birth_date": date_text(today - rng.integers(17 * 365, 27 * 365, n)),
                "activity": pick(["student", "salaried"], (rng.random(n) < 0.1).astype(np.int8)),
                "iban": random_codes(rng, n, "FR76 DDDD DDDD DDDD DDDD DDDD DDD"),
                "marketing_consent": rng.random(n) < 0.4,
                "created_at": timestamp_text(joined),
            }))
            _insert(con, "contracts", pa.table({
                "contract_id": _next_ids(con, "contracts", n),
                "member_id": ids,
                "product": pick(vocab.PRODUCTS, rng.integers(0, len(vocab.PRODUCTS), n)),
                "start_date": date_text(np.full(n, today)),
                "status": pick(["active"], np.zeros(n, np.int64)),
            }))
            _insert(con, "id_documents", pa.table({
                "document_id": _next_ids(con, "id_documents", n),
                "member_id": ids,
                "doc_type": pick(["cni", "passport", "titre_sejour"], weighted_choice(rng, [70, 20, 10], n)),
                "doc_number": random_codes(rng, n, "DDDDDDDDDDDD"),
                "received_at": timestamp_text(joined),
                "reason": pick(["membership"], np.zeros(n, np.int64)),
            }))

            ended = _pick_ids(con, rng, "SELECT contract_id FROM contracts WHERE end_date IS NULL "
                              "AND status = 'active'", _count(members, ENDED_MEMBERSHIPS))
            reasons = pick(vocab.TERMINATION_REASONS, rng.integers(0, len(vocab.TERMINATION_REASONS), len(ended)))
            day_text = date_text(np.array([today]))[0].as_py()
            stamp = [_clock()] * len(ended)
            con.executemany("UPDATE contracts SET end_date = ?, status = 'terminated', termination_reason = ?, "
                            "updated_at = ? WHERE contract_id = ?",
                            zip([day_text] * len(ended), reasons.to_pylist(), stamp, ended, strict=True))
            con.executemany("UPDATE members SET updated_at = ? WHERE member_id = "
                            "(SELECT member_id FROM contracts WHERE contract_id = ?)", zip(stamp, ended, strict=True))
            counts["memberships_ended"] = len(ended)

            active = "SELECT member_id FROM contracts WHERE end_date IS NULL"
            paid = _pick_ids(con, rng, active, _count(members, REIMBURSEMENTS))
            k = len(paid)
            act = weighted_choice(rng, [a[4] for a in vocab.ACTS], k)
            amount = np.round(np.array([a[2] for a in vocab.ACTS])[act] * rng.lognormal(0.0, 0.35, k), 2)
            counts["reimbursements"] = _insert(con, "reimbursements", pa.table({
                "reimbursement_id": _next_ids(con, "reimbursements", k),
                "member_id": np.array(paid, dtype=np.int64),
                "care_date": date_text(today - rng.integers(2, 30, k)),
                "act_code": pick([a[0] for a in vocab.ACTS], act),
                "act_label": pick([a[1] for a in vocab.ACTS], act),
                "amount_eur": amount,
                "reimbursed_eur": np.round(amount * rng.uniform(0.3, 1.0, k), 2),
                "professional_name": concat(pick([a[3] for a in vocab.ACTS], act), " ",
                                            pick(words.last, rng.integers(0, len(words.last), k))),
                "professional_country": pick(["FR", "MC"], (rng.random(k) < 0.02).astype(np.int8)),
                "paid_at": timestamp_text(at_office_hours(rng, np.full(k, today))),
            }))

            complaining = _pick_ids(con, rng, active, _count(members, COMPLAINTS))
            k = len(complaining)
            subjects = dict((kind, subject) for kind, subject, _ in vocab.INTERACTIONS)["complaint"]
            bodies = dict((kind, body) for kind, _, body in vocab.INTERACTIONS)["complaint"]
            counts["complaints"] = _insert(con, "interactions", pa.table({
                "interaction_id": _next_ids(con, "interactions", k),
                "member_id": np.array(complaining, dtype=np.int64),
                "kind": pick(["complaint"], np.zeros(k, np.int64)),
                "channel": pick(["mail", "email", "phone", "web"], weighted_choice(rng, [10, 40, 30, 20], k)),
                "handled_by": pick(["sem", "morocco_complaints_provider"], (rng.random(k) < 0.7).astype(np.int8)),
                "subject": pick(subjects, rng.integers(0, len(subjects), k)),
                "body": pick(bodies, rng.integers(0, len(bodies), k)),
                "created_at": timestamp_text(at_office_hours(rng, np.full(k, today))),
            }))

            counts["rights_requests"] = len(add_rights_requests(con, rng, today, _count(members, RIGHTS_REQUESTS)))
        return counts
    finally:
        con.close()


# Kinds of the requests a day brings (erasure and objection most of all), all with a member id and verified.
_DAY_REQUESTS = (("access", '{"format": "json"}'), ("erasure", '{"reason": "no_longer_needed"}'),
                 ("objection_prospecting", '{"channels": ["email", "phone", "mail"]}'),
                 ("objection", '{"purposes": ["satisfaction_surveys"]}'))


def add_rights_requests(con: sqlite3.Connection, rng: np.random.Generator, today: int, n: int) -> list[int]:
    """`n` requests of members, received and identity-verified on day `today`; their request ids."""
    subjects = _pick_ids(con, rng, "SELECT member_id FROM members", n)
    k = len(subjects)
    kind = rng.integers(0, len(_DAY_REQUESTS), k)
    received = at_office_hours(rng, np.full(k, today))
    ids = _next_ids(con, "rights_requests", k)
    _insert(con, "rights_requests", pa.table({
        "request_id": ids,
        "member_id": np.array(subjects, dtype=np.int64),
        "request_type": pick([t for t, _ in _DAY_REQUESTS], kind),
        "received_at": timestamp_text(received),
        "identity_verified_at": timestamp_text(np.minimum(received + 3600, (today + 1) * SECONDS_PER_DAY - 1)),
        "details": pick([d for _, d in _DAY_REQUESTS], kind),
        "status": pick(["received"], np.zeros(k, np.int64)),
    }))
    return ids.tolist()


def _prospecting(path: Path, rng: np.random.Generator, words: vocab.Vocabulary, today: int,
                 members: int) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        with con:
            n = _count(members, PROSPECTS_COLLECTED)
            ids = _next_ids(con, "prospects", n)
            _, first, first_slug, last, last_slug = _people(rng, words, n)
            sources, source_weights = zip(*vocab.LEAD_SOURCES, strict=True)
            collected = at_office_hours(rng, np.full(n, today))
            counts = {"prospects_collected": _insert(con, "prospects", pa.table({
                "prospect_id": ids,
                "first_name": first,
                "last_name": last,
                "email": concat(first_slug, "-", last_slug, ".p", pa.array(ids).cast(pa.string()), "@",
                                _email_domains(rng, n)),
                "phone": format_phones(rng, np.full(n, 7), phone_numbers(_PROSPECT_PHONE_BASE + 5_000_000 + ids)),
                "lead_source": pick(sources, weighted_choice(rng, source_weights, n)),
                "collected_at": timestamp_text(collected),
                "last_inbound_contact_at": timestamp_text(collected),
                "marketing_consent": rng.random(n) < 0.6,
            }))}

            prospecting = [r[0] for r in con.execute(
                "SELECT campaign_id FROM campaigns WHERE kind = 'prospecting' ORDER BY campaign_id").fetchall()]
            contacted = _pick_ids(con, rng, "SELECT prospect_id FROM prospects WHERE marketing_consent",
                                  _count(members, PROSPECTS_CONTACTED))
            k = len(contacted)
            counts["prospects_contacted"] = _insert(con, "campaign_selections", pa.table({
                "selection_id": _next_ids(con, "campaign_selections", k),
                "campaign_id": pa.array(np.array(prospecting, dtype=np.int64)[rng.integers(0, len(prospecting), k)]),
                "prospect_id": np.array(contacted, dtype=np.int64),
                "member_id": pa.nulls(k, pa.int64()),
                "selected_at": timestamp_text(at_office_hours(rng, np.full(k, today))),
            }))

            inbound = _pick_ids(con, rng, "SELECT prospect_id FROM prospects", _count(members, INBOUND_CONTACTS))
            stamp = timestamp_text(at_office_hours(rng, np.full(len(inbound), today))).to_pylist()
            con.executemany("UPDATE prospects SET last_inbound_contact_at = ?, updated_at = ? WHERE prospect_id = ?",
                            zip(stamp, [_clock()] * len(inbound), inbound, strict=True))
            counts["inbound_contacts"] = len(inbound)
        return counts
    finally:
        con.close()


def _navigation(folder: Path, rng: np.random.Generator, today: int, members: int) -> dict[str, int]:
    """The day's page views: returning visitors of the latest day already logged, and new ones."""
    day = _EPOCH + dt.timedelta(days=today)
    weight = MONTH_WEIGHTS[day.month - 1] / (sum(MONTH_WEIGHTS) / 12)
    visits = max(5, round(members * (1 + OTHER_VISITS_SHARE) * VISITS_PER_MEMBER_MONTH / 30.4 * weight))
    latest = sorted((folder / "events").glob("day=*"))[-1]
    known = pc.unique(pq.read_table(latest, columns=["visitor_id"])["visitor_id"].drop_null())
    returning = rng.random(visits) < RETURNING_VISITS
    new_visitors = random_uuids(rng, int((~returning).sum()))
    visitor_of_visit = np.empty(visits, dtype=object)
    visitor_of_visit[returning] = known.take(pa.array(rng.integers(0, len(known), int(returning.sum())))).to_pylist()
    visitor_of_visit[~returning] = new_visitors.to_pylist()
    logged_in = (rng.random(visits) < 0.3)
    member_of_visit = rng.integers(1, members + 1, visits)

    pages = 1 + rng.geometric(0.5, visits)
    events = int(pages.sum())
    visit = np.repeat(np.arange(visits), pages)
    start = today * SECONDS_PER_DAY + rng.integers(6 * 3600, 22 * 3600, visits)  # ends before midnight
    step = np.arange(events) - np.repeat(np.cumsum(pages) - pages, pages)
    ts = start[visit] + step * rng.integers(20, 150, events)
    order = np.argsort(ts, kind="stable")
    ts, visit = ts[order], visit[order]
    city = _cities(rng, visits)[visit]
    paths, path_weights = zip(*vocab.URL_PATHS, strict=True)
    referrers, referrer_weights = zip(*vocab.REFERRERS, strict=True)
    octets = [pa.array(rng.integers(1, 255, events)).cast(pa.string()) for _ in range(3)]
    columns = {
        "event_id": random_uuids(rng, events),
        "visitor_id": pa.array(visitor_of_visit[visit], pa.string()),
        "member_id": pa.array(member_of_visit[visit], mask=~logged_in[visit]),
        "ts": pa.array(ts * 1_000_000 + rng.integers(0, 1_000_000, events), pa.timestamp("us")),
        "url": dictionary([vocab.SITE + p for p in paths], weighted_choice(rng, path_weights, events)),
        "referrer": dictionary(referrers, weighted_choice(rng, referrer_weights, events)),
        "ip_address": concat(pick([str(o) for o in vocab.IP_FIRST_OCTETS],
                                  rng.integers(0, len(vocab.IP_FIRST_OCTETS), events)),
                             ".", octets[0], ".", octets[1], ".", octets[2]),
        "user_agent": dictionary(vocab.USER_AGENTS, rng.integers(0, len(vocab.USER_AGENTS), events)),
        "city": dictionary([c[0] for c in vocab.CITIES], city),
        "latitude": np.round(np.array([c[2] for c in vocab.CITIES])[city] + rng.normal(0, 0.02, events), 5),
        "longitude": np.round(np.array([c[3] for c in vocab.CITIES])[city] + rng.normal(0, 0.02, events), 5),
    }
    partition = folder / "events" / f"day={day.isoformat()}"
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table([columns[f.name] for f in NAVIGATION_EVENT_SCHEMA], names=NAVIGATION_EVENT_SCHEMA.names),
                   partition / "part-0.parquet", store_schema=False)

    # New visitors answer the banner just before their first page: 70 % accept, 20 % refuse, 10 % never answer.
    answer = weighted_choice(rng, [70, 20, 10], len(new_visitors))
    answered = np.flatnonzero(answer < 2)
    first_seen = np.full(visits, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, visit, ts)
    new_first_seen = first_seen[~returning][answered]
    consents = pa.table({
        "consent_id": random_uuids(rng, len(answered)),
        "visitor_id": new_visitors.take(pa.array(answered)),
        "consented_at": pa.array((new_first_seen - 30) * 1_000_000, pa.timestamp("us")),
        "analytics": answer[answered] == 0,
        "advertising": (answer[answered] == 0) & (rng.random(len(answered)) < 0.5),
    }, schema=COOKIE_CONSENT_SCHEMA)
    pq.write_table(consents, folder / "consents" / f"consents-{day.isoformat()}.parquet")
    return {"navigation_events": events, "cookie_consents": len(answered)}


def verified_requests(sources: Path, day: dt.date, n: int, seed: int = 42) -> list[int]:
    """`n` new rights requests of members at the member system under `sources`, received and verified on `day`
    (what the rights sensor starts a run for); their request ids."""
    con = sqlite3.connect(sources / "members.db")
    try:
        with con:
            return add_rights_requests(con, np.random.default_rng([seed, day.toordinal(), n]),
                                       (day - _EPOCH).days, n)
    finally:
        con.close()


def day_of_changes(sources: Path, day: dt.date, seed: int = 42) -> dict[str, int]:
    """Apply one day of activity (`day`) to the sources under `sources`; what was added or changed, by kind."""
    rng = np.random.default_rng([seed, day.toordinal(), 14])
    words = vocab.sample_vocabulary(seed)
    today = (day - _EPOCH).days
    counts = _member_system(sources / "members.db", rng, words, today)
    con = sqlite3.connect(sources / "members.db")
    try:
        (members,) = con.execute("SELECT count(*) FROM members").fetchone()
    finally:
        con.close()
    counts |= _prospecting(sources / "prospects.db", rng, words, today, members)
    counts |= _navigation(sources / "navigation", rng, today, members)
    return counts
