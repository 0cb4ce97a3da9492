"""Data-quality checks with Great Expectations 1.x: suites (plain functions), runner, masking, DuckDB readers."""
