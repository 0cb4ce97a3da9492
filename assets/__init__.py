"""Dagster assets and asset checks, one module per stage; pipelines.definitions loads them all."""
