"""The three source systems SEM's data comes from: schemas and access (SQL by SQLAlchemy URL, Parquet by folder)."""
