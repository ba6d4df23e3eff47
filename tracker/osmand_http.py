"""The OsmAnd / Traccar Client HTTP endpoint (its own port, 5055 by default).

200 only once the position is stored (the app resends anything else); 400 with
the reason for a request it cannot read; 404 for a unit that is not registered.

A unit cannot speak for another: HTTP has no connection to bind a unit to, so
each request names its unit (``id=``) and, with
``protocols.osmand.require_secret``, proves it with ``secret=`` (query or form
field), the unit's secret from ``GET /api/v1/units/{unique_id}/secret``.
Without it, or with another unit's, the answer is 401 and nothing is stored
or registered. The secret is taken out before decoding, so it is never stored
with the position's raw fields; it is compared in constant time and never logged.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from protocols import osmand
from tracker.ingest import StoreUnavailable
from tracker.store import Unit
from tracker.unit_secrets import UnitSecrets

if TYPE_CHECKING:
    from tracker.server import Server

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
PROTOCOL = "osmand"
SECRET = "secret"


def create_osmand_app(server: Server, *, speed_unit: str = "kn") -> Starlette:
    pipeline = server.pipeline
    stats = server.stats
    unit_speed: osmand.SpeedUnit = speed_unit  # type: ignore[assignment]  # settings checked it
    protocol_settings = server.settings.protocol(PROTOCOL)
    require_secret = protocol_settings is not None and protocol_settings.require_secret
    unit_secrets = UnitSecrets(server.settings.data_dir)  # reads its file on first use

    async def receive(request: Request) -> PlainTextResponse:
        stats["requests.osmand"] += 1
        body = await request.body()
        started = time.monotonic()  # the request is read: its ack latency starts
        if len(body) > MAX_BODY_BYTES:
            return _refuse(413, f"body over {MAX_BODY_BYTES} bytes; send one fix per request")
        if not pipeline.store_healthy:
            # the app keeps the fix and sends it again: better than holding the request
            stats["bad_requests.osmand"] += 1
            return _refuse(503, "positions cannot be stored right now; send it again later")
        now = pipeline.clock()
        content_type = request.headers.get("content-type")
        secret, query, body = take_secret(request.method, request.url.query, body, content_type)
        try:
            position = osmand.decode(
                request.method, query, body, content_type, speed_unit=unit_speed, now=now
            )
        except osmand.NoFix as exc:
            if (refused := _unauthorized(request, exc.unique_id, secret)) is not None:
                return refused
            unit = await _unit(request, exc.unique_id)
            if unit is None:
                return _unknown(request, exc.unique_id)
            pipeline.saw(unit.unique_id)
            stats["positions_dropped.no_fix"] += 1
            return PlainTextResponse("OK")
        except osmand.OsmandError as exc:
            stats["bad_requests.osmand"] += 1
            return _refuse(400, str(exc))
        assert position.unique_id is not None
        if (refused := _unauthorized(request, position.unique_id, secret)) is not None:
            return refused
        unit = await _unit(request, position.unique_id)
        if unit is None:
            return _unknown(request, position.unique_id)
        row = pipeline.accept(unit, PROTOCOL, position)
        if row is None:
            pipeline.saw(unit.unique_id)
        else:
            try:
                await pipeline.commit([row])
            except StoreUnavailable as exc:
                log.warning(
                    "osmand %s: position not stored: %s",
                    _peer(request),
                    exc,
                    extra={"unique_id": unit.unique_id, "protocol": PROTOCOL},
                )
                return _refuse(503, "position not stored; send it again later")
            server.metrics.on_ack(PROTOCOL, time.monotonic() - started)
        return PlainTextResponse("OK")

    def _unauthorized(
        request: Request, unique_id: str, secret: str | None
    ) -> PlainTextResponse | None:
        """A 401 when secrets are required and ``secret`` is not this unit's."""
        if not require_secret:
            return None
        if secret is None:
            reason = (
                f"missing secret: send secret=<the secret of unit {unique_id!r}> "
                "with each request, as the server's operator gives it"
            )
        elif not unit_secrets.check(unique_id, secret):
            reason = f"wrong secret for unit {unique_id!r}: it is not this unit's secret"
        else:
            return None
        stats[f"units_unauthorized.{PROTOCOL}"] += 1
        log.info(
            "refused unit %s (%s) from %s: %s",
            unique_id,
            PROTOCOL,
            _peer(request),
            "no secret" if secret is None else "wrong secret",
            extra={"unique_id": unique_id, "protocol": PROTOCOL},
        )
        return _refuse(401, reason)

    async def _unit(request: Request, unique_id: str) -> Unit | None:
        unit = server.registry.unit_for(unique_id)
        if unit is None:
            unit = await server.registry.knock(
                unique_id, PROTOCOL, _peer(request), pipeline.clock()
            )
        return unit

    def _unknown(request: Request, unique_id: str) -> PlainTextResponse:
        stats[f"units_refused.{PROTOCOL}"] += 1
        log.info(
            "refused unknown unit %s (%s) from %s",
            unique_id,
            PROTOCOL,
            _peer(request),
            extra={"unique_id": unique_id, "protocol": PROTOCOL},
        )
        return _refuse(404, f"unknown device id {unique_id!r}: register it on a vehicle first")

    return Starlette(routes=[Route("/", receive, methods=["GET", "POST"])])


def take_secret(
    method: str, query: str, body: bytes, content_type: str | None
) -> tuple[str | None, str, bytes]:
    """The ``secret=`` value (query, then form body: the last one wins) and the
    query and body without it, so that the secret never reaches the position."""
    secret: str | None = None

    def without_secret(pairs: list[tuple[str, str]]) -> str:
        nonlocal secret
        kept = []
        for key, value in pairs:
            if key == SECRET:
                secret = value
            else:
                kept.append((key, value))
        return urlencode(kept)

    # parse_qsl and urlencode round-trip: the codec reads the same pairs, less the secret
    query = without_secret(parse_qsl(query, keep_blank_values=True))
    media = (content_type or "").partition(";")[0].strip().lower()
    if body and method.upper() == "POST" and media in ("", osmand.FORM):
        text = body.decode("utf-8", "replace")
        body = without_secret(parse_qsl(text, keep_blank_values=True)).encode()
    return secret, query, body


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def _refuse(status: int, reason: str) -> PlainTextResponse:
    return PlainTextResponse(reason + "\n", status_code=status)
