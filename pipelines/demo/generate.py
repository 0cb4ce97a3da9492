"""Deterministic, vectorised generator of the three demo source systems (member, prospecting, navigation).

`generate(out_dir, members, seed, as_of)` writes `members.db` and `prospects.db` (SQLite, tables of
pipelines.sources.schema) and the navigation Parquet log (`navigation/events/day=…/part-0.parquet`,
`navigation/consents/consents.parquet`). Same (seed, as_of) -> same rows; nothing is dated on or
after `as_of`. Columns are drawn with numpy and assembled with Arrow compute; Faker only fills vocabularies.

The data carries the edge cases the privacy pipeline must handle: memberships ended at every age, unpaid
contributions and sued debts, open and closed litigation, Monaco health professionals, complaints handled in
Morocco, prospects who became members (same contact, other formatting), duplicated prospects, siblings on one
family phone, two members sharing one mailbox, old inbound contacts, visitors without consent, rights requests
of every type (some unverified, some unmatched), and a few malformed rows that ingestion must quarantine.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import shutil
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from pipelines.demo import _vocabulary as vocab
from pipelines.demo._columns import (
    SECONDS_PER_DAY,
    at_office_hours,
    between,
    concat,
    cycle_values,
    date_text,
    dictionary,
    format_phones,
    messy_emails,
    month_start,
    null_mask,
    phone_numbers,
    pick,
    random_codes,
    random_uuids,
    replace_where,
    timestamp_text,
    weighted_choice,
    with_nulls,
    year_of,
)
from pipelines.normalise import email_sql, phone_sql
from pipelines.private import open_private, private_dir
from pipelines.sources.schema import (
    COOKIE_CONSENT_SCHEMA,
    NAVIGATION_EVENT_SCHEMA,
    member_metadata,
    prospect_metadata,
)

_EPOCH = dt.date(1970, 1, 1)
_YEAR = 365
_INSERT_BATCH = 250_000
# Below this size starting a second Python process costs more than it saves.
_PARALLEL_FROM_MEMBERS = 50_000
# Member indices (member_id - 1) planted with shared contacts: identity must not merge them.
_SIBLINGS = (1, 2)  # one family phone
_SHARED_MAILBOX = (3, 4)  # one e-mail address
# Subscriber-number ranges (see phone_numbers) kept apart so only deliberate duplicates share a phone.
_PROSPECT_PHONE_BASE = 10_000_000
_REQUEST_PHONE_BASE = 90_000_000
_BAD_BIRTH_DATES = ("31/02/1999", "inconnue", "1999-02-31", "00/00/0000", "12-13-2001", "né en 2001")
RIGHTS_TYPES = (
    "access", "rectification", "erasure", "restriction", "objection", "objection_prospecting",
    "lift_restriction",
)
_STREAMS = (
    "members", "contracts", "id_documents", "reimbursements", "contributions", "debt_recoveries",
    "accounting_entries", "interactions", "survey_answers", "litigation_cases", "rights_requests",
    "prospects", "campaigns", "campaign_selections", "suppression_list", "navigation",
)


def _malformed_count(rows: int) -> int:
    """About 0.1% of a table, at least 3 so every quarantine reason shows up even at test scale."""
    return min(rows, max(3, round(rows * 0.001)))


@dataclass(frozen=True)
class _Members:
    """Per-member arrays (index i = member_id i + 1) that the related tables are drawn from."""

    ids: np.ndarray
    first_name: pa.Array
    last_name: pa.Array
    email: pa.Array  # clean (lower-case, trimmed) address, null for members without e-mail
    phone_digit: np.ndarray  # 6 or 7
    phone_number: np.ndarray
    phone_null: np.ndarray
    start: np.ndarray  # first day of membership
    end: np.ndarray  # last day of membership (the day before as_of while it runs)
    active: np.ndarray
    radiated: np.ndarray
    rejoined: np.ndarray  # has an earlier, terminated contract
    first_start: np.ndarray
    first_end: np.ndarray
    last_start: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)


def _people(
    rng: np.random.Generator, words: vocab.Vocabulary, n: int
) -> tuple[np.ndarray, pa.Array, pa.Array, pa.Array, pa.Array]:
    """Sex, first name, its slug, last name, its slug for n people (civility follows the first name)."""
    male = rng.random(n) < 0.47
    male_idx = rng.integers(0, len(words.first_male), n)
    female_idx = rng.integers(0, len(words.first_female), n)
    last_idx = rng.integers(0, len(words.last), n)
    is_male = pa.array(male)
    first = pc.if_else(is_male, pick(words.first_male, male_idx), pick(words.first_female, female_idx))
    first_slug = pc.if_else(
        is_male, pick(words.first_male_slug, male_idx), pick(words.first_female_slug, female_idx)
    )
    return male, first, first_slug, pick(words.last, last_idx), pick(words.last_slug, last_idx)


def _email_domains(rng: np.random.Generator, n: int) -> pa.Array:
    names, weights = zip(*vocab.EMAIL_DOMAINS, strict=True)
    return pick(names, weighted_choice(rng, weights, n))


def _cities(rng: np.random.Generator, n: int) -> np.ndarray:
    """Indices into vocab.CITIES, weighted by where students live."""
    return weighted_choice(rng, [c[4] for c in vocab.CITIES], n)


def _members(rng: np.random.Generator, words: vocab.Vocabulary, n: int, today: int) -> tuple[pa.Table, _Members]:
    ids = np.arange(1, n + 1, dtype=np.int64)
    male, first, first_slug, last, last_slug = _people(rng, words, n)

    # Memberships: running ones, and ended ones of every age up to 12 years (the retention clocks' inputs).
    active = rng.random(n) < 0.55
    end = np.where(active, today - 1, today - rng.integers(1, 12 * _YEAR + 1, n))
    last_start = np.where(active, today - rng.integers(1, 8 * _YEAR, n), end - rng.integers(90, 6 * _YEAR, n))
    rejoined = rng.random(n) < 0.2
    first_end = last_start - rng.integers(1, 180, n)
    first_start = first_end - rng.integers(180, 4 * _YEAR, n)
    start = np.where(rejoined, first_start, last_start)
    radiated = ~active & (rng.random(n) < 0.15)

    birth = date_text(start - rng.integers(17 * _YEAR, 27 * _YEAR, n))
    bad = null_mask(n, rng.choice(n, _malformed_count(n), replace=False))
    birth = replace_where(birth, bad, cycle_values(_BAD_BIRTH_DATES, n))

    sep = pick([".", "_", ""], weighted_choice(rng, [60, 15, 25], n))
    email = concat(first_slug, sep, last_slug, pa.array(ids).cast(pa.string()), "@", _email_domains(rng, n))
    email = with_nulls(email, rng.random(n) < 0.02)
    # A shared mailbox: two members use one address (a household's); no random draw, so every other column
    # stays as it was.
    home = pc.coalesce(email[_SHARED_MAILBOX[0]], pa.scalar("famille.martin@exemple.fr"))
    email = pc.if_else(null_mask(n, list(_SHARED_MAILBOX)), home, email)
    typed_email = replace_where(email, rng.random(n) < 0.04, messy_emails(rng, email))

    phone_digit = np.where(rng.random(n) < 0.7, 6, 7)
    phone_number = phone_numbers(ids)
    phone_null = rng.random(n) < 0.03
    # Siblings on the family phone: the second has the last name and the phone of the first.
    first_sibling, second_sibling = _SIBLINGS
    phone_digit[second_sibling], phone_number[second_sibling] = phone_digit[first_sibling], phone_number[first_sibling]
    phone_null[list(_SIBLINGS)] = False
    last = pc.if_else(null_mask(n, [second_sibling]), last[first_sibling], last)
    phone = with_nulls(format_phones(rng, phone_digit, phone_number), phone_null)

    city = _cities(rng, n)
    activity = weighted_choice(rng, [82, 9, 3, 6], n)
    establishment = rng.integers(1, len(vocab.ESTABLISHMENTS) + 1, n)
    created = at_office_hours(rng, start)
    updated = created + np.floor(rng.random(n) * (today * SECONDS_PER_DAY - created)).astype(np.int64)
    table = pa.table({
        "member_id": ids,
        "civility": pick(["Mme", "M."], male.astype(np.int8)),
        "first_name": first,
        "last_name": last,
        "email": typed_email,
        "phone": phone,
        "street": concat(pa.array(rng.integers(1, 160, n)).cast(pa.string()), " ",
                         pick(words.streets, rng.integers(0, len(words.streets), n))),
        "postal_code": pick([c[1] for c in vocab.CITIES], city),
        "city": pick([c[0] for c in vocab.CITIES], city),
        "birth_date": birth,
        "establishment_id": pa.array(establishment, mask=(activity != 0) & (rng.random(n) < 0.6)),
        "activity": pick(["student", "salaried", "self_employed", "none"], activity),
        "iban": with_nulls(random_codes(rng, n, "FR76 DDDD DDDD DDDD DDDD DDDD DDD"), rng.random(n) < 0.15),
        "marketing_consent": rng.random(n) < 0.4,
        "created_at": timestamp_text(created),
        "updated_at": timestamp_text(updated),
    })
    state = _Members(
        ids=ids, first_name=first, last_name=last, email=email, phone_digit=phone_digit,
        phone_number=phone_number, phone_null=phone_null, start=start, end=end, active=active,
        radiated=radiated, rejoined=rejoined, first_start=first_start, first_end=first_end, last_start=last_start,
    )
    return table, state


def _establishments() -> pa.Table:
    rows = vocab.ESTABLISHMENTS
    return pa.table({
        "establishment_id": np.arange(1, len(rows) + 1),
        **{name: [r[i] for r in rows] for i, name in enumerate(("name", "kind", "street", "postal_code", "city"))},
    })


def _contracts(rng: np.random.Generator, m: _Members) -> pa.Table:
    earlier = np.flatnonzero(m.rejoined)
    member = np.concatenate([m.ids, m.ids[earlier]])
    start = np.concatenate([m.last_start, m.first_start[earlier]])
    end = np.concatenate([m.end, m.first_end[earlier]])
    running = np.concatenate([m.active, np.zeros(len(earlier), bool)])
    radiated = np.concatenate([m.radiated, np.zeros(len(earlier), bool)])
    is_earlier = np.arange(len(member)) >= m.n
    status = np.where(running, 0, np.where(radiated, 2, 1))

    reasons = (*vocab.TERMINATION_REASONS, *vocab.RADIATION_REASONS, "product_change")
    n_term = len(vocab.TERMINATION_REASONS)
    reason = np.where(radiated, n_term + rng.integers(0, 2, len(member)), rng.integers(0, n_term, len(member)))
    reason = np.where(is_earlier, len(reasons) - 1, reason)

    order = np.lexsort((start, member))
    return pa.table({
        "contract_id": np.arange(1, len(member) + 1),
        "member_id": member[order],
        "product": pick(vocab.PRODUCTS, weighted_choice(rng, [40, 35, 15, 10], len(member))[order]),
        "start_date": date_text(start[order]),
        "end_date": date_text(end[order], null=running[order]),
        "status": pick(["active", "terminated", "radiated"], status[order]),
        "termination_reason": with_nulls(pick(reasons, reason[order]), running[order]),
    })


def _per_member(
    rng: np.random.Generator, m: _Members, mean: float, earliest: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Poisson(mean) rows per member: the owner's index and a day inside the membership."""
    owner = np.repeat(np.arange(m.n), rng.poisson(mean, m.n))
    low = m.start[owner] if earliest is None else np.maximum(m.start[owner], earliest)
    return owner, between(rng, low, m.end[owner])


