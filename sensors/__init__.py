"""Schedules and sensors; pipelines.definitions collects every one defined in this package's modules."""
