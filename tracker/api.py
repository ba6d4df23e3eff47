"""The REST API under ``/api/v1`` and the live websocket, for servicing systems
and the recovery team. Reads come from the in-memory caches, never per
position from the database. Errors are ``application/problem+json`` bodies
whose ``detail`` says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException

import tracker
from tracker import views
from tracker.api_access import access_routes
from tracker.api_events import rule_routes
from tracker.api_live import serve_live
from tracker.api_webhooks import webhook_routes
from tracker.auth import Principal, Who, peer, writer
from tracker.page import mount_static, page_html
from tracker.rules import RuleSettings
from tracker.store import StoredPosition, Unit, UnitConflict, Vehicle

if TYPE_CHECKING:
    from tracker.server import Server

VehicleId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^/\s]+$")]
MAX_TRACK_LIMIT = 10_000

# The thresholds a vehicle may override: RuleSettings field name -> whether it is an int.
RULE_FIELDS = {f.name: f.type in (int, "int") for f in dataclasses.fields(RuleSettings)}


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class UnitIn(BaseModel):
    unique_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    kind: Literal["wired", "battery"] = "wired"
    silent_after_s: int | None = Field(default=None, ge=60, le=30 * 86_400)


class VehicleIn(BaseModel):
    plate: str | None = Field(default=None, max_length=32)
    vin: str | None = Field(default=None, max_length=32)
    loan_ref: str | None = Field(default=None, max_length=128)
    units: list[UnitIn] = Field(default_factory=list, max_length=16)
    # Per-vehicle rule thresholds: RuleSettings field name -> value (the global
    # value applies to every field not named).
    rules: dict[str, float | int] | None = None
    loan_state: Literal["current", "delinquent", "recovery", "closed"] = Field(
        default="current",
        description="set by the servicing system; recovery and viewer users see positions "
        "only of delinquent and recovery loans (configurable)",
    )

    @field_validator("units")
    @classmethod
    def _distinct_units(cls, units: list[UnitIn]) -> list[UnitIn]:
        ids = [unit.unique_id for unit in units]
        if len(ids) != len(set(ids)):
            raise ValueError("each unique_id may appear once")
        return units

    @field_validator("rules", mode="before")
    @classmethod
    def _known_rules(cls, rules: Any) -> Any:
        """Names of RuleSettings fields, finite numbers > 0, ints for int fields.
        Checked before coercion, so neither true nor "7" passes for a number."""
        if not isinstance(rules, dict):
            return rules  # None, or a type error pydantic reports
        checked: dict[str, float | int] = {}
        for name, value in rules.items():
            if name not in RULE_FIELDS:
                raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(RULE_FIELDS)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"rule {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"rule {name!r} must be a number > 0, got {value!r}")
            if RULE_FIELDS[name]:
                if value != int(value):
                    raise ValueError(f"rule {name!r} must be a whole number, got {value!r}")
                value = int(value)
            checked[name] = value
        return checked


def problem(status: int, detail: str, title: str | None = None) -> JSONResponse:
    titles = {
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        409: "Conflict",
        422: "Unprocessable Content",
        503: "Service Unavailable",
    }
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title or titles.get(status, "Error"),
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def protocol_counters(stats: Counter[str], ports: dict[str, int]) -> dict[str, dict[str, int]]:
    """Counters per protocol: ``frames_dropped.gt06.bad_crc`` -> gt06: frames_dropped.bad_crc."""
    grouped: dict[str, dict[str, int]] = {name: {} for name in ports if name != "http"}
    for key, count in stats.items():
        kind, _, rest = key.partition(".")
        name, _, reason = rest.partition(".")
        if name in grouped:
            grouped[name][f"{kind}.{reason}" if reason else kind] = count
    return grouped


def _encode_cursor(row: StoredPosition) -> str:
    raw = f"{row.fix_time.isoformat()}|{row.unique_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, unique_id = raw.split("|", 1)
        return datetime.fromisoformat(moment), unique_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(
            400,
            "cursor is not one this server gave out; "
            "pass next_cursor from the previous page unchanged",
        ) from None


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise HTTPException(400, f"{name} needs a time zone, e.g. 2026-01-31T12:00:00Z")
    return moment.astimezone(UTC)


def create_app(server: Server) -> FastAPI:
    app = FastAPI(
        title="Collateral tracker",
        version=tracker.__version__,
        default_response_class=ORJSONResponse,
        description="Last known locations, tracks and live positions of financed vehicles.",
    )
    mount_static(app)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, _validation_detail(exc))

    app.state.server = server  # the auth dependencies find the server here

    def visible(principal: Principal, vehicle_id: str, *, positions: bool) -> Vehicle:
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        server.access.check(principal, vehicle, positions=positions)
        return vehicle

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "store": server.store.kind}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(page_html(server.settings), media_type="text/html")

    @app.get("/api/v1/server", tags=["server"], dependencies=[Depends(writer)])
    async def server_info() -> dict[str, Any]:
        return {
            "version": tracker.__version__,
            "store": server.store.kind,
            "ports": server.ports,
            "udp_ports": server.udp_ports,
            "protocols": protocol_counters(server.stats, server.ports),
            "register_unknown_units": server.registry.register_unknown_units,
            "live_subscribers": server.hub.subscriber_count,
            "stats": dict(sorted(server.stats.items())),
            "retention": server.retention.last_report,
        }

    @app.put("/api/v1/vehicles/{vehicle_id}", tags=["vehicles"], dependencies=[Depends(writer)])
    async def put_vehicle(vehicle_id: VehicleId, body: VehicleIn) -> Response:
        units = [Unit(u.unique_id, vehicle_id, u.kind, u.silent_after_s) for u in body.units]
        try:
            vehicle, created = await server.registry.put_vehicle(
                vehicle_id,
                plate=body.plate,
                vin=body.vin,
                loan_ref=body.loan_ref,
                units=units,
                rules=body.rules or {},
                loan_state=body.loan_state,
            )
        except UnitConflict as exc:
            return problem(409, str(exc))
        return ORJSONResponse(views.vehicle(vehicle), status_code=201 if created else 200)

    @app.get("/api/v1/vehicles/{vehicle_id}", tags=["vehicles"])
    async def get_vehicle(vehicle_id: VehicleId, principal: Who) -> dict[str, Any]:
        return views.vehicle(visible(principal, vehicle_id, positions=False))

    @app.delete(
        "/api/v1/vehicles/{vehicle_id}",
        tags=["vehicles"],
        dependencies=[Depends(writer)],
        status_code=204,
    )
    async def delete_vehicle(vehicle_id: VehicleId) -> Response:
        if not await server.registry.delete_vehicle(vehicle_id):
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        return Response(status_code=204)

    @app.get("/api/v1/vehicles", tags=["vehicles"])
    async def list_vehicles(
        principal: Who,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        page = await server.store.list_vehicles(after=after, limit=limit)
        items = [views.vehicle(v) for v in page if server.access.may_see(principal, v)]
        next_after = page[-1].vehicle_id if len(page) == limit else None
        return {"items": items, "next_after": next_after}

    def location_of(vehicle_id: str) -> dict[str, Any] | None:
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            return None
        ids = [unit.unique_id for unit in vehicle.units]
        newest = server.cache.vehicle(ids)
        if newest is None:
            return None
        units = [
            (u, server.cache.unit(u.unique_id), server.cache.last_seen(u.unique_id))
            for u in vehicle.units
        ]
        return views.location(vehicle_id, newest, units, server.clock())

    @app.get("/api/v1/vehicles/{vehicle_id}/location", tags=["locations"])
    async def vehicle_location(
        vehicle_id: VehicleId, principal: Who, request: Request
    ) -> dict[str, Any]:
        visible(principal, vehicle_id, positions=True)
        await server.access.audit(principal.actor, "location.read", vehicle_id, peer(request))
        body = location_of(vehicle_id)
        if body is None:
            raise HTTPException(
                404,
                f"vehicle {vehicle_id!r} has no known location yet: "
                "none of its units has reported a valid fix",
            )
        return body

    @app.get("/api/v1/locations", tags=["locations"])
    async def locations(
        principal: Who,
        request: Request,
        vehicle_id: Annotated[list[str] | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        wanted = vehicle_id if vehicle_id else server.registry.vehicle_ids()
        items, missing, hidden = [], [], []
        for one in wanted:
            vehicle = server.registry.vehicle(one)
            if vehicle is not None and not server.access.may_track(principal, vehicle):
                hidden.append(one)
                continue
            body = location_of(one)
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

    @app.get("/api/v1/vehicles/{vehicle_id}/track", tags=["locations"])
    async def track(
        vehicle_id: VehicleId,
        principal: Who,
        request: Request,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_LIMIT)] = 1000,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        format: Literal["json", "geojson"] = "json",
    ) -> dict[str, Any]:
        vehicle = visible(principal, vehicle_id, positions=True)
        end = _aware(to, "to") if to else server.clock()
        start = _aware(from_, "from") if from_ else end - timedelta(days=1)
        if start >= end:
            raise HTTPException(400, "'from' must be before 'to'")
        after = _decode_cursor(cursor) if cursor else None
        rows = await server.store.track(
            [u.unique_id for u in vehicle.units], start=start, end=end, limit=limit, after=after
        )
        next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
        await server.access.audit(
            principal.actor,
            "track.read",
            vehicle_id,
            peer(request),
            start=views.iso(start),
            end=views.iso(end),
            count=len(rows),
        )
        if format == "geojson":
            return {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [r.lon, r.lat]},
                        "properties": views.position(r),
                    }
                    for r in rows
                ],
                "next_cursor": next_cursor,
            }
        return {
            "vehicle_id": vehicle_id,
            "from": views.iso(start),
            "to": views.iso(end),
            "items": [views.position(r) for r in rows],
            "next_cursor": next_cursor,
        }

    @app.get("/api/v1/units/unknown", tags=["units"], dependencies=[Depends(writer)])
    async def unknown_units(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        rows = await server.store.unknown_units(limit=limit)
        return {
            "items": [
                {
                    "unique_id": r.unique_id,
                    "protocol": r.protocol,
                    "remote_addr": r.remote_addr,
                    "first_seen": views.iso(r.first_seen),
                    "last_seen": views.iso(r.last_seen),
                    "count": r.count,
                }
                for r in rows
            ]
        }

    app.include_router(rule_routes(server))
    app.include_router(webhook_routes(server, Depends(writer)))
    app.include_router(access_routes(server, visible))

    @app.websocket("/api/v1/live")
    async def live(websocket: WebSocket) -> None:
        await serve_live(server, websocket)

    return app
