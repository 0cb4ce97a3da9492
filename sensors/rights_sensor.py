"""Rights-request sensor: newly verified requests in the member system start `rights_job`.

The cursor is the (identity_verified_at, request_id) of the last verified request seen, as JSON. Each tick
reads the requests verified after it that are not closed yet; if there are any, one run is requested,
keyed by the last of them, so a batch never starts two runs (Dagster drops a repeated run_key).
"""


import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from pipelines.orchestration.partitions import nightly_partition
from pipelines.orchestration.resources import SqlSourceResource
from pipelines.orchestration.runs import PARIS, RIGHTS_JOB
from pipelines.rights.intake import TERMINAL_STATES
from pipelines.sources.schema import rights_requests

REQUESTS_TAG = "sem/rights_requests"


def newly_verified(engine: sa.Engine, cursor: str | None) -> tuple[list[int], str | None]:
    """Request ids verified after `cursor` and still open, and the cursor to store next."""
    after = json.loads(cursor) if cursor else None
    t = rights_requests
    query = (
        sa.select(t.c.request_id, t.c.identity_verified_at)
        .where(t.c.identity_verified_at.is_not(None),
               sa.or_(t.c.status.is_(None), t.c.status.not_in(TERMINAL_STATES)))
        .order_by(t.c.identity_verified_at, t.c.request_id)
    )
    if after:
        query = query.where(sa.or_(
            t.c.identity_verified_at > after["verified_at"],
            sa.and_(t.c.identity_verified_at == after["verified_at"], t.c.request_id > after["request_id"]),
        ))
    with engine.connect() as con:
        rows = con.execute(query).all()
    if not rows:
        return [], cursor
    last = rows[-1]
    return [r.request_id for r in rows], json.dumps({"verified_at": last.identity_verified_at,
                                                     "request_id": last.request_id})


@dg.sensor(
    name="rights_request_sensor",
    job_name=RIGHTS_JOB,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts rights_job when requests whose identity has been verified appear in the member "
    "system's rights_requests (one run per batch, never twice for the same batch).",
)
def rights_request_sensor(context: dg.SensorEvaluationContext, member_source: SqlSourceResource):
    ids, cursor = newly_verified(member_source.engine(), context.cursor)
    if not ids:
        return dg.SkipReason("no newly verified rights request")
    context.update_cursor(cursor)
    key = json.loads(cursor)
    return dg.RunRequest(
        run_key=f"rights-{key['verified_at']}-{key['request_id']}",
        tags={REQUESTS_TAG: ",".join(str(i) for i in ids[:50])},
        # The last navigation day over; the run also catches up every other new or rewritten day file, so an
        # erasure sees all of a person's events.
        partition_key=nightly_partition(dt.datetime.now(PARIS).date()),
    )
