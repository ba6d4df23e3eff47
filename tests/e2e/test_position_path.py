"""A GT06 unit on a real socket: login, positions, heartbeat, alarm; the replies
come back only after the store committed; REST and the live websocket see it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from protocols.binary import crc16_x25
from tracker.server import Server
from tracker.simulate import gt06_frame, gt06_heartbeat, gt06_location, gt06_login

from .conftest import ADMIN_KEY, ServerFactory

pytestmark = pytest.mark.e2e

IMEI = "123456789012345"
# Captured login of IMEI 123456789012345, serial 1, and the reply the protocol
# requires (serial echoed). Source: shared/vectors/gt06.jsonl (traccar Gt06 test).
LOGIN_FRAME = bytes.fromhex("78780d01012345678901234500018cdd0d0a")
LOGIN_REPLY = bytes.fromhex("787805010001d9dc0d0a")
T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)


def ack(proto: int, serial: int) -> bytes:
    body = bytes([5, proto]) + serial.to_bytes(2, "big")
    return b"\x78\x78" + body + crc16_x25(body).to_bytes(2, "big") + b"\r\n"


class Unit:
    """A GT06 unit on a real TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, frame: bytes, reply_len: int = 10) -> bytes:
        self.writer.write(frame)
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(reply_len), 5)


