"""Inputs that once got a 500 (found by tests/e2e/test_api_fuzz.py, or on the
way to fixing what it found) get a 4xx whose detail says what to fix."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    text: str = response.json()["detail"]
    return text


async def test_sequence_numbers_beyond_64_bits(api: httpx.AsyncClient) -> None:
    audit = await api.get("/api/v1/audit", params={"before": 10**22})
    assert "before" in detail(audit, 422)
    feed = await api.get("/api/v1/feed/events", params={"after": "9" * 20})
    assert "next_cursor" in detail(feed, 400)


async def test_control_characters_in_ids_and_text(api: httpx.AsyncClient) -> None:
    # PostgreSQL text cannot hold NUL: these were 500s on PostGIS
    path = await api.put("/api/v1/vehicles/car%00one", json={})
    assert "control characters" in detail(path, 422)
    plate = await api.put("/api/v1/vehicles/car-1", json={"plate": "B\u00001"})
    assert "plate" in detail(plate, 422)
    query = await api.get("/api/v1/events", params={"vehicle_id": "a\x00"})
    assert "vehicle_id" in detail(query, 422)


async def test_times_out_of_range(api: httpx.AsyncClient) -> None:
    await api.put("/api/v1/vehicles/car-1", json={})
    early = await api.get("/api/v1/vehicles/car-1/track", params={"to": "0001-01-01T00:00:00Z"})
    assert "1900-01-01" in detail(early, 400)
    shifted = await api.get("/api/v1/events", params={"since": "0001-01-01T00:00:00+01:00"})
    assert "since" in detail(shifted, 400)
    naive = base64.urlsafe_b64encode(b"2026-01-01T00:00:00|x").decode().rstrip("=")
    cursor = await api.get("/api/v1/vehicles/car-1/track", params={"cursor": naive})
    assert "next_cursor" in detail(cursor, 400)


async def test_corridors_that_geos_cannot_buffer(api: httpx.AsyncClient) -> None:
    still = {"type": "LineString", "coordinates": [[106.8, -6.2], [106.8, -6.2]]}
    point = await api.post("/api/v1/geofences", json={"corridor": {"line": still, "width_m": 10}})
    assert "no length" in detail(point, 422)
    around = [[-179.0, 0.0], [179.0, 0.0]] * 40
    long = {"type": "LineString", "coordinates": around}
    far = await api.post("/api/v1/geofences", json={"corridor": {"line": long, "width_m": 10}})
    assert "too long" in detail(far, 422)


async def test_only_the_fields_of_a_shape_are_stored(api: httpx.AsyncClient) -> None:
    line = {
        "type": "LineString",
        "coordinates": [[106.80, -6.20], [106.81, -6.20]],
        "properties": {"note": "\u0000"},  # was stored as sent: a 500 on PostGIS
    }
    created = await api.post("/api/v1/geofences", json={"corridor": {"line": line, "width_m": 20}})
    assert created.status_code == 201, created.text
    assert created.json()["corridor"]["line"] == {
        "type": "LineString",
        "coordinates": [[106.80, -6.20], [106.81, -6.20]],
    }
    circle = {"lon": 106.8, "lat": -6.2, "radius_m": 50, "colour": "red"}
    extra = await api.post("/api/v1/geofences", json={"circle": circle})
    assert "colour" in detail(extra, 422)


async def test_a_lone_surrogate_gets_a_422(api: httpx.AsyncClient) -> None:
    # JSON may escape half a UTF-16 pair; UTF-8 cannot encode it, so echoing the
    # unknown field's name in the error was a 500
    body = b'{"circle": {"lon": 1, "lat": 1, "radius_m": 50, "\\ud800": 1}}'
    response = await api.post(
        "/api/v1/geofences", content=body, headers={"content-type": "application/json"}
    )
    assert "unicode" in detail(response, 422)


async def test_rule_overrides_have_maxima(api: httpx.AsyncClient) -> None:
    # timedelta(seconds=1e18) overflows: the rule engine would fail on the next fix
    huge = await api.put("/api/v1/vehicles/car-1", json={"rules": {"silent_wired_s": 10**18}})
    assert "at most" in detail(huge, 422)
    fine = await api.put("/api/v1/vehicles/car-1", json={"rules": {"silent_wired_s": 7200}})
    assert fine.status_code in (200, 201), fine.text


async def test_bodies_over_the_limit_get_a_413(api: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    told = await api.post(
        "/api/v1/users", content=big, headers={"content-type": "application/json"}
    )
    assert "request body over" in detail(told, 413)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * (1024 * 1024)

    streamed = await api.post(
        "/api/v1/users", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "request body over" in detail(streamed, 413)


def test_a_detail_with_a_lone_surrogate_is_still_utf8() -> None:
    from tracker.api import problem

    assert b"\\ud800" in problem(422, "field \ud800: bad").body


async def test_bodies_that_are_not_json_say_so(api: httpx.AsyncClient) -> None:
    broken = await api.put(
        "/api/v1/vehicles/car-1",
        content=b'{"plate": "x", "units": [}',
        headers={"Content-Type": "application/json"},
    )
    assert detail(broken, 422).startswith("body is not valid JSON at character 25")
    text = await api.put(
        "/api/v1/vehicles/car-1", content=b'{"plate": "x"}', headers={"Content-Type": "text/plain"}
    )
    assert "Content-Type: application/json" in detail(text, 422)


async def test_fleet_wide_rules_are_refused_per_vehicle(api: httpx.AsyncClient) -> None:
    """They were accepted, echoed back and then ignored."""
    for name in ("late_after_s", "gathering_vehicles", "gathering_radius_m", "gathering_minutes"):
        refused = await api.put("/api/v1/vehicles/car-1", json={"rules": {name: 5}})
        assert "holds for every vehicle" in detail(refused, 422)
    kept = await api.put("/api/v1/vehicles/car-1", json={"rules": {"risk_window_days": 7}})
    assert kept.json()["rules"] == {"risk_window_days": 7}


async def test_fences_take_no_unknown_key_and_no_empty_vehicle_list(api: httpx.AsyncClient) -> None:
    """Both once made a fence for every vehicle: a misspelt key was dropped
    unread, and an empty list counted as none given."""
    circle = {"circle": {"lon": 10, "lat": 10, "radius_m": 100}, "category": "allowed_area"}
    misspelt = await api.post("/api/v1/geofences", json=circle | {"vehicle_id": ["car-1"]})
    assert "vehicle_id" in detail(misspelt, 422)
    both = await api.post("/api/v1/geofences", json=circle | {"group": "g", "vehicle_ids": ["a"]})
    assert "not both" in detail(both, 422)
    empty = await api.post("/api/v1/geofences", json=circle | {"vehicle_ids": []})
    assert "vehicle_ids" in detail(empty, 422)
    assert (await api.get("/api/v1/geofences")).json()["items"] == []


@pytest.mark.parametrize("after", ["+5", " 5", "1_0", "\u0665", "-1"])
async def test_feed_cursors_are_only_what_the_server_gives(
    api: httpx.AsyncClient, after: str
) -> None:
    assert "next_cursor" in detail(
        await api.get("/api/v1/feed/events", params={"after": after}), 400
    )


async def test_misspelt_event_types_are_refused(api: httpx.AsyncClient) -> None:
    """Once a filter that matched nothing, or a subscription that never fired."""
    listed = await api.get("/api/v1/events", params={"type": "sos_cleard"})
    assert "unknown event type 'sos_cleard'" in detail(listed, 422)
    hook = {"url": "https://example.com/hook", "event_types": ["no_such_type"]}
    assert "sos_cleared" in detail(await api.post("/api/v1/webhooks", json=hook), 422)
    fine = await api.get("/api/v1/events", params={"type": ["sos_cleared", "geofence_enter"]})
    assert fine.status_code == 200