def _due_or_null(seconds: np.ndarray, today: int, unpaid: np.ndarray | None = None) -> pa.Array:
    """Settlement timestamps, null when still pending: not yet reached on as_of, or never paid."""
    pending = seconds >= today * SECONDS_PER_DAY
    return timestamp_text(seconds, null=pending if unpaid is None else pending | unpaid)


def _reimbursements(rng: np.random.Generator, words: vocab.Vocabulary, m: _Members, today: int) -> pa.Table:
    owner, day = _per_member(rng, m, 4.0)
    rows = len(owner)
    act = weighted_choice(rng, [a[4] for a in vocab.ACTS], rows)
    amount = np.round(np.array([a[2] for a in vocab.ACTS])[act] * rng.lognormal(0.0, 0.35, rows), 2)
    monaco = rng.random(rows) < 0.02
    professional = concat(pick([a[3] for a in vocab.ACTS], act), " ",
                          pick(words.last, rng.integers(0, len(words.last), rows)))

    # Malformed rows for quarantine: some without member, some with an unreadable care date.
    bad = rng.choice(rows, min(rows, 2 * _malformed_count(rows)), replace=False)
    no_member, bad_date = null_mask(rows, bad[::2]), null_mask(rows, bad[1::2])
    return pa.table({
        "reimbursement_id": np.arange(1, rows + 1),
        "member_id": pa.array(m.ids[owner], mask=no_member),
        "care_date": replace_where(date_text(day), bad_date, cycle_values(["N/A"], rows)),
        "act_code": pick([a[0] for a in vocab.ACTS], act),
        "act_label": pick([a[1] for a in vocab.ACTS], act),
        "amount_eur": amount,
        "reimbursed_eur": np.round(amount * rng.uniform(0.3, 1.0, rows), 2),
        "professional_name": professional,
        "professional_country": pick(["FR", "MC"], monaco.astype(np.int8)),
        "paid_at": _due_or_null(at_office_hours(rng, day + rng.integers(2, 30, rows)), today),
    })


