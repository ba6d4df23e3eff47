"""The live websocket, ``/api/v1/live``.

Authenticate with an API key (``Authorization: Bearer`` or ``?token=``) and
send ``{"subscribe": [...] | "*", "cursor": "..."}``; or open it with
``?share=TOKEN`` (a share link: that one vehicle, no message needed). The
client gets a snapshot (or, with the cursor of the last message it saw and
within the hub's window, just what it missed), then one message per stored
position and event. uvicorn pings every 20 s, so proxies keep it open.

The snapshot and what was missed go through Starlette's ``send_text``; after
that, on our server (uvicorn's websockets-sansio protocol) the hub writes the
live frames to the connection's transport itself, one shared buffer per tick
for every subscriber (see ``tracker.live``): per-message sends cannot carry
1,000 subscribers at 10,000 positions/s. Under another ASGI server the route
sends each message itself. Either way nothing else sends data frames once the
stream is live, and the hub lets go of the socket before it is closed.

Access is re-checked while it runs: a revoked key closes it with 4401, a
revoked or expired share with 4410 (at once, not at the next message), and a
vehicle whose loan state no longer allows positions drops out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate

from tracker import views
from tracker.auth import Principal, hash_secret
from tracker.live import ALL, Sink
from tracker.store import Share

if TYPE_CHECKING:
    from tracker.server import Server

RECHECK_S = 5.0
NOTSENT_LOWAT = 128 * 1024  # bytes a live socket may queue in the kernel, unsent
CLOSE_BAD_KEY, CLOSE_GONE, CLOSE_FORBIDDEN, CLOSE_BAD_REQUEST = 4401, 4410, 4403, 4400


class Kicks:
    """Open sockets by what lets them in (a key id, a share id), so revoking
    one closes them at once."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, tag: str) -> Any:
        event = asyncio.Event()
        self._waiting.setdefault(tag, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._waiting.get(tag, set())
            waiting.discard(event)
            if not waiting:
                self._waiting.pop(tag, None)

    def kick(self, tag: str) -> None:
        for event in self._waiting.get(tag, ()):
            event.set()


# uvicorn logs an error for every websocket answered with an HTTP response instead
# of a handshake ("returned without completing handshake"), though that response
# went out: anyone could fill the error log with bad keys. The refusal marks its
# task's context, and the filter drops that one line for it alone.
_DENIED: ContextVar[bool] = ContextVar("live_denied", default=False)
NO_HANDSHAKE = "ASGI callable returned without completing handshake."


def _not_a_denial(record: logging.LogRecord) -> bool:
    return not (_DENIED.get() and record.msg == NO_HANDSHAKE)


logging.getLogger("uvicorn.error").addFilter(_not_a_denial)


async def _refuse(websocket: WebSocket, status: int, detail: str, code: int) -> None:
    from tracker.api import problem

    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem(status, detail))
        _DENIED.set(True)
    else:
        await websocket.close(code=code, reason=detail[:100])


def _snapshot(server: Server, vehicle_ids: Iterable[str]) -> dict[str, Any]:
    positions = []
    for vehicle_id in vehicle_ids:
        vehicle = server.registry.vehicle(vehicle_id)
        unique_ids = (u.unique_id for u in vehicle.units) if vehicle else ()
        newest = server.cache.vehicle(unique_ids, vehicle_id)
        if newest is not None:
            positions.append(views.position(newest) | {"vehicle_id": vehicle_id})
    return {"type": "snapshot", "positions": positions, "cursor": server.hub.cursor}


def _allowed(
    server: Server, principal: Principal, wanted: frozenset[str] | None
) -> frozenset[str] | None:
    """The vehicles this principal may watch of those wanted (None: all, unrestricted)."""
    if principal.role in ("admin", "servicing"):
        return wanted
    candidates = wanted if wanted is not None else frozenset(server.registry.vehicle_ids())
    return frozenset(
        v
        for v in candidates
        if (vehicle := server.registry.vehicle(v)) and server.access.may_track(principal, vehicle)
    )


async def serve_live(server: Server, websocket: WebSocket) -> None:
    peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    token = websocket.query_params.get("share")
    if token:
        share = await server.store.share_by_hash(hash_secret(token))
        if share is None:
            await _refuse(websocket, 404, "no such share link", CLOSE_GONE)
            return
        if (why := server.access.share_state(share)) is not None:
            await _refuse(websocket, 410, f"this share link is {why}", CLOSE_GONE)
            return
        creator = await server.access.share_creator(share)
        if (why := _share_closed(server, share, creator)) is not None:
            await _refuse(websocket, 410, f"this share link is suspended: {why}", CLOSE_GONE)
            return
        await websocket.accept()
        await server.access.audit(f"share:{share.id}", "share.live", share.vehicle_id, peer)
        await _stream(
            server, websocket, frozenset({share.vehicle_id}), None, share=share, principal=creator
        )
        return

    header = websocket.headers.get("authorization", "")
    key = header.partition(" ")[2].strip() if header.lower().startswith("bearer ") else ""
    key = key or websocket.query_params.get("token", "")
    principal = await server.access.principal(key) if key else None
    if principal is None:
        detail = "send a valid API key as 'Authorization: Bearer <key>' or ?token=<key>"
        await _refuse(websocket, 401, detail, CLOSE_BAD_KEY)
        return
    await websocket.accept()
    try:
        message = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError):
        return
    if message["type"] == "websocket.disconnect":
        return
    try:  # text or binary, as long as it is JSON
        request = orjson.loads(message.get("text") or message.get("bytes") or b"")
    except orjson.JSONDecodeError:
        request = None
    wanted = request.get("subscribe") if isinstance(request, dict) else None
    cursor = request.get("cursor") if isinstance(request, dict) else None
    if wanted == ALL:
        vehicle_ids: frozenset[str] | None = None
    elif isinstance(wanted, list) and all(isinstance(v, str) for v in wanted):
        vehicle_ids = frozenset(wanted)
    else:
        await _error(
            websocket,
            'send {"subscribe": ["vehicle-id", ...]} or {"subscribe": "*"}',
            CLOSE_BAD_REQUEST,
        )
        return
    allowed = _allowed(server, principal, vehicle_ids)
    if vehicle_ids is not None and allowed is not None and allowed != vehicle_ids:
        hidden = ", ".join(sorted(vehicle_ids - allowed))
        await _error(websocket, f"not allowed to watch: {hidden}", CLOSE_FORBIDDEN)
        return
    await server.access.audit(
        principal.actor,
        "live.subscribe",
        None,
        peer,
        # what it may watch: the vehicles, or "*" for every one (admin, servicing)
        vehicles=sorted(allowed) if allowed is not None else ALL,
    )
    await _stream(
        server,
        websocket,
        allowed,
        cursor if isinstance(cursor, str) else None,
        principal=principal,
        wanted=vehicle_ids,
        peer=peer,
    )


