"""Unit liveness, events, geofences and webhooks on PostGIS.

``PostgisEvents`` is the part of ``PostgisStore`` beyond vehicles and positions:
a mixin it inherits, needing only the store's asyncpg pool.

``insert_events`` holds an advisory lock until it commits, so events commit in
``seq`` order: a feed reader that has seen ``seq`` n has seen every event below
it, and its cursor never skips one committed late.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from tracker.store.base import Delivery, DeliveryStatus, Event, GeofenceRecord, Webhook

# An arbitrary 64-bit key for pg_advisory_xact_lock: one event writer at a time.
EVENT_LOCK = 0x7472_6B72_6576_7401

# In Event's field order.
EVENT_FIELDS = """
e.id, e.type, e.severity, e.vehicle_id, e.unique_id, e.fix_time, e.detected_at, e.lat, e.lon,
e.details, e.late, e.alert_key, e.clears, e.seq
"""
# In Delivery's and Webhook's field orders.
DELIVERY_FIELDS = """
d.id, d.webhook_id, d.event_seq, d.status, d.attempts, d.next_attempt_at, d.created_at,
d.last_error, d.last_status_code, d.delivered_at
"""
WEBHOOK_FIELDS = "w.id, w.url, w.secret, w.event_types, w.created_at"
GEOFENCE_FIELDS = "id, name, category, geojson, vehicle_ids, created_at, details"

UPSERT_SEEN = """
INSERT INTO unit_seen (unique_id, last_seen)
SELECT unique_id, max(last_seen)
FROM unnest($1::text[], $2::timestamptz[]) AS t(unique_id, last_seen)
GROUP BY unique_id
ORDER BY unique_id
ON CONFLICT (unique_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
WHERE unit_seen.last_seen < EXCLUDED.last_seen
"""

# seq is drawn in the batch's order (ORDER BY ord).
INSERT_EVENTS = """
INSERT INTO events (id, type, severity, vehicle_id, unique_id, fix_time, detected_at, lat, lon,
                    geom, details, late, alert_key, clears)
SELECT id, type, severity, vehicle_id, unique_id, fix_time, detected_at, lat, lon,
       CASE WHEN lat IS NOT NULL AND lon IS NOT NULL
            THEN ST_SetSRID(ST_MakePoint(lon, lat), 4326) END,
       details::jsonb, late, alert_key, clears
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::timestamptz[], $8::float8[], $9::float8[], $10::text[], $11::bool[],
            $12::text[], $13::bool[])
     WITH ORDINALITY AS t(id, type, severity, vehicle_id, unique_id, fix_time, detected_at,
                          lat, lon, details, late, alert_key, clears, ord)
ORDER BY ord
RETURNING id, seq
"""

QUEUE_DELIVERIES = """
INSERT INTO webhook_deliveries (webhook_id, event_seq, status, attempts, next_attempt_at,
                                created_at)
SELECT w.id, e.seq, 'pending', 0, e.detected_at, e.detected_at
FROM events e JOIN webhooks w ON w.event_types IS NULL OR e.type = ANY (w.event_types)
WHERE e.seq = ANY ($1::bigint[])
ORDER BY e.seq, w.id
"""

OPEN_ALERTS = f"""
SELECT {EVENT_FIELDS}
FROM (
    SELECT DISTINCT ON (vehicle_id, alert_key) *
    FROM events
    WHERE alert_key IS NOT NULL
    ORDER BY vehicle_id, alert_key, seq DESC
) e
WHERE NOT e.clears
ORDER BY e.seq
"""

# geojson is kept as put; geom is made from it (and made valid if it is not).
UPSERT_GEOFENCE = """
INSERT INTO geofences (id, name, category, geom, geojson, vehicle_ids, details, created_at)
SELECT $1, $2, $3, ST_MakeValid(ST_SetSRID(ST_GeomFromGeoJSON($4::jsonb), 4326)),
       $4::jsonb, $5::text[], $6::jsonb, $7