def _contributions(rng: np.random.Generator, m: _Members, today: int) -> tuple[pa.Table, pa.Table]:
    """Contributions (some unpaid, many of them by radiated members) and the recoveries of unpaid ones."""
    owner, day = _per_member(rng, m, 6.0)
    rows = len(owner)
    due = np.maximum(month_start(day), m.start[owner])
    unpaid = rng.random(rows) < np.where(m.radiated[owner], 0.5, 0.03)
    paid = at_office_hours(rng, due + rng.integers(0, 25, rows))
    contributions = pa.table({
        "contribution_id": np.arange(1, rows + 1),
        "member_id": m.ids[owner],
        "due_date": date_text(due),
        "amount_eur": np.array([19.9, 29.9, 44.9, 64.9])[rng.integers(0, 4, rows)],
        "paid_at": _due_or_null(paid, today, unpaid),
    })

    # Recovery starts a month or two after the due date; some cases end in court.
    overdue = np.flatnonzero(unpaid & (due + 45 < today) & (rng.random(rows) < 0.7))
    k = len(overdue)
    opened = at_office_hours(rng, np.minimum(due[overdue] + rng.integers(30, 90, k), today - 1))
    closed = opened + rng.integers(15, 600, k) * SECONDS_PER_DAY
    sued = rng.random(k) < 0.2
    sued[:2] = True
    recoveries = pa.table({
        "recovery_id": np.arange(1, k + 1),
        "member_id": m.ids[owner[overdue]],
        "contribution_id": overdue + 1,
        "opened_at": timestamp_text(opened),
        "closed_at": _due_or_null(closed, today, rng.random(k) < 0.6),
        "sued": sued,
    })
    return contributions, recoveries


def _accounting_entries(rng: np.random.Generator, m: _Members, today: int) -> pa.Table:
    owner, day = _per_member(rng, m, 3.0, earliest=today - 12 * _YEAR)
    rows = len(owner)
    accounts = (("706100", "Cotisation adhérent"), ("411000", "Encaissement adhérent"),
                ("602200", "Prestations versées"), ("512000", "Banque - virement adhérent"))
    account = rng.integers(0, len(accounts), rows)
    return pa.table({
        "entry_id": np.arange(1, rows + 1),
        "member_id": m.ids[owner],
        "entry_date": date_text(day),
        "fiscal_year": year_of(day),
        "account": pick([a[0] for a in accounts], account),
        "label": pick([a[1] for a in accounts], account),
        "amount_eur": np.round(rng.lognormal(3.5, 0.6, rows), 2),
    })


def _interactions(rng: np.random.Generator, m: _Members, today: int) -> pa.Table:
    owner, day = _per_member(rng, m, 1.0)
    rows = len(owner)
    kind = weighted_choice(rng, [35, 10, 25, 15, 15], rows)
    subjects = [s for _, subject_list, _ in vocab.INTERACTIONS for s in subject_list]
    bodies = [b for _, _, body_list in vocab.INTERACTIONS for b in body_list]
    per_kind_subjects, per_kind_bodies = len(vocab.INTERACTIONS[0][1]), len(vocab.INTERACTIONS[0][2])
    complaint = kind == 1
    created = at_office_hours(rng, day)
    closed = created + rng.integers(3600, 90 * SECONDS_PER_DAY, rows)
    return pa.table({
        "interaction_id": np.arange(1, rows + 1),
        "member_id": m.ids[owner],
        "kind": pick([k[0] for k in vocab.INTERACTIONS], kind),
        "channel": pick(["mail", "email", "phone", "web"], weighted_choice(rng, [10, 40, 30, 20], rows)),
        "handled_by": pick(["sem", "morocco_complaints_provider"],
                           (complaint & (rng.random(rows) < 0.7)).astype(np.int8)),
        "subject": pick(subjects, kind * per_kind_subjects + rng.integers(0, per_kind_subjects, rows)),
        "body": pick(bodies, kind * per_kind_bodies + rng.integers(0, per_kind_bodies, rows)),
        "created_at": timestamp_text(created),
        "closed_at": _due_or_null(closed, today, rng.random(rows) < 0.08),
    })


