"""A unit cannot speak for another: OsmAnd requests prove their unit with its
secret (``protocols.osmand.require_secret``); a GT06 connection stays bound to
the unit that logged in."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tracker.server import Server
from tracker.settings import ProtocolSettings
from tracker.simulate import gt06_location, gt06_login
from tracker.unit_secrets import FILE_NAME, SECRET_CHARS

from .conftest import ADMIN_KEY, ServerFactory
from .test_position_path import ack, register, unit_connection

pytestmark = pytest.mark.e2e

PHONE, OTHER_PHONE = "48241179", "48241180"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def fix(unique_id: str, **extra: str) -> dict[str, str]:
    stamp = str(int(T0.timestamp()))
    return {"id": unique_id, "lat": "52.5", "lon": "13.4", "timestamp": stamp, **extra}


async def secured(make_server: ServerFactory) -> Server:
    osmand = ProtocolSettings("osmand", 0, host="127.0.0.1", require_secret=True)
    return await make_server(protocols=(osmand,))


def client(server: Server, port: str, **headers: str) -> httpx.AsyncClient:
    base = f"http://127.0.0.1:{server.ports[port]}"
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=10)


async def secret_of(server: Server, unique_id: str) -> str:
    async with client(server, "http", authorization=f"Bearer {ADMIN_KEY}") as api:
        response = await api.get(f"/api/v1/units/{unique_id}/secret")
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    assert body["unique_id"] == unique_id
    return body["secret"]


async def test_osmand_needs_the_units_own_secret(make_server: ServerFactory) -> None:
    server = await secured(make_server)
    async with client(server, "http", authorization=f"Bearer {ADMIN_KEY}") as api:
        await register(api, "phone-car", PHONE)
        await register(api, "other-car", OTHER_PHONE)
    secret, other = await secret_of(server, PHONE), await secret_of(server, OTHER_PHONE)
    assert len(secret) == SECRET_CHARS
    assert int(secret, 16) >= 0  # hex
    assert secret != other
    assert await secret_of(server, PHONE) == secret  # derived: the same every time

    async with client(server, "osmand") as phone:
        missing = await phone.get("/", params=fix(PHONE))
        assert missing.status_code == 401
        assert "missing secret" in missing.text
        wrong = await phone.get("/", params=fix(PHONE, secret="0" * SECRET_CHARS))
        assert wrong.status_code == 401
        assert "wrong secret" in wrong.text
        # a unit that knows its own secret still cannot report as another unit
        spoofed = await phone.get("/", params=fix(PHONE, secret=other))
        assert spoofed.status_code == 401
        no_fix = await phone.get("/", params={"id": PHONE})
        assert no_fix.status_code == 401

        ok = await phone.get("/", params=fix(PHONE, secret=secret))
        assert ok.status_code == 200, ok.text
        later = str(int(T0.timestamp()) + 60)
        form = await phone.post("/", data=fix(PHONE, timestamp=later, secret=secret, batt="80"))
        assert form.status_code == 200, form.text
    rows = await server.store.track(
        [PHONE], start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), limit=10
    )
    assert len(rows) == 2
    assert rows[-1].attributes.get("battery_pct") == 80
    assert all(secret not in str(row.attributes) for row in rows)  # not kept as a raw field
    assert server.stats["units_unauthorized.osmand"] == 4


async def test_unknown_units_without_a_secret_are_not_registered(
    make_server: ServerFactory,
) -> None:
    osmand = ProtocolSettings("osmand", 0, host="127.0.0.1", require_secret=True)
    server = await make_server(protocols=(osmand,), register_unknown_units=True)
    async with client(server, "osmand") as phone:
        assert (await phone.get("/", params=fix("777"))).status_code == 401
    assert server.registry.unit_for("777") is None
    async with client(server, "http", authorization=f"Bearer {ADMIN_KEY}") as api:
        assert (await api.get("/api/v1/units/unknown")).json()["items"] == []


async def test_secret_is_optional_by_default(server: Server, api: httpx.AsyncClient) -> None:
    await register(api, "phone-car", PHONE)
    async with client(server, "osmand") as phone:
        assert (await phone.get("/", params=fix(PHONE))).status_code == 200


async def test_the_server_secret_is_kept_private_in_the_data_dir(
    make_server: ServerFactory,
) -> None:
    server = await secured(make_server)
    first = await secret_of(server, PHONE)
    path = server.settings.data_dir / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await server.stop()
    again = await make_server(protocols=server.settings.protocols)  # same data dir
    assert await secret_of(again, PHONE) == first


async def test_only_admin_and_servicing_read_unit_secrets(server: Server) -> None:
    async with client(server, "http", authorization=f"Bearer {ADMIN_KEY}") as admin:
        keys = {}
        for role in ("servicing", "recovery", "viewer"):
            user = (await admin.post("/api/v1/users", json={"name": role, "role": role})).json()
            keys[role] = (await admin.post(f"/api/v1/users/{user['id']}/keys")).json()["key"]
        bad = await admin.get("/api/v1/units/not%20an%20id/secret")
        assert bad.status_code == 422
    for role, allowed in (("servicing", True), ("recovery", False), ("viewer", False)):
        async with client(server, "http", authorization=f"Bearer {keys[role]}") as caller:
            response = await caller.get(f"/api/v1/units/{PHONE}/secret")
        assert response.status_code == (200 if allowed else 403), role
    async with client(server, "http") as anonymous:
        assert (await anonymous.get(f"/api/v1/units/{PHONE}/secret")).status_code == 401


IMEI_A, IMEI_B = "860000000000011", "860000000000022"


async def test_a_gt06_connection_stores_positions_only_for_its_unit(
    server: Server, api: httpx.AsyncClient
) -> None:
    """GT06 positions carry no id: the connection's login decides whose they are."""
    await register(api, "car-a", IMEI_A)
    await register(api, "car-b", IMEI_B)
    async with unit_connection(server) as unit:
        before_login = gt06_location(T0, 52.5, 13.4, serial=1)
        unit.writer.write(before_login)  # dropped: no unit yet, so no ack either
        await unit.send(gt06_login(IMEI_A, serial=2))
        assert await unit.send(gt06_location(T0, 52.5, 13.4, serial=3)) == ack(0x22, 3)
    assert len(await track(server, IMEI_A)) == 1
    assert await track(server, IMEI_B) == []
    assert server.stats["messages_dropped.gt06.before_login"] == 1