@contextlib.asynccontextmanager
async def unit_connection(server: Server) -> AsyncIterator[Unit]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["gt06"])
    try:
        yield Unit(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def live(server: Server, subscribe: Any) -> AsyncIterator[ClientConnection]:
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live"
    async with connect(url, additional_headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as ws:
        await ws.send(orjson.dumps({"subscribe": subscribe}).decode())
        yield ws


async def next_message(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    return message


async def register(api: httpx.AsyncClient, vehicle_id: str = "veh-1", *imeis: str) -> None:
    units = [{"unique_id": imei, "kind": "wired"} for imei in (imeis or (IMEI,))]
    response = await api.put(
        f"/api/v1/vehicles/{vehicle_id}",
        json={"plate": "B 1234 XYZ", "vin": "VIN1", "loan_ref": "L-1", "units": units},
    )
    assert response.status_code in (200, 201), response.text


async def test_gt06_unit_end_to_end(server: Server, api: httpx.AsyncClient) -> None:
    await register(api)
    async with live(server, ["veh-1"]) as ws, unit_connection(server) as unit:
        snapshot = await next_message(ws)
        assert snapshot["type"] == "snapshot"
        assert snapshot["positions"] == []
        assert snapshot["cursor"]  # to resume from after a reconnect

        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY

        frame = gt06_location(T0, -6.2, 106.816666, serial=2, speed_kmh=42, course_deg=90)
        assert await unit.send(frame) == ack(0x22, 2)
        # the ack means the batch committed: the row is in the store already
        stored = await server.store.track([IMEI], start=T0, end=T0 + timedelta(1), limit=10)
        assert [(r.lat, r.lon) for r in stored] == [
            (pytest.approx(-6.2), pytest.approx(106.816666))
        ]

        pushed = await next_message(ws)
        assert pushed["type"] == "position"
        assert pushed["vehicle_id"] == "veh-1"
        assert pushed["unique_id"] == IMEI
        assert pushed["fix_time"] == "2026-11-29T10:00:00Z"
        assert pushed["lat"] == pytest.approx(-6.2, abs=1e-6)
        assert pushed["lon"] == pytest.approx(106.816666, abs=1e-6)
        assert pushed["speed_kmh"] == 42
        assert pushed["course"] == 90
        assert pushed["latest"] is True

        assert await unit.send(gt06_heartbeat(3)) == ack(0x13, 3)

        # alarm 0x16: GPS block, LBS (length counts itself), terminal info, voltage,
        # GSM, alarm 01 (SOS) + language 02
        t = T0 + timedelta(seconds=30)
        gps = bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC9])
        gps += round(6.3 * 1_800_000).to_bytes(4, "big") + round(106.9 * 1_800_000).to_bytes(
            4, "big"
        )
        gps += bytes([0]) + (0x1000 | 0x0000 | 180).to_bytes(2, "big")  # valid, south, east
        alarm = gps + bytes.fromhex("0901fe0a0001000001") + bytes([0x46, 6, 4, 1, 2])
        assert await unit.send(gt06_frame(0x16, alarm, 4)) == ack(0x16, 4)
        pushed = await next_message(ws)
        assert pushed["attributes"]["sos"] is True
        assert pushed["lat"] == pytest.approx(-6.3, abs=1e-6)

    response = await api.get("/api/v1/vehicles/veh-1/location")
    assert response.status_code == 200
    body = response.json()
    assert body["vehicle_id"] == "veh-1"
    assert body["unique_id"] == IMEI
    assert body["fix_time"] == "2026-11-29T10:00:30Z"
    assert body["lat"] == pytest.approx(-6.3, abs=1e-6)
    assert body["valid"] is True
    assert body["age_s"] > 0
    assert body["attributes"]["sos"] is True
    assert [u["unique_id"] for u in body["units"]] == [IMEI]
    assert body["units"][0]["last_position"]["fix_time"] == "2026-11-29T10:00:30Z"

    track = (
        await api.get(
            "/api/v1/vehicles/veh-1/track",
            params={"from": "2026-11-29T00:00:00Z", "to": "2026-11-30T00:00:00Z"},
        )
    ).json()
    assert [p["fix_time"] for p in track["items"]] == [
        "2026-11-29T10:00:00Z",
        "2026-11-29T10:00:30Z",
    ]
    assert track["next_cursor"] is None

    counters = (await api.get("/api/v1/server")).json()["protocols"]["gt06"]
    assert counters["connections"] == 1
    assert counters["messages"] == 4  # login, location, heartbeat, alarm
    assert counters["positions"] == 2
    assert counters["replies"] == 4


async def test_resent_position_is_stored_once_and_acked_again(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api)
    frame = gt06_location(T0, 10.0, 20.0, serial=7)
    for _ in range(2):  # a unit that lost our reply reconnects and resends
        async with unit_connection(server) as unit:
            assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
            assert await unit.send(frame) == ack(0x22, 7)
    rows = await server.store.track([IMEI], start=T0, end=T0 + timedelta(1), limit=10)
    assert len(rows) == 1


async def test_late_buffered_fix_does_not_move_location_back(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api)
    async with unit_connection(server) as unit:
        await unit.send(LOGIN_FRAME)
        await unit.send(gt06_location(T0, 10.0, 20.0, serial=2))
        await unit.send(gt06_location(T0 - timedelta(hours=1), 11.0, 21.0, serial=3))
    body = (await api.get("/api/v1/vehicles/veh-1/location")).json()
    assert body["fix_time"] == "2026-11-29T10:00:00Z"
    assert body["lat"] == pytest.approx(10.0)
    track = (
        await api.get(
            "/api/v1/vehicles/veh-1/track",
            params={"from": "2026-11-29T00:00:00Z", "to": "2026-11-30T00:00:00Z"},
        )
    ).json()
    assert len(track["items"]) == 2  # the old fix is still part of the track


async def test_filtered_fixes_are_acked_counted_and_not_stored(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api)
    async with unit_connection(server) as unit:
        await unit.send(LOGIN_FRAME)
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2, valid=False)) == ack(0x22, 2)
        assert await unit.send(gt06_location(T0, 0.0, 0.0, serial=3)) == ack(0x22, 3)
        future = datetime.now(UTC) + timedelta(days=3)
        assert await unit.send(gt06_location(future, 10.0, 20.0, serial=4)) == ack(0x22, 4)
    stats = (await api.get("/api/v1/server")).json()["stats"]
    assert stats["positions_dropped.invalid_fix"] == 1
    assert stats["positions_dropped.zero_coordinates"] == 1
    assert stats["positions_dropped.future_time"] == 1
    assert (await api.get("/api/v1/vehicles/veh-1/location")).status_code == 404