def _survey_answers(rng: np.random.Generator, m: _Members) -> pa.Table:
    owner, day = _per_member(rng, m, 0.3)
    rows = len(owner)
    return pa.table({
        "answer_id": np.arange(1, rows + 1),
        "member_id": m.ids[owner],
        "survey": concat("Baromètre satisfaction ", pa.array(year_of(day)).cast(pa.string())),
        "answered_at": timestamp_text(at_office_hours(rng, day)),
        "score": np.clip(np.round(rng.beta(5, 2, rows) * 10), 0, 10).astype(np.int64),
        "comment": with_nulls(pick(vocab.SURVEY_COMMENTS, rng.integers(0, len(vocab.SURVEY_COMMENTS), rows)),
                              rng.random(rows) < 0.5),
    })


def _litigation_cases(rng: np.random.Generator, m: _Members, today: int) -> tuple[pa.Table, np.ndarray]:
    """Cases (40% still open, closed ones decided at various ages) and the members under an open case."""
    k = max(6, round(m.n * 0.005))
    owner = rng.choice(m.n, k, replace=k > m.n)
    opened = between(rng, m.start[owner], np.minimum(m.end[owner] + _YEAR, today - 1))
    is_open = np.arange(k) % 5 < 2
    decided = np.minimum(opened + rng.integers(60, 1500, k), today - 1)
    table = pa.table({
        "case_id": np.arange(1, k + 1),
        "member_id": m.ids[owner],
        "opened_at": timestamp_text(at_office_hours(rng, opened)),
        "status": pick(["closed", "open"], is_open.astype(np.int8)),
        "final_decision_at": timestamp_text(at_office_hours(rng, decided), null=is_open),
        "subject": pick(vocab.LITIGATION_SUBJECTS, rng.integers(0, len(vocab.LITIGATION_SUBJECTS), k)),
    })
    return table, owner[is_open]


def _held_eraser(under_legal_hold: np.ndarray) -> int:
    """The member under legal hold whose erasure is planted: not one of the shared-contact members."""
    return int(under_legal_hold[~np.isin(under_legal_hold, _SIBLINGS + _SHARED_MAILBOX)][0])


