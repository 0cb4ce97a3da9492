"""The orchestration layer: everything Dagster and the environment, in one place.

settings (paths, URLs and keys read from the environment), resources, partitions, runs (as_of, time zone, job
names), jobs, the dead-run launcher. `pipelines.definitions` assembles them with the assets and sensors. The
privacy core (every other module of `pipelines` but demo, bench and crash) is given what it needs
(pipelines.context) and imports none of this: `make test` checks it with import-linter.
"""
