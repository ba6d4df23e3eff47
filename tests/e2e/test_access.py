"""Who may see what, over real HTTP and websockets: roles, assignees, loan-state
gating, share links, the audit log and retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tracker.server import Server
from tracker.simulate import gt06_location, gt06_login

from .conftest import ServerFactory
from .test_position_path import ack, unit_connection
from .test_rules_e2e import Clock
from .test_webhooks import press_sos

pytestmark = pytest.mark.e2e

# The server's clock, moved by the tests, starts at the real time: the store stamps
# a vehicle's loan_state_since with the database's own clock, which no test moves.
NOW = datetime.now(UTC).replace(microsecond=0)
ZULU = "%Y-%m-%dT%H:%M:%SZ"  # as the API writes times
IMEIS = {"car-a": "860000000000001", "car-b": "860000000000002"}


@pytest.fixture
async def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def world(make_server: ServerFactory, clock: Clock) -> AsyncIterator[dict[str, Any]]:
    """Two delinquent cars with positions, and a key for each role."""
    server = await make_server(clock=clock)
    base = f"http://127.0.0.1:{server.ports['http']}"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": "Bearer e2e-admin-key"}, timeout=10
    ) as admin:
        for vehicle_id, imei in IMEIS.items():
            response = await admin.put(
                f"/api/v1/vehicles/{vehicle_id}",
                json={
                    "plate": vehicle_id.upper(),
                    "loan_state": "delinquent",
                    "units": [{"unique_id": imei}],
                },
            )
            assert response.status_code == 201, response.text
            async with unit_connection(server) as unit:
                await unit.send(gt06_login(imei))
                fix = gt06_location(NOW - timedelta(minutes=10), -6.2, 106.8, serial=2)
                assert await unit.send(fix) == ack(0x22, 2)
        keys = {}
        for role in ("servicing", "recovery", "viewer"):
            user = (await admin.post("/api/v1/users", json={"name": role, "role": role})).json()
            key = (await admin.post(f"/api/v1/users/{user['id']}/keys")).json()
            keys[role] = {"user": user["id"], "key": key["key"], "key_id": key["id"]}
        assigned = await admin.put(
            "/api/v1/vehicles/car-a/assignees", json=[keys["recovery"]["user"]]
        )
        assert assigned.json()["assignees"] == [keys["recovery"]["user"]]
        clients = {
            role: httpx.AsyncClient(
                base_url=base, timeout=10, headers={"Authorization": f"Bearer {k['key']}"}
            )
            for role, k in keys.items()
        }
        try:
            yield {"server": server, "admin": admin, "keys": keys, **clients}
        finally:
            for client in clients.values():
                await client.aclose()


async def test_roles_draw_the_lines(world: dict[str, Any]) -> None:
    recovery, viewer, servicing = world["recovery"], world["viewer"], world["servicing"]
    # recovery: only its assigned car
    assert (await recovery.get("/api/v1/vehicles/car-a/location")).status_code == 200
    denied = await recovery.get("/api/v1/vehicles/car-b/location")
    assert denied.status_code == 403
    assert "not assigned" in denied.json()["detail"]
    listed = (await recovery.get("/api/v1/vehicles")).json()["items"]
    assert [v["vehicle_id"] for v in listed] == ["car-a"]
    assert (await recovery.put("/api/v1/vehicles/car-a", json={})).status_code == 403
    # viewer: read-only, every car
    assert (await viewer.get("/api/v1/vehicles/car-b/location")).status_code == 200
    assert (await viewer.put("/api/v1/vehicles/car-c", json={})).status_code == 403
    assert (await viewer.post("/api/v1/geofences", json={})).status_code == 403
    # servicing: the integration, not the people
    assert (await servicing.put("/api/v1/vehicles/car-c", json={})).status_code == 201
    assert (
        await servicing.post("/api/v1/users", json={"name": "x", "role": "admin"})
    ).status_code == 403
    assert (await servicing.get("/api/v1/audit")).status_code == 403
    # a revoked key stops working at once
    keys = world["keys"]
    gone = await world["admin"].delete(
        f"/api/v1/users/{keys['viewer']['user']}/keys/{keys['viewer']['key_id']}"
    )
    assert gone.status_code == 204
    assert (await viewer.get("/api/v1/vehicles")).status_code == 401


async def test_positions_only_for_delinquent_and_recovery_loans(world: dict[str, Any]) -> None:
    admin, recovery, viewer = world["admin"], world["recovery"], world["viewer"]
    await admin.put(
        "/api/v1/vehicles/car-a",
        json={"loan_state": "current", "units": [{"unique_id": IMEIS["car-a"]}]},
    )
    for client in (recovery, viewer):
        gated = await client.get("/api/v1/vehicles/car-a/location")
        assert gated.status_code == 403
        assert "'current'" in gated.json()["detail"]
        assert (await client.get("/api/v1/vehicles/car-a/track")).status_code == 403
    assert (await recovery.get("/api/v1/vehicles/car-a")).json()["loan_state"] == "current"
    assert (await world["servicing"].get("/api/v1/vehicles/car-a/location")).status_code == 200
    everything = (await viewer.get("/api/v1/locations")).json()
    assert [i["vehicle_id"] for i in everything["items"]] == ["car-b"]


async def test_every_read_is_audited(world: dict[str, Any]) -> None:
    recovery, admin = world["recovery"], world["admin"]
    await recovery.get("/api/v1/vehicles/car-a/location")
    await recovery.get("/api/v1/vehicles/car-a/track")
    entries = (
        await admin.get("/api/v1/audit", params={"actor": world["keys"]["recovery"]["user"]})
    ).json()["items"]
    assert [(e["action"], e["vehicle_id"]) for e in entries] == [
        ("track.read", "car-a"),
        ("location.read", "car-a"),
    ]
    assert entries[0]["remote_addr"].startswith("127.0.0.1:")
    assert entries[0]["at"] == NOW.strftime(ZULU)
    by_vehicle = (await admin.get("/api/v1/audit", params={"vehicle_id": "car-b"})).json()
    assert by_vehicle["items"] == []


async def test_reads_of_many_vehicles_are_found_by_each(world: dict[str, Any]) -> None:
    """GET /locations and a live subscription name their vehicles: the audit's
    vehicle filter finds them (a "*" of admin or servicing matches every car)."""
    server: Server = world["server"]
    admin, recovery = world["admin"], world["recovery"]
    await recovery.get("/api/v1/locations")
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?token="
    for role in ("recovery", "servicing"):
        async with connect(url + world["keys"][role]["key"]) as ws:
            await ws.send('{"subscribe": "*"}')
            await asyncio.wait_for(ws.recv(), 5)

    def seen(vehicle_id: str) -> list[tuple[str, str, Any]]:
        return [(e["actor"], e["action"], e["details"].get("vehicles")) for e in items[vehicle_id]]

    items = {
        v: (await admin.get("/api/v1/audit", params={"vehicle_id": v})).json()["items"]
        for v in ("car-a", "car-b")
    }
    agent, servicing = world["keys"]["recovery"]["user"], world["keys"]["servicing"]["user"]
    assert seen("car-a") == [
        (servicing, "live.subscribe", "*"),
        (agent, "live.subscribe", ["car-a"]),
        (agent, "locations.read", ["car-a"]),
    ]
    assert seen("car-b") == [(servicing, "live.subscribe", "*")]


async def test_share_link_shows_one_vehicle_until_revoked(world: dict[str, Any]) -> None:
    server: Server = world["server"]
    recovery = world["recovery"]
    created = await recovery.post(
        "/api/v1/shares", json={"vehicle_id": "car-a", "expires_in_s": 3600, "history_h": 1}
    )
    assert created.status_code == 201, created.text
    share = created.json()
    assert share["url"].endswith(f"/share/{share['token']}")
    assert share["expires_at"] == (NOW + timedelta(hours=1)).strftime(ZULU)
    denied = await recovery.post("/api/v1/shares", json={"vehicle_id": "car-b"})
    assert denied.status_code == 403

    base = f"http://127.0.0.1:{server.ports['http']}"
    async with httpx.AsyncClient(base_url=base) as outsider:
        page = await outsider.get(f"/share/{share['token']}")
        assert page.status_code == 200
        data = (await outsider.get(f"/share/{share['token']}/data")).json()
        assert data["vehicle"]["vehicle_id"] == "car-a"
        assert data["seconds_left"] == 3600
        assert data["history"] == [data["position"]]  # one fix: the same item, both ways
        assert data["position"]["lat"] == pytest.approx(-6.2)
        # the token is not an API key
        token_as_key = await outsider.get(
            "/api/v1/vehicles/car-b/location", headers={"Authorization": f"Bearer {share['token']}"}
        )
        assert token_as_key.status_code == 401

        url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?share={share['token']}"
        async with connect(url) as ws:
            snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert [p["vehicle_id"] for p in snapshot["positions"]] == ["car-a"]
            revoked = await world["admin"].delete(f"/api/v1/shares/{share['id']}")
            assert revoked.status_code == 204
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 2)  # at once, not at the next position
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4410
        gone = await outsider.get(f"/share/{share['token']}/data")
        assert gone.status_code == 410
        assert "revoked" in gone.json()["detail"]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 410

    actions = [
        e["action"]
        for e in (await world["admin"].get("/api/v1/audit", params={"vehicle_id": "car-a"})).json()[
            "items"
        ]
    ]
    assert {"share.create", "share.use", "share.live", "share.revoke"} <= set(actions)


async def test_share_link_shows_only_what_its_creator_may_see(world: dict[str, Any]) -> None:
    """The link stops when its creator loses the car (loan state, assignment) or
    the car is deleted, and a new car under the old id does not revive it."""
    server: Server = world["server"]
    admin = world["admin"]
    share = (await world["recovery"].post("/api/v1/shares", json={"vehicle_id": "car-a"})).json()
    car_a = {"loan_state": "delinquent", "units": [{"unique_id": IMEIS["car-a"]}]}
    base = f"http://127.0.0.1:{server.ports['http']}"
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?share={share['token']}"
    data = f"/share/{share['token']}/data"
    # a fresh connection a request: the server closes idle ones after 5 s, the wait below
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=fresh) as outsider:
        assert (await outsider.get(data)).status_code == 200
        async with connect(url) as ws:
            await asyncio.wait_for(ws.recv(), 5)  # the snapshot
            await admin.put("/api/v1/vehicles/car-a", json=car_a | {"loan_state": "current"})
            with pytest.raises(ConnectionClosed) as closed:  # re-checked every 5 s
                await asyncio.wait_for(_until_closed(ws), 8)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4410
        suspended = await outsider.get(data)
        assert suspended.status_code == 410
        assert "suspended" in suspended.json()["detail"]
        assert "'current'" in suspended.json()["detail"]
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 410
        await admin.put("/api/v1/vehicles/car-a", json=car_a)
        assert (await outsider.get(data)).status_code == 200  # delinquent again
        await admin.put("/api/v1/vehicles/car-a/assignees", json=[])
        unassigned = await outsider.get(data)
        assert unassigned.status_code == 410
        assert "no longer assigned" in unassigned.json()["detail"]
        await admin.put(
            "/api/v1/vehicles/car-a/assignees", json=[world["keys"]["recovery"]["user"]]
        )
        assert (await outsider.get(data)).status_code == 200
        assert (await admin.delete("/api/v1/vehicles/car-a")).status_code == 204
        assert (await outsider.get(data)).status_code == 410
        await admin.put("/api/v1/vehicles/car-a", json=car_a)  # another car, the same id
        revived = await outsider.get(data)
        assert revived.status_code == 410
        assert "revoked" in revived.json()["detail"]


async def _until_closed(ws: Any) -> None:
    while True:
        await ws.recv()


async def test_gated_readers_get_events_without_places(world: dict[str, Any]) -> None:
    """A viewer sees an alert of a car whose positions are hidden from them, but
    not where it happened; servicing sees it whole."""
    server: Server = world["server"]
    await press_sos(server, world["admin"], "car-s", "860000000000009")  # loan: current
    for _ in range(100):
        events = await world["servicing"].get("/api/v1/events", params={"vehicle_id": "car-s"})
        if events.json()["items"]:
            break
        await asyncio.sleep(0.05)
    [whole] = events.json()["items"]
    assert whole["type"] == "sos"
    assert whole["lat"] == pytest.approx(-6.3)
    alerts = (await world["servicing"].get("/api/v1/alerts", params={"vehicle_id": "car-s"})).json()
    assert [(a["id"], a["seq"]) for a in alerts["items"]] == [(whole["id"], whole["seq"])]
    assert isinstance(whole["seq"], int)  # /alerts once showed null
    viewer = world["viewer"]
    [hidden] = (await viewer.get("/api/v1/events", params={"vehicle_id": "car-s"})).json()["items"]
    assert (hidden["id"], hidden["lat"], hidden["lon"]) == (whole["id"], None, None)
    [alert] = [
        a
        for a in (await viewer.get("/api/v1/alerts")).json()["items"]
        if a["vehicle_id"] == "car-s"
    ]
    assert (alert["lat"], alert["lon"]) == (None, None)
    feed = (await viewer.get("/api/v1/feed/events")).json()["data"]
    assert [(e["lat"], e["lon"]) for e in feed if e["vehicle_id"] == "car-s"] == [(None, None)]
    assert (await world["admin"].delete("/api/v1/vehicles/car-s")).status_code == 204
    left = (await world["servicing"].get("/api/v1/alerts", params={"vehicle_id": "car-s"})).json()
    assert left["items"] == []  # nothing of it can clear them now
    # its events stay in the log: the viewer still gets them without places
    [kept] = (await viewer.get("/api/v1/events", params={"vehicle_id": "car-s"})).json()["items"]
    assert (kept["lat"], kept["lon"]) == (None, None)
    assert (await world["recovery"].get("/api/v1/events")).json()["items"] == []


async def test_recovery_agents_see_only_their_cars_fences(world: dict[str, Any]) -> None:
    admin, recovery = world["admin"], world["recovery"]
    circle = {"circle": {"lat": -6.2, "lon": 106.8, "radius_m": 200}}
    for fence_id, fence in {
        "home-a": {"name": "home a", "category": "home", "vehicle_ids": ["car-a"]},
        "home-b": {"name": "home b", "category": "home", "vehicle_ids": ["car-b"]},
        "both": {"name": "both", "category": "home", "vehicle_ids": ["car-a", "car-b"]},
        "lot": {"name": "pawn lot", "category": "risk_site"},
    }.items():
        response = await admin.put(f"/api/v1/geofences/{fence_id}", json=fence | circle)
        assert response.status_code in (200, 201), response.text
    items = (await recovery.get("/api/v1/geofences")).json()["items"]
    assert {i["id"]: i["vehicle_ids"] for i in items} == {
        "home-a": ["car-a"],
        "both": ["car-a"],
        "lot": None,
    }
    assert (await recovery.get("/api/v1/geofences/home-b")).status_code == 404
    assert (await recovery.get("/api/v1/geofences/home-a")).status_code == 200
    assert len((await world["viewer"].get("/api/v1/geofences")).json()["items"]) == 4


@pytest.mark.parametrize("first", [b'{"subscribe": "*"}', "not json", "{bad"])
async def test_a_first_message_that_is_not_a_subscription_text_gets_an_answer(
    world: dict[str, Any], first: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Binary JSON is read like text; what is not JSON gets the error and 4400
    (both once dropped the socket without a word). A refused key logs no error."""
    server: Server = world["server"]
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live"
    async with connect(f"{url}?token={world['keys']['servicing']['key']}") as ws:
        await ws.send(first)
        if isinstance(first, bytes):
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "snapshot"
            return
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error"
        assert '{"subscribe": "*"}' in error["detail"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4400
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{url}?token=not-a-key"):
            pass
    assert refused.value.response.status_code == 401
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_expired_share_link_says_so(world: dict[str, Any], clock: Clock) -> None:
    share = (
        await world["servicing"].post(
            "/api/v1/shares", json={"vehicle_id": "car-b", "expires_in_s": 60}
        )
    ).json()
    too_long = await world["servicing"].post(
        "/api/v1/shares", json={"vehicle_id": "car-b", "expires_in_s": 8 * 86_400}
    )
    assert too_long.status_code == 422
    clock.advance(seconds=61)
    server: Server = world["server"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}") as web:
        expired = await web.get(f"/share/{share['token']}/data")
    assert expired.status_code == 410
    assert "expired" in expired.json()["detail"]


async def test_live_subscription_is_limited_and_audited(world: dict[str, Any]) -> None:
    server: Server = world["server"]
    key = world["keys"]["recovery"]["key"]
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?token={key}"
    async with connect(url) as ws:
        await ws.send('{"subscribe": ["car-b"]}')
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error == {"type": "error", "detail": "not allowed to watch: car-b"}
    async with connect(url) as ws:
        await ws.send('{"subscribe": "*"}')
        snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert [p["vehicle_id"] for p in snapshot["positions"]] == ["car-a"]
        cursor = snapshot["cursor"]
    async with unit_connection(server) as unit:  # car-a moves while nobody watches
        await unit.send(gt06_login(IMEIS["car-a"]))
        fix = gt06_location(NOW - timedelta(minutes=5), -6.21, 106.8, serial=3)
        assert await unit.send(fix) == ack(0x22, 3)
    async with connect(url) as ws:  # reconnect with the cursor: what was missed, no snapshot
        await ws.send(orjson.dumps({"subscribe": "*", "cursor": cursor}).decode())
        missed = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert missed["type"] == "position"
        assert missed["lat"] == pytest.approx(-6.21)
    actions = [
        e["action"]
        for e in (
            await world["admin"].get(
                "/api/v1/audit", params={"actor": world["keys"]["recovery"]["user"]}
            )
        ).json()["items"]
    ]
    assert actions.count("live.subscribe") == 2  # the refused one is not a read


async def test_retention_deletes_old_positions_and_purges_closed_loans(
    world: dict[str, Any], clock: Clock
) -> None:
    admin = world["admin"]
    await admin.put(
        "/api/v1/vehicles/car-b",
        json={"loan_state": "closed", "units": [{"unique_id": IMEIS["car-b"]}]},
    )
    report = (await admin.post("/api/v1/retention/run")).json()
    assert report["positions_deleted"] == 0
    assert report["closed_loans_purged"] == {}  # closed today: kept for 30 days
    clock.advance(days=31)
    report = (await admin.post("/api/v1/retention/run")).json()
    assert report["closed_loans_purged"] == {"car-b": 1}
    clock.advance(days=180)
    report = (await admin.post("/api/v1/retention/run")).json()
    assert report["positions_deleted"] == 1  # car-a's fix, now over 180 days old
    stats = (await admin.get("/api/v1/server")).json()
    assert stats["retention"]["positions_deleted"] == 1
    assert stats["stats"]["retention.closed_loan_positions_purged"] == 1
