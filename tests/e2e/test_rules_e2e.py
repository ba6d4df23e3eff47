"""Risk rules through the real server: fences over REST, a GT06 unit driving,
events in the store, on the websocket and in the sync feed; silence detected
at its deadline with a controllable clock, and across restarts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tracker.server import Server
from tracker.simulate import gt06_heartbeat, gt06_location

from .conftest import ServerFactory
from .test_position_path import (
    IMEI,
    LOGIN_FRAME,
    LOGIN_REPLY,
    ack,
    live,
    next_message,
    register,
    unit_connection,
)

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
LOT = {"lon": 106.8, "lat": -6.2}


class Clock:
    """The server's clock, moved by the test (the network stays real)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


async def events_of(api: httpx.AsyncClient, *types: str) -> list[dict[str, Any]]:
    params = {"type": list(types), "order": "oldest"} if types else {"order": "oldest"}
    body = (await api.get("/api/v1/events", params=params)).json()
    items: list[dict[str, Any]] = body["items"]
    return items


async def wait_for_events(api: httpx.AsyncClient, *types: str, count: int = 1) -> list[Any]:
    for _ in range(100):
        found = await events_of(api, *types)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {types} events; have {await events_of(api)}")


def east(metres: float) -> float:
    return LOT["lon"] + metres / 110_500


async def test_risk_site_visit_is_stored_pushed_and_in_the_feed(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api)
    created = await api.post(
        "/api/v1/geofences",
        json={"name": "Pawn lot", "category": "risk_site", "circle": {**LOT, "radius_m": 300}},
    )
    assert created.status_code == 201, created.text
    fence = created.json()
    assert fence["geometry"]["type"] == "Polygon"
    assert fence["circle"]["radius_m"] == 300

    async with live(server, ["veh-1"]) as ws, unit_connection(server) as unit:
        await next_message(ws)  # snapshot
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        track = [(0, 3000), (30, 2000), (60, 50), (90, 0), (120, 20)]
        for serial, (seconds, metres) in enumerate(track, start=2):
            fix = gt06_location(
                T0 + timedelta(seconds=seconds), LOT["lat"], east(metres), serial=serial
            )
            assert await unit.send(fix) == ack(0x22, serial)
        pushed = []
        while len([m for m in pushed if m["type"] == "event"]) < 2:
            pushed.append(await next_message(ws))
    live_events = [m for m in pushed if m["type"] == "event"]
    assert [m["event_type"] for m in live_events] == ["geofence_enter", "risk_site_visit"]
    visit = live_events[1]
    assert visit["vehicle_id"] == "veh-1"
    assert visit["details"]["fence_id"] == fence["id"]

    stored = await wait_for_events(api, "geofence_enter", "risk_site_visit", count=2)
    assert [e["type"] for e in stored] == ["geofence_enter", "risk_site_visit"]
    assert stored[1]["fix_time"] == "2026-11-29T10:01:30Z"
    assert stored[1]["severity"] == "warning"
    assert stored[1]["lat"] == pytest.approx(-6.2)

    # the servicing system syncs: one event a page, nothing missed, nothing twice
    seen, cursor = [], None
    while True:
        page = (
            await api.get(
                "/api/v1/feed/events", params={"limit": 1} | ({"after": cursor} if cursor else {})
            )
        ).json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [e["id"] for e in await events_of(api)]
    again = (await api.get("/api/v1/feed/events", params={"after": cursor})).json()
    assert again == {"data": [], "next_cursor": cursor, "has_more": False}
    bad = await api.get("/api/v1/feed/events", params={"after": "yesterday"})
    assert bad.status_code == 400


async def test_bad_fences_get_a_422_that_says_why(api: httpx.AsyncClient) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    response = await api.post("/api/v1/geofences", json={"geometry": bowtie})
    assert response.status_code == 422
    assert "intersection" in response.json()["detail"].lower()
    short = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}
    assert "4" in (await api.post("/api/v1/geofences", json={"geometry": short})).json()["detail"]
    far = await api.post(
        "/api/v1/geofences", json={"circle": {"lon": 200, "lat": 0, "radius_m": 10}}
    )
    assert far.status_code == 422
    assert "lon" in far.json()["detail"]
    both = await api.post(
        "/api/v1/geofences", json={"circle": {**LOT, "radius_m": 10}, "geometry": bowtie}
    )
    assert "exactly one" in both.json()["detail"]


