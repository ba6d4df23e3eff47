"""The REST API and the OsmAnd HTTP endpoint, over real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tracker.server import Server

pytestmark = pytest.mark.e2e


def osmand_client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['osmand']}", timeout=10)


async def test_every_api_route_needs_a_key(server: Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}") as anon:
        for path in (
            "/api/v1/vehicles",
            "/api/v1/server",
            "/api/v1/locations",
            "/api/v1/units/unknown",
            "/api/v1/vehicles/x/location",
        ):
            response = await anon.get(path)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
            assert "Authorization: Bearer" in response.json()["detail"]
        wrong = await anon.get("/api/v1/vehicles", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (await anon.get("/healthz")).json()["status"] == "ok"
        schema = (await anon.get("/openapi.json")).json()
        assert "/api/v1/vehicles/{vehicle_id}/location" in schema["paths"]


async def test_vehicle_crud_is_idempotent(api: httpx.AsyncClient) -> None:
    body = {
        "plate": "B 1",
        "vin": "V1",
        "loan_ref": "L1",
        "units": [
            {"unique_id": "111", "kind": "wired"},
            {"unique_id": "222", "kind": "battery", "silent_after_s": 93600},
        ],
    }
    first = await api.put("/api/v1/vehicles/car-1", json=body)
    assert first.status_code == 201
    again = await api.put("/api/v1/vehicles/car-1", json=body)
    assert again.status_code == 200
    assert again.json()["units"] == first.json()["units"]
    assert again.json()["units"][1] == {
        "unique_id": "222",
        "kind": "battery",
        "silent_after_s": 93600,
    }
    # replace: unit 222 removed from the car
    body["units"] = body["units"][:1]
    replaced = (await api.put("/api/v1/vehicles/car-1", json=body)).json()
    assert [u["unique_id"] for u in replaced["units"]] == ["111"]
    assert (await api.get("/api/v1/vehicles/car-1")).json()["plate"] == "B 1"

    conflict = await api.put("/api/v1/vehicles/car-2", json={"units": [{"unique_id": "111"}]})
    assert conflict.status_code == 409
    assert "car-1" in conflict.json()["detail"]

    for n in range(3, 8):
        assert (await api.put(f"/api/v1/vehicles/car-{n}", json={})).status_code == 201
    page = (await api.get("/api/v1/vehicles", params={"limit": 4})).json()
    assert [v["vehicle_id"] for v in page["items"]] == ["car-1", "car-3", "car-4", "car-5"]
    rest = (await api.get("/api/v1/vehicles", params={"after": page["next_after"]})).json()
    assert [v["vehicle_id"] for v in rest["items"]] == ["car-6", "car-7"]
    assert rest["next_after"] is None

    assert (await api.delete("/api/v1/vehicles/car-1")).status_code == 204
    missing = await api.get("/api/v1/vehicles/car-1")
    assert missing.status_code == 404
    assert "car-1" in missing.json()["detail"]
    assert (await api.delete("/api/v1/vehicles/car-1")).status_code == 404


async def test_bad_requests_say_what_to_fix(api: httpx.AsyncClient) -> None:
    bad_kind = await api.put(
        "/api/v1/vehicles/c", json={"units": [{"unique_id": "1", "kind": "solar"}]}
    )
    assert bad_kind.status_code == 422
    assert "units.0.kind" in bad_kind.json()["detail"]
    twice = await api.put(
        "/api/v1/vehicles/c", json={"units": [{"unique_id": "1"}, {"unique_id": "1"}]}
    )
    assert twice.status_code == 422
    assert "once" in twice.json()["detail"]
    not_json = await api.put(
        "/api/v1/vehicles/c", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    await api.put("/api/v1/vehicles/c", json={})
    naive = await api.get("/api/v1/vehicles/c/track", params={"from": "2026-01-01T00:00:00"})
    assert naive.status_code == 400
    assert "time zone" in naive.json()["detail"]
    backwards = await api.get(
        "/api/v1/vehicles/c/track",
        params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
    )
    assert backwards.status_code == 400
    cursor = await api.get("/api/v1/vehicles/c/track", params={"cursor": "!!!"})
    assert cursor.status_code == 400
    nothing_yet = await api.get("/api/v1/vehicles/c/location")
    assert nothing_yet.status_code == 404
    assert "no known location" in nothing_yet.json()["detail"]


async def test_osmand_phone_reports(server: Server, api: httpx.AsyncClient) -> None:
    await api.put("/api/v1/vehicles/phone-car", json={"units": [{"unique_id": "48241179"}]})
    async with osmand_client(server) as phone:
        ok = await phone.get(
            "/",
            params={
                "id": "48241179",
                "lat": "52.5",
                "lon": "13.4",
                "timestamp": "1764410400",
                "speed": "10",
                "bearing": "45",
                "batt": "80",
            },
        )
        assert ok.status_code == 200
        location = (await api.get("/api/v1/vehicles/phone-car/location")).json()
        assert location["fix_time"] == "2025-11-29T10:00:00Z"
        assert location["speed_kmh"] == pytest.approx(18.52)  # 10 knots
        assert location["attributes"]["battery_pct"] == 80

        # the Traccar Client JSON form (shared/vectors/osmand.jsonl, first vector)
        body = {
            "location": {
                "timestamp": "2025-11-29T11:00:00.862Z",
                "coords": {
                    "latitude": 37.4219983,
                    "longitude": -122.084,
                    "accuracy": 5,
                    "speed": 2,
                    "heading": -1,
                    "altitude": 5,
                },
                "is_moving": True,
                "battery": {"level": 0.5, "is_charging": False},
            },
            "device_id": "48241179",
        }
        assert (await phone.post("/", json=body)).status_code == 200
        location = (await api.get("/api/v1/vehicles/phone-car/location")).json()
        assert location["fix_time"] == "2025-11-29T11:00:00.862Z"
        assert location["speed_kmh"] == pytest.approx(7.2)
        assert location["accuracy_m"] == 5

        bad = await phone.get("/", params={"id": "48241179", "lat": "north", "lon": "13.4"})
        assert bad.status_code == 400
        assert "lat" in bad.text
        unknown = await phone.get(
            "/", params={"id": "999", "lat": "1", "lon": "2", "timestamp": "1764410400"}
        )
        assert unknown.status_code == 404
    knocked = (await api.get("/api/v1/units/unknown")).json()["items"]
    assert [(k["unique_id"], k["protocol"]) for k in knocked] == [("999", "osmand")]


async def test_live_needs_a_key_and_a_subscription(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url + "?token=wrong"):
            pass
    assert refused.value.response.status_code == 401
    assert b"API key" in refused.value.response.body
    async with connect(url + "?token=e2e-admin-key") as ws:
        await ws.send('{"subscribe": 42}')
        error = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error"
        assert "subscribe" in error["detail"]


async def test_server_reports_its_ports(server: Server, api: httpx.AsyncClient) -> None:
    info = (await api.get("/api/v1/server")).json()
    assert info["ports"]["gt06"] == server.ports["gt06"] != 0
    assert info["ports"]["osmand"] == server.ports["osmand"] != 0
    assert info["store"] in ("sqlite", "postgis")
    assert info["register_unknown_units"] is False


async def test_map_page_is_served_with_leaflet(server: Server) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.ports['http']}") as web:
        page = await web.get("/")
        assert page.status_code == 200
        assert "/static/leaflet/leaflet.js" in page.text
        script = await web.get("/static/leaflet/leaflet.js")
        assert script.status_code == 200
        assert "Leaflet" in script.text[:2000]


async def test_vehicle_rules_override_thresholds(api: httpx.AsyncClient) -> None:
    body = {"units": [{"unique_id": "333"}], "rules": {"long_stay_days": 7, "margin_m": 50.5}}
    created = await api.put("/api/v1/vehicles/car-r", json=body)
    assert created.status_code == 201
    assert created.json()["rules"] == {"long_stay_days": 7, "margin_m": 50.5}
    shown = (await api.get("/api/v1/vehicles/car-r")).json()
    assert shown["rules"] == {"long_stay_days": 7, "margin_m": 50.5}
    listed = (await api.get("/api/v1/vehicles")).json()["items"]
    assert [v["rules"] for v in listed if v["vehicle_id"] == "car-r"] == [shown["rules"]]

    # an int field takes a whole number (7.0 is stored as 7)
    body["rules"] = {"dwell_fixes": 3.0}
    replaced = await api.put("/api/v1/vehicles/car-r", json=body)
    assert replaced.status_code == 200
    assert replaced.json()["rules"] == {"dwell_fixes": 3}

    # PUT replaces the whole vehicle: no rules given, none kept
    assert (await api.put("/api/v1/vehicles/car-r", json={})).json()["rules"] == {}
    assert (await api.get("/api/v1/vehicles/car-r")).json()["rules"] == {}

    bad_key = await api.put("/api/v1/vehicles/car-r", json={"rules": {"long_stay_dayz": 7}})
    assert bad_key.status_code == 422
    assert bad_key.headers["content-type"] == "application/problem+json"
    detail = bad_key.json()["detail"]
    assert "'long_stay_dayz'" in detail
    assert "long_stay_days" in detail
    assert "margin_m" in detail
    for rules in (
        {"margin_m": 0},
        {"margin_m": -5},
        {"margin_m": True},
        {"margin_m": "50"},
        {"dwell_fixes": 2.5},
    ):
        response = await api.put("/api/v1/vehicles/car-r", json={"rules": rules})
        assert response.status_code == 422, rules
        assert next(iter(rules)) in response.json()["detail"], rules
    assert (await api.get("/api/v1/vehicles/car-r")).json()["rules"] == {}  # unchanged
