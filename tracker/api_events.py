"""REST routes for risk rules: geofences, events, the sync feed, open alerts."""

from __future__ import annotations

import math
from datetime import datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any, Literal

import shapely.errors
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from geofences.model import (
    CORRIDOR_STEP_DEG,
    MAX_DISTANCE_M,
    MAX_VERTICES,
    MIN_DISTANCE_M,
    Category,
)
from tracker import views
from tracker.api_types import (
    ID_PATTERN,
    MAX_SEQ,
    TEXT_PATTERN,
    EventType,
    Id,
    VehicleId,
    aware_or_none,
)
from tracker.auth import Principal, Who, who, writer
from tracker.fences import FenceError
from tracker.store import Event, GeofenceRecord

if TYPE_CHECKING:
    from tracker.server import Server

FenceId = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
MAX_EVENTS = 1000
# Numbers, not strings or booleans, and finite (JSON parsers here accept NaN and Infinity).
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Metres = Annotated[float, Field(strict=True, ge=MIN_DISTANCE_M, le=MAX_DISTANCE_M)]


class CircleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lon: float = Field(strict=True, ge=-180, le=180)
    lat: float = Field(strict=True, ge=-90, le=90)
    radius_m: Metres


class LineStringIn(BaseModel):
    """A GeoJSON LineString; other members (bbox, ...) are dropped."""

    type: Literal["LineString"]
    coordinates: list[Annotated[list[Coordinate], Field(min_length=2, max_length=3)]] = Field(
        min_length=2, max_length=MAX_VERTICES, description="[lon, lat] positions"
    )


class CorridorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line: LineStringIn
    width_m: Metres = Field(description="total width, half on each side of the line")

    @model_validator(mode="after")
    def _length(self) -> CorridorIn:
        """The line is split into pieces of CORRIDOR_STEP_DEG before it is buffered:
        bound them before that work, not after. GEOS cannot split a line of no length."""
        if len({(lon, lat) for lon, lat, *_ in self.line.coordinates}) < 2:
            raise ValueError("the corridor line has no length: give 2 or more different positions")
        pieces = 0
        for (lon1, lat1, *_), (lon2, lat2, *_) in pairwise(self.line.coordinates):
            length = min(math.hypot(lon2 - lon1, lat2 - lat1), 1e6)  # hypot may overflow
            pieces += max(1, math.ceil(length / CORRIDOR_STEP_DEG))
        if pieces > MAX_VERTICES:
            raise ValueError(
                f"the corridor line is too long: {pieces} pieces of {CORRIDOR_STEP_DEG} degrees, "
                f"at most {MAX_VERTICES}: send it as several shorter corridors"
            )
        return self


class GeofenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key must not widen a fence
    name: str = Field(default="", max_length=200, pattern=TEXT_PATTERN)
    category: Category = "custom"
    vehicle_ids: list[VehicleId] | None = Field(
        default=None,
        min_length=1,
        max_length=10_000,
        description="omitted: every vehicle",
    )
    geometry: dict[str, Any] | None = Field(
        default=None,
        description=f"GeoJSON (Multi)Polygon, [lon, lat] positions, at most {MAX_VERTICES} "
        "in all rings together",
    )
    circle: CircleIn | None = None
    corridor: CorridorIn | None = None
    group: Id | None = Field(
        default=None,
        description="instead of vehicle_ids: the vehicles of this group, as it changes",
    )

    @model_validator(mode="after")
    def _one_audience(self) -> GeofenceIn:
        if self.group is not None and self.vehicle_ids is not None:
            raise ValueError("give vehicle_ids or group, not both")
        return self


def geofence_view(record: GeofenceRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "category": record.category,
        "vehicle_ids": list(record.vehicle_ids) if record.vehicle_ids is not None else None,
        "geometry": record.geometry,
        "created_at": views.iso(record.created_at),
        **record.details,
    }


