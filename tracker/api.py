"""The REST API under ``/api/v1`` and the live websocket, for servicing systems
and the recovery team. Reads come from the in-memory caches, never per
position from the database. Errors are ``application/problem+json`` bodies
whose ``detail`` says what to fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hmac
import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException

import tracker
from tracker import views
from tracker.api_events import rule_routes
from tracker.api_webhooks import webhook_routes
from tracker.live import ALL
from tracker.page import PAGE_HTML, mount_static
from tracker.rules import RuleSettings
from tracker.store import StoredPosition, Unit, UnitConflict

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

    def require_key(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise HTTPException(401, "send an API key as 'Authorization: Bearer <key>'")
        if not hmac.compare_digest(key.strip().encode(), server.admin_key.encode()):
            raise HTTPException(401, "this API key is not valid")

    api = Depends(require_key)

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "store": server.store.kind}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(PAGE_HTML, media_type="text/html")

    @app.get("/api/v1/server", tags=["server"], dependencies=[api])
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
        }

    @app.put("/api/v1/vehicles/{vehicle_id}", tags=["vehicles"], dependencies=[api])
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
            )
        except UnitConflict as exc:
            return problem(409, str(exc))
        return ORJSONResponse(views.vehicle(vehicle), status_code=201 if created else 200)

    @app.get("/api/v1/vehicles/{vehicle_id}", tags=["vehicles"], dependencies=[api])
    async def get_vehicle(vehicle_id: VehicleId) -> dict[str, Any]:
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}; create it with PUT")
        return views.vehicle(vehicle)

    @app.delete(
        "/api/v1/vehicles/{vehicle_id}", tags=["vehicles"], dependencies=[api], status_code=204
    )
    async def delete_vehicle(vehicle_id: VehicleId) -> Response:
        if not await server.registry.delete_vehicle(vehicle_id):
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        return Response(status_code=204)

    @app.get("/api/v1/vehicles", tags=["vehicles"], dependencies=[api])
    async def list_vehicles(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[str | None, Query(max_length=128)] = None,
    ) -> dict[str, Any]:
        page = await server.store.list_vehicles(after=after, limit=limit)
        items = [views.vehicle(v) for v in page]
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

    @app.get("/api/v1/vehicles/{vehicle_id}/location", tags=["locations"], dependencies=[api])
    async def vehicle_location(vehicle_id: VehicleId) -> dict[str, Any]:
        if server.registry.vehicle(vehicle_id) is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        body = location_of(vehicle_id)
        if body is None:
            raise HTTPException(
                404,
                f"vehicle {vehicle_id!r} has no known location yet: "
                "none of its units has reported a valid fix",
            )
        return body

    @app.get("/api/v1/locations", tags=["locations"], dependencies=[api])
    async def locations(
        vehicle_id: Annotated[list[str] | None, Query(max_length=1000)] = None,
    ) -> dict[str, Any]:
        wanted = vehicle_id if vehicle_id else server.registry.vehicle_ids()
        items, missing = [], []
        for one in wanted:
            body = location_of(one)
            if body is None:
                missing.append(one)
            else:
                items.append(body)
        return {"items": items, "missing": missing}

    @app.get("/api/v1/vehicles/{vehicle_id}/track", tags=["locations"], dependencies=[api])
    async def track(
        vehicle_id: VehicleId,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_LIMIT)] = 1000,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        format: Literal["json", "geojson"] = "json",
    ) -> dict[str, Any]:
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        end = _aware(to, "to") if to else server.clock()
        start = _aware(from_, "from") if from_ else end - timedelta(days=1)
        if start >= end:
            raise HTTPException(400, "'from' must be before 'to'")
        after = _decode_cursor(cursor) if cursor else None
        rows = await server.store.track(
            [u.unique_id for u in vehicle.units], start=start, end=end, limit=limit, after=after
        )
        next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
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

    @app.get("/api/v1/units/unknown", tags=["units"], dependencies=[api])
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

    app.include_router(rule_routes(server, api))
    app.include_router(webhook_routes(server, api))

    @app.websocket("/api/v1/live")
    async def live(websocket: WebSocket) -> None:
        await serve_live(server, websocket)

    return app


async def serve_live(server: Server, websocket: WebSocket) -> None:
    """Authenticate, wait for a subscription, send a snapshot, then updates."""
    header = websocket.headers.get("authorization", "")
    key = header.partition(" ")[2].strip() if header.lower().startswith("bearer ") else ""
    key = key or websocket.query_params.get("token", "")
    if not key or not hmac.compare_digest(key.encode(), server.admin_key.encode()):
        detail = "send a valid API key as 'Authorization: Bearer <key>' or ?token=<key>"
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(problem(401, detail))
        else:
            await websocket.close(code=4401, reason="send a valid API key")
        return
    await websocket.accept()
    try:
        request = orjson.loads(await websocket.receive_text())
        wanted = request.get("subscribe") if isinstance(request, dict) else None
        if wanted == ALL:
            vehicle_ids = None
        elif isinstance(wanted, list) and all(isinstance(v, str) for v in wanted):
            vehicle_ids = frozenset(wanted)
        else:
            await websocket.send_text(
                '{"type":"error","detail":"send {\\"subscribe\\": '
                '[\\"vehicle-id\\", ...]} or {\\"subscribe\\": \\"*\\"}"}'
            )
            await websocket.close(code=4400)
            return
    except (WebSocketDisconnect, orjson.JSONDecodeError):
        return
    subscriber = server.hub.subscribe(vehicle_ids)
    # the client says nothing more; reading notices when it goes away
    reader = asyncio.create_task(_drain(websocket))
    try:
        ids = server.registry.vehicle_ids() if vehicle_ids is None else sorted(vehicle_ids)
        snapshot = []
        for vehicle_id in ids:
            vehicle = server.registry.vehicle(vehicle_id)
            newest = server.cache.vehicle(u.unique_id for u in vehicle.units) if vehicle else None
            if newest is not None:
                snapshot.append(views.position(newest) | {"vehicle_id": vehicle_id})
        snapshot_message = {"type": "snapshot", "positions": snapshot}
        await websocket.send_text(orjson.dumps(snapshot_message).decode())
        while not reader.done():
            batch = asyncio.create_task(subscriber.next_batch())
            await asyncio.wait([batch, reader], return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                batch.cancel()
                break
            for message in batch.result():
                await websocket.send_text(message)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        server.hub.unsubscribe(subscriber)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _drain(websocket: WebSocket) -> None:
    """Read and ignore client messages until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
