"""Last-known locations: the servicing system's most frequent question.

Answered from memory (the registry and the latest-state cache), never from
the database. ``GET /api/v1/vehicles/{vehicle_id}/location`` is asked
thousands of times a second by a busy servicing system, so a plain ASGI
``LocationFastLane`` in front of FastAPI answers the common case: a key seen
in the last few seconds, a vehicle it may track, a known position. Anything
else (an unknown key, a 403, a 404, an invalid id) goes on to the FastAPI
route below, which holds the whole behaviour and the OpenAPI description.
Measured with ``bench/rest.py`` (100,000 vehicles): 0.25 ms of server CPU per
request through FastAPI's middleware, routing, dependency injection and
response validation; 0.12 ms through the lane, half of it in the two socket
writes uvicorn makes per response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tracker import views
from tracker.api_types import VehicleId
from tracker.auth import Principal, Who, peer
from tracker.store import Vehicle

if TYPE_CHECKING:
    from tracker.server import Server

PREFIX, SUFFIX = "/api/v1/vehicles/", "/location"
VEHICLE_ID = TypeAdapter(VehicleId)  # the route's own check of the path parameter
JSON_HEADERS = [(b"content-type", b"application/json")]


def location_of(server: Server, vehicle_id: str) -> dict[str, Any] | None:
    """The vehicle's newest position and each unit's last report, or None."""
    vehicle = server.registry.vehicle(vehicle_id)
    if vehicle is None:
        return None
    cache = server.cache
    newest = cache.vehicle([unit.unique_id for unit in vehicle.units], vehicle_id)
    if newest is None:
        return None
    units = [
        (u, cache.vehicle([u.unique_id], vehicle_id), cache.last_seen(u.unique_id))
        for u in vehicle.units
    ]
    return views.location(vehicle_id, newest, units, server.clock())


def no_location(vehicle_id: str) -> HTTPException:
    return HTTPException(
        404,
        f"vehicle {vehicle_id!r} has no known location yet: "
        "none of its units has reported a valid fix",
    )


def location_routes(server: Server, visible: Callable[..., Vehicle]) -> APIRouter:
    router = APIRouter(tags=["locations"])

    @router.get("/api/v1/vehicles/{vehicle_id}/location")
    async def vehicle_location(
        vehicle_id: VehicleId, principal: Who, request: Request
    ) -> dict[str, Any]:
        """The last known location of a vehicle: its newest fix over all its
        units, and ``units``: each unit's last report."""
        visible(principal, vehicle_id, positions=True)
        await server.access.audit(principal.actor, "location.read", vehicle_id, peer(request))
        body = location_of(server, vehicle_id)
        if body is None:
            raise no_location(vehicle_id)
        return body

    @router.get("/api/v1/locations")
    async def locations(
        principal: Who,
        request: Request,
        vehicle_id: Annotated[list[VehicleId] | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        wanted = vehicle_id if vehicle_id else server.registry.vehicle_ids()
        items, missing, hidden = [], [], []
        for one in wanted:
            vehicle = server.registry.vehicle(one)
            if vehicle is not None and not server.access.may_track(principal, vehicle):
                hidden.append(one)
                continue
            body = location_of(server, one)
            if body is None:
                missing.append(one)
            else:
                items.append(body)
        await server.access.audit(
            principal.actor,
            "locations.read",
            None,
            peer(request),
            vehicles=[i["vehicle_id"] for i in items],
        )
        if vehicle_id:  # asked by name: say which were not allowed
            return {"items": items, "missing": missing, "forbidden": hidden}
        return {"items": items, "missing": missing}

    return router


class LocationFastLane:
    """ASGI middleware: ``GET .../location`` answered without FastAPI when
    nothing about the request is unusual; everything else passes through."""

    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._answered(scope, send):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, send: Send) -> bool:
        path: str = scope["path"]
        if (
            scope["method"] != "GET"
            or not path.startswith(PREFIX)
            or not path.endswith(SUFFIX)
            or scope.get("root_path")
        ):
            return False
        vehicle_id = path[len(PREFIX) : -len(SUFFIX)]
        try:
            VEHICLE_ID.validate_python(vehicle_id)
        except ValidationError:
            return False
        principal = self._principal(scope)
        if principal is None:
            return False
        server = self.server
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None or not server.access.may_track(principal, vehicle):
            return False
        if server.cache.vehicle([unit.unique_id for unit in vehicle.units], vehicle_id) is None:
            return False
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else "?"
        try:
            await server.access.audit(principal.actor, "location.read", vehicle_id, remote)
            body = location_of(server, vehicle_id)  # the vehicle may have gone meanwhile
            if body is None:
                raise no_location(vehicle_id)
        except HTTPException as exc:
            from tracker.api import problem

            await problem(exc.status_code, str(exc.detail))(scope, _nothing, send)
            return True
        content = orjson.dumps(body)
        headers = [*JSON_HEADERS, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return True

    def _principal(self, scope: Scope) -> Principal | None:
        """As ``auth.who`` finds it, from keys seen lately only (no await)."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not key.strip():
                    return None
                return self.server.access.known(key.strip())
        return None


async def _nothing() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}