async def test_unknown_unit_is_refused_and_listed(server: Server, api: httpx.AsyncClient) -> None:
    for _ in range(2):
        async with unit_connection(server) as unit:
            unit.writer.write(gt06_login("860000000000099"))
            unit.writer.write(gt06_location(T0, 10.0, 20.0, serial=2))
            # no login reply, and the server closes the connection
            assert await asyncio.wait_for(unit.reader.read(100), 5) == b""
    body = (await api.get("/api/v1/units/unknown")).json()
    [knocker] = body["items"]
    assert knocker["unique_id"] == "860000000000099"
    assert knocker["protocol"] == "gt06"
    assert knocker["remote_addr"].startswith("127.0.0.1:")
    assert knocker["count"] == 2
    assert knocker["first_seen"] <= knocker["last_seen"]
    assert (
        await server.store.track(["860000000000099"], start=T0, end=T0 + timedelta(1), limit=10)
        == []
    )


async def test_unknown_unit_registered_when_switched_on(make_server: ServerFactory) -> None:
    server = await make_server(register_unknown_units=True)
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
    vehicle = server.registry.vehicle(IMEI)
    assert vehicle is not None
    assert [u.unique_id for u in vehicle.units] == [IMEI]


async def test_a_unit_registering_itself_never_replaces_a_vehicle(
    make_server: ServerFactory,
) -> None:
    """A vehicle named like the unit's id stays as it is; the unit gets another."""
    server = await make_server(register_unknown_units=True)
    await server.registry.put_vehicle(IMEI, plate="T7", vin=None, loan_ref="L-7", units=[])
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
    kept = server.registry.vehicle(IMEI)
    assert kept is not None
    assert (kept.plate, kept.loan_ref, kept.units) == ("T7", "L-7", ())
    own = server.registry.vehicle(f"{IMEI}-2")
    assert own is not None
    assert [(u.unique_id, u.vehicle_id) for u in own.units] == [(IMEI, f"{IMEI}-2")]


async def test_a_connected_unit_follows_its_registration(
    server: Server, api: httpx.AsyncClient
) -> None:
    """Moved to another vehicle: its next fixes are stored under that one.
    Taken off every vehicle: refused, nothing stored, the connection closed."""
    await register(api)
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
        await register(api, "veh-1", "860000000000077")  # the unit leaves veh-1 ...
        await register(api, "veh-2")  # ... for veh-2
        fix = gt06_location(T0 + timedelta(seconds=1), 10.0, 20.0, serial=3)
        assert await unit.send(fix) == ack(0x22, 3)
        assert (await api.delete("/api/v1/vehicles/veh-2")).status_code == 204
        unit.writer.write(gt06_location(T0 + timedelta(seconds=2), 10.0, 20.0, serial=4))
        assert await asyncio.wait_for(unit.reader.read(100), 5) == b""  # closed, no ack
    rows = await server.store.track([IMEI], start=T0, end=T0 + timedelta(1), limit=10)
    assert [r.vehicle_id for r in rows] == ["veh-1", "veh-2"]
    stats = (await api.get("/api/v1/server")).json()["stats"]
    assert stats["units_refused.gt06"] == 1


