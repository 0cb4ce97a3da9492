"""policies/own_records.yaml: how long the pipeline keeps its own records about people, as a validated model.

Five stores, each with its clock (described), the period its data is kept (`keep`) and, where the answer must
stay provable, the period its proof is kept (`proof_keep`, from the same clock, at least `keep`); the quarantine
also declares how long a resolved entry stays (`resolved_keep`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydantic

from pipelines.policy.loader import load_policy_file
from pipelines.policy.models import IsoDuration, duration_parts

OWN_RECORDS_FILE = "own_records.yaml"


def _days(duration: str) -> int:
    years, months, days = duration_parts(duration)
    return years * 366 + months * 31 + days  # an upper bound, only to order two durations


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class OwnRecordRule(_Strict):
    clock: str
    keep: IsoDuration
    proof_keep: IsoDuration | None = None
    legal_source: str
    why: str

    @pydantic.model_validator(mode="after")
    def _proof_outlives_data(self) -> OwnRecordRule:
        if self.proof_keep is not None and _days(self.proof_keep) < _days(self.keep):
            raise ValueError(f"proof_keep {self.proof_keep} is shorter than keep {self.keep}")
        return self


class QuarantineRule(OwnRecordRule):
    """`keep`: the offending values (`fix`); `resolved_keep`: a resolved entry's key, reason and dates, from the
    day the source row was found fixed or gone. While the row is still malformed, the entry follows the row,
    whose table rule the ledger applies to quarantined rows too."""

    resolved_keep: IsoDuration


class OwnRecordsPolicy(_Strict):
    version: int = pydantic.Field(ge=1)
    effective_date: dt.date
    quarantine: QuarantineRule
    access_exports: OwnRecordRule
    transfer_extracts: OwnRecordRule
    delivered_rows: OwnRecordRule
    notices: OwnRecordRule


def load_own_records_policy(folder: Path) -> OwnRecordsPolicy:
    """Load `<folder>/own_records.yaml`; PolicyError naming file and key when it is wrong."""
    return load_policy_file(Path(folder) / OWN_RECORDS_FILE, OwnRecordsPolicy)
