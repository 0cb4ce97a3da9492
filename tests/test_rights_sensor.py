"""The rights sensor requests one rights_job run per batch of newly verified requests, never twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import sqlalchemy as sa

from pipelines.orchestration.resources import SqlSourceResource
from pipelines.sources.schema import member_metadata, rights_requests
from sensors.rights_sensor import rights_request_sensor


def _request(request_id: int, verified_at: str | None, status: str = "received") -> dict[str, object]:
    return {"request_id": request_id, "member_id": request_id, "request_type": "erasure",
            "received_at": "2026-10-01 09:00:00", "identity_verified_at": verified_at, "status": status}


def test_newly_verified_requests_start_one_run_per_batch(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'members.db'}"
    engine = sa.create_engine(url)
    member_metadata.create_all(engine)
    with engine.begin() as con:
        con.execute(rights_requests.insert(), [
            _request(1, "2026-10-02 10:00:00"), _request(2, None), _request(3, "2026-10-01 08:00:00", "confirmed")])
    resources = {"member_source": SqlSourceResource(system="members", url=url)}

    def tick(cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
        with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
            return rights_request_sensor(context), context.cursor

    first, cursor = tick(None)
    assert isinstance(first, dg.RunRequest) and first.tags["sem/rights_requests"] == "1"
    # The run is for the last navigation day already over in Paris (and catches up any other changed day).
    paris_yesterday = dt.datetime.now(ZoneInfo("Europe/Paris")).date() - dt.timedelta(days=1)
    assert first.partition_key == paris_yesterday.isoformat()
    assert rights_request_sensor.job_name == "rights_job"
    again, cursor = tick(cursor)
    assert isinstance(again, dg.SkipReason)  # same batch: no second run

    with engine.begin() as con:  # request 2's identity is checked, a new request 4 arrives verified
        con.execute(rights_requests.update().where(rights_requests.c.request_id == 2)
                    .values(identity_verified_at="2026-10-03 09:00:00"))
        con.execute(rights_requests.insert(), [_request(4, "2026-10-03 09:00:00")])
    later, _ = tick(cursor)
    assert isinstance(later, dg.RunRequest) and later.tags["sem/rights_requests"] == "2,4"
    assert later.run_key != first.run_key
    engine.dispose()
