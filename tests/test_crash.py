"""The crash harness on a tiny world (pipelines/crash): the nightly, launched as the schedule launches it
(`dagster job execute` with the `sem/as_of` tag), SIGKILLed right after the member system committed the day's
retention decisions, its re-run SIGKILLed in the middle of a transfer delivery, then simply launched again, ends
in the same state as an uninterrupted run: sources, warehouse (the day's ledger and per-record statuses
included), analytics file, outbox, audit log (no entry twice, the day's retention figures as uninterrupted).
`make crash` runs the full sweep.

The uninterrupted run goes side by side with the killed ones (separate worlds) to keep the suite short.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipelines.crash.sweep import KillPoint, compare, run_baseline, run_point, table
from pipelines.crash.world import plant_transfer
from tests.conftest import TEST_AS_OF

MEMBERS = 100  # the smallest world that still has retention decisions for all three sources

# Retention push-back writes the member system first, then the navigation log and the prospecting platform: the
# first kill leaves the day's decisions applied to the members only (the re-run then sees prospects whose member
# is gone). The re-run is killed once the first file of the day's transfer delivery is in the outbox.
CHAIN = KillPoint(
    "after the member system's retention commit, then in the re-run's transfer delivery",
    after_commit=1,
    of_kind="retention",
    then=KillPoint("re-run: first transfer file written", after_transfer=1),
)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.demo.generate import generate

    out = tmp_path_factory.mktemp("crash") / "sources"
    generate(out, members=MEMBERS, seed=7, as_of=TEST_AS_OF)
    plant_transfer(out, TEST_AS_OF)
    return out


def test_killed_during_pushback_and_during_transfers_the_nightly_ends_as_if_uninterrupted(tiny_world, tmp_path):
    with ThreadPoolExecutor(max_workers=1) as pool:
        baseline_future = pool.submit(run_baseline, tmp_path, tiny_world, TEST_AS_OF)
        outcome = run_point(tmp_path, tiny_world, TEST_AS_OF, CHAIN)
    baseline = baseline_future.result()
    compare(outcome, baseline)
    print(table([outcome]))
    assert baseline.outcome.startswith("SUCCESS"), baseline.outcome
    assert [s for _, s in baseline.commits if "retention" in s][:1] == ["member system (retention)"]
    assert baseline.transfers, "the uninterrupted run delivered no transfer"
    assert not outcome.note, outcome.note
    assert outcome.killed_during[0] == "retention__applied"
    # Both killed runs were marked failed by the next run, which freed the warehouse slot and went through.
    assert outcome.killed_run_status == "FAILURE, FAILURE"
    assert outcome.rerun == "SUCCESS"
    assert outcome.differing == []