async def _error(websocket: WebSocket, detail: str, code: int) -> None:
    await websocket.send_text(orjson.dumps({"type": "error", "detail": detail}).decode())
    await websocket.close(code=code)


def _sink(websocket: WebSocket) -> Sink | None:
    """The connection's transport, for the hub to write frames to, when the
    server is uvicorn's websockets-sansio protocol: it hands the app its own
    bound ``receive``. None under any other server, or with an extension whose
    framing the hub does not write (the route then sends each message)."""
    protocol = getattr(websocket._receive, "__self__", None)
    if not isinstance(protocol, WebSocketsSansIOProtocol) or protocol.transport is None:
        return None
    bits = None
    for extension in protocol.conn.extensions:
        if not isinstance(extension, PerMessageDeflate):
            return None
        if not extension.local_no_context_takeover:  # else: uncompressed frames, also valid
            bits = extension.local_max_window_bits
    sock = protocol.transport.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
        # Unsent bytes beyond this wait in the transport, where the hub sees them: a
        # reader that stalls is then coalesced within a second, not after the
        # kernel has queued megabytes (seconds of stale positions) for it.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    return Sink(protocol.transport, bits)


async def _stream(
    server: Server,
    websocket: WebSocket,
    vehicle_ids: frozenset[str] | None,
    cursor: str | None,
    *,
    principal: Principal | None = None,
    wanted: frozenset[str] | None = None,
    share: Share | None = None,
    peer: str = "?",
) -> None:
    """``principal``: the key's, or for a ``share`` the principal of its creator."""
    hub = server.hub
    subscriber = hub.subscribe(vehicle_ids)
    reader = asyncio.create_task(_drain(websocket))
    tag = f"share:{share.id}" if share else f"key:{principal.key_id if principal else ''}"
    try:
        with server.kicks.watch(tag) as kicked:
            missed = hub.missed(cursor, vehicle_ids) if cursor else None
            if missed is None:
                ids = server.registry.vehicle_ids() if vehicle_ids is None else sorted(vehicle_ids)
                await websocket.send_text(orjson.dumps(_snapshot(server, ids)).decode())
            for message in missed or ():
                await websocket.send_text(message)
            sink = _sink(websocket)
            raw = sink is not None and hub.attach(subscriber, sink)
            while not reader.done():
                kick = asyncio.create_task(kicked.wait())
                waiting: list[asyncio.Task[Any]] = [reader, kick]
                if not raw:
                    waiting.append(batch := asyncio.create_task(subscriber.next_batch()))
                timeout = RECHECK_S
                if share is not None:  # close when it expires, not up to RECHECK_S later
                    left = (share.expires_at - server.clock()).total_seconds()
                    timeout = max(0.0, min(timeout, left))
                await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                kick.cancel()
                if not raw:
                    if not batch.done():
                        batch.cancel()
                    else:
                        for message in batch.result():
                            await websocket.send_text(message)
                if reader.done():
                    break
                if (code := _revoked(server, principal, share, server.clock())) is not None:
                    hub.unsubscribe(subscriber)  # no data frame after the close frame
                    await websocket.close(code=code)
                    break
                if share is None and principal is not None and not principal.can_write:
                    now_allowed = _allowed(server, principal, wanted)
                    if now_allowed != vehicle_ids:  # loan state or assignment changed
                        if added := sorted((now_allowed or set()) - (vehicle_ids or set())):
                            await server.access.audit(
                                principal.actor, "live.subscribe", None, peer, vehicles=added
                            )
                        vehicle_ids = now_allowed
                        hub.refilter(subscriber, vehicle_ids)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(subscriber)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


def _revoked(
    server: Server, principal: Principal | None, share: Share | None, now: datetime
) -> int | None:
    if share is not None:
        if share.id in server.revoked_shares or share.expires_at <= now:
            return CLOSE_GONE
        if _share_closed(server, share, principal) is not None:
            return CLOSE_GONE
    elif principal is not None and principal.key_id in server.access.revoked_keys:
        return CLOSE_BAD_KEY
    return None


def _share_closed(server: Server, share: Share, creator: Principal | None) -> str | None:
    """Why a valid share shows nothing now: its vehicle is gone, or its creator
    may no longer see the vehicle's positions. None while it may."""
    vehicle = server.registry.vehicle(share.vehicle_id)
    if vehicle is None:
        return "the shared vehicle no longer exists"
    return server.access.share_suspended(creator, vehicle)


async def _drain(websocket: WebSocket) -> None:
    """Read and ignore client messages until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
