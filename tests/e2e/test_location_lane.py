"""Over real HTTP, the location fast lane and the FastAPI route give the same
answer and the same audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from tracker.api_location import LocationFastLane

from .test_access import clock, world  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e


async def test_lane_and_route_answer_alike(
    world: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answered: list[bool] = []
    original = LocationFastLane._answered

    async def spy(self: LocationFastLane, scope: Any, send: Any) -> bool:
        answered.append(await original(self, scope, send))
        return answered[-1]

    monkeypatch.setattr(LocationFastLane, "_answered", spy)
    servicing = world["servicing"]
    by_route = await servicing.get("/api/v1/vehicles/car-a/location")  # key not seen yet
    by_lane = await servicing.get("/api/v1/vehicles/car-a/location")
    assert answered == [False, True]
    assert by_route.status_code == by_lane.status_code == 200
    assert by_route.headers["content-type"] == by_lane.headers["content-type"]
    assert by_route.json() == by_lane.json()  # the clock stands still
    assert by_lane.json()["vehicle_id"] == "car-a"

    missing = await servicing.get("/api/v1/vehicles/nowhere/location")
    assert (missing.status_code, answered[-1]) == (404, False)
    assert missing.headers["content-type"] == "application/problem+json"

    audit = await world["admin"].get(
        "/api/v1/audit", params={"actor": world["keys"]["servicing"]["user"]}
    )
    reads = [e for e in audit.json()["items"] if e["action"] == "location.read"]
    assert [e["vehicle_id"] for e in reads] == ["car-a", "car-a"]