def _rights_requests(
    rng: np.random.Generator, m: _Members, today: int, under_legal_hold: np.ndarray
) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Requests of every type received in the last 45 days; returns the table and the verified member requests
    (member, time of receipt, request id), which came with an ID copy.

    Subjects are named by member_id or by a hand-typed e-mail only; two match nobody; a few are not yet
    identity-verified; one erasure comes from a member under an open litigation (legal hold).
    """
    k = max(12, round(m.n * 0.002))
    row = np.arange(k)
    kind = np.where(row < len(RIGHTS_TYPES), row % len(RIGHTS_TYPES), rng.integers(0, len(RIGHTS_TYPES), k))
    subject = rng.choice(m.n, k, replace=k > m.n)
    subject[RIGHTS_TYPES.index("erasure")] = _held_eraser(under_legal_hold)
    has_email = pc.is_valid(m.email.take(pa.array(subject))).to_numpy(zero_copy_only=False)
    by_email = (rng.random(k) < 0.45) & has_email
    nobody = row >= k - 2
    by_email |= nobody
    clean = m.email.take(pa.array(subject))
    unknown = concat("Personne.Inconnue", pa.array(row).cast(pa.string()), "@Exemple.fr ")
    email = replace_where(with_nulls(clean, rng.random(k) < 0.5), by_email, messy_emails(rng, clean))
    email = replace_where(email, nobody, unknown)

    received_day = today - np.where(np.isin(row, [0, 5]), rng.integers(32, 46, k), rng.integers(1, 46, k))
    received = at_office_hours(rng, received_day)
    unverified = (rng.random(k) < 0.1) & (row >= len(RIGHTS_TYPES))
    unverified[len(RIGHTS_TYPES):len(RIGHTS_TYPES) + 2] = True
    verified = np.minimum(received + rng.integers(3600, 3 * SECONDS_PER_DAY, k), today * SECONDS_PER_DAY - 1)

    new_phone = format_phones(rng, np.full(k, 6), phone_numbers(_REQUEST_PHONE_BASE + row))
    new_city = pick([c[0] for c in vocab.CITIES], _cities(rng, k))
    details = [
        cycle_values(['{"format": "json"}'], k),
        concat('{"phone": "', new_phone, '", "city": "', new_city, '"}'),
        cycle_values(['{"reason": "no_longer_needed"}'], k),
        cycle_values(['{"ground": "accuracy_contested"}'], k),
        cycle_values(['{"purposes": ["satisfaction_surveys"]}'], k),
        cycle_values(['{"channels": ["email", "phone", "mail"]}'], k),
        cycle_values(["{}"], k),
    ]
    table = pa.table({
        "request_id": row + 1,
        "member_id": pa.array(m.ids[subject], mask=by_email),
        "email": email,
        "request_type": pick(RIGHTS_TYPES, kind),
        "received_at": timestamp_text(received),
        "identity_verified_at": timestamp_text(verified, null=unverified),
        "details": pc.choose(pa.array(kind, pa.int8()), *details),
        "status": cycle_values(["received"], k),
    })
    with_id_copy = ~unverified & ~by_email
    return table, subject[with_id_copy], received[with_id_copy], (row + 1)[with_id_copy]


def _id_documents(
    rng: np.random.Generator, m: _Members, request_members: np.ndarray, request_received: np.ndarray,
    request_ids: np.ndarray,
) -> pa.Table:
    """One proof of identity per membership, plus the ID copy sent with each verified rights request."""
    owner = np.concatenate([np.arange(m.n), request_members])
    received = np.concatenate([at_office_hours(rng, m.start - rng.integers(0, 15, m.n)), request_received])
    rows = len(owner)
    doc = weighted_choice(rng, [70, 20, 10], rows)
    number = pc.choose(
        pa.array(doc, pa.int8()),
        random_codes(rng, rows, "DDDDDDDDDDDD"), random_codes(rng, rows, "DDLLDDDDD"),
        random_codes(rng, rows, "DDDDDDDDDD"),
    )
    return pa.table({
        "document_id": np.arange(1, rows + 1),
        "member_id": m.ids[owner],
        "doc_type": pick(["cni", "passport", "titre_sejour"], doc),
        "doc_number": number,
        "received_at": timestamp_text(received),
        "reason": pick(["membership", "rights_request"], (np.arange(rows) >= m.n).astype(np.int8)),
        "request_id": pa.array(np.concatenate([np.zeros(m.n, np.int64), request_ids]),
                               mask=np.arange(rows) < m.n),
    })


def _prospects(rng: np.random.Generator, words: vocab.Vocabulary, m: _Members, today: int,
               converted_first: np.ndarray) -> pa.Table:
    """Two prospects per member: ~15% are members (converted), ~2% the same person entered twice.
    The members of `converted_first` (the erasure under legal hold) are among the converted ones, their
    e-mail typed differently, so an erasure must reach the prospecting platform too."""
    total = 2 * m.n
    converted = min(round(0.15 * total), m.n)
    duplicates = max(3, round(0.02 * total))
    fresh = total - converted - duplicates

    _, first, first_slug, last, last_slug = _people(rng, words, fresh)
    fresh_email = concat(first_slug, "-", last_slug, pa.array(np.arange(1, fresh + 1)).cast(pa.string()), "@",
                         _email_domains(rng, fresh))
    members = rng.choice(m.n, converted, replace=False)
    members = np.concatenate([converted_first, members[~np.isin(members, converted_first)]])[:converted]
    take = pa.array(members)
    first = pa.concat_arrays([first, m.first_name.take(take)])
    last = pa.concat_arrays([last, m.last_name.take(take)])
    email = pa.concat_arrays([fresh_email, m.email.take(take)])
    digit = np.concatenate([np.where(rng.random(fresh) < 0.7, 6, 7), m.phone_digit[members]])
    number = np.concatenate([phone_numbers(_PROSPECT_PHONE_BASE + np.arange(fresh)), m.phone_number[members]])
    no_phone = np.concatenate([rng.random(fresh) < 0.05, m.phone_null[members]])
    messy = np.concatenate([rng.random(fresh) < 0.03, (rng.random(converted) < 0.5)
                            | np.isin(members, converted_first)])

    # The same person typed in again, contact details re-formatted by hand.
    again = pa.array(rng.integers(0, fresh + converted, duplicates))
    first, last, email = (pa.concat_arrays([a, a.take(again)]) for a in (first, last, email))
    digit, number, no_phone = (np.concatenate([a, a[again.to_numpy()]]) for a in (digit, number, no_phone))
    messy = np.concatenate([messy, np.ones(duplicates, bool)])

    order = pa.array(rng.permutation(total))
    email = replace_where(email, messy, messy_emails(rng, email)).take(order)
    phone = with_nulls(format_phones(rng, digit, number), no_phone).take(order)
    first, last = first.take(order), last.take(order)

    collected = today - rng.integers(1, 6 * _YEAR, total)
    inbound = between(rng, collected, np.full(total, today - 1))
    # Some last inbound contacts sit right at the 3-year prospecting horizon.
    at_horizon = rng.random(total) < 0.03
    inbound = np.where(at_horizon, today - 3 * _YEAR + rng.integers(-3, 4, total), inbound)
    collected = np.where(at_horizon, np.minimum(collected, inbound - rng.integers(0, 200, total)), collected)
    schools = [e[0] for e in vocab.ESTABLISHMENTS]
    sources, source_weights = zip(*vocab.LEAD_SOURCES, strict=True)
    return pa.table({
        "prospect_id": np.arange(1, total + 1),
        "first_name": first,
        "last_name": last,
        "email": email,
        "phone": phone,
        "school": with_nulls(pick(schools, rng.integers(0, len(schools), total)), rng.random(total) < 0.35),
        "lead_source": pick(sources, weighted_choice(rng, source_weights, total)),
        "collected_at": timestamp_text(at_office_hours(rng, collected)),
        "last_inbound_contact_at": timestamp_text(at_office_hours(rng, inbound), null=rng.random(total) < 0.3),
        "marketing_consent": rng.random(total) < 0.6,
    })


def _campaigns(rng: np.random.Generator, today: int, k: int = 40) -> pa.Table:
    kind = np.arange(k) % len(vocab.CAMPAIGN_KINDS)
    launched = today - rng.integers(1, 6 * _YEAR, k)
    city = pick([c[0] for c in vocab.CITIES], _cities(rng, k))
    return pa.table({
        "campaign_id": np.arange(1, k + 1),
        "name": concat(pick(vocab.CAMPAIGN_LABELS, kind), " ", pa.array(year_of(launched)).cast(pa.string()),
                       " - ", city),
        "kind": pick(vocab.CAMPAIGN_KINDS, kind),
        "channel": pick(vocab.CAMPAIGN_CHANNELS, rng.integers(0, len(vocab.CAMPAIGN_CHANNELS), k)),
        "launched_at": timestamp_text(at_office_hours(rng, launched)),
    })


def _campaign_selections(rng: np.random.Generator, campaigns: pa.Table, members: int, prospects: int) -> pa.Table:
    """Loyalty and survey campaigns target members, prospecting targets prospects, product tests both."""
    rows = members
    campaign = rng.integers(0, campaigns.num_rows, rows)
    kind = pc.index_in(campaigns["kind"], pa.array(vocab.CAMPAIGN_KINDS)).to_numpy()[campaign]
    to_member = (kind == 0) | (kind == 2) | ((kind == 3) & (rng.random(rows) < 0.5))
    launched = pc.cast(pc.strptime(campaigns["launched_at"], "%Y-%m-%d %H:%M:%S", "s"), pa.int64()).to_numpy()
    return pa.table({
        "selection_id": np.arange(1, rows + 1),
        "campaign_id": campaign + 1,
        "prospect_id": pa.array(rng.integers(1, prospects + 1, rows), mask=to_member),
        "member_id": pa.array(rng.integers(1, members + 1, rows), mask=~to_member),
        "selected_at": timestamp_text(launched[campaign] - rng.integers(0, 14 * SECONDS_PER_DAY, rows)),
    })


def _suppression_list(rng: np.random.Generator, prospects: pa.Table, today: int) -> tuple[pa.Table, pa.Table]:
    """Hashed contacts of prospects who objected; their marketing consent is withdrawn accordingly."""
    total = prospects.num_rows
    reachable = np.flatnonzero(pc.or_(pc.is_valid(prospects["email"]), pc.is_valid(prospects["phone"]))
                               .to_numpy(zero_copy_only=False))
    objected = rng.choice(reachable, max(5, round(total * 0.005)), replace=False)
    by_phone = rng.random(len(objected)) < 0.3
    contact = pa.table({
        "by_phone": by_phone,
        "email": prospects["email"].take(objected).combine_chunks(),
        "phone": prospects["phone"].take(objected).combine_chunks(),
        "objected": timestamp_text(at_office_hours(rng, today - rng.integers(1, 4 * _YEAR, len(objected)))),
    })
    with duckdb.connect() as con:
        con.register("objections", contact)
        # by phone, or by e-mail when the prospect left only that (and the other way round): each is listed
        hashed = con.sql(
            f"""SELECT sha256(CASE WHEN phoned THEN {phone_sql('phone')} ELSE {email_sql('email')} END) AS h,
                       CASE WHEN phoned THEN 'phone' ELSE 'email' END AS channel, objected
                FROM (SELECT *, (by_phone OR {email_sql('email')} IS NULL) AND {phone_sql('phone')} IS NOT NULL
                                 AS phoned FROM objections)
                WHERE h IS NOT NULL"""
        ).to_arrow_table()
    suppression = pa.table({
        "suppression_id": np.arange(1, hashed.num_rows + 1),
        "contact_hash": hashed["h"],
        "channel": hashed["channel"],
        "objected_at": hashed["objected"],
    })
    consent = prospects["marketing_consent"].combine_chunks().to_numpy(zero_copy_only=False).copy()
    consent[objected] = False
    prospects = prospects.set_column(prospects.schema.get_field_index("marketing_consent"), "marketing_consent",
                                     pa.array(consent))
    return suppression, prospects


# Traffic assumption (stated in the README): a member opens the site about once every two months, other
# people (prospects, parents, anonymous readers) add half as many visits again, 3 pages per visit on average;
# more visits at the start of the academic year. At 10,000 members: ~250 visits and ~750 page views a day.
VISITS_PER_MEMBER_MONTH = 0.5
OTHER_VISITS_SHARE = 0.5
MONTH_WEIGHTS = (1.0, 0.9, 0.8, 0.8, 0.8, 1.0, 1.2, 1.6, 2.0, 1.6, 1.1, 0.8)  # January .. December
COOKIE_DAYS = 395  # a visitor cookie lives at most 13 months, not extended by visits (CNIL)
LOG_DAYS = 913


def _visit_days(rng: np.random.Generator, today: int, n: int) -> np.ndarray:
    """Days of n visits over the last LOG_DAYS days, weighted by month of the year."""
    days = np.arange(today - LOG_DAYS, today)
    month = days.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
    weights = np.asarray(MONTH_WEIGHTS)[month]
    return rng.choice(days, size=n, p=weights / weights.sum())


def _navigation(rng: np.random.Generator, members: int, today: int) -> tuple[pa.Table, pa.Table]:
    """Visits of members and other people over ~30 months, 1 to ~10 pages each, by 13-month cookies."""
    people = members + round(members * OTHER_VISITS_SHARE)
    visits = max(200, round(members * (1 + OTHER_VISITS_SHARE) * VISITS_PER_MEMBER_MONTH * LOG_DAYS / 30.4))
    activity = rng.gamma(0.8, 1.0, people)  # some people visit far more often than others
    person = rng.choice(people, size=visits, p=activity / activity.sum())
    day = _visit_days(rng, today, visits).astype(np.int64)
    start = day * SECONDS_PER_DAY + rng.integers(6 * 3600, 24 * 3600, visits)
    # A person browses from a phone or a computer; each device's cookie is renewed every COOKIE_DAYS days.
    device = (rng.random(visits) < 0.35).astype(np.int64)
    phase = rng.integers(0, COOKIE_DAYS, 2 * people)
    cookie_key = person * 2 + device
    epoch = (day - (today - LOG_DAYS) + phase[cookie_key]) // COOKIE_DAYS  # 0..3 over the log
    keys, visitor_of_visit = np.unique(cookie_key * 16 + epoch, return_inverse=True)
    visitors = len(keys)
    visitor_id = random_uuids(rng, visitors)
    visitor_person = keys // 32
    member_of_person = np.where(np.arange(people) < members, np.arange(people) + 1, 0)
    logged_in_visit = (member_of_person[person] > 0) & (rng.random(visits) < 0.45)

    pages = 1 + rng.geometric(0.5, visits)
    events = int(pages.sum())
    visit = np.repeat(np.arange(visits), pages)
    first_of_visit = np.repeat(np.cumsum(pages) - pages, pages)
    step = np.arange(events) - first_of_visit
    ts = start[visit] + step * rng.integers(20, 150, events)
    order = np.argsort(ts, kind="stable")
    ts, visit = ts[order], visit[order]
    who = visitor_of_visit[visit]

    city = _cities(rng, people)[visitor_person]
    octets = [pa.array(rng.integers(1, 255, visitors)).cast(pa.string()) for _ in range(3)]
    ip = concat(pick([str(o) for o in vocab.IP_FIRST_OCTETS], rng.integers(0, len(vocab.IP_FIRST_OCTETS), visitors)),
                ".", octets[0], ".", octets[1], ".", octets[2])
    agent = rng.integers(0, len(vocab.USER_AGENTS), visitors)
    latitude = np.array([c[2] for c in vocab.CITIES])[city] + rng.normal(0, 0.02, visitors)
    longitude = np.array([c[3] for c in vocab.CITIES])[city] + rng.normal(0, 0.02, visitors)
    paths, path_weights = zip(*vocab.URL_PATHS, strict=True)
    referrers, referrer_weights = zip(*vocab.REFERRERS, strict=True)
    no_visitor = null_mask(events, rng.choice(events, _malformed_count(events), replace=False))
    member_id = member_of_person[person[visit]]
    # A visitor's id and address repeated on each of their page views take more than 2 GB at the reference
    # workload: taken as large strings (64-bit offsets); the files store plain strings all the same.
    visitor_ids, addresses = visitor_id.cast(pa.large_string()), ip.cast(pa.large_string())
    columns = {
        "event_id": random_uuids(rng, events),
        "visitor_id": visitor_ids.take(pa.array(who, mask=no_visitor)),
        "member_id": pa.array(member_id, mask=~logged_in_visit[visit]),
        "ts": pa.array(ts * 1_000_000 + rng.integers(0, 1_000_000, events), pa.timestamp("us")),
        "url": dictionary([vocab.SITE + p for p in paths], weighted_choice(rng, path_weights, events)),
        "referrer": dictionary(referrers, weighted_choice(rng, referrer_weights, events)),
        "ip_address": addresses.take(pa.array(who)),
        "user_agent": dictionary(vocab.USER_AGENTS, agent[who]),
        "city": dictionary([c[0] for c in vocab.CITIES], city[who]),
        "latitude": np.round(latitude[who], 5),
        "longitude": np.round(longitude[who], 5),
    }
    event_table = pa.table([columns[f.name] for f in NAVIGATION_EVENT_SCHEMA], names=NAVIGATION_EVENT_SCHEMA.names)

    # Consent banner answered just before the visitor's first page view: 70% accept analytics, 20% refuse,
    # 10% never answer; 5% change their mind later (the latest answer counts).
    first_seen = np.full(visitors, np.iinfo(np.int64).max)
    np.minimum.at(first_seen, who, ts)
    answer = weighted_choice(rng, [70, 20, 10], visitors)
    answered = np.flatnonzero(answer < 2)
    changed = answered[rng.random(len(answered)) < 0.05]
    visitor = np.concatenate([answered, changed])
    analytics = np.concatenate([answer[answered] == 0, answer[changed] != 0])
    now = today * SECONDS_PER_DAY
    first_at = first_seen[answered] - rng.integers(1, 120, len(answered))
    later_at = between(rng, first_seen[changed], np.full(len(changed), now - 1))
    rows = len(visitor)
    consents = pa.table({
        "consent_id": random_uuids(rng, rows),
        "visitor_id": visitor_id.take(pa.array(visitor)),
        "consented_at": pa.array(np.concatenate([first_at, later_at]) * 1_000_000, pa.timestamp("us")),
        "analytics": analytics,
        "advertising": analytics & (rng.random(rows) < 0.5),
    }, schema=COOKIE_CONSENT_SCHEMA)
    return event_table, consents


def _python_columns(batch: pa.Table, names: Iterable[str]) -> list[Iterable[object]]:
    """Columns as Python values for sqlite3 (None for nulls); a column the table lacks is all null."""
    columns: list[Iterable[object]] = []
    for name in names:
        if name not in batch.column_names:
            columns.append(repeat(None, batch.num_rows))
            continue
        array = batch[name].combine_chunks()
        if pa.types.is_integer(array.type) and array.null_count:
            values = array.fill_null(0).to_numpy().astype(object)
            values[array.is_null().to_numpy(zero_copy_only=False)] = None
            columns.append(values.tolist())
        else:
            columns.append(array.to_numpy(zero_copy_only=False).tolist())
    return columns


def _write_sqlite(path: Path, metadata: sa.MetaData, tables: dict[str, pa.Table], today: int) -> dict[str, int]:
    """Create the schema with SQLAlchemy, then bulk-insert each table in one transaction per table. A table's
    change marker (`updated_at`) the generated rows do not set says when each was last written: over the year
    before `today`, in the order of the rows (of their ids), as a system whose rows are written one after another."""
    path.unlink(missing_ok=True)
    open_private(path, "wb").close()  # SQLite keeps the mode of the (empty) file it is given, journals included
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path)
    try:
        # A freshly generated file has nothing to protect: no journal, no fsync while loading.
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        for table in metadata.sorted_tables:
            data = tables[table.name]
            if "updated_at" in table.c and "updated_at" not in data.column_names:
                written = today * SECONDS_PER_DAY - 1 - np.arange(data.num_rows)[::-1] * (
                    365 * SECONDS_PER_DAY // max(data.num_rows, 1))
                data = data.append_column("updated_at", timestamp_text(written))
            names = [c.name for c in table.columns]
            sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            with con:
                for offset in range(0, data.num_rows, _INSERT_BATCH):
                    con.executemany(sql, zip(*_python_columns(data.slice(offset, _INSERT_BATCH), names), strict=True))
    finally:
        con.close()
    return {name: tables[name].num_rows for name in metadata.tables}


def _write_navigation(folder: Path, events: pa.Table, consents: pa.Table) -> None:
    """One Parquet file per day of events (events are sorted by time), one file of consents."""
    shutil.rmtree(folder, ignore_errors=True)
    day = pc.cast(pc.cast(events["ts"], pa.date32()), pa.int32()).to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(day)) + 1])
    ends = np.append(starts[1:], len(day))
    for first, stop in zip(starts.tolist(), ends.tolist(), strict=True):
        partition = folder / "events" / f"day={_EPOCH + dt.timedelta(days=int(day[first]))}"
        # Text columns are dictionary-encoded in memory; without the stored Arrow schema the files read back
        # as plain strings, exactly NAVIGATION_EVENT_SCHEMA.
        with open_private(partition / "part-0.parquet", "wb") as fh:
            pq.write_table(events.slice(first, stop - first), fh, store_schema=False)
    with open_private(folder / "consents" / "consents.parquet", "wb") as fh:
        pq.write_table(consents, fh)


@dataclass(frozen=True)
class _Run:
    """What one generation is determined by; picklable so the second process can rebuild the same state."""

    out_dir: Path
    members: int
    seed: int
    as_of: dt.date

    def start(self) -> tuple[dict[str, np.random.Generator], vocab.Vocabulary, int, pa.Table, _Members]:
        """Independent random streams per table, the vocabularies and the members every system refers to."""
        streams = np.random.SeedSequence([self.seed, self.as_of.toordinal()]).spawn(len(_STREAMS))
        rng = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, streams, strict=True)}
        words = vocab.sample_vocabulary(self.seed)
        today = (self.as_of - _EPOCH).days
        member_table, m = _members(rng["members"], words, self.members, today)
        return rng, words, today, member_table, m


def _member_system(run: _Run) -> dict[str, int]:
    rng, words, today, member_table, m = run.start()
    contributions, recoveries = _contributions(rng["contributions"], m, today)
    litigation, under_legal_hold = _litigation_cases(rng["litigation_cases"], m, today)
    requests, request_members, request_received, request_ids = _rights_requests(
        rng["rights_requests"], m, today, under_legal_hold
    )
    member_tables = {
        "establishments": _establishments(),
        "members": member_table,
        "contracts": _contracts(rng["contracts"], m),
        "id_documents": _id_documents(rng["id_documents"], m, request_members, request_received, request_ids),
        "reimbursements": _reimbursements(rng["reimbursements"], words, m, today),
        "contributions": contributions,
        "debt_recoveries": recoveries,
        "accounting_entries": _accounting_entries(rng["accounting_entries"], m, today),
        "interactions": _interactions(rng["interactions"], m, today),
        "survey_answers": _survey_answers(rng["survey_answers"], m),
        "litigation_cases": litigation,
        "rights_requests": requests,
    }
    return _write_sqlite(run.out_dir / "members.db", member_metadata, member_tables, today)


def _prospecting_and_navigation(run: _Run) -> dict[str, int]:
    rng, words, today, _, m = run.start()
    _, under_legal_hold = _litigation_cases(rng["litigation_cases"], m, today)  # the same stream: same members
    # the held erasure reaches a prospect record; so does the sibling not named by the test's request
    converted_first = np.array([_held_eraser(under_legal_hold), _SIBLINGS[1]])
    prospects = _prospects(rng["prospects"], words, m, today, converted_first)
    suppression, prospects = _suppression_list(rng["suppression_list"], prospects, today)
    campaigns = _campaigns(rng["campaigns"], today)
    prospect_tables = {
        "prospects": prospects,
        "campaigns": campaigns,
        "campaign_selections": _campaign_selections(
            rng["campaign_selections"], campaigns, run.members, prospects.num_rows
        ),
        "suppression_list": suppression,
    }
    counts = _write_sqlite(run.out_dir / "prospects.db", prospect_metadata, prospect_tables, today)
    del prospect_tables, prospects
    events, consents = _navigation(rng["navigation"], run.members, today)
    _write_navigation(run.out_dir / "navigation", events, consents)
    return counts | {"navigation_events": events.num_rows, "cookie_consents": consents.num_rows}


def generate(
    out_dir: Path, members: int, seed: int, as_of: dt.date, *, parallel: bool | None = None
) -> dict[str, int]:
    """Write the three source systems under out_dir (replacing earlier output); rows written per table.

    `parallel` (default: from 50,000 members) writes the prospecting platform and the navigation log in a
    second, spawned process; a calling script then needs the usual `if __name__ == "__main__"` guard.
    """
    if members < 20:
        raise ValueError("the generator needs at least 20 members to plant every edge case")
    run = _Run(Path(out_dir), members, seed, as_of)
    private_dir(run.out_dir)
    if not (members >= _PARALLEL_FROM_MEMBERS if parallel is None else parallel):
        return _member_system(run) | _prospecting_and_navigation(run)
    # Loading SQLite is bound to one core: the member system loads here while the second process writes the
    # other two systems. Both rebuild the members from the same seed, so the output is the same either way.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        other = pool.submit(_prospecting_and_navigation, run)
        counts = _member_system(run)
        return counts | other.result()