async def test_a_moved_unit_brings_none_of_its_old_cars_fixes(
    server: Server, api: httpx.AsyncClient
) -> None:
    """Its earlier fixes belong to the car it was on: the new car's location
    and track start with the unit's first fix in it."""
    await register(api)
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
    await register(api, "veh-1", "860000000000077")
    await register(api, "veh-2")
    window = {"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}
    assert (await api.get("/api/v1/vehicles/veh-2/location")).status_code == 404
    assert (await api.get("/api/v1/vehicles/veh-2/track", params=window)).json()["items"] == []
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        fix = gt06_location(T0 + timedelta(seconds=1), 11.0, 20.0, serial=2)
        assert await unit.send(fix) == ack(0x22, 2)
    location = (await api.get("/api/v1/vehicles/veh-2/location")).json()
    assert (location["vehicle_id"], location["lat"]) == ("veh-2", pytest.approx(11.0))
    items = (await api.get("/api/v1/vehicles/veh-2/track", params=window)).json()["items"]
    assert [(i["vehicle_id"], i["lat"]) for i in items] == [("veh-2", pytest.approx(11.0))]


async def test_garbage_does_not_hurt_other_units(server: Server, api: httpx.AsyncClient) -> None:
    await register(api)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports["gt06"])
    writer.write(bytes(range(256)) * 64)  # nothing that frames
    assert await asyncio.wait_for(reader.read(100), 5) == b""  # closed
    writer.close()
    async with unit_connection(server) as unit:
        unit.writer.write(b"\x00\x01garbage")  # garbage before the first frame
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
        assert await unit.send(gt06_location(T0, 10.0, 20.0, serial=2)) == ack(0x22, 2)
    stats = (await api.get("/api/v1/server")).json()["stats"]
    assert stats["connections_rejected.gt06.protocol_error"] == 1


async def test_many_units_at_once_share_batches(server: Server, api: httpx.AsyncClient) -> None:
    imeis = [f"8600000000{n:05d}" for n in range(50)]
    for n, imei in enumerate(imeis):
        await register(api, f"veh-{n}", imei)

    async def drive(imei: str) -> None:
        async with unit_connection(server) as unit:
            await unit.send(gt06_login(imei))
            for k in range(5):
                fix = gt06_location(T0 + timedelta(seconds=k), 10.0 + k / 1000, 20.0, serial=k + 2)
                assert await unit.send(fix) == ack(0x22, k + 2)

    await asyncio.gather(*(drive(imei) for imei in imeis))
    stats = (await api.get("/api/v1/server")).json()["stats"]
    assert stats["positions_stored"] == 250
    assert stats["batches"] < 250  # group commit: units shared batches
    locations = (await api.get("/api/v1/locations")).json()
    assert len(locations["items"]) == 50
    assert locations["missing"] == []


async def test_track_pages_with_a_cursor_and_speaks_geojson(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api)
    async with unit_connection(server) as unit:
        await unit.send(LOGIN_FRAME)
        for k in range(7):
            fix = gt06_location(T0 + timedelta(minutes=k), 10.0 + k / 100, 20.0, serial=k + 2)
            assert await unit.send(fix) == ack(0x22, k + 2)
    window = {"from": "2026-11-29T00:00:00Z", "to": "2026-11-30T00:00:00Z", "limit": "3"}
    seen: list[str] = []
    cursor = None
    while True:
        params = window | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/api/v1/vehicles/veh-1/track", params=params)).json()
        seen += [p["fix_time"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"2026-11-29T10:0{k}:00Z" for k in range(7)]

    geo = await api.get("/api/v1/vehicles/veh-1/track", params=window | {"format": "geojson"})
    body = geo.json()
    assert body["type"] == "FeatureCollection"
    first = body["features"][0]
    assert first["geometry"] == {"type": "Point", "coordinates": [20.0, pytest.approx(10.0)]}
    assert first["properties"]["unique_id"] == IMEI
    assert body["next_cursor"] is not None


async def test_registering_a_knocking_unit_clears_it_from_unknown(
    server: Server, api: httpx.AsyncClient
) -> None:
    async with unit_connection(server) as unit:
        unit.writer.write(LOGIN_FRAME)
        assert await asyncio.wait_for(unit.reader.read(100), 5) == b""
    assert [u["unique_id"] for u in (await api.get("/api/v1/units/unknown")).json()["items"]] == [
        IMEI
    ]
    await register(api)
    assert (await api.get("/api/v1/units/unknown")).json()["items"] == []
    async with unit_connection(server) as unit:
        assert await unit.send(LOGIN_FRAME) == LOGIN_REPLY
