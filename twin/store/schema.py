"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

``twin_log`` is the durable raw log and the source of truth: every ingested batch, as its
msgpack bytes, appended before ``ingest`` returns; its ``offset`` orders everything else.
The other tables are derived from it and can be rebuilt by replaying it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

log = Table(
    "twin_log", metadata,
    Column("offset", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("received_at", Double, nullable=False),
    Column("source", Text, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

# Clean and flagged samples, one row per asset and device time: accepted and late samples
# (history), and anomalous ones (flagged, values kept raw). A replayed or repeated sample
# conflicts and changes nothing, except that a clean sample replaces a flagged one of the same
# time (never the other way round); the raw log keeps every sample anyway. Keyed by device
# time first, so rows arrive in roughly key order. ``power_kw`` has its own column (queries
# want it, and most reports carry nothing else); other signals are a msgpack map in
# ``signals``.
samples = Table(
    "twin_samples", metadata,
    Column("ts", Double, nullable=False),
    Column("asset_id", Text, nullable=False),
    Column("received_at", Double, nullable=False),
    Column("flagged", SmallInteger, nullable=False),  # 1: anomalous, kept raw; 0: clean
    Column("outcome", SmallInteger, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("power_kw", Double),                      # the common signal, as a column
    Column("signals", LargeBinary),                  # msgpack map of the others, if any
    PrimaryKeyConstraint("ts", "asset_id"),
    # SQLite: the rows live in the primary key's b-tree (no rowid table beside it): the hot
    # insert updates one tree instead of two (about 15% faster, 30% smaller). Databases made
    # before keep their rowid table (create_all alters nothing); both work the same.
    sqlite_with_rowid=False,
)

transitions = Table(
    "twin_transitions", metadata,
    Column("log_offset", BigInteger, nullable=False),
    Column("at", Double, nullable=False),
    Column("asset_id", Text, nullable=False),
    Column("old", String(20), nullable=False),
    Column("new", String(20), nullable=False),
    Column("reason", Text, nullable=False),
    PrimaryKeyConstraint("asset_id", "at", "new"),
)

model_versions = Table(
    "twin_model_versions", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("effective", Double, nullable=False),
    Column("recorded_at", Double, nullable=False),
    Column("log_offset", BigInteger, nullable=False),   # applied after the log up to here
    Column("change", Text, nullable=False),          # JSON, as change_to_dict writes it
)

# Model changes scheduled for a future effective time; ``done`` once applied (or refused).
scheduled = Table(
    "twin_scheduled", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("effective", Double, nullable=False),
    Column("change", Text, nullable=False),
    Column("done", SmallInteger, nullable=False, default=0),
)

# Accepted commands (the desired view), so it survives a restart like the reported view does.
commands = Table(
    "twin_commands", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("at", Double, nullable=False),
    Column("asset_id", Text, nullable=False),
    Column("log_offset", BigInteger, nullable=False),   # issued after the log up to here
    Column("desired", Text, nullable=False),            # JSON of the fields the command set
)

snapshots = Table(
    "twin_snapshots", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("log_offset", BigInteger, nullable=False),
    Column("taken_at", Double, nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
)

# Named positions: "cleaned" = the log offset up to which derived rows are written.
progress = Table(
    "twin_progress", metadata,
    Column("name", String(50), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Control (docs/control.md). Commands sent one by one (and lease reverts), each with its
# sequence number, which is also the asset's desired version; a dispatch's per-tick renewals
# are not rows: its spec and reports are, and a restarted fleet resumes it with new leases.
command_log = Table(
    "twin_command_log", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Double, nullable=False),
    Column("asset_id", Text, nullable=False),
    Column("desired", Text, nullable=False),            # JSON of the fields the command set
    Column("expires_at", Double, nullable=True),
    Column("origin", Text, nullable=True),              # a dispatch id, "lease" for a revert
)

# Every state a logged command reached, in order (the last one is where it is).
command_events = Table(
    "twin_command_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("seq", BigInteger, nullable=False, index=True),
    Column("at", Double, nullable=False),
    Column("state", String(20), nullable=False),
    Column("reason", Text, nullable=True),
)

dispatches = Table(
    "twin_dispatches", metadata,
    Column("dispatch_id", String(64), primary_key=True),
    Column("spec", Text, nullable=False),               # JSON of its DispatchSpec
    Column("status", String(20), nullable=False),       # active, ended, cancelled
    Column("reason", Text, nullable=True),
    Column("updated_at", Double, nullable=False),
)

dispatch_reports = Table(
    "twin_dispatch_reports", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("dispatch_id", String(64), nullable=False, index=True),
    Column("at", Double, nullable=False),
    Column("report", Text, nullable=False),             # JSON of its DispatchReport
)
