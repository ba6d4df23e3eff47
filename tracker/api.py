"""The REST API under ``/api/v1`` and the live websocket, for servicing systems
and the recovery team. Reads come from the in-memory caches, never per
position from the database. Errors are ``application/problem+json`` bodies
whose ``detail`` says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
import math
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tracker
from tracker import views
from tracker.api_access import access_routes
from tracker.api_events import rule_routes
from tracker.api_live import serve_live
from tracker.api_location import LocationFastLane, location_routes
from tracker.api_types import (
    PATTERN_HINTS,
    TEXT_PATTERN,
    Id,
    ORJSONResponse,
    UniqueId,
    VehicleId,
    aware,
)
from tracker.api_webhooks import webhook_routes
from tracker.auth import Principal, Who, peer, writer
from tracker.metrics import CONTENT_TYPE
from tracker.page import mount_static, page_html
from tracker.rules import RuleSettings
from tracker.store import Unit, UnitConflict, Vehicle
from tracker.unit_secrets import UnitSecrets

if TYPE_CHECKING:
    from tracker.server import Server

log = logging.getLogger(__name__)
MAX_TRACK_LIMIT = 10_000
# A fence at MAX_VERTICES naming 10,000 vehicles fits; nothing else comes near.
MAX_BODY_BYTES = 2 * 1024 * 1024

# Thresholds that hold for the whole fleet only: a gathering is of several vehicles,
# and "late" is judged per batch for all of them. Set them in [rules].
GLOBAL_RULES = frozenset(
    {"late_after_s", "gathering_vehicles", "gathering_radius_m", "gathering_minutes"}
)
# The thresholds a vehicle may override: RuleSettings field name -> whether it is an int.
RULE_FIELDS = {
    f.name: f.type in (int, "int")
    for f in dataclasses.fields(RuleSettings)
    if f.name not in GLOBAL_RULES
}
# The largest override, by the unit its name ends in: beyond these a threshold is a
# typo, and time arithmetic with it would overflow.
RULE_MAXIMA = {
    "_s": 10 * 365 * 86_400,
    "_minutes": 10 * 365 * 1440,
    "_days": 10 * 365,
    "_m": 20_000_000,
    "_kmh": 1000,
}
RULE_MAXIMUM = 1_000_000  # counts: dwell_fixes, gathering_vehicles


def rule_maximum(name: str) -> int:
    return next((top for end, top in RULE_MAXIMA.items() if name.endswith(end)), RULE_MAXIMUM)


class UnitIn(BaseModel):
    unique_id: UniqueId
    kind: Literal["wired", "battery"] = "wired"
    silent_after_s: int | None = Field(default=None, ge=60, le=30 * 86_400)


class VehicleIn(BaseModel):
    plate: str | None = Field(default=None, max_length=32, pattern=TEXT_PATTERN)
    vin: str | None = Field(default=None, max_length=32, pattern=TEXT_PATTERN)
    loan_ref: str | None = Field(default=None, max_length=128, pattern=TEXT_PATTERN)
    units: list[UnitIn] = Field(default_factory=list, max_length=16)
    # Per-vehicle rule thresholds: RuleSettings field name -> value (the global
    # value applies to every field not named).
    rules: dict[str, float | int] | None = None
    group: Id | None = Field(
        default=None, description="the vehicle's group: fences may apply to a group"
    )
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
        """Names of RuleSettings fields, finite numbers > 0 up to ``rule_maximum``,
        ints for int fields. Checked before coercion, so neither true nor "7"
        passes for a number."""
        if not isinstance(rules, dict):
            return rules  # None, or a type error pydantic reports
        checked: dict[str, float | int] = {}
        for name, value in rules.items():
            if name in GLOBAL_RULES:
                raise ValueError(
                    f"rule {name!r} holds for every vehicle: set it in the server's [rules]"
                )
            if name not in RULE_FIELDS:
                raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(RULE_FIELDS)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"rule {name!r} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"rule {name!r} must be a number > 0, got {value!r}")
            if value > (top := rule_maximum(name)):
                raise ValueError(f"rule {name!r} must be at most {top}, got {value!r}")
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
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        410: "Gone",
        413: "Content Too Large",
        422: "Unprocessable Content",
        503: "Service Unavailable",
    }
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title or titles.get(status, "Error"),
            "status": status,
            # lone surrogates (JSON allows them, UTF-8 does not) are echoed escaped
            "detail": detail.encode("utf-8", "backslashreplace").decode(),
        },
        status_code=status,
        media_type="application/problem+json",
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = error.get("msg", "invalid")
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "json_invalid":  # loc: ("body", character offset)
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = error.get("ctx", {}).get("error", "")
            parts.append(f"body is not valid JSON{at}" + (f": {reason}" if reason else ""))
            continue
        if loc == ("body",) and isinstance(error.get("input"), str | bytes):
            parts.append("body: send a JSON object, with 'Content-Type: application/json'")
            continue
        if error.get("type") == "string_pattern_mismatch":
            hint = PATTERN_HINTS.get(error.get("ctx", {}).get("pattern", ""))
            message = f"{message}: {hint}" if hint else message
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


class BodyLimit:
    """413 for a request body over ``MAX_BODY_BYTES``: told by Content-Length,
    or counted as it arrives (chunked)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {MAX_BODY_BYTES} bytes; send less at a time"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await problem(413, too_large)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, too_large)
            return message

        await self.app(scope, counted, send)


