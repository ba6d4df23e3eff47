"""Unit liveness, events, geofences and webhooks on SQLite.

``EventsDb`` holds the blocking half (a mixin of ``SqliteDb``: it needs the
connection and its ``transaction``), ``SqliteEvents`` the coroutines of
``SqliteStore`` that run it on the store's worker thread.

One writer at a time (``BEGIN IMMEDIATE``): events commit in ``seq`` order, and
AUTOINCREMENT never hands out a ``seq`` (or delivery id) twice.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import orjson

from tracker.store.base import Delivery, DeliveryStatus, Event, GeofenceRecord, Webhook
from tracker.store.sqlite_codec import from_us, from_us_or_none, json_text, to_us, to_us_or_none

P = ParamSpec("P")
T = TypeVar("T")

# In Event's, Delivery's and Webhook's field orders.
EVENT_COLUMNS = (
    "id, type, severity, vehicle_id, unique_id, fix_time, detected_at, lat, lon, details, "
    "late, alert_key, clears, seq"
)
EVENT_FIELDS = ", ".join("e." + c for c in EVENT_COLUMNS.split(", "))
DELIVERY_FIELDS = (
    "d.id, d.webhook_id, d.event_seq, d.status, d.attempts, d.next_attempt_at, d.created_at, "
    "d.last_error, d.last_status_code, d.delivered_at"
)
WEBHOOK_FIELDS = "w.id, w.url, w.secret, w.event_types, w.created_at"
GEOFENCE_FIELDS = "id, name, category, geometry, vehicle_ids, created_at, details"

UPSERT_SEEN = """
INSERT INTO unit_seen (unique_id, last_seen) VALUES (?, ?)
ON CONFLICT (unique_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)
"""

INSERT_EVENT = """
INSERT INTO events (id, type, severity, vehicle_id, unique_id, fix_time, detected_at, lat, lon,
                    details, late, alert_key, clears)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING seq
"""

QUEUE_DELIVERIES = """
INSERT INTO webhook_deliveries (webhook_id, event_seq, status, attempts, next_attempt_at,
                                created_at)
SELECT w.id, e.seq, 'pending', 0, e.detected_at, e.detected_at
FROM events e JOIN webhooks w
    ON w.event_types IS NULL OR e.type IN (SELECT value FROM json_each(w.event_types))
