"""Connections benchmark: many GT06 units connected at once, and the server's memory.

    python -m bench.connections [--connections 2000] [--hold 20]
                                [--position-every 10] [--heartbeat-every 20]

Issue 6: 50,000 units on one server process, each a heartbeat every 60 s and a
position every 30 s, in at most 1.5 GB RSS. The defaults keep ``make bench``
short (2,000 units, cadence compressed 3x); ``--position-every 30
--heartbeat-every 60 --hold 120`` is the issue's cadence.

The real server runs in a child process on a throwaway PostGIS (or
TRACKER_BENCH_DATABASE_URL). Client processes (``--per-client`` sockets each,
under the per-process open-file limit) log every registered unit in over its
own connection from 127.0.0.2-254, then keep them reporting at the cadence,
each at its own random phase. The server's RSS (``/proc/PID/status``) is read
empty (no unit registered), idle (units registered), with every unit logged
in, and at the end. Per connection: the growth over the idle server. Every
position must be acknowledged and stored, no connection lost: else exit 1.

Naive baseline, same run: thread per connection (socketserver, same codec,
replies at once, nothing stored), the classic blocking design.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import multiprocessing
import os
import random
import socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import protocols
from bench.report import Figure, print_table
from tracker import simulate as gt06  # frame builders and reply layout
from tracker.rlimit import raise_open_files
from tracker.settings import GatewaySettings, ProtocolSettings, Settings
from tracker.store.postgis import PostgisStore

FIRST_IMEI = 869_000_000_000_000
TARGET_CONNECTIONS = 50_000
TARGET_RSS_MIB = 1536.0  # 1.5 GB, read as GiB
CONNECTING_AT_ONCE = 64  # per client process: the listen backlog is ~100

REGISTER = "INSERT INTO vehicles (vehicle_id) SELECT 'conn-' || v FROM generate_series(0, $1 - 1) v"
REGISTER_UNITS = f"""
INSERT INTO units (unique_id, vehicle_id)
SELECT ({FIRST_IMEI} + v)::text, 'conn-' || v FROM generate_series(0, $1 - 1) v
"""


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of process ``pid`` in MiB."""
    lines = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(lines["VmRSS"].split()[0]) / 1024, int(lines["VmHWM"].split()[0]) / 1024


def _serve(url: str, ports: Any, stop: Any) -> None:
    """The real server, with the connection caps raised for one address range."""
    from tracker.server import Server

    raise_open_files()  # what ``tracker serve`` should do (see tracker/rlimit.py)

    async def main() -> None:
        settings = Settings(
            http_port=0,
            database_url=url,
            admin_key="bench",
            data_dir=Path(tempfile.gettempdir()) / "tracker-bench-connections",
            protocols=(ProtocolSettings("gt06", 0, host="127.0.0.1"),),
            gateway=GatewaySettings(max_connections=100_000, max_connections_per_ip=10_000),
        )
        server = Server(settings)
        await server.start()
        ports.put(server.ports["gt06"])
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(main())


class _NaiveHandler(socketserver.BaseRequestHandler):
    """One thread per connection: read, decode, answer at once; nothing stored."""

    def handle(self) -> None:
        codec = protocols.open("gt06")
        while data := self.request.recv(4096):
            for message in codec.feed(data):
                if message.reply is not None:
                    self.request.sendall(message.reply)


class _NaiveServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 100  # asyncio's default backlog, as the real server has


