"""The store's side of control: logged commands and their states, dispatches and their
reports, and the reserved range of command sequence numbers.

Sequence numbers are reserved in blocks ("hi/lo"): one write per ten million commands, and a
restarted fleet starts past every number it may have handed out, so desired versions only
grow across restarts without a write per command. Everything else is written in one
transaction per control tick (or per single command), on the fleet's thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError

from twin.store import schema
from twin.store.store import Store, StoreUnavailable

SEQ_RESERVED = "command_seq_reserved"


@dataclass(frozen=True, slots=True)
class LoggedCommand:
    """A logged command and the last state it reached."""

    seq: int
    at: float
    asset_id: str
    desired: dict[str, Any]
    expires_at: float | None
    origin: str | None
    state: str
    state_at: float
    reason: str | None


@dataclass(slots=True)
class ControlRows:
    """What one control tick (or one command) has to write."""

    commands: list[dict[str, Any]]
    events: list[dict[str, Any]]
    dispatches: list[dict[str, Any]]
    reports: list[dict[str, Any]]

    def __bool__(self) -> bool:
        return bool(self.commands or self.events or self.dispatches or self.reports)


class ControlLog:
    """See the module docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def reserved(self) -> int:
        with self.store.engine.connect() as conn:
            value = conn.execute(select(schema.progress.c.value).where(
                schema.progress.c.name == SEQ_RESERVED)).scalar()
        return int(value or 0)

    def reserve(self, upto: int) -> None:
        """Record that sequence numbers up to ``upto`` may be in use."""
        try:
            with self.store._begin() as conn:
                done = conn.execute(update(schema.progress).where(
                    schema.progress.c.name == SEQ_RESERVED).values(value=upto))
                if done.rowcount == 0:
                    conn.execute(insert(schema.progress).values(name=SEQ_RESERVED, value=upto))
        except DBAPIError as error:
            raise StoreUnavailable(f"could not reserve command numbers: "
                                   f"{' '.join(str(error.orig).split())}") from None

    def write(self, rows: ControlRows) -> None:
        try:
            with self.store._begin() as conn:
                if rows.commands:
                    conn.execute(insert(schema.command_log), rows.commands)
                if rows.events:
                    conn.execute(insert(schema.command_events), rows.events)
                for row in rows.dispatches:
                    done = conn.execute(update(schema.dispatches).where(
                        schema.dispatches.c.dispatch_id == row["dispatch_id"]).values(**row))
                    if done.rowcount == 0:
                        conn.execute(insert(schema.dispatches).values(**row))
                if rows.reports:
                    conn.execute(insert(schema.dispatch_reports), rows.reports)
        except DBAPIError as error:
            raise StoreUnavailable(f"could not record control state: "
                                   f"{' '.join(str(error.orig).split())}") from None

    def latest_commands(self) -> list[LoggedCommand]:
        """Each asset's newest logged command with its last state."""
        log, events = schema.command_log, schema.command_events
        with self.store.engine.connect() as conn:
            newest = (select(log.c.asset_id, func.max(log.c.seq).label("seq"))
                      .group_by(log.c.asset_id).subquery())
            commands = conn.execute(select(log).join(newest, log.c.seq == newest.c.seq)).all()
            last_event = (select(events.c.seq, func.max(events.c.id).label("id"))
                          .where(events.c.seq.in_(select(newest.c.seq)))
                          .group_by(events.c.seq).subquery())
            states = {int(r.seq): r for r in conn.execute(
                select(events).join(last_event, events.c.id == last_event.c.id)).all()}
        out = []
        for row in commands:
            state = states.get(int(row.seq))
            out.append(LoggedCommand(
                int(row.seq), row.at, row.asset_id, json.loads(row.desired), row.expires_at,
                row.origin, state.state if state is not None else "sent",
                state.at if state is not None else row.at,
                state.reason if state is not None else None))
        return out

    def command_history(self, asset_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """An asset's logged commands, newest first, each with every state it reached."""
        log, events = schema.command_log, schema.command_events
        with self.store.engine.connect() as conn:
            commands = conn.execute(select(log).where(log.c.asset_id == asset_id)
                                    .order_by(log.c.seq.desc()).limit(limit)).all()
            seqs = [int(r.seq) for r in commands]
            moves: dict[int, list[dict[str, Any]]] = {}
            for e in conn.execute(select(events).where(events.c.seq.in_(seqs))
                                  .order_by(events.c.id)).all():
                moves.setdefault(int(e.seq), []).append(
                    {"at": e.at, "state": e.state, "reason": e.reason})
        return [{"command_id": str(int(r.seq)), "at": r.at, "desired": json.loads(r.desired),
                 "expires_at": r.expires_at, "origin": r.origin,
                 "states": moves.get(int(r.seq), [])} for r in commands]

    def active_dispatches(self) -> list[tuple[dict[str, Any], str]]:
        """(spec, status) of the dispatches not ended or cancelled."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(schema.dispatches).where(
                schema.dispatches.c.status == "active")).all()
        return [(json.loads(r.spec), r.status) for r in rows]

    def dispatch_reports(self, dispatch_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(schema.dispatch_reports.c.report).where(
                schema.dispatch_reports.c.dispatch_id == dispatch_id)
                .order_by(schema.dispatch_reports.c.id.desc()).limit(limit)).all()
        return [json.loads(r.report) for r in reversed(rows)]


def command_row(seq: int, at: float, asset_id: str, desired: dict[str, Any],
                expires_at: float | None, origin: str | None) -> dict[str, Any]:
    return {"seq": seq, "at": at, "asset_id": asset_id, "desired": json.dumps(desired),
            "expires_at": expires_at, "origin": origin}


def event_rows(events: Sequence[tuple[int, float, str, str | None]]) -> list[dict[str, Any]]:
    return [{"seq": seq, "at": at, "state": state, "reason": reason}
            for seq, at, state, reason in events]
