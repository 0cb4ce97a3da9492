"""SEM privacy pipelines: the privacy policy of the mutuelle SEM as Dagster + DuckDB jobs."""
