"""Schemas of the three source systems: the contract between the generator, ingestion and push-back.

The member and prospecting systems are legacy applications that store dates and timestamps as ISO-8601
text (``YYYY-MM-DD`` / ``YYYY-MM-DD HH:MM:SS``); ingestion parses them and quarantines what does not parse.
The same SQLAlchemy metadata creates the tables on SQLite (embedded default) and PostgreSQL.
Navigation is append-only Parquet: ``events/day=YYYY-MM-DD/*.parquet`` and ``consents/*.parquet``.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles

# Columns every writable source table carries so push-back can flag a restriction at the source.
RESTRICTION_COLUMNS = ("restricted_at", "restriction_decision_id")

# A column whose value ingestion requires (besides primary keys). Not a NOT NULL constraint: the legacy
# systems do hold such rows, and ingestion must quarantine them rather than fail.
REQUIRED = {"required": True}


def _updated_at() -> sa.Column:
    """The change marker a source maintains (ISO text, set on every insert and update, push-back's and the rights
    pipeline's included): ingestion reads only the rows changed since its last watermark where
    policies/datasets.yaml declares it (`change_marker`). Small reference tables without one are copied whole."""
    return sa.Column("updated_at", sa.Text)


class source_clock(sa.sql.functions.FunctionElement):
    """The source database's own clock (UTC), as its change markers hold it ('YYYY-MM-DD HH:MM:SS'): a marker
    the pipeline stamps this way is never older than the rows the source writes at the same moment, whatever
    time the pipeline thinks it is."""

    type = sa.Text()
    inherit_cache = True


@compiles(source_clock)
def _source_clock_sqlite(element: source_clock, compiler: sa.sql.compiler.SQLCompiler, **kw: object) -> str:
    return "strftime('%Y-%m-%d %H:%M:%S', 'now')"


@compiles(source_clock, "postgresql")
def _source_clock_postgresql(element: source_clock, compiler: sa.sql.compiler.SQLCompiler, **kw: object) -> str:
    return "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"


member_metadata = sa.MetaData()

establishments = sa.Table(
    "establishments", member_metadata,
    sa.Column("establishment_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),  # university | school
    sa.Column("street", sa.Text),
    sa.Column("postal_code", sa.Text),
    sa.Column("city", sa.Text),
)

members = sa.Table(
    "members", member_metadata,
    sa.Column("member_id", sa.Integer, primary_key=True),
    sa.Column("civility", sa.Text),  # M. | Mme
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("street", sa.Text),
    sa.Column("postal_code", sa.Text),
    sa.Column("city", sa.Text),
    sa.Column("birth_date", sa.Text),  # ISO date, legacy text
    sa.Column("establishment_id", sa.Integer),
    sa.Column("activity", sa.Text),  # student | salaried | self_employed | none
    sa.Column("iban", sa.Text),
    sa.Column("marketing_consent", sa.Boolean),
    sa.Column("created_at", sa.Text),
    sa.Column("updated_at", sa.Text),
    sa.Column("restricted_at", sa.Text),
    sa.Column("restriction_decision_id", sa.Text),
)

contracts = sa.Table(
    "contracts", member_metadata,
    sa.Column("contract_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("product", sa.Text),
    sa.Column("start_date", sa.Text),
    sa.Column("end_date", sa.Text),  # null while the membership runs
    sa.Column("status", sa.Text),  # active | terminated | radiated
    sa.Column("termination_reason", sa.Text),
    _updated_at(),
)

id_documents = sa.Table(
    "id_documents", member_metadata,
    sa.Column("document_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("doc_type", sa.Text),  # cni | passport | titre_sejour
    sa.Column("doc_number", sa.Text),
    sa.Column("received_at", sa.Text),
    sa.Column("reason", sa.Text),  # membership | rights_request
    sa.Column("request_id", sa.Integer),  # the rights request the copy was sent with (reason rights_request)
    _updated_at(),
)

reimbursements = sa.Table(
    "reimbursements", member_metadata,
    sa.Column("reimbursement_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("care_date", sa.Text),
    sa.Column("act_code", sa.Text),
    sa.Column("act_label", sa.Text),
    sa.Column("amount_eur", sa.Float),
    sa.Column("reimbursed_eur", sa.Float),
    sa.Column("professional_name", sa.Text),
    sa.Column("professional_country", sa.Text),  # FR | MC
    sa.Column("paid_at", sa.Text),
    _updated_at(),
)

contributions = sa.Table(
    "contributions", member_metadata,
    sa.Column("contribution_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("due_date", sa.Text),
    sa.Column("amount_eur", sa.Float),
    sa.Column("paid_at", sa.Text),  # null = unpaid
    _updated_at(),
)

debt_recoveries = sa.Table(
    "debt_recoveries", member_metadata,
    sa.Column("recovery_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("contribution_id", sa.Integer),
    sa.Column("opened_at", sa.Text),
    sa.Column("closed_at", sa.Text),
    sa.Column("sued", sa.Boolean),
    _updated_at(),
)

accounting_entries = sa.Table(
    "accounting_entries", member_metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer),
    sa.Column("entry_date", sa.Text),
    sa.Column("fiscal_year", sa.Integer),
    sa.Column("account", sa.Text),
    sa.Column("label", sa.Text),
    sa.Column("amount_eur", sa.Float),
    _updated_at(),
)

interactions = sa.Table(
    "interactions", member_metadata,
    sa.Column("interaction_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("kind", sa.Text),  # request | complaint | correspondence | documentation_request | comment
    sa.Column("channel", sa.Text),  # mail | email | phone | web
    sa.Column("handled_by", sa.Text),  # sem | morocco_complaints_provider
    sa.Column("subject", sa.Text),
    sa.Column("body", sa.Text),
    sa.Column("created_at", sa.Text),
    sa.Column("closed_at", sa.Text),
    _updated_at(),
)

survey_answers = sa.Table(
    "survey_answers", member_metadata,
    sa.Column("answer_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer),  # null once the answer is anonymised (it still counts in statistics)
    sa.Column("survey", sa.Text),
    sa.Column("answered_at", sa.Text),
    sa.Column("score", sa.Integer),  # 0..10
    sa.Column("comment", sa.Text),
    _updated_at(),
)

litigation_cases = sa.Table(
    "litigation_cases", member_metadata,
    sa.Column("case_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer, info=REQUIRED),
    sa.Column("opened_at", sa.Text),
    sa.Column("status", sa.Text),  # open | closed
    sa.Column("final_decision_at", sa.Text),
    sa.Column("subject", sa.Text),
    _updated_at(),
)

rights_requests = sa.Table(
    "rights_requests", member_metadata,
    sa.Column("request_id", sa.Integer, primary_key=True),
    sa.Column("member_id", sa.Integer),
    sa.Column("email", sa.Text),
    # access | rectification | erasure | restriction | objection | objection_prospecting | lift_restriction
    sa.Column("request_type", sa.Text),
    sa.Column("received_at", sa.Text),
    sa.Column("identity_verified_at", sa.Text),
    sa.Column("details", sa.Text),  # JSON
    sa.Column("status", sa.Text),  # received | verified | decided | executed | confirmed | answered | refused
    sa.Column("handled_at", sa.Text),  # set by the rights pipeline when the request is confirmed, answered or refused
    _updated_at(),
)

prospect_metadata = sa.MetaData()

prospects = sa.Table(
    "prospects", prospect_metadata,
    sa.Column("prospect_id", sa.Integer, primary_key=True),
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
    sa.Column("school", sa.Text),
    sa.Column("lead_source", sa.Text),  # salon | website | partner_school | referral
    sa.Column("collected_at", sa.Text),
    sa.Column("last_inbound_contact_at", sa.Text),  # last contact initiated BY the prospect
    sa.Column("marketing_consent", sa.Boolean),
    sa.Column("restricted_at", sa.Text),
    sa.Column("restriction_decision_id", sa.Text),
    _updated_at(),
)

campaigns = sa.Table(
    "campaigns", prospect_metadata,
    sa.Column("campaign_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("kind", sa.Text),  # loyalty | prospecting | survey | product_test
    sa.Column("channel", sa.Text),
    sa.Column("launched_at", sa.Text),
)

campaign_selections = sa.Table(
    "campaign_selections", prospect_metadata,
    sa.Column("selection_id", sa.Integer, primary_key=True),
    sa.Column("campaign_id", sa.Integer, info=REQUIRED),
    sa.Column("prospect_id", sa.Integer),  # one of prospect_id / member_id is set
    sa.Column("member_id", sa.Integer),
    sa.Column("selected_at", sa.Text),
    _updated_at(),
)

suppression_list = sa.Table(
    "suppression_list", prospect_metadata,
    sa.Column("suppression_id", sa.Integer, primary_key=True),
    sa.Column("contact_hash", sa.Text, nullable=False),  # SHA-256 hex of the normalised e-mail or phone
    sa.Column("channel", sa.Text),  # email | phone
    sa.Column("objected_at", sa.Text),
    sa.Column("source_request_id", sa.Text),
    _updated_at(),
)

NAVIGATION_EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("visitor_id", pa.string()),
    ("member_id", pa.int64()),  # null unless logged in
    ("ts", pa.timestamp("us")),
    ("url", pa.string()),
    ("referrer", pa.string()),
    ("ip_address", pa.string()),
    ("user_agent", pa.string()),
    ("city", pa.string()),
    ("latitude", pa.float64()),
    ("longitude", pa.float64()),
])

COOKIE_CONSENT_SCHEMA = pa.schema([
    ("consent_id", pa.string()),
    ("visitor_id", pa.string()),
    ("consented_at", pa.timestamp("us")),
    ("analytics", pa.bool_()),
    ("advertising", pa.bool_()),
])

# Parquet columns ingestion requires (the event log has no primary key constraint of its own).
NAVIGATION_REQUIRED = ("event_id", "visitor_id", "ts")

SQL_SYSTEMS: dict[str, sa.MetaData] = {"members": member_metadata, "prospects": prospect_metadata}

# Columns that identify the person a row is about by themselves (name, contact, birth date, bank account,
# document number, IP address). The policy files cannot stop treating them so: datasets.yaml must mark them
# `identifying: direct` and pseudonymisation.yaml must list them under `direct_identifiers` (refused at load).
DIRECT_IDENTIFIERS: dict[str, tuple[str, ...]] = {
    "members": ("first_name", "last_name", "email", "phone", "street", "birth_date", "iban"),
    "id_documents": ("doc_number",),
    "rights_requests": ("email",),
    "prospects": ("first_name", "last_name", "email", "phone"),
    "navigation_events": ("ip_address",),
}