def _serve_naive(ports: Any, stop: Any) -> None:
    raise_open_files()
    with _NaiveServer(("127.0.0.1", 0), _NaiveHandler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.put(server.server_address[1])
        stop.wait()
        server.shutdown()


@dataclass
class Tally:
    """What one client process saw; summed over clients by the parent."""

    connected: int = 0
    failed: int = 0
    lost: int = 0  # closed by the server while it should have stayed open
    positions_sent: int = 0
    positions_acked: int = 0
    heartbeats_sent: int = 0
    heartbeats_acked: int = 0
    bad_replies: int = 0
    connect_started: float = math.inf  # monotonic, comparable across processes
    connect_done: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for f in fields(self):
            if f.type == "int":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.connect_started = min(self.connect_started, other.connect_started)
        self.connect_done = max(self.connect_done, other.connect_done)
        self.errors += other.errors[: 5 - len(self.errors)]


class UnitConnection(asyncio.Protocol):
    """One fake unit: logs in, then counts the acknowledgements of what it sends."""

    def __init__(self, imei: str, tally: Tally) -> None:
        self.imei = imei
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.logged_in = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.serial = 1
        self.fix = datetime.now(UTC)
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(gt06.gt06_login(self.imei, serial=self.serial))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= gt06.ACK_BYTES:
            frame, self.buffer = self.buffer[: gt06.ACK_BYTES], self.buffer[gt06.ACK_BYTES :]
            kind = frame[3] if frame[:2] == b"\x78\x78" else None
            if kind == gt06.LOGIN and not self.logged_in.done():
                self.logged_in.set_result(None)
            elif kind == gt06.LOCATION:
                self.tally.positions_acked += 1
            elif kind == gt06.HEARTBEAT:
                self.tally.heartbeats_acked += 1
            else:
                self.tally.bad_replies += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.logged_in.done():
            self.logged_in.set_exception(ConnectionError(f"{self.imei}: closed before login"))
        elif not self.closing:
            self.tally.lost += 1

    def send(self, position: tuple[float, float] | None) -> None:
        """A position at ``position`` (lat, lon), or a heartbeat when None."""
        assert self.transport is not None
        self.serial += 1
        if position is None:
            self.transport.write(gt06.gt06_heartbeat(self.serial))
            self.tally.heartbeats_sent += 1
            return
        # GT06 times are whole seconds: one second apart at least, or it is a duplicate
        self.fix = max(datetime.now(UTC).replace(microsecond=0), self.fix + timedelta(seconds=1))
        self.transport.write(gt06.gt06_location(self.fix, *position, serial=self.serial))
        self.tally.positions_sent += 1


async def _connect(port: int, numbers: range, tally: Tally) -> list[UnitConnection]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    units: list[UnitConnection] = []

    async def one(n: int) -> None:
        imei = str(FIRST_IMEI + n)
        # many loopback source addresses: ephemeral ports and per-address caps
        local = (f"127.0.0.{2 + n % 253}", 0)
        async with gate:
            try:
                _, unit = await loop.create_connection(
                    lambda: UnitConnection(imei, tally), "127.0.0.1", port, local_addr=local
                )
                await asyncio.wait_for(unit.logged_in, 60)
            except (OSError, TimeoutError) as exc:
                tally.failed += 1
                tally.errors += [f"{imei}: {exc!r}"] if len(tally.errors) < 5 else []
                return
        tally.connected += 1
        units.append(unit)

    tally.connect_started = time.monotonic()
    await asyncio.gather(*(one(n) for n in numbers))
    tally.connect_done = time.monotonic()
    return units


async def _hold(
    units: list[UnitConnection], hold_s: float, position_s: float, heartbeat_s: float
) -> None:
    """Send each unit's positions and heartbeats at the cadence, at random phases."""
    rng = random.Random(len(units))
    now = time.monotonic()
    due: list[tuple[float, int, bool]] = []  # (when, unit index, is_position)
    for i in range(len(units)):
        due.append((now + rng.uniform(0, position_s), i, True))
        due.append((now + rng.uniform(0, heartbeat_s), i, False))
    heapq.heapify(due)
    until = now + hold_s
    while due and due[0][0] < until:
        when, i, is_position = heapq.heappop(due)
        if (wait := when - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        unit = units[i]
        if unit.transport is None or unit.transport.is_closing():
            continue
        step = unit.serial * 1e-5  # a car creeping north: no filter drops it
        unit.send((-6.2 + i % 100 * 0.01 + step, 106.8 + i // 100 * 0.01) if is_position else None)
        heapq.heappush(due, (when + (position_s if is_position else heartbeat_s), i, is_position))


def _client(port: int, numbers: range, cadence: tuple[float, ...], sync: Any, out: Any) -> None:
    """One client process: connect its units, report, hold, report, close."""
    raise_open_files()

    async def main() -> None:
        tally = Tally()
        await asyncio.to_thread(sync["start"].wait)
        units = await _connect(port, numbers, tally)
        out.put(("connected", tally))
        await asyncio.to_thread(sync["go"].wait)
        await _hold(units, *cadence[:3])
        drain_by = time.monotonic() + 30
        while time.monotonic() < drain_by and (  # noqa: ASYNC110 (acks of many sockets)
            tally.positions_acked < tally.positions_sent
            or tally.heartbeats_acked < tally.heartbeats_sent
        ):
            await asyncio.sleep(0.05)
        out.put(("done", tally))
        await asyncio.to_thread(sync["close"].wait)
        for unit in units:
            unit.closing = True
            if unit.transport is not None:
                unit.transport.close()
        await asyncio.sleep(0.1)

    asyncio.run(main())


@dataclass
class Measured:
    """One server's memory (MiB) through the run, and what the clients saw."""

    base: float  # the server with no unit registered (naive: idle)
    idle: float
    connected: float
    end: float
    peak: float
    logins: Tally
    final: Tally

    def kib_per_unit(self, rss_mib: float) -> float:
        """Growth over the idle server, per connected unit."""
        return (rss_mib - self.idle) * 1024 / max(self.logins.connected, 1)

    def extrapolated(self, units: int) -> float:
        """RSS with ``units`` registered and connected: the growth over the empty
        server (registry, connections, unit state) taken as linear in units."""
        return self.base + (self.end - self.base) / max(self.final.connected, 1) * units

    @property
    def logins_per_s(self) -> float:
        t = self.logins
        return t.connected / max(t.connect_done - t.connect_started, 1e-9)


def _start(target: Any, args: tuple[Any, ...]) -> tuple[Any, Any, int]:
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=target, args=(*args, ports, stop))
    child.start()
    return child, stop, ports.get(timeout=120)


def measure(
    target: Any, args: tuple[Any, ...], options: argparse.Namespace, base: float | None = None
) -> Measured:
    """Start a server, connect every unit to it, hold them, read its RSS on the way."""
    ctx = multiprocessing.get_context("spawn")
    child, stop, port = _start(target, args)
    try:
        time.sleep(1.0)  # let start-up garbage settle
        idle, _ = rss(child.pid)
        sync = {name: ctx.Event() for name in ("start", "go", "close")}
        out = ctx.Queue()
        n, per = options.connections, options.per_client
        cadence = (options.hold, options.position_every, options.heartbeat_every)
        clients = [
            ctx.Process(target=_client, args=(port, range(k, min(n, k + per)), cadence, sync, out))
            for k in range(0, n, per)
        ]
        for client in clients:
            client.start()
        time.sleep(2.0)  # spawned clients import before they wait for "start"
        sync["start"].set()
        logins, final = Tally(), Tally()
        for _ in clients:
            logins.add(out.get(timeout=600)[1])
        time.sleep(1.0)
        connected, _ = rss(child.pid)
        sync["go"].set()
        for _ in clients:
            final.add(out.get(timeout=options.hold + 120)[1])
        end, peak = rss(child.pid)
        sync["close"].set()
        for client in clients:
            client.join(60)
        return Measured(idle if base is None else base, idle, connected, end, peak, logins, final)
    finally:
        stop.set()
        child.join(60)


async def _sql(url: str, units: int | None) -> int:
    """Register ``units`` (after the migrations), or with None count the positions."""
    if units is not None:
        store = PostgisStore(url)
        await store.open()  # the migrations
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        if units is None:
            count: int = await conn.fetchval("SELECT count(*) FROM positions")
            return count
        if units:
            await conn.execute(REGISTER, units)
            await conn.execute(REGISTER_UNITS, units)
        return units
    finally:
        await conn.close()


class BenchFailed(AssertionError):
    """A correctness check failed; the figures are still worth printing."""

    def __init__(self, problems: list[str], figures: list[Figure]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.figures = figures


def problems_of(name: str, m: Measured, connections: int, stored: int | None) -> list[str]:
    t = m.final
    missing = [
        (connections - t.connected, "units could not log in"),
        (t.lost, "connections closed by the server"),
        (t.positions_sent - t.positions_acked, "positions not acknowledged"),
        (t.heartbeats_sent - t.heartbeats_acked, "heartbeats not answered"),
        (t.bad_replies, "replies not understood"),
        (0 if stored is None else t.positions_acked - stored, "acked positions not stored"),
    ]
    return [f"{name}: {e}" for e in t.errors] + [
        f"{name}: {count} {what}" for count, what in missing if count > 0
    ]


def figures_of(ours: Measured, naive: Measured | None, hard: int) -> list[Figure]:
    def both(what: str, get: Callable[[Measured], float], unit: str, **kw: Any) -> Figure:
        return Figure(what, get(ours), unit, naive=get(naive) if naive else None, **kw)

    low: dict[str, Any] = {"higher_is_better": False}
    target = TARGET_CONNECTIONS
    # fmt: off
    return [
        both(f"units held by one process ({target:,} not reachable here: open-file hard limit"
             f" {hard:,})", lambda m: m.final.connected, "", target=target),
        both("server RSS, units registered, none connected", lambda m: m.idle, "MiB", **low),
        both("server RSS, all logged in", lambda m: m.connected, "MiB", **low),
        both("server RSS, end of the hold", lambda m: m.end, "MiB", **low),
        both("server peak RSS (VmHWM)", lambda m: m.peak, "MiB", **low),
        both("memory per connection, logged in", lambda m: m.kib_per_unit(m.connected), "KiB",
             **low),
        both("memory per connection + unit state, end", lambda m: m.kib_per_unit(m.end), "KiB",
             **low),
        both(f"RSS extrapolated to {target:,} units", lambda m: m.extrapolated(target), "MiB",
             target=TARGET_RSS_MIB, **low),
        both("logins/s (connect, login, ack)", lambda m: m.logins_per_s, "/s"),
        Figure("positions acknowledged", ours.final.positions_acked, "",
               target=ours.final.positions_sent),
    ]
    # fmt: on


def run(argv: list[str]) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds all units report")
    parser.add_argument("--position-every", type=float, default=10.0, help="seconds (issue: 30)")
    parser.add_argument("--heartbeat-every", type=float, default=20.0, help="seconds (issue: 60)")
    parser.add_argument("--per-client", type=int, default=5000, help="sockets per client process")
    parser.add_argument("--no-naive", action="store_true", help="skip the baseline server")
    options = parser.parse_args(argv)
    n = options.connections
    soft, hard = raise_open_files()

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench_connections")
        assert url is not None
        asyncio.run(_sql(url, 0))
        child, stop, _ = _start(_serve, (url,))
        time.sleep(1.0)
        empty, _ = rss(child.pid)  # before any unit is registered
        stop.set()
        child.join(60)
        asyncio.run(_sql(url, n))
        ours = measure(_serve, (url,), options, base=empty)
        stored = asyncio.run(_sql(url, None))
    finally:
        if pg is not None:
            pg.stop()
    naive = None if options.no_naive else measure(_serve_naive, (), options)

    speedup = 30 / options.position_every
    print(
        f"\nconnections benchmark: {n:,} GT06 units over {math.ceil(n / options.per_client)}"
        f" client processes, a position every {options.position_every:g} s and a heartbeat"
        f" every {options.heartbeat_every:g} s each (the issue's cadence compressed"
        f" {speedup:g}x) for {options.hold:g} s; server empty {empty:.0f} MiB; open files per"
        f" process: soft {soft:,}, hard {hard:,}, so {TARGET_CONNECTIONS:,} sockets cannot be"
        f" held by one process here: measured at {n:,}, extrapolated linearly. Naive: thread"
        f" per connection, same codec, nothing stored. {os.cpu_count()} cores shared."
    )
    t = ours.final
    print(f"positions {t.positions_sent:,} sent, {t.positions_acked:,} acked, {stored:,} stored;"
          f" heartbeats {t.heartbeats_sent:,} sent, {t.heartbeats_acked:,} answered;"
          f" connections lost {t.lost}, logins failed {t.failed}")  # fmt: skip

    figures = figures_of(ours, naive, hard)
    problems = problems_of("tracker", ours, n, stored)
    if naive is not None:
        for problem in problems_of("naive", naive, n, None):
            print(f"warning: {problem}")
    if problems:
        raise BenchFailed(problems, figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    try:
        figures = run(sys.argv[1:] if argv is None else argv)
    except BenchFailed as failed:
        print_table("connections", failed.figures)
        for problem in failed.problems:
            print(f"ERROR: {problem}")
        return 1
    print_table("connections", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