ON CONFLICT (id) DO UPDATE
SET name = EXCLUDED.name, category = EXCLUDED.category, geom = EXCLUDED.geom,
    geojson = EXCLUDED.geojson, vehicle_ids = EXCLUDED.vehicle_ids,
    details = EXCLUDED.details, created_at = EXCLUDED.created_at
"""

UPSERT_WEBHOOK = """
INSERT INTO webhooks (id, url, secret, event_types, created_at)
VALUES ($1, $2, $3, $4::text[], $5)
ON CONFLICT (id) DO UPDATE
SET url = EXCLUDED.url, secret = EXCLUDED.secret, event_types = EXCLUDED.event_types,
    created_at = EXCLUDED.created_at
"""

DUE_DELIVERIES = f"""
SELECT {DELIVERY_FIELDS}, {WEBHOOK_FIELDS}, {EVENT_FIELDS}
FROM webhook_deliveries d
JOIN webhooks w ON w.id = d.webhook_id
JOIN events e ON e.seq = d.event_seq
WHERE d.status = 'pending' AND d.next_attempt_at <= $1
ORDER BY d.next_attempt_at, d.id
LIMIT $2
"""

UPDATE_DELIVERY = """
UPDATE webhook_deliveries
SET status = $2, attempts = $3, next_attempt_at = $4, last_error = $5, last_status_code = $6,
    delivered_at = $7
