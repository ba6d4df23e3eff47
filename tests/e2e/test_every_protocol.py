"""Every protocol through the real server: a captured packet on a real socket
is decoded, stored, and answered with the bytes the codec says.

For each protocol the first captured TCP position (from ../shared/vectors)
whose fix the filters keep is sent, after the protocol's captured login when
it needs one; the unit is registered under the id the codec reads from those
bytes. Teltonika is also sent as a UDP datagram.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import protocols
from protocols import Login, Position
from tracker.server import Server

pytestmark = pytest.mark.e2e

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
TCP = ["gt06", "jt808", "h02", "teltonika", "tk103", "queclink", "meitrack", "watch"]


def packets(name: str, transport: str = "tcp") -> list[bytes]:
    out = []
    for line in (VECTORS / f"{name}.jsonl").read_text().splitlines():
        vector = json.loads(line)
        if vector.get("transport", "tcp") != transport or "data" not in vector:
            continue
        data = vector["data"]
        out.append(bytes.fromhex(data) if vector["encoding"] == "hex" else data.encode())
    return out


def session_for(name: str) -> tuple[bytes, Position, list[bytes]]:
    """Bytes to send (one captured position, after a captured login where the
    protocol names the unit only at login), the position they decode to, and
    the replies the codec gives for them."""
    logins = [
        p for p in packets(name) if any(isinstance(m, Login) for m in protocols.open(name).feed(p))
    ]
    for packet in packets(name):
        for login in (b"", *logins[:1]):
            messages = protocols.open(name).feed(login + packet)
            fixes = [m for m in messages if isinstance(m, Position)]
            good = [p for p in fixes if p.valid and p.unique_id and (p.lat, p.lon) != (0, 0)]
            if good and good[0].fix_time < datetime.now(good[0].fix_time.tzinfo):
                return login + packet, good[0], [m.reply for m in messages if m.reply]
    raise AssertionError(f"no usable position among the {name} vectors")


@pytest.mark.parametrize("name", TCP)
async def test_a_captured_position_is_stored_and_answered(
    name: str, server: Server, api: httpx.AsyncClient
) -> None:
    data, fix, replies = session_for(name)
    assert fix.unique_id is not None
    response = await api.put(
        f"/api/v1/vehicles/car-{name}", json={"units": [{"unique_id": fix.unique_id}]}
    )
    assert response.status_code == 201, response.text
    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports[name])
    try:
        writer.write(data)
        expected = b"".join(replies)
        got = await asyncio.wait_for(reader.readexactly(len(expected)), 10)
        assert got == expected
        await assert_stored(api, f"car-{name}", fix)
    finally:
        writer.close()


async def assert_stored(api: httpx.AsyncClient, vehicle_id: str, fix: Position) -> None:
    window = {
        "from": (fix.fix_time - timedelta(seconds=1)).isoformat(),
        "to": (fix.fix_time + timedelta(seconds=1)).isoformat(),
    }
    for _ in range(100):  # protocols that send no reply: nothing to wait on but the store
        track: dict[str, Any] = (
            await api.get(f"/api/v1/vehicles/{vehicle_id}/track", params=window)
        ).json()
        if track["items"]:
            break
        await asyncio.sleep(0.05)
    assert len(track["items"]) >= 1, track
    stored = track["items"][0]
    assert stored["lat"] == pytest.approx(fix.lat, abs=1e-6)
    assert stored["lon"] == pytest.approx(fix.lon, abs=1e-6)
    assert stored["unique_id"] == fix.unique_id


async def test_teltonika_over_udp_is_answered_after_storing(
    server: Server, api: httpx.AsyncClient
) -> None:
    [datagram] = packets("teltonika", "udp")
    messages = protocols.open("teltonika", transport="udp").feed(datagram)
    fixes = [m for m in messages if isinstance(m, Position)]
    reply = messages[-1].reply
    assert fixes
    assert reply is not None
    await api.put("/api/v1/vehicles/udp-car", json={"units": [{"unique_id": fixes[0].unique_id}]})
    port = server.udp_ports["teltonika"]
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            answers.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(datagram)
        assert await asyncio.wait_for(answers.get(), 10) == reply
    finally:
        transport.close()
    await assert_stored(api, "udp-car", fixes[0])
