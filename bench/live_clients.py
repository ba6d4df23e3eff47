"""Load for ``bench.live``: GT06 units at a paced rate, and websocket subscribers.

Each runs in a child process of its own, so that neither steals the other's
interpreter. Subscribers are mostly raw readers: a socket, a handshake by hand
(offering permessage-deflate, as browsers do), then only bytes counted, since
no Python client could parse 10 million messages a second; they answer the
server's pings so that long runs stay open. A few probes parse every frame
(inflating it when compressed) and JSON message, and note when each position
arrived; ``bench.live`` matches that against when the unit sent it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import select
import socket
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import orjson

from tracker.simulate import ACK_BYTES, Route, gt06_location, gt06_login

FIRST_IMEI = 869000000000000
SYNC_TAIL = b"\x00\x00\xff\xff"
PING = b"\x89\x04"  # uvicorn's keepalive ping: 4 random bytes that the pong must echo
FRAME_STARTS = (0x81, 0xC1, 0x88)  # what may follow a ping: a text frame, or the close
OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"  # as browsers


def imei(n: int) -> str:
    return str(FIRST_IMEI + n)


# ---- units ---------------------------------------------------------------------------------


class _Acks(asyncio.Protocol):
    """A unit's connection: counts acknowledgements and notes when each came."""

    def __init__(self) -> None:
        self.received = 0
        self.acked_at: list[float] = []  # the login's first
        self.got_login = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        now = time.monotonic()
        while len(self.acked_at) < self.received // ACK_BYTES:
            self.acked_at.append(now)
        self.got_login.set()


def units(
    port: int, count: int, rate: float, seconds: float, base: datetime, conn: Connection
) -> None:
    """Child process: ``count`` units log in, then send ``rate`` fixes a second
    in all, round robin, for ``seconds``. Unit n's k-th fix is at ``base + k s``.
    Sends back when each fix was sent and when each acknowledgement came."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        links: list[tuple[asyncio.Transport, _Acks]] = []
        for n in range(count):  # units come from many addresses (per-address cap)
            source = f"127.0.0.{2 + n % 253}"
            transport, acks = await loop.create_connection(
                _Acks, "127.0.0.1", port, local_addr=(source, 0)
            )
            transport.write(gt06_login(imei(n)))
            links.append((transport, acks))
        for _, acks in links:
            await asyncio.wait_for(acks.got_login.wait(), 30)
        per_unit = int(rate * seconds / count) + 1
        frames = [_drive(n, per_unit, base) for n in range(count)]
        sent_at: list[list[float]] = [[] for _ in range(count)]
        conn.send("ready")
        await loop.run_in_executor(None, conn.recv)  # "go"
        started, cpu_started = time.monotonic(), time.process_time()
        sent = 0
        total = min(int(rate * seconds), per_unit * count)
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                n, k = sent % count, sent // count
                sent_at[n].append(time.monotonic())
                links[n][0].write(frames[n][k])
                sent += 1
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - started
        for _ in range(200):  # up to 10 s for the last acks
            pairs = zip(links, sent_at, strict=True)
            if all(a.received // ACK_BYTES - 1 >= len(t) for (_, a), t in pairs):
                break
            await asyncio.sleep(0.05)
        acked_at = [a.acked_at[1:] for _, a in links]  # the login's ack first
        for transport, _ in links:
            transport.close()
        cpu_s = time.process_time() - cpu_started
        conn.send(
            {
                "sent_at": sent_at,
                "acked_at": acked_at,
                "seconds": elapsed,
                "started": started,
                "cpu_s": cpu_s,
            }
        )

    asyncio.run(main())


def _drive(n: int, fixes: int, base: datetime) -> list[bytes]:
    """Unit n's fixes: a car circling somewhere in a city, so that messages
    differ as real ones do (and compress no better)."""
    rng = random.Random(n)
    route = Route(-6.2 + rng.uniform(-0.2, 0.2), 106.8 + rng.uniform(-0.2, 0.2), seed=n)
    frames = []
    for k in range(fixes):
        lat, lon, course = route.next()
        speed = rng.randrange(20, 90)
        fix_time = base + timedelta(seconds=k)
        frames.append(
            gt06_location(fix_time, lat, lon, serial=k + 2, speed_kmh=speed, course_deg=course)
        )
    return frames


# ---- subscribers ---------------------------------------------------------------------------


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame: always masked (RFC 6455 5.3)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


def _handshake(port: int, token: str, deflate: bool) -> tuple[socket.socket, int | None, bytes]:
    """Connect, upgrade, subscribe to everything; returns the socket, the
    server's deflate window (None: plain frames) and bytes already read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/v1/live?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\n{OFFER if deflate else ''}\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if " 101 " not in lines[0]:
        raise ConnectionError(f"no upgrade: {lines[0]}")
    bits = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions" and "permessage-deflate" in value:
            bits = 15
            for param in value.split(";"):
                key_, _, number = param.strip().partition("=")
                if key_ == "server_max_window_bits" and number:
                    bits = int(number)
    sock.sendall(_masked(0x1, b'{"subscribe": "*"}'))
    return sock, bits, rest


