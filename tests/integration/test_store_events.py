"""The ``Store`` contract for unit liveness, events, geofences and webhooks, run on
both adapters (fixtures in ``conftest.py``)."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest

from tracker.store import Delivery, Event, GeofenceRecord, Store, Webhook, open_store
from tracker.store.sqlite import path_of

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)

SQUARE = {  # around Nairobi CBD, lon/lat
    "type": "Polygon",
    "coordinates": [
        [[36.80, -1.30], [36.84, -1.30], [36.84, -1.27], [36.80, -1.27], [36.80, -1.30]]
    ],
}
TWO_SQUARES = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
        [[[2.5, 2.5], [3.25, 2.5], [3.25, 3.125], [2.5, 2.5]]],
    ],
}


def event(event_id: str, **fields: Any) -> Event:
    defaults: dict[str, Any] = {
        "type": "geofence_exit",
        "severity": "warning",
        "vehicle_id": "v1",
        "unique_id": "u1",
        "fix_time": T0,
        "detected_at": T0 + SECOND,
    }
    return Event(id=event_id, **{**defaults, **fields})


def webhook(webhook_id: str, event_types: tuple[str, ...] | None = None) -> Webhook:
    return Webhook(webhook_id, f"https://example.com/{webhook_id}", "s3cret", event_types, T0)


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events if e.seq is not None]


async def reopen(store: Store, url: str) -> Store:
    await store.close()
    reopened = open_store(url)
    await reopened.open()
    return reopened


# unit liveness


async def test_last_seen_never_goes_backwards(store: Store) -> None:
    assert await store.last_seen() == {}
    await store.save_last_seen([("u1", T0 + 2 * SECOND), ("u2", T0)])
    await store.save_last_seen(
        [("u1", T0), ("u2", T0 + SECOND), ("u3", T0 + 5 * SECOND), ("u3", T0), ("u1", T0)]
    )
    await store.save_last_seen([])
    east = datetime(2024, 5, 1, 15, 0, 10, tzinfo=timezone(timedelta(hours=3)))  # T0 + ~10 s
    await store.save_last_seen([("u2", east)])
    seen = await store.last_seen()
    assert seen == {"u1": T0 + 2 * SECOND, "u2": east, "u3": T0 + 5 * SECOND}
    assert all(t.utcoffset() == timedelta(0) for t in seen.values())


async def test_last_seen_survives_reopening(store: Store, store_url: str) -> None:
    await store.save_last_seen([("u1", T0)])
    reopened = await reopen(store, store_url)
    try:
        assert await reopened.last_seen() == {"u1": T0}
        await reopened.save_last_seen([("u1", T0 - SECOND)])
        assert await reopened.last_seen() == {"u1": T0}
    finally:
        await reopened.close()


# events


async def test_insert_events_round_trips_every_field(store: Store) -> None:
    full = event(
        "e-full",
        type="unit_silent",
        severity="critical",
        vehicle_id="v7",
        unique_id="862000000000001",
        fix_time=datetime(2024, 5, 1, 15, 0, 0, 999999, tzinfo=timezone(timedelta(hours=3))),
        detected_at=T0 + timedelta(hours=1),
        lat=-1.286389,
        lon=36.817223,
        details={"fence": {"id": "f1", "name": "Nairobi ünï"}, "speeds": [1.5, None, 3], "n": 7},
        late=True,
        alert_key="unit_silent:862000000000001",
        clears=True,
    )
    bare = event("e-bare", unique_id=None, fix_time=None, severity="info")
    third = event("e-third", vehicle_id="v2")
    stored = await store.insert_events([full, bare, third])
    assert [e.id for e in stored] == ["e-full", "e-bare", "e-third"]
    assert len(seqs(stored)) == 3
    assert seqs(stored) == sorted(set(seqs(stored)))  # strictly increasing
    assert stored[0] == dataclasses.replace(full, seq=stored[0].seq)
    got = await store.events()
    assert got == stored
    assert got[0].details == full.details
    assert (got[1].lat, got[1].lon, got[1].fix_time, got[1].unique_id) == (None, None, None, None)
    assert (got[1].late, got[1].alert_key, got[1].clears, got[1].details) == (
        False,
        None,
        False,
        {},
    )
    for e in got:
        assert e.detected_at.utcoffset() == timedelta(0)
    assert got[0].fix_time is not None
    assert got[0].fix_time.utcoffset() == timedelta(0)
    assert got[0].fix_time == full.fix_time
    assert await store.insert_events([]) == []
    more = await store.insert_events([event("e-4")])
    assert seqs(more)[0] > seqs(stored)[-1]


async def test_events_filters_and_paging(store: Store) -> None:
    kinds = ["geofence_exit", "unit_silent", "power_cut"]
    batch = [
        event(f"e{i}", vehicle_id=f"v{i % 2}", type=kinds[i % 3], detected_at=T0 + i * MINUTE)
        for i in range(12)
    ]
    stored = await store.insert_events(batch[:5])
    stored += await store.insert_events(batch[5:])
    by_id = {e.id: e for e in stored}

    def ids(events: list[Event]) -> list[str]:
        return [e.id for e in events]

    everything = [f"e{i}" for i in range(12)]
    assert ids(await store.events()) == everything
    assert ids(await store.events(vehicle_id="v1")) == everything[1::2]
    assert ids(await store.events(types=["power_cut"])) == everything[2::3]
    assert ids(await store.events(types=["power_cut", "unit_silent"], vehicle_id="v0")) == [
        "e2",
        "e4",
        "e8",
        "e10",
    ]
    assert await store.events(types=[]) == []
    assert ids(await store.events(types=["nothing"])) == []
    assert ids(await store.events(since=T0 + 3 * MINUTE, until=T0 + 6 * MINUTE)) == [
        "e3",
        "e4",
        "e5",
    ]
    assert ids(await store.events(after=by_id["e9"].seq or 0)) == ["e10", "e11"]
    assert ids(await store.events(limit=2)) == ["e0", "e1"]
    assert await store.events(limit=0) == []
    assert ids(await store.events(newest_first=True, limit=3)) == ["e11", "e10", "e9"]
    # newest first, ``after`` is still a lower bound
    after_e8 = await store.events(newest_first=True, after=by_id["e8"].seq or 0, vehicle_id="v1")
    assert ids(after_e8) == ["e11", "e9"]

    # paging with the cursor sees every event once
    paged: list[Event] = []
    cursor = 0
    while page := await store.events(after=cursor, limit=5):
        paged += page
        cursor = page[-1].seq or 0
    assert paged == stored


async def test_seq_stays_monotonic_across_reopening(store: Store, store_url: str) -> None:
    first = await store.insert_events([event("e1"), event("e2"), event("e3")])
    newest = seqs(first)[-1]
    await store.close()
    # Drop the newest event behind the store's back: its seq is never handed out again.
    if store_url.startswith("sqlite:"):
        with sqlite3.connect(path_of(store_url)) as db:
            db.execute("DELETE FROM events WHERE seq = ?", (newest,))
        db.close()
    else:
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute("DELETE FROM events WHERE seq = $1", newest)
        finally:
            await conn.close()
    reopened = open_store(store_url)
    await reopened.open()
    try:
        assert [e.id for e in await reopened.events()] == ["e1", "e2"]
        later = await reopened.insert_events([event("e4"), event("e5")])
        assert seqs(later)[0] > newest
        assert seqs(later)[1] > seqs(later)[0]
        assert [e.id for e in await reopened.events()] == ["e1", "e2", "e4", "e5"]
    finally:
        await reopened.close()


async def test_open_alerts_follow_the_newest_event_of_each_key(store: Store) -> None:
    assert await store.open_alerts() == []

    def alert(event_id: str, vehicle_id: str, key: str, *, clears: bool = False) -> Event:
        return event(event_id, vehicle_id=vehicle_id, alert_key=key, clears=clears)

    await store.insert_events(
        [
            alert("a1", "v1", "unit_silent:u1"),
            alert("a2", "v1", "geofence:f1"),
            alert("a3", "v2", "unit_silent:u1"),  # same key, other vehicle
            event("one-off"),  # no key: never an alert
        ]
    )
    assert [e.id for e in await store.open_alerts()] == ["a1", "a2", "a3"]

    await store.insert_events([alert("a4", "v1", "unit_silent:u1", clears=True)])
    assert [e.id for e in await store.open_alerts()] == ["a2", "a3"]

    # reopened, then opened again: only the newest event of the key counts
    await store.insert_events(
        [
            alert("a5", "v1", "unit_silent:u1"),
            alert("a6", "v1", "unit_silent:u1"),
            alert("a7", "v2", "unit_silent:u1", clears=True),
        ]
    )
    opened = await store.open_alerts()
    assert [e.id for e in opened] == ["a2", "a6"]
    assert all(e.seq is not None and not e.clears for e in opened)

    await store.insert_events(
        [alert("a8", "v1", "geofence:f1", clears=True), alert("a9", "v2", "geofence:f1")]
    )
    assert [e.id for e in await store.open_alerts()] == ["a6", "a9"]
    # a clearing event for a key never opened changes nothing
    await store.insert_events([alert("a10", "v3", "unit_silent:u9", clears=True)])
    assert [e.id for e in await store.open_alerts()] == ["a6", "a9"]


# webhooks and their outbox


async def test_webhooks_round_trip(store: Store) -> None:
    assert await store.list_webhooks() == []
    hooks = [
        webhook("w2", ("geofence_exit", "power_cut")),
        webhook("w1"),
        webhook("w3", ()),
    ]
    for hook in hooks:
        await store.put_webhook(hook)
    assert await store.list_webhooks() == [hooks[1], hooks[0], hooks[2]]  # by id
    assert await store.get_webhook("w1") == hooks[1]
    assert await store.get_webhook("w3") == hooks[2]  # () is not None
    assert await store.get_webhook("nope") is None
    replaced = Webhook("w1", "https://other.example/x", "new", ("unit_silent",), T0 + SECOND)
    await store.put_webhook(replaced)
    assert await store.get_webhook("w1") == replaced
    assert len(await store.list_webhooks()) == 3


async def test_deliveries_are_queued_for_matching_webhooks(store: Store) -> None:
    await store.put_webhook(webhook("all"))
    await store.put_webhook(webhook("exits", ("geofence_exit",)))
    await store.put_webhook(webhook("power", ("power_cut", "tamper")))
    await store.put_webhook(webhook("none", ()))
    stored = await store.insert_events(
        [
            event("e1", type="geofence_exit", detected_at=T0),
            event("e2", type="power_cut", detected_at=T0 + SECOND),
            event("e3", type="unit_silent", detected_at=T0 + 2 * SECOND),
        ]
    )
    seq = {e.id: e.seq for e in stored}

    async def queued(webhook_id: str) -> list[int]:
        return [d.event_seq for d in await store.deliveries(webhook_id, limit=10)]

    assert await queued("all") == [seq["e3"], seq["e2"], seq["e1"]]  # newest first
    assert await queued("exits") == [seq["e1"]]
    assert await queued("power") == [seq["e2"]]
    assert await queued("none") == []

    delivery = (await store.deliveries("exits", limit=10))[0]
    assert delivery == Delivery(
        delivery.id, "exits", seq["e1"] or 0, "pending", 0, T0, T0, None, None, None
    )
    assert delivery.next_attempt_at.utcoffset() == timedelta(0)

    # a webhook added later gets only later events
    await store.put_webhook(webhook("late"))
    assert await queued("late") == []
    later = await store.insert_events([event("e4", type="tamper")])
    assert await queued("late") == [later[0].seq]
    assert await queued("power") == [later[0].seq, seq["e2"]]


async def test_events_and_deliveries_commit_together(store: Store) -> None:
    await store.put_webhook(webhook("all"))
    await store.insert_events([event("e1")])
    # The second e1 violates the unique id: neither events nor deliveries are kept.
    with pytest.raises((asyncpg.UniqueViolationError, sqlite3.IntegrityError)):
        await store.insert_events([event("e2"), event("e1")])
    assert [e.id for e in await store.events()] == ["e1"]
    assert len(await store.deliveries("all", limit=10)) == 1
    stored = await store.insert_events([event("e2")])
    newest = (await store.deliveries("all", limit=1))[0]
    assert newest.event_seq == stored[0].seq


async def test_due_deliveries_respect_next_attempt_and_limit(store: Store) -> None:
    await store.put_webhook(webhook("a"))
    await store.put_webhook(webhook("b", ("power_cut",)))
    stored = await store.insert_events(
        [
            event("e1", type="power_cut", detected_at=T0 + 2 * SECOND),
            event("e2", type="geofence_exit", detected_at=T0),
            event("e3", type="power_cut", detected_at=T0 + 5 * SECOND),
        ]
    )
    by_id = {e.id: e for e in stored}
    assert await store.due_deliveries(T0 - SECOND, limit=10) == []

    due = await store.due_deliveries(T0 + 2 * SECOND, limit=10)  # <= now
    assert [(d.webhook_id, e.id) for d, _, e in due] == [("a", "e2"), ("a", "e1"), ("b", "e1")]
    for delivery, hook, ev in due:
        assert hook == webhook(hook.id, hook.event_types)
        assert ev == by_id[ev.id]
        assert (delivery.status, delivery.attempts, delivery.event_seq) == ("pending", 0, ev.seq)
        assert delivery.webhook_id == hook.id
    assert due[1][1] == webhook("a")
    assert due[2][1] == webhook("b", ("power_cut",))

    assert len(await store.due_deliveries(T0 + MINUTE, limit=10)) == 5
    two = await store.due_deliveries(T0 + MINUTE, limit=2)
    assert [(d.webhook_id, e.id) for d, _, e in two] == [("a", "e2"), ("a", "e1")]
    assert await store.due_deliveries(T0 + MINUTE, limit=0) == []


async def test_update_delivery_moves_through_its_states(store: Store) -> None:
    await store.put_webhook(webhook("w"))
    await store.insert_events([event("e1", detected_at=T0), event("e2", detected_at=T0)])
    first, second = (d for d, _, _ in await store.due_deliveries(T0, limit=10))

    # a failed attempt: still pending, due later
    retry_at = T0 + 30 * SECOND
    await store.update_delivery(
        first.id,
        status="pending",
        attempts=1,
        next_attempt_at=retry_at,
        last_error="HTTP 503",
        last_status_code=503,
        delivered_at=None,
    )
    assert [d.id for d, _, _ in await store.due_deliveries(T0 + SECOND, limit=10)] == [second.id]
    due_later = await store.due_deliveries(retry_at, limit=10)
    assert [d.id for d, _, _ in due_later] == [second.id, first.id]
    assert due_later[1][0] == Delivery(
        first.id, "w", first.event_seq, "pending", 1, retry_at, T0, "HTTP 503", 503, None
    )

    # delivered on the second attempt
    done_at = retry_at + SECOND
    await store.update_delivery(
        first.id,
        status="delivered",
        attempts=2,
        next_attempt_at=retry_at,
        last_error=None,
        last_status_code=204,
        delivered_at=done_at,
    )
    # the other one gives up: failed is final
    await store.update_delivery(
        second.id,
        status="failed",
        attempts=8,
        next_attempt_at=T0 + timedelta(days=1),
        last_error="connection refused",
        last_status_code=None,
        delivered_at=None,
    )
    assert await store.due_deliveries(T0 + timedelta(days=2), limit=10) == []
    assert await store.deliveries("w", limit=10) == [  # newest first
        Delivery(
            second.id,
            "w",
            second.event_seq,
            "failed",
            8,
            T0 + timedelta(days=1),
            T0,
            "connection refused",
            None,
            None,
        ),
        Delivery(first.id, "w", first.event_seq, "delivered", 2, retry_at, T0, None, 204, done_at),
    ]
    assert len(await store.deliveries("w", limit=1)) == 1
    assert await store.deliveries("w", limit=0) == []
    assert await store.deliveries("nope", limit=10) == []


async def test_delete_webhook_takes_its_deliveries(store: Store) -> None:
    await store.put_webhook(webhook("w1"))
    await store.put_webhook(webhook("w2"))
    await store.insert_events([event("e1"), event("e2")])
    # replacing a webhook keeps its deliveries
    await store.put_webhook(webhook("w1", ("geofence_exit",)))
    assert len(await store.deliveries("w1", limit=10)) == 2

    assert await store.delete_webhook("w1")
    assert not await store.delete_webhook("w1")
    assert await store.get_webhook("w1") is None
    assert await store.deliveries("w1", limit=10) == []
    assert {h.id for _, h, _ in await store.due_deliveries(T0 + MINUTE, limit=10)} == {"w2"}
    assert len(await store.deliveries("w2", limit=10)) == 2
    assert len(await store.events()) == 2  # the events stay

    await store.put_webhook(webhook("w1"))  # back, with an empty outbox
    assert await store.deliveries("w1", limit=10) == []


# geofences


async def test_geofences_round_trip(store: Store) -> None:
    assert await store.list_geofences() == []
    assert await store.get_geofence("f1") is None
    cbd = GeofenceRecord("f2", "Nairobi CBD", "allowed", SQUARE, None, T0)
    depots = GeofenceRecord(
        "f1",
        "Depots",
        "forbidden",
        TWO_SQUARES,
        ("v2", "v1"),
        T0 + SECOND,
        {"drawn_as": "circle", "center": [36.8, -1.3], "radius_m": 500.5},
    )
    await store.put_geofence(cbd)
    await store.put_geofence(depots)
    assert await store.list_geofences() == [depots, cbd]  # by id
    got = await store.get_geofence("f1")
    assert got == depots
    assert got is not None
    assert got.vehicle_ids == ("v2", "v1")
    assert (await store.get_geofence("f2")) == cbd
    for fence, original in [(got, depots), (await store.get_geofence("f2"), cbd)]:
        assert fence is not None
        assert _exact(fence.geometry) == _exact(original.geometry)  # ints stay ints

    replaced = GeofenceRecord("f2", "CBD (all)", "watch", TWO_SQUARES, (), T0 + MINUTE)
    await store.put_geofence(replaced)
    assert await store.get_geofence("f2") == replaced
    assert len(await store.list_geofences()) == 2

    assert await store.delete_geofence("f1")
    assert not await store.delete_geofence("f1")
    assert await store.get_geofence("f1") is None
    assert await store.list_geofences() == [replaced]


def _exact(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@pytest.mark.postgis
async def test_postgis_geometry_of_fences_and_events(postgis_url: str) -> None:
    store = open_store(postgis_url)
    await store.open()
    try:
        await store.put_geofence(GeofenceRecord("cbd", "CBD", "allowed", SQUARE, None, T0))
        await store.put_geofence(GeofenceRecord("two", "Two", "allowed", TWO_SQUARES, None, T0))
        await store.insert_events(
            [event("e1", lat=-1.286389, lon=36.817223), event("e2"), event("e3", lat=1.0)]
        )
    finally:
        await store.close()
    conn = await asyncpg.connect(postgis_url)
    try:
        fences = await conn.fetch(
            "SELECT id, ST_IsValid(geom) AS valid, ST_SRID(geom) AS srid,"
            " ST_GeometryType(geom) AS kind FROM geofences ORDER BY id"
        )
        assert [tuple(f) for f in fences] == [
            ("cbd", True, 4326, "ST_Polygon"),
            ("two", True, 4326, "ST_MultiPolygon"),
        ]
        inside = await conn.fetch(
            "SELECT id FROM geofences"
            " WHERE ST_Contains(geom, ST_SetSRID(ST_MakePoint($1, $2), 4326)) ORDER BY id",
            36.817223,
            -1.286389,
        )
        assert [r["id"] for r in inside] == ["cbd"]
        inside = await conn.fetch(
            "SELECT id FROM geofences"
            " WHERE ST_Contains(geom, ST_SetSRID(ST_MakePoint(3, 2.75), 4326))"
        )
        assert [r["id"] for r in inside] == ["two"]
        points = await conn.fetch(
            "SELECT id, ST_X(geom) AS x, ST_Y(geom) AS y, ST_SRID(geom) AS srid"
            " FROM events ORDER BY seq"
        )
        assert [tuple(p) for p in points] == [
            ("e1", 36.817223, -1.286389, 4326),
            ("e2", None, None, None),
            ("e3", None, None, None),  # lat without lon: no point
        ]
    finally:
        await conn.close()