async def test_silent_unit_fires_at_its_deadline_and_comes_back(
    make_server: ServerFactory,
) -> None:
    clock = Clock(T0)
    server = await make_server(clock=clock)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.ports['http']}",
        headers={"Authorization": "Bearer e2e-admin-key"},
    ) as api:
        await api.put(
            "/api/v1/vehicles/veh-1",
            json={"units": [{"unique_id": IMEI, "kind": "wired", "silent_after_s": 120}]},
        )
        async with unit_connection(server) as unit:
            assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
            clock.advance(seconds=119)
            await asyncio.sleep(0.6)
            assert await events_of(api, "unit_silent") == []
            clock.advance(seconds=1)
            [silent] = await wait_for_events(api, "unit_silent")
            assert silent["fix_time"] == "2026-11-29T10:02:00Z"
            assert silent["alert_key"] == f"unit_silent:{IMEI}"
            alerts = (await api.get("/api/v1/alerts")).json()["items"]
            assert [a["type"] for a in alerts] == ["unit_silent"]

            clock.advance(seconds=30)
            assert await unit.send(gt06_heartbeat(2)) == ack(0x13, 2)
            [back] = await wait_for_events(api, "unit_back")
            assert back["clears"] is True
            assert (await api.get("/api/v1/alerts")).json()["items"] == []


async def test_silence_survives_a_restart_and_fires_once(make_server: ServerFactory) -> None:
    clock = Clock(T0)
    first = await make_server(clock=clock)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{first.ports['http']}",
        headers={"Authorization": "Bearer e2e-admin-key"},
    ) as api:
        await api.put(
            "/api/v1/vehicles/veh-1",
            json={"units": [{"unique_id": IMEI, "kind": "wired", "silent_after_s": 300}]},
        )
    async with unit_connection(first) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
    await first.stop()  # down for an hour; the deadline passes meanwhile
    clock.advance(hours=1)

    for _ in range(2):  # a second restart must not fire it again
        server = await make_server(clock=clock)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.ports['http']}",
            headers={"Authorization": "Bearer e2e-admin-key"},
        ) as api:
            [silent] = await wait_for_events(api, "unit_silent")
            assert silent["fix_time"] == "2026-11-29T10:05:00Z"
            await asyncio.sleep(0.6)  # a few clock ticks
            assert len(await events_of(api, "unit_silent")) == 1
        await server.stop()


async def test_a_fence_for_a_group_follows_its_members(
    server: Server, api: httpx.AsyncClient
) -> None:
    """A vehicle outside the group drives through unnoticed; put in the group,
    it is watched by the group's fence."""
    car = {"units": [{"unique_id": IMEI}], "group": "fleet-b"}
    assert (await api.put("/api/v1/vehicles/veh-1", json=car)).json()["group"] == "fleet-b"
    fence = {"name": "Pawn lot", "category": "risk_site", "circle": {**LOT, "radius_m": 300}}
    created = await api.post("/api/v1/geofences", json=fence | {"group": "fleet-a"})
    assert created.status_code == 201, created.text
    assert (created.json()["group"], created.json()["vehicle_ids"]) == ("fleet-a", None)

    async def drive(start: int, serial: int) -> None:
        async with unit_connection(server) as unit:
            assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
            for k, metres in enumerate((3000, 0, 10, 3000, 3000)):
                when = T0 + timedelta(seconds=start + 30 * k)
                fix = gt06_location(when, LOT["lat"], east(metres), serial=serial + k)
                assert await unit.send(fix) == ack(0x22, serial + k)

    await drive(0, 2)
    await asyncio.sleep(0.5)  # the rules take acked rows at their next tick (25 ms)
    assert await events_of(api) == []
    listed = (await api.get("/api/v1/geofences", params={"vehicle_id": "veh-1"})).json()
    assert listed["items"] == []
    await api.put("/api/v1/vehicles/veh-1", json=car | {"group": "fleet-a"})
    listed = (await api.get("/api/v1/geofences", params={"vehicle_id": "veh-1"})).json()
    assert [f["id"] for f in listed["items"]] == [created.json()["id"]]
    await drive(600, 10)
    stored = await wait_for_events(api, "geofence_enter", "risk_site_visit", count=2)
    assert [e["fix_time"] for e in stored] == ["2026-11-29T10:11:00Z"] * 2
