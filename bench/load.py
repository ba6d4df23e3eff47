"""A load generator that speaks the units' own protocols: GT06, JT/T 808, Teltonika.

Each simulated unit is one ``asyncio.Protocol`` connection (no stream objects,
no task per unit), so that the generator spends little of the two cores the
server and PostgreSQL also need. A unit logs in where its protocol wants it
(GT06 login, Teltonika IMEI), then sends its fixes in bursts, with at most
``window`` unacknowledged (units send their buffer after a gap in coverage,
JT/T 808 and Teltonika batch by design). It counts acknowledgements straight
from the reply bytes: GT06 acks are 10 bytes each, a Teltonika ack is the
4-byte count of records it covers, and every JT/T 808 general reply is one
7E...7E frame. A burst's latency runs from its write to the ack of its last fix.

With ``rate`` the units are paced (each sends a burst every ``burst / rate_per
_unit`` seconds) instead of going as fast as the acks allow.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from protocols.binary import crc16_ibm, xor_checksum
from tracker.simulate import gt06_location, gt06_login

PROTOCOLS = ("gt06", "jt808", "teltonika")
START = datetime(2026, 11, 1, tzinfo=UTC)
GMT8 = timedelta(hours=8)


def _bcd(digits: str) -> bytes:
    return bytes.fromhex(digits)


def jt808_location(phone: str, serial: int, fix_time: datetime, lat: float, lon: float) -> bytes:
    """A JT/T 808-2013 0x0200 location report, escaped and framed."""
    local = fix_time.astimezone(UTC) + GMT8  # BCD time is GMT+8
    status = 0x02 | (0x04 if lat < 0 else 0) | (0x08 if lon < 0 else 0)  # fixed, S, W
    body = struct.pack(
        ">IIIIHHH", 0, status, round(abs(lat) * 1e6), round(abs(lon) * 1e6), 120, 500, 90
    ) + _bcd(local.strftime("%y%m%d%H%M%S"))
    header = struct.pack(">HH", 0x0200, len(body)) + _bcd(phone) + struct.pack(">H", serial)
    payload = header + body
    payload += bytes([xor_checksum(payload)])
    return b"\x7e" + payload.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02") + b"\x7e"


def teltonika_login(imei: str) -> bytes:
    return struct.pack(">H", len(imei)) + imei.encode()


def teltonika_packet(fixes: list[tuple[datetime, float, float]]) -> bytes:
    """One Codec 8 AVL packet with a record per fix (no IO elements)."""
    records = b"".join(
        struct.pack(
            ">QBiiHHBH",
            int(t.timestamp() * 1000),
            0,
            round(lon * 1e7),
            round(lat * 1e7),
            120,
            90,
            9,
            50,
        )
        + b"\x00\x00\x00\x00\x00\x00"  # event id, total, N1, N2, N4, N8 counts
        for t, lat, lon in fixes
    )
    data = bytes([0x08, len(fixes)]) + records + bytes([len(fixes)])
    return struct.pack(">II", 0, len(data)) + data + struct.pack(">I", crc16_ibm(data))


class Unit:
    """What one simulated unit sends and how it reads its acks."""

    def __init__(self, protocol: str, number: int, lat: float, lon: float) -> None:
        self.protocol = protocol
        self.number = number
        self.unique_id = self.imei = str(868000000000000 + number)
        if protocol == "jt808":
            self.phone = f"{13800000000 + number:012d}"
            self.unique_id = self.phone.lstrip("0")
        self.lat, self.lon = lat, lon
        self.fix_time = START
        self.serial = 1

    @property
    def login(self) -> tuple[bytes, int]:
        """The login to send first and the length of its reply (0: none to wait for)."""
        if self.protocol == "gt06":
            return gt06_login(self.imei), 10
        if self.protocol == "teltonika":
            return teltonika_login(self.imei), 1
        return b"", 0

    def burst(self, count: int) -> bytes:
        fixes = []
        for _ in range(count):
            self.fix_time += timedelta(seconds=10)
            self.lat += 2e-5
            fixes.append((self.fix_time, self.lat, self.lon))
        if self.protocol == "teltonika":
            return teltonika_packet(fixes)
        out = []
        for t, lat, lon in fixes:
            self.serial = (self.serial + 1) & 0xFFFF
            if self.protocol == "gt06":
                out.append(gt06_location(t, lat, lon, serial=self.serial, speed_kmh=50))
            else:
                out.append(jt808_location(self.phone, self.serial, t, lat, lon))
        return b"".join(out)


class Acks:
    """Fixes acknowledged so far, read from the reply bytes of one protocol."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.count = 0
        self._pending = b""

    def feed(self, data: bytes) -> None:
        if self.protocol == "gt06":
            data = self._pending + data
            whole = len(data) // 10
            self.count += whole
            self._pending = data[whole * 10 :]
        elif self.protocol == "jt808":
            self.count += (data.count(b"\x7e") + len(self._pending)) // 2
            self._pending = b"\x7e" if (data.count(b"\x7e") + len(self._pending)) % 2 else b""
        else:
            data = self._pending + data
            whole = len(data) // 4
            for i in range(whole):
                self.count += int.from_bytes(data[i * 4 : i * 4 + 4])
            self._pending = data[whole * 4 :]