WHERE e.seq IN (SELECT value FROM json_each(?))
ORDER BY e.seq, w.id
"""

# max(seq) with bare columns: SQLite takes them from the row holding the max.
OPEN_ALERTS = f"""
SELECT {EVENT_FIELDS}
FROM (
    SELECT max(seq) AS seq, id, type, severity, vehicle_id, unique_id, fix_time, detected_at,
           lat, lon, details, late, alert_key, clears
    FROM events
    WHERE alert_key IS NOT NULL
    GROUP BY vehicle_id, alert_key
) e
WHERE NOT e.clears
ORDER BY e.seq
"""

DUE_DELIVERIES = f"""
SELECT {DELIVERY_FIELDS}, {WEBHOOK_FIELDS}, {EVENT_FIELDS}
FROM webhook_deliveries d
JOIN webhooks w ON w.id = d.webhook_id
JOIN events e ON e.seq = d.event_seq
WHERE d.status = 'pending' AND d.next_attempt_at <= ?
ORDER BY d.next_attempt_at, d.id
LIMIT ?
"""


class EventsDb:
    """The blocking half: ``SqliteDb`` provides ``conn`` and ``transaction``."""

    conn: sqlite3.Connection

    def transaction(
        self, begin: str = "BEGIN IMMEDIATE"
    ) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SqliteDb's

    def save_last_seen(self, seen: Sequence[tuple[str, datetime]]) -> None:
        with self.transaction() as conn:
            conn.executemany(UPSERT_SEEN, [(uid, to_us(at)) for uid, at in seen])

    def last_seen(self) -> dict[str, datetime]:
        rows = self.conn.execute("SELECT unique_id, last_seen FROM unit_seen")
        return {uid: from_us(at) for uid, at in rows}

    def insert_events(self, events: Sequence[Event]) -> list[Event]:
        params = [
            (e.id, e.type, e.severity, e.vehicle_id, e.unique_id, to_us_or_none(e.fix_time),
             to_us(e.detected_at), e.lat, e.lon, json_text(e.details), e.late, e.alert_key,
             e.clears)
            for e in events
        ]  # fmt: skip
        with self.transaction() as conn:
            seqs = [conn.execute(INSERT_EVENT, p).fetchall()[0][0] for p in params]
            conn.execute(QUEUE_DELIVERIES, (json_text(seqs),))
        return [dataclasses.replace(e, seq=s) for e, s in zip(events, seqs, strict=True)]

    def events(
        self,
        after: int,
        limit: int,
        vehicle_id: str | None,
        types: Sequence[str] | None,
        since: datetime | None,
        until: datetime | None,
        newest_first: bool,
    ) -> list[Event]:
        if types is not None and not types:
            return []
        args: list[Any] = [after]
        where = ["e.seq > ?"]
        for condition, value in [
            ("e.vehicle_id = ?", vehicle_id),
            ("e.type IN (SELECT value FROM json_each(?))", types and json_text(list(types))),
            ("e.detected_at >= ?", to_us_or_none(since)),
            ("e.detected_at < ?", to_us_or_none(until)),
        ]:
            if value is not None:
                args.append(value)
                where.append(condition)
        rows = self.conn.execute(
            f"SELECT {EVENT_FIELDS} FROM events e WHERE {' AND '.join(where)}"
            f" ORDER BY e.seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
            (*args, limit),
        )
        return [_event(r) for r in rows]

    def open_alerts(self) -> list[Event]:
        return [_event(r) for r in self.conn.execute(OPEN_ALERTS)]

    def put_geofence(self, fence: GeofenceRecord) -> None:
        vehicle_ids = None if fence.vehicle_ids is None else json_text(list(fence.vehicle_ids))
        with self.transaction() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO geofences ({GEOFENCE_FIELDS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fence.id, fence.name, fence.category, json_text(fence.geometry), vehicle_ids,
                 to_us(fence.created_at), json_text(fence.details)),
            )  # fmt: skip

    def geofences(self, where: str, *args: Any) -> list[GeofenceRecord]:
        rows = self.conn.execute(f"SELECT {GEOFENCE_FIELDS} FROM geofences {where}", args)
        return [
            GeofenceRecord(fence_id, name, category, orjson.loads(geometry),
                           None if vehicles is None else tuple(orjson.loads(vehicles)),
                           from_us(created_at), orjson.loads(details))
            for fence_id, name, category, geometry, vehicles, created_at, details in rows
        ]  # fmt: skip

    def delete(self, table: str, row_id: str) -> bool:
        """Delete a geofence or a webhook (its deliveries cascade) by id."""
        with self.transaction() as conn:
            return conn.execute(f"DELETE FROM {table} WHERE id = ?", (row_id,)).rowcount > 0

    def put_webhook(self, webhook: Webhook) -> None:
        types = None if webhook.event_types is None else json_text(list(webhook.event_types))
        with self.transaction() as conn:
            # not INSERT OR REPLACE: that deletes the row first, and its deliveries with it
            conn.execute(
                "INSERT INTO webhooks (id, url, secret, event_types, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET url = excluded.url, secret = excluded.secret,"
                " event_types = excluded.event_types, created_at = excluded.created_at",
                (webhook.id, webhook.url, webhook.secret, types, to_us(webhook.created_at)),
            )

    def webhooks(self, where: str, *args: Any) -> list[Webhook]:
        rows = self.conn.execute(f"SELECT {WEBHOOK_FIELDS} FROM webhooks w {where}", args)
        return [_webhook(r) for r in rows]

    def due_deliveries(self, now: datetime, limit: int) -> list[tuple[Delivery, Webhook, Event]]:
        rows = self.conn.execute(DUE_DELIVERIES, (to_us(now), limit))
        return [(_delivery(r[:10]), _webhook(r[10:15]), _event(r[15:])) for r in rows]

    def update_delivery(
        self,
        delivery_id: int,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_error: str | None,
        last_status_code: int | None,
        delivered_at: datetime | None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?,"
                " last_error = ?, last_status_code = ?, delivered_at = ? WHERE id = ?",
                (status, attempts, to_us(next_attempt_at), last_error, last_status_code,
                 to_us_or_none(delivered_at), delivery_id),
            )  # fmt: skip

    def deliveries(self, webhook_id: str, limit: int) -> list[Delivery]:
        rows = self.conn.execute(
            f"SELECT {DELIVERY_FIELDS} FROM webhook_deliveries d"
            " WHERE d.webhook_id = ? ORDER BY d.id DESC LIMIT ?",
            (webhook_id, limit),
        )
        return [_delivery(r) for r in rows]


class SqliteEvents:
    """The coroutines: ``SqliteStore`` provides ``_db`` and ``_run`` (its worker thread)."""

    @property
    def _db(self) -> EventsDb:
        raise NotImplementedError  # SqliteStore's

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError  # SqliteStore's

    async def save_last_seen(self, seen: Sequence[tuple[str, datetime]]) -> None:
        if seen:
            await self._run(self._db.save_last_seen, seen)

    async def last_seen(self) -> dict[str, datetime]:
        return await self._run(self._db.last_seen)

    async def insert_events(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        return await self._run(self._db.insert_events, events)

    async def events(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        vehicle_id: str | None = None,
        types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        newest_first: bool = False,
    ) -> list[Event]:
        db, limit = self._db, max(limit, 0)
        return await self._run(
            db.events, after, limit, vehicle_id, types, since, until, newest_first
        )

    async def open_alerts(self) -> list[Event]:
        return await self._run(self._db.open_alerts)

    async def put_geofence(self, fence: GeofenceRecord) -> None:
        await self._run(self._db.put_geofence, fence)

    async def get_geofence(self, fence_id: str) -> GeofenceRecord | None:
        fences = await self._run(self._db.geofences, "WHERE id = ?", fence_id)
        return fences[0] if fences else None

    async def list_geofences(self) -> list[GeofenceRecord]:
        return await self._run(self._db.geofences, "ORDER BY id")

    async def delete_geofence(self, fence_id: str) -> bool:
        return await self._run(self._db.delete, "geofences", fence_id)

    async def put_webhook(self, webhook: Webhook) -> None:
        await self._run(self._db.put_webhook, webhook)

    async def list_webhooks(self) -> list[Webhook]:
        return await self._run(self._db.webhooks, "ORDER BY w.id")

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        webhooks = await self._run(self._db.webhooks, "WHERE w.id = ?", webhook_id)
        return webhooks[0] if webhooks else None

    async def delete_webhook(self, webhook_id: str) -> bool:
        return await self._run(self._db.delete, "webhooks", webhook_id)

    async def due_deliveries(
        self, now: datetime, *, limit: int
    ) -> list[tuple[Delivery, Webhook, Event]]:
        if limit <= 0:
            return []
        return await self._run(self._db.due_deliveries, now, limit)

    async def update_delivery(
        self,
        delivery_id: int,
        *,
        status: DeliveryStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_error: str | None,
        last_status_code: int | None,
        delivered_at: datetime | None,
    ) -> None:
        await self._run(
            self._db.update_delivery,
            delivery_id,
            status,
            attempts,
            next_attempt_at,
            last_error,
            last_status_code,
            delivered_at,
        )

    async def deliveries(self, webhook_id: str, *, limit: int) -> list[Delivery]:
        return await self._run(self._db.deliveries, webhook_id, max(limit, 0))


def _event(row: Sequence[Any]) -> Event:
    (eid, etype, severity, vid, uid, fix, detected, lat, lon, details, late, key, clears, seq) = row
    return Event(eid, etype, severity, vid, uid, from_us_or_none(fix), from_us(detected), lat, lon,
                 orjson.loads(details), bool(late), key, bool(clears), seq)  # fmt: skip


def _webhook(row: Sequence[Any]) -> Webhook:
    webhook_id, url, secret, types, created_at = row
    event_types = None if types is None else tuple(orjson.loads(types))
    return Webhook(webhook_id, url, secret, event_types, from_us(created_at))


def _delivery(row: Sequence[Any]) -> Delivery:
    (did, webhook_id, seq, status, attempts, next_at, created, error, code, delivered) = row
    return Delivery(did, webhook_id, seq, status, attempts, from_us(next_at), from_us(created),
                    error, code, from_us_or_none(delivered))  # fmt: skip