def _bearer_is(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    matches = hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches


def _encode_cursor(key: tuple[datetime, str]) -> str:
    raw = f"{key[0].isoformat()}|{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, unique_id = raw.split("|", 1)
        return aware(datetime.fromisoformat(moment), "cursor"), unique_id
    except (ValueError, binascii.Error, UnicodeDecodeError, HTTPException):
        raise HTTPException(
            400,
            "cursor is not one this server gave out; "
            "pass next_cursor from the previous page unchanged",
        ) from None


def create_app(server: Server) -> FastAPI:
    app = FastAPI(
        title="Collateral tracker",
        version=tracker.__version__,
        default_response_class=ORJSONResponse,
        description="Last known locations, tracks and live positions of financed vehicles.",
    )
    mount_static(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(LocationFastLane, server=server)  # outermost of ours: first to look

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, _validation_detail(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if not server.pipeline.store_healthy:  # reads that need the database, during an outage
            return problem(
                503,
                "the database is unavailable; units are still received and "
                "their positions will be stored; try again shortly",
            )
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "internal error; it is logged on the server")

    app.state.server = server  # the auth dependencies find the server here
    unit_secrets = UnitSecrets(server.settings.data_dir)

    def visible(principal: Principal, vehicle_id: str, *, positions: bool) -> Vehicle:
        vehicle = server.registry.vehicle(vehicle_id)
        if vehicle is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        server.access.check(principal, vehicle, positions=positions)
        return vehicle

    @app.get("/healthz", tags=["server"])
    async def healthz() -> dict[str, str]:
        """The process is up and serving: 200 even while the store is down (see /readyz)."""
        return {"status": "ok", "store": server.store.kind}

    @app.get(
        "/readyz",
        tags=["server"],
        responses={503: {"description": "the store is down: positions are held, not acked"}},
    )
    async def readyz() -> ORJSONResponse:
        """200 while the store takes writes (its last write or ping worked); 503
        while it does not: positions are then held unacknowledged (``pending_rows``)
        and the REST API answers from memory."""
        pipeline = server.pipeline
        if pipeline.store_healthy:
            body = {"status": "ok", "store": "available", "pending_rows": pipeline.pending_rows}
            return ORJSONResponse(body)
        body = {"status": "degraded", "store": "unavailable", "pending_rows": pipeline.pending_rows}
        return ORJSONResponse(body, status_code=503)

    @app.get("/metrics", tags=["server"])
    async def metrics(request: Request) -> Response:
        """Prometheus text format. Open by default (scrapers); with ``metrics.token``
        set, only for ``Authorization: Bearer <metrics.token>``."""
        token = server.settings.metrics_token
        if token is not None and not _bearer_is(request, token):
            return problem(401, "send the metrics token as 'Authorization: Bearer <token>'")
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(page_html(server.settings), media_type="text/html")

    @app.get("/api/v1/server", tags=["server"], dependencies=[Depends(writer)])
    async def server_info() -> dict[str, Any]:
        return {
            "version": tracker.__version__,
            "store": server.store.kind,
            "store_healthy": server.pipeline.store_healthy,
            "store_error": server.pipeline.store_error,
            "pending_rows": server.pipeline.pending_rows,
            "commits_waiting_for_room": server.pipeline.waiting_commits,
            "ports": server.ports,
            "udp_ports": server.udp_ports,
            "protocols": views.protocol_counters(server.stats, server.ports),
            "register_unknown_units": server.registry.register_unknown_units,
            "live_subscribers": server.hub.subscriber_count,
            "stats": dict(sorted(server.stats.items())),
            "retention": server.retention.last_report,
        }

    @app.put("/api/v1/vehicles/{vehicle_id}", tags=["vehicles"], dependencies=[Depends(writer)])
    async def put_vehicle(vehicle_id: VehicleId, body: VehicleIn) -> Response:
        units = [Unit(u.unique_id, vehicle_id, u.kind, u.silent_after_s) for u in body.units]
        before = server.registry.vehicle(vehicle_id)
        try:
            vehicle, created = await server.registry.put_vehicle(
                vehicle_id,
                plate=body.plate,
                vin=body.vin,
                loan_ref=body.loan_ref,
                units=units,
                rules=body.rules or {},
                loan_state=body.loan_state,
                group=body.group,
            )
        except UnitConflict as exc:
            return problem(409, str(exc))
        await server.fences.regroup(before, vehicle)
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
        before = server.registry.vehicle(vehicle_id)
        if not await server.registry.delete_vehicle(vehicle_id):
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        await server.fences.regroup(before, None)
        server.engine.forget_vehicle(vehicle_id)
        now = server.clock()  # its share links end with it: a new car of that id is another
        for share in await server.store.list_shares(vehicle_id=vehicle_id):
            if share.revoked_at is None and await server.store.revoke_share(share.id, now):
                server.revoked_shares.add(share.id)
                server.kicks.kick(f"share:{share.id}")
        return Response(status_code=204)

    @app.get("/api/v1/vehicles", tags=["vehicles"])
    async def list_vehicles(
        principal: Who,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        after: Annotated[VehicleId | None, Query()] = None,
    ) -> dict[str, Any]:
        page = await server.store.list_vehicles(after=after, limit=limit)
        items = [views.vehicle(v) for v in page if server.access.may_see(principal, v)]
        next_after = page[-1].vehicle_id if len(page) == limit else None
        return {"items": items, "next_after": next_after}

    app.include_router(location_routes(server, visible))

    # a day is thousands of rows: the body goes straight to orjson, not through
    # FastAPI's validation and encoding of every value (half the route's time)
    @app.get(
        "/api/v1/vehicles/{vehicle_id}/track", tags=["locations"], response_model=dict[str, Any]
    )
    async def track(
        vehicle_id: VehicleId,
        principal: Who,
        request: Request,
        from_: Annotated[datetime | None, Query(alias="from")] = None,
        to: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_TRACK_LIMIT)] = 1000,
        cursor: Annotated[str | None, Query(max_length=256)] = None,
        format: Literal["json", "geojson"] = "json",
    ) -> Response:
        vehicle = visible(principal, vehicle_id, positions=True)
        end = aware(to, "to") if to else server.clock()
        start = aware(from_, "from") if from_ else end - timedelta(days=1)
        if start >= end:
            raise HTTPException(400, "'from' must be before 'to'")
        after = _decode_cursor(cursor) if cursor else None
        rows = await server.store.track_rows(
            [u.unique_id for u in vehicle.units], start=start, end=end, limit=limit, after=after
        )
        next_cursor = _encode_cursor(views.track_key(rows[-1])) if len(rows) == limit else None
        rows = views.stored_for(vehicle_id, rows)
        await server.access.audit(
            principal.actor,
            "track.read",
            vehicle_id,
            peer(request),
            start=views.iso(start),
            end=views.iso(end),
            count=len(rows),
        )
        items = views.track_items(rows)
        if format == "geojson":
            return ORJSONResponse(
                {
                    "type": "FeatureCollection",
                    "features": [
                        {
                            "type": "Feature",
                            "geometry": {"type": "Point", "coordinates": [i["lon"], i["lat"]]},
                            "properties": i,
                        }
                        for i in items
                    ],
                    "next_cursor": next_cursor,
                }
            )
        return ORJSONResponse(
            {
                "vehicle_id": vehicle_id,
                "from": views.iso(start),
                "to": views.iso(end),
                "items": items,
                "next_cursor": next_cursor,
            }
        )

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

    @app.get("/api/v1/units/{unique_id}/secret", tags=["units"], dependencies=[Depends(writer)])
    async def get_unit_secret(unique_id: UniqueId) -> dict[str, str]:
        """The secret an OsmAnd / Traccar Client unit sends as ``secret=`` when
        ``protocols.osmand.require_secret`` is on: put it in the app's server URL,
        e.g. ``http://host:5055/?secret=<secret>``. Derived from the unit id and a
        server secret kept in the data directory, so it is the same on every
        call, for registered units and units not registered yet."""
        return {"unique_id": unique_id, "secret": unit_secrets.secret(unique_id)}

    app.include_router(rule_routes(server))
    app.include_router(webhook_routes(server, Depends(writer)))
    app.include_router(access_routes(server, visible))

    @app.websocket("/api/v1/live")
    async def live(websocket: WebSocket) -> None:
        await serve_live(server, websocket)

    return app