class Client(asyncio.Protocol):
    """One unit on one connection."""

    def __init__(self, unit: Unit, run: Run) -> None:
        self.unit = unit
        self.run = run
        self.acks = Acks(unit.protocol)
        self.sent = 0
        self.bursts: deque[tuple[int, float]] = deque()  # (fixes sent up to here, when)
        self.transport: asyncio.Transport | None = None
        self.login_reply = 0
        self.ready = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        login, self.login_reply = self.unit.login
        if login:
            transport.write(login)
        if not self.login_reply:
            self._logged_in()

    def _logged_in(self) -> None:
        self.ready = True
        self.run.ready(self)

    def data_received(self, data: bytes) -> None:
        if not self.ready:
            taken = min(self.login_reply, len(data))
            self.login_reply -= taken
            data = data[taken:]
            if self.login_reply:
                return
            self._logged_in()
        if data:
            self.acks.feed(data)
            now = time.perf_counter()
            while self.bursts and self.acks.count >= self.bursts[0][0]:
                self.run.latencies.append(now - self.bursts.popleft()[1])
            if self.run.rate is None:
                self.fill()

    def fill(self) -> None:
        """Unpaced: keep ``window`` fixes in flight, in bursts."""
        run = self.run
        while run.sending and self.sent - self.acks.count + run.burst <= run.window:
            self.send(run.burst)

    def send(self, count: int) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.transport.write(self.unit.burst(count))
        self.sent += count
        self.bursts.append((self.sent, time.perf_counter()))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Run:
    """One load run: connect every unit, send for ``seconds``, wait for the last acks."""

    def __init__(
        self, units: list[Unit], port: Callable[[str], int], *, window: int, burst: int,
        rate: float | None = None,
    ) -> None:  # fmt: skip
        self.units = units
        self.port = port
        self.window = max(window, burst)
        self.burst = burst
        self.rate = rate
        self.sending = False
        self.latencies: list[float] = []
        self.skipped = 0  # paced bursts not sent: the unit had a full window unacked
        self.clients: list[Client] = []
        self._ready = 0
        self._all_ready: asyncio.Future[None] | None = None

    def ready(self, client: Client) -> None:
        self._ready += 1
        if self._ready == len(self.units) and self._all_ready and not self._all_ready.done():
            self._all_ready.set_result(None)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._all_ready = loop.create_future()
        for n, unit in enumerate(self.units):
            # units come from many addresses: 127.0.0.2-254 (loopback only)
            source = f"127.0.0.{2 + n % 253}"
            _, client = await loop.create_connection(
                lambda unit=unit: Client(unit, self),  # type: ignore[misc]
                "127.0.0.1",
                self.port(unit.protocol),
                local_addr=(source, 0),
            )
            self.clients.append(client)
        await asyncio.wait_for(self._all_ready, 60)

    async def drive(self, seconds: float) -> tuple[int, int, int, float]:
        """Send for ``seconds``; return (fixes sent, fixes acked in the end, fixes acked
        within the ``seconds``, seconds taken). The rate is the acks within the time."""
        self.sending = True
        started = time.perf_counter()
        if self.rate is None:
            for client in self.clients:
                client.fill()
            await asyncio.sleep(seconds)
        else:
            await self._paced(started + seconds)
        self.sending = False
        elapsed = time.perf_counter() - started
        in_time = sum(c.acks.count for c in self.clients)
        for _ in range(500):  # the last acks, for up to 10 s
            if all(c.acks.count >= c.sent for c in self.clients):
                break
            await asyncio.sleep(0.02)
        sent, acked = sum(c.sent for c in self.clients), sum(c.acks.count for c in self.clients)
        return sent, acked, in_time, elapsed

    async def _paced(self, until: float) -> None:
        """Bursts at ``rate`` fixes/s in all, round robin over the units; a unit with
        ``window`` fixes unacked skips its turn (it would buffer them)."""
        assert self.rate is not None
        bursts_per_s = self.rate / self.burst
        owed = 0.0
        n = 0
        last = time.perf_counter()
        while (now := time.perf_counter()) < until:
            owed += (now - last) * bursts_per_s
            last = now
            while owed >= 1:
                client = self.clients[n % len(self.clients)]
                if client.sent - client.acks.count + self.burst <= self.window:
                    client.send(self.burst)
                else:
                    self.skipped += 1
                n += 1
                owed -= 1
            await asyncio.sleep(0.002)

    def close(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()