async def test_a_second_login_cannot_switch_a_gt06_connection_to_another_unit(
    server: Server, api: httpx.AsyncClient
) -> None:
    await register(api, "car-a", IMEI_A)
    await register(api, "car-b", IMEI_B)
    async with unit_connection(server) as unit:
        await unit.send(gt06_login(IMEI_A, serial=1))
        assert await unit.send(gt06_location(T0, 52.5, 13.4, serial=2)) == ack(0x22, 2)
        # the same connection now claims to be unit B, then reports a fix
        later = T0 + timedelta(minutes=1)
        unit.writer.write(gt06_login(IMEI_B, serial=3) + gt06_location(later, 48.8, 2.3, serial=4))
        await unit.writer.drain()
        # no ack: the connection is closed (the unit logs in afresh, not waits for ever)
        assert await asyncio.wait_for(unit.reader.read(100), 5) == b""
    assert server.stats["messages_dropped.gt06.other_unit"] == 1
    assert await track(server, IMEI_B) == []
    [(lat, lon)] = await track(server, IMEI_A)  # only the fix from before the second login
    assert lat == pytest.approx(52.5)
    assert lon == pytest.approx(13.4)


async def track(server: Server, unique_id: str) -> list[tuple[float, float]]:
    rows = await server.store.track(
        [unique_id], start=T0 - timedelta(days=1), end=T0 + timedelta(days=1), limit=10
    )
    return [(row.lat, row.lon) for row in rows]
