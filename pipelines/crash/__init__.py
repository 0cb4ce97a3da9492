"""Crash harness: kill the nightly run at any moment, run it again, and check the world ends as if nothing happened.

- world: one scenario (sources copy, Dagster instance, `dagster job execute` as the schedule launches it,
  SIGKILL of its process group, push-back commits watched in the sources themselves).
- fingerprint: the end state (sources, warehouse, analytics file, outbox, exports, audit log, leftover files),
  wall-clock processing fields compared by presence only.
- sweep: baseline, kill points, re-runs, the table.
`make crash` runs the full sweep (python -m pipelines.crash); tests/test_crash.py runs a few kill points.
"""