def rule_routes(server: Server) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(who)])
    write = [Depends(writer)]

    def seen_by(principal: Principal, vehicle_id: str) -> bool:
        """A deleted vehicle's events stay: for everyone but recovery agents, who
        see only the cars assigned to them."""
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            return principal.role != "recovery"
        return server.access.may_see(principal, vehicle)

    def event_for(principal: Principal, item: Event) -> dict[str, Any]:
        """The event as this reader may see it: without where it happened when
        the vehicle's positions are not shown to them (its loan state; of a
        deleted vehicle, only admin and servicing see them)."""
        vehicle = server.registry.vehicle(item.vehicle_id)
        if vehicle is None:
            located = principal.can_write
        else:
            located = server.access.may_track(principal, vehicle)
        return views.event(item, located=located)

    def applies(record: GeofenceRecord, vehicle_id: str) -> bool:
        vehicle_ids = server.fences.vehicle_ids(record.id)
        return vehicle_ids is None or vehicle_id in vehicle_ids

    def fence_for(principal: Principal, record: GeofenceRecord) -> dict[str, Any] | None:
        """The fence if it is for everyone or for a vehicle this reader may see
        (a recovery agent sees the fences of their own cars: a borrower's
        home is as private as a position), listing only those vehicles."""
        vehicle_ids = server.fences.vehicle_ids(record.id)
        if principal.can_write or vehicle_ids is None:
            return geofence_view(record)
        if record.vehicle_ids is None:  # a group's: shown with its name, not the members
            return (
                geofence_view(record) if any(seen_by(principal, v) for v in vehicle_ids) else None
            )
        seen = [v for v in record.vehicle_ids if seen_by(principal, v)]
        if not seen:
            return None
        return geofence_view(record) | {"vehicle_ids": seen}

    async def create(body: GeofenceIn, fence_id: str | None) -> GeofenceRecord:
        try:
            return await server.fences.create(
                name=body.name,
                category=body.category,
                vehicle_ids=body.vehicle_ids,
                geometry=body.geometry,
                # dumped from the models: only their fields are stored and echoed
                circle=body.circle.model_dump() if body.circle else None,
                corridor=body.corridor.model_dump() if body.corridor else None,
                fence_id=fence_id,
                group=body.group,
            )
        except FenceError as exc:
            raise HTTPException(422, str(exc)) from None
        except shapely.errors.GEOSException as exc:  # a shape the checks above let through
            raise HTTPException(422, f"the fence cannot be built: {exc}; simplify it") from None

    @router.post("/geofences", tags=["geofences"], status_code=201, dependencies=write)
    async def post_geofence(body: GeofenceIn) -> dict[str, Any]:
        return geofence_view(await create(body, None))

    @router.put("/geofences/{fence_id}", tags=["geofences"], dependencies=write)
    async def put_geofence(fence_id: FenceId, body: GeofenceIn) -> dict[str, Any]:
        return geofence_view(await create(body, fence_id))

    @router.get("/geofences", tags=["geofences"])
    async def list_geofences(
        principal: Who, category: Category | None = None, vehicle_id: VehicleId | None = None
    ) -> dict[str, Any]:
        items = [
            view
            for r in server.fences.all()
            if (category is None or r.category == category)
            and (vehicle_id is None or applies(r, vehicle_id))
            and (view := fence_for(principal, r)) is not None
        ]
        return {"items": items}

    @router.get("/geofences/{fence_id}", tags=["geofences"])
    async def get_geofence(fence_id: FenceId, principal: Who) -> dict[str, Any]:
        record = server.fences.get(fence_id)
        view = None if record is None else fence_for(principal, record)
        if view is None:
            raise HTTPException(404, f"no geofence {fence_id!r}")
        return view

    @router.delete("/geofences/{fence_id}", tags=["geofences"], status_code=204, dependencies=write)
    async def delete_geofence(fence_id: FenceId) -> Response:
        if not await server.fences.delete(fence_id):
            raise HTTPException(404, f"no geofence {fence_id!r}")
        return Response(status_code=204)

    @router.get("/events", tags=["events"])
    async def list_events(
        principal: Who,
        vehicle_id: VehicleId | None = None,
        type: Annotated[list[EventType] | None, Query(max_length=50)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
        order: Literal["newest", "oldest"] = "newest",
    ) -> dict[str, Any]:
        """Events with filters, newest first by default (the feed is for syncing)."""
        events = await server.store.events(
            vehicle_id=vehicle_id,
            types=type,
            since=aware_or_none(since, "since"),
            until=aware_or_none(until, "until"),
            limit=limit,
            newest_first=order == "newest",
        )
        if vehicle_id is not None and not seen_by(principal, vehicle_id):
            raise HTTPException(403, f"vehicle {vehicle_id!r} is not assigned to you")
        return {
            "items": [event_for(principal, e) for e in events if seen_by(principal, e.vehicle_id)]
        }

    @router.get("/feed/events", tags=["events"])
    async def feed(
        principal: Who,
        after: Annotated[
            str | None,
            Query(
                max_length=20,
                description="next_cursor of the previous page; omitted: from the start",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
    ) -> dict[str, Any]:
        """Every event exactly once, in order. Store ``next_cursor`` after
        processing a page and pass it as ``after``: nothing is missed or
        counted twice, across server restarts too."""
        principal.require("admin", "servicing", "viewer")
        if after and not (after.isascii() and after.isdigit()):  # int() takes "+5", "1_0"
            raise HTTPException(400, "after must be a next_cursor this server gave out")
        cursor = int(after) if after else 0
        if not 0 <= cursor <= MAX_SEQ:
            raise HTTPException(400, "after must be a next_cursor this server gave out")
        events = await server.store.events(after=cursor, limit=limit + 1)
        page = events[:limit]
        next_cursor = page[-1].seq if page else cursor
        return {
            "data": [event_for(principal, e) for e in page],
            "next_cursor": str(next_cursor),
            "has_more": len(events) > limit,
        }

    @router.get("/alerts", tags=["events"])
    async def alerts(principal: Who, vehicle_id: VehicleId | None = None) -> dict[str, Any]:
        """Alerts open now (the event that opened each), newest first."""
        items = [
            e
            for (vid, _), e in server.engine.open.items()
            if (vehicle_id is None or vid == vehicle_id) and seen_by(principal, vid)
        ]
        items.sort(key=lambda e: e.detected_at, reverse=True)
        return {"items": [event_for(principal, e) for e in items]}

    return router
