"""The OsmAnd / Traccar Client HTTP endpoint (its own port, 5055 by default).

200 only once the position is stored (the app resends anything else); 400 with
the reason for a request it cannot read; 404 for a unit that is not registered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from protocols import osmand
from tracker.ingest import StoreUnavailable
from tracker.store import Unit

if TYPE_CHECKING:
    from tracker.server import Server

MAX_BODY_BYTES = 64 * 1024
PROTOCOL = "osmand"


def create_osmand_app(server: Server, *, speed_unit: str = "kn") -> Starlette:
    pipeline = server.pipeline
    stats = server.stats
    unit_speed: osmand.SpeedUnit = speed_unit  # type: ignore[assignment]  # settings checked it

    async def receive(request: Request) -> PlainTextResponse:
        stats["requests.osmand"] += 1
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _refuse(413, f"body over {MAX_BODY_BYTES} bytes; send one fix per request")
        now = pipeline.clock()
        try:
            position = osmand.decode(
                request.method,
                request.url.query,
                body,
                request.headers.get("content-type"),
                speed_unit=unit_speed,
                now=now,
            )
        except osmand.NoFix as exc:
            unit = await _unit(request, exc.unique_id)
            if unit is None:
                return _unknown(exc.unique_id)
            pipeline.saw(unit.unique_id)
            stats["positions_dropped.no_fix"] += 1
            return PlainTextResponse("OK")
        except osmand.OsmandError as exc:
            stats["bad_requests.osmand"] += 1
            return _refuse(400, str(exc))
        assert position.unique_id is not None
        unit = await _unit(request, position.unique_id)
        if unit is None:
            return _unknown(position.unique_id)
        row = pipeline.accept(unit, PROTOCOL, position)
        if row is None:
            pipeline.saw(unit.unique_id)
        else:
            try:
                await pipeline.commit([row])
            except StoreUnavailable:
                return _refuse(503, "position not stored; send it again later")
        return PlainTextResponse("OK")

    async def _unit(request: Request, unique_id: str) -> Unit | None:
        unit = server.registry.unit_for(unique_id)
        if unit is None:
            peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
            unit = await server.registry.knock(unique_id, PROTOCOL, peer, pipeline.clock())
        return unit

    def _unknown(unique_id: str) -> PlainTextResponse:
        stats[f"units_refused.{PROTOCOL}"] += 1
        return _refuse(404, f"unknown device id {unique_id!r}: register it on a vehicle first")

    return Starlette(routes=[Route("/", receive, methods=["GET", "POST"])])


def _refuse(status: int, reason: str) -> PlainTextResponse:
    return PlainTextResponse(reason + "\n", status_code=status)
