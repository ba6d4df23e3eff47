"""The live websocket on the hub's own frames: real clients (with and without
permessage-deflate, filtered or not) read every position in order while units
stream, and a kick still closes the socket cleanly mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tracker.server import Server
from tracker.simulate import gt06_location, gt06_login

from .conftest import ADMIN_KEY
from .test_position_path import register, unit_connection

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
IMEIS = {"veh-1": "860000000000011", "veh-2": "860000000000012"}
FIXES = 150  # per unit


@contextlib.asynccontextmanager
async def subscribed(
    server: Server, subscribe: Any, compression: str | None = "deflate"
) -> AsyncIterator[ClientConnection]:
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?token={ADMIN_KEY}"
    async with connect(url, compression=compression) as ws:
        await ws.send(orjson.dumps({"subscribe": subscribe}).decode())
        snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert snapshot["type"] == "snapshot"
        yield ws


async def drive(server: Server, imei: str, fixes: int, *, start: int = 0) -> None:
    """One unit sends its fixes without waiting for each ack (as GT06 units may)."""
    async with unit_connection(server) as unit:
        await unit.send(gt06_login(imei))
        for n in range(start, start + fixes):
            fix_time = T0 + timedelta(seconds=n)
            unit.writer.write(gt06_location(fix_time, -6.2 + n * 1e-5, 106.8, serial=n + 2))
        await unit.writer.drain()
        for _ in range(fixes):
            await asyncio.wait_for(unit.reader.readexactly(10), 10)


async def positions(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message["type"] == "position", message
        got.append(message)
    return got


async def read_until_closed(ws: ClientConnection) -> None:
    """Positions may still arrive before the close frame; never after it."""
    while True:
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 2))["type"] == "position"


async def test_every_client_reads_every_position_in_order(
    server: Server, api: httpx.AsyncClient
) -> None:
    for vehicle_id, imei in IMEIS.items():
        await register(api, vehicle_id, imei)
    async with (
        subscribed(server, "*") as deflated,
        subscribed(server, "*", compression=None) as plain,
        subscribed(server, ["veh-2"]) as filtered,
    ):
        await asyncio.gather(*(drive(server, imei, FIXES) for imei in IMEIS.values()))
        everything = await positions(deflated, 2 * FIXES)
        assert await positions(plain, 2 * FIXES) == everything
        only = await positions(filtered, FIXES)
        assert {m["vehicle_id"] for m in only} == {"veh-2"}
        assert only == [m for m in everything if m["vehicle_id"] == "veh-2"]
        for vehicle_id in IMEIS:
            times = [m["fix_time"] for m in everything if m["vehicle_id"] == vehicle_id]
            assert times == sorted(times)
            assert len(set(times)) == FIXES
        cursors = [int(m["cursor"].rpartition("-")[2]) for m in everything]
        assert cursors == sorted(cursors)
        assert all(m["latest"] for m in everything)
        # written by the hub itself (one buffer per tick), not message by message
        assert server.hub.stats["live.sent_bytes"] > 0
        assert server.hub.stats["live.coalesced"] == 0


async def test_kick_closes_a_streaming_share_socket(server: Server, api: httpx.AsyncClient) -> None:
    await register(api, "veh-1", IMEIS["veh-1"])
    await drive(server, IMEIS["veh-1"], 1)  # a position to share
    share = (await api.post("/api/v1/shares", json={"vehicle_id": "veh-1"})).json()
    url = f"ws://127.0.0.1:{server.ports['http']}/api/v1/live?share={share['token']}"
    async with connect(url) as ws:
        snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert [p["vehicle_id"] for p in snapshot["positions"]] == ["veh-1"]
        await drive(server, IMEIS["veh-1"], 20, start=1)
        assert len(await positions(ws, 20)) == 20
        streaming = asyncio.create_task(drive(server, IMEIS["veh-1"], 50, start=21))
        revoked = await api.delete(f"/api/v1/shares/{share['id']}")
        assert revoked.status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4410
        await streaming
    assert server.hub.subscriber_count == 0


class StalledClient:
    """A websocket client (the ``websockets`` sans-I/O protocol) on a socket
    with a small fixed receive buffer, that reads only when told to: the
    kernel then holds little for it, and the server sees it stall."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)  # no autotuning
        self.sock.setblocking(False)
        self.port = port
        self.protocol = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:{port}/api/v1/live?token={ADMIN_KEY}")
        )

    async def open(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, ("127.0.0.1", self.port))
        self.protocol.send_request(self.protocol.connect())
        while self.protocol.state is not State.OPEN:
            await self.read(0, quiet_s=5)
        self.protocol.send_text(b'{"subscribe": "*"}')
        [snapshot] = await self.read(1, quiet_s=5)
        return snapshot

    async def read(self, count: int | None, quiet_s: float) -> list[dict[str, Any]]:
        """Messages until ``count`` came (0: after one read), or none came for ``quiet_s``."""
        loop = asyncio.get_running_loop()
        got: list[dict[str, Any]] = []
        while True:
            for data in self.protocol.data_to_send():  # the request, the subscription, pongs
                await loop.sock_sendall(self.sock, data)
            if count is not None and got and len(got) >= count:
                return got
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65_536), quiet_s)
            except TimeoutError:
                return got
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    got.append(orjson.loads(event.data))
            if count == 0:
                return got


async def test_a_stalled_subscriber_is_coalesced_then_catches_up(
    server: Server, api: httpx.AsyncClient
) -> None:
    fleet = {f"car-{n}": f"86000000000{n:04d}" for n in range(10)}
    for vehicle_id, imei in fleet.items():
        await register(api, vehicle_id, imei)
    server.hub.high_water, server.hub.low_water = 32_768, 8_192  # behind sooner
    slow = StalledClient(server.ports["http"])
    try:
        assert (await slow.open())["type"] == "snapshot"
        for start in range(0, 200, 25):  # 0.9 MB of plain frames, over several ticks
            await asyncio.gather(*(drive(server, i, 25, start=start) for i in fleet.values()))
            await asyncio.sleep(3 * server.hub.tick_s)  # delivered (or kept) by now
        assert server.hub.stats["live.fell_behind"] >= 1
        got = await slow.read(None, quiet_s=1)  # reads again: catches up
    finally:
        slow.sock.close()
    coalesced = server.hub.stats["live.coalesced"]
    assert coalesced > 0
    assert len(got) + coalesced == 10 * 200  # every position sent or counted
    for vehicle_id in fleet:
        times = [m["fix_time"] for m in got if m["vehicle_id"] == vehicle_id]
        assert times == sorted(set(times))  # in order, no repeats
        assert times[-1] == "2026-11-29T10:03:19Z"  # and the newest always arrives