WHERE id = $1
"""


class PostgisEvents:
    """The events half of ``PostgisStore`` (see the module docstring)."""

    @property
    def _pool(self) -> asyncpg.Pool[asyncpg.Record]:
        raise NotImplementedError  # PostgisStore's

    # unit liveness

    async def save_last_seen(self, seen: Sequence[tuple[str, datetime]]) -> None:
        if seen:
            ids, times = zip(*seen, strict=True)
            await self._pool.execute(UPSERT_SEEN, list(ids), list(times))

    async def last_seen(self) -> dict[str, datetime]:
        rows = await self._pool.fetch("SELECT unique_id, last_seen FROM unit_seen")
        return dict(rows)  # type: ignore[arg-type]  # (unique_id, last_seen) pairs, built in C

    # events

    async def insert_events(self, events: Sequence[Event]) -> list[Event]:
        if not events:
            return []
        columns = [
            [e.id for e in events],
            [e.type for e in events],
            [e.severity for e in events],
            [e.vehicle_id for e in events],
            [e.unique_id for e in events],
            [e.fix_time for e in events],
            [e.detected_at for e in events],
            [e.lat for e in events],
            [e.lon for e in events],
            [orjson.dumps(e.details).decode() for e in events],
            [e.late for e in events],
            [e.alert_key for e in events],
            [e.clears for e in events],
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOCK)
            rows = await conn.fetch(INSERT_EVENTS, *columns)
            seqs = {r["id"]: r["seq"] for r in rows}
            await conn.execute(QUEUE_DELIVERIES, list(seqs.values()))
        return [dataclasses.replace(e, seq=seqs[e.id]) for e in events]

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
        args: list[Any] = [after]
        where = ["e.seq > $1"]
        for condition, value in [
            ("e.vehicle_id = ${}", vehicle_id),
            ("e.type = ANY (${}::text[])", None if types is None else list(types)),
            ("e.detected_at >= ${}", since),
            ("e.detected_at < ${}", until),
        ]:
            if value is not None:
                args.append(value)
                where.append(condition.format(len(args)))
        args.append(max(limit, 0))
        rows = await self._pool.fetch(
            f"SELECT {EVENT_FIELDS} FROM events e WHERE {' AND '.join(where)}"
            f" ORDER BY e.seq {'DESC' if newest_first else 'ASC'} LIMIT ${len(args)}",
            *args,
        )
        return [Event(*r) for r in rows]

    async def open_alerts(self) -> list[Event]:
        return [Event(*r) for r in await self._pool.fetch(OPEN_ALERTS)]

    # geofences

    async def put_geofence(self, fence: GeofenceRecord) -> None:
        vehicle_ids = None if fence.vehicle_ids is None else list(fence.vehicle_ids)
        await self._pool.execute(
            UPSERT_GEOFENCE,
            fence.id,
            fence.name,
            fence.category,
            fence.geometry,
            vehicle_ids,
            fence.details,
            fence.created_at,
        )

    async def get_geofence(self, fence_id: str) -> GeofenceRecord | None:
        row = await self._pool.fetchrow(
            f"SELECT {GEOFENCE_FIELDS} FROM geofences WHERE id = $1", fence_id
        )
        return None if row is None else _geofence(row)

    async def list_geofences(self) -> list[GeofenceRecord]:
        rows = await self._pool.fetch(f"SELECT {GEOFENCE_FIELDS} FROM geofences ORDER BY id")
        return [_geofence(r) for r in rows]

    async def delete_geofence(self, fence_id: str) -> bool:
        sql = "DELETE FROM geofences WHERE id = $1 RETURNING id"
        return await self._pool.fetchval(sql, fence_id) is not None

    # webhooks and their outbox

    async def put_webhook(self, webhook: Webhook) -> None:
        event_types = None if webhook.event_types is None else list(webhook.event_types)
        await self._pool.execute(
            UPSERT_WEBHOOK,
            webhook.id,
            webhook.url,
            webhook.secret,
            event_types,
            webhook.created_at,
        )

    async def list_webhooks(self) -> list[Webhook]:
        rows = await self._pool.fetch(f"SELECT {WEBHOOK_FIELDS} FROM webhooks w ORDER BY w.id")
        return [_webhook(r) for r in rows]

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = await self._pool.fetchrow(
            f"SELECT {WEBHOOK_FIELDS} FROM webhooks w WHERE w.id = $1", webhook_id
        )
        return None if row is None else _webhook(row)

    async def delete_webhook(self, webhook_id: str) -> bool:
        # its deliveries go with it: ON DELETE CASCADE
        sql = "DELETE FROM webhooks WHERE id = $1 RETURNING id"
        return await self._pool.fetchval(sql, webhook_id) is not None

    async def due_deliveries(
        self, now: datetime, *, limit: int
    ) -> list[tuple[Delivery, Webhook, Event]]:
        rows = await self._pool.fetch(DUE_DELIVERIES, now, max(limit, 0))
        due = []
        for row in rows:
            values = tuple(row)
            due.append((Delivery(*values[:10]), _webhook(values[10:15]), Event(*values[15:])))
        return due

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
        await self._pool.execute(
            UPDATE_DELIVERY,
            delivery_id,
            status,
            attempts,
            next_attempt_at,
            last_error,
            last_status_code,
            delivered_at,
        )

    async def deliveries(self, webhook_id: str, *, limit: int) -> list[Delivery]:
        rows = await self._pool.fetch(
            f"SELECT {DELIVERY_FIELDS} FROM webhook_deliveries d"
            " WHERE d.webhook_id = $1 ORDER BY d.id DESC LIMIT $2",
            webhook_id,
            max(limit, 0),
        )
        return [Delivery(*r) for r in rows]


def _geofence(row: asyncpg.Record) -> GeofenceRecord:
    fence_id, name, category, geometry, vehicle_ids, created_at, details = row
    vehicles = None if vehicle_ids is None else tuple(vehicle_ids)
    return GeofenceRecord(fence_id, name, category, geometry, vehicles, created_at, details)


def _webhook(row: asyncpg.Record | tuple[Any, ...]) -> Webhook:
    webhook_id, url, secret, event_types, created_at = row
    types = None if event_types is None else tuple(event_types)
    return Webhook(webhook_id, url, secret, types, created_at)