@dataclass
class Probe:
    """Parses every frame and message; notes when each position arrived."""

    sock: socket.socket
    bits: int | None
    buffer: bytearray = field(default_factory=bytearray)
    positions: list[tuple[str, str, bool, float, str]] = field(default_factory=list)
    others: int = 0
    received: int = 0
    errors: list[str] = field(default_factory=list)
    decoder: Any = None

    def __post_init__(self) -> None:
        if self.bits is not None:
            self.decoder = zlib.decompressobj(wbits=-self.bits)

    def feed(self, data: bytes, now: float) -> None:
        self.received += len(data)
        buf = self.buffer
        buf += data
        i, n = 0, len(buf)
        while n - i >= 2:
            first, size, head = buf[i], buf[i + 1] & 0x7F, 2
            if size == 126:
                size, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif size == 127:
                size, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + size:
                break
            payload = bytes(buf[i + head : i + head + size])
            i += head + size
            opcode = first & 0x0F
            if opcode == 0x9:
                self.sock.sendall(_masked(0xA, payload))
            elif opcode == 0x8:
                self.errors.append(f"closed by the server: {payload[:2].hex()}")
            elif opcode == 0x1:
                if first & 0x40:
                    payload = self.decoder.decompress(payload + SYNC_TAIL)
                message = orjson.loads(payload)
                if message.get("type") == "position":
                    self.positions.append(
                        (
                            message["unique_id"],
                            message["fix_time"],
                            message["latest"],
                            now,
                            message["server_time"],
                        )
                    )
                else:
                    self.others += 1
        del buf[:i]


@dataclass
class Reader:
    """Counts bytes; answers what looks like a ping (a stray pong is ignored)."""

    sock: socket.socket
    received: int = 0
    tail: bytes = b""  # the end of the last chunk: a ping may straddle two

    def feed(self, view: bytearray, n: int) -> None:
        self.received += n
        if self.tail:
            joined = self.tail + bytes(view[:7])
            self._pings(joined, len(joined), len(self.tail))
        self._pings(view, n, n)
        self.tail = bytes(view[max(0, n - 6) : n])

    def _pings(self, data: bytes | bytearray, n: int, starts_before: int) -> None:
        i = data.find(PING, 0, n)
        while 0 <= i < starts_before:
            end = i + 6
            if end <= n and (end == n or data[end] in FRAME_STARTS):
                self.sock.sendall(_masked(0xA, bytes(data[i + 2 : end])))
            i = data.find(PING, i + 1, n)


def _first_frame(sock: socket.socket, rest: bytes) -> tuple[bytes, bytes]:
    """The snapshot frame (whole) and what came after it."""
    data = rest
    while True:
        if len(data) >= 2:
            size, head = data[1] & 0x7F, 2
            if size == 126 and len(data) >= 4:
                size, head = int.from_bytes(data[2:4], "big"), 4
            elif size == 127 and len(data) >= 10:
                size, head = int.from_bytes(data[2:10], "big"), 10
            if size < 126 and len(data) >= head + size:
                return data[: head + size], data[head + size :]
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed before the snapshot")
        data += chunk


def subscribers(
    port: int, token: str, raw: int, probes: int, deflate: bool, conn: Connection
) -> None:
    """Child process: ``raw`` readers and ``probes`` probes subscribe to every
    vehicle, report ready, then read until told to stop and the sockets are quiet."""
    readers: dict[int, Reader | Probe] = {}
    batch = 50
    for start in range(0, raw + probes, batch):
        opened = [
            _handshake(port, token, deflate) for _ in range(start, min(raw + probes, start + batch))
        ]
        for offset, (sock, bits, rest) in enumerate(opened):
            snapshot, rest = _first_frame(sock, rest)
            sock.setblocking(False)
            if start + offset < probes:
                probe = Probe(sock, bits)
                probe.feed(snapshot, time.monotonic())
                probe.received = 0  # counted from after the snapshot, as readers do
                probe.feed(rest, time.monotonic())
                readers[sock.fileno()] = probe
            else:
                reader = Reader(sock)
                if rest:
                    view = bytearray(rest)
                    reader.feed(view, len(view))
                readers[sock.fileno()] = reader
    poll = select.epoll()
    for fd in readers:
        poll.register(fd, select.EPOLLIN)
    poll.register(conn.fileno(), select.EPOLLIN)
    conn.send("ready")
    cpu_started = time.process_time()
    buffer = bytearray(1 << 20)
    stopping, quiet_since = False, 0.0
    closed: list[str] = []
    while True:
        events = poll.poll(0.1)
        now = time.monotonic()
        if not events and stopping and now - quiet_since > 0.5:
            break
        for fd, _ in events:
            if fd == conn.fileno():
                conn.recv()  # "stop": read on until nothing more comes
                stopping, quiet_since = True, now
                continue
            quiet_since = now
            client = readers[fd]
            try:
                n = client.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            if n == 0:
                poll.unregister(fd)
                closed.append(f"subscriber {fd} closed by the server")
                continue
            if isinstance(client, Probe):
                client.feed(bytes(buffer[:n]), now)
            else:
                client.feed(buffer, n)
    probe_list = [c for c in readers.values() if isinstance(c, Probe)]
    conn.send(
        {
            "client_bytes": sum(c.received for c in readers.values()),
            "clock_offset": time.time() - time.monotonic(),
            "cpu_s": time.process_time() - cpu_started,
            "positions": [p.positions for p in probe_list],
            "others": sum(p.others for p in probe_list),
            "errors": closed + [e for p in probe_list for e in p.errors],
        }
    )
    for client in readers.values():
        client.sock.close()
