"""The store: the only package that speaks SQLAlchemy and database drivers. The durable raw log,
the derived-row writer process, snapshots and model versions."""
