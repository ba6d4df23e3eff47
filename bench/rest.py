"""REST benchmark: last-known locations of random vehicles out of 100,000.

    python -m bench.rest [--vehicles 100000] [--seconds 5] [--connections 32] [--clients 2]

Starts a throwaway PostGIS (or uses TRACKER_BENCH_DATABASE_URL), registers
``--vehicles`` vehicles with one unit and one position each in bulk SQL
(``bench.fleet``), then runs the server in a child process twice and drives
``GET /api/v1/vehicles/{id}/location`` for random vehicles with a servicing
key, over HTTP/1.1 keep-alive on loopback:

- naive: the same route, answered by querying the database per request (the
  vehicle and its units, each unit's newest position by the positions primary
  key, its last-seen row), as the widely deployed Java server does. It is the
  real server with one bench-only FastAPI route put in front of the real one
  (and without ``LocationFastLane``): same path, same auth and audit, same
  JSON; only where the answer comes from differs.
- tracker: the server as built, answering from the latest-state cache.

The load generator is ``--clients`` processes of a minimal ``asyncio.Protocol``
client (an HTTP library costs more CPU per request than the server does),
``--connections`` keep-alive connections in all, each sending its next
request when the previous answer is complete (closed loop). Every answer must
be a 200 whose ``vehicle_id`` is the one asked for, and a sample is checked
against the position written for it: otherwise the run fails. It prints
requests/s and latency p50/p99 as the client sees it, after ``--warmup``, and
the server process's CPU time per request, which moves much less than
requests/s when other work shares the machine (for the naive run it leaves
out PostgreSQL's share). ``--profile out.txt`` records the tracker run with
py-spy (raw format).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request
from starlette.exceptions import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracker.api
from bench import fleet
from bench.report import Figure, WrongAnswers, print_table
from tracker import views
from tracker.api_location import LocationFastLane
from tracker.api_types import ORJSONResponse
from tracker.auth import Who, peer
from tracker.server import Server
from tracker.settings import Settings
from tracker.store import StoredPosition
from tracker.store.postgis_startup import POSITION_FIELDS

TARGET_RPS = 5_000
TARGET_P99_MS = 20.0
CHECK_EVERY = 16  # answers whose position is checked field by field


def _add_naive_route(app: Any, server: Any) -> None:
    """The baseline route, ahead of the real one on the same path."""
    store = server.store
    newest_sql = (
        f"SELECT {POSITION_FIELDS} FROM positions p WHERE p.unique_id = $1"
        " ORDER BY p.fix_time DESC LIMIT 1"
    )

    @app.get("/api/v1/vehicles/{vehicle_id}/location", include_in_schema=False)  # type: ignore[untyped-decorator]
    async def naive_location(vehicle_id: str, principal: Who, request: Request) -> Any:
        vehicle = await store.get_vehicle(vehicle_id)
        if vehicle is None:
            raise HTTPException(404, f"no vehicle {vehicle_id!r}")
        server.access.check(principal, vehicle, positions=True)
        await server.access.audit(principal.actor, "location.read", vehicle_id, peer(request))
        units = []
        async with store._pool.acquire() as conn:
            for unit in vehicle.units:
                row = await conn.fetchrow(newest_sql, unit.unique_id)
                seen = await conn.fetchval(
                    "SELECT last_seen FROM unit_seen WHERE unique_id = $1", unit.unique_id
                )
                units.append((unit, StoredPosition(*row) if row else None, seen))
        known = [row for _, row, _ in units if row is not None]
        if not known:
            raise HTTPException(404, f"vehicle {vehicle_id!r} has no known location yet")
        newest = max(known, key=lambda row: row.fix_time)
        return ORJSONResponse(views.location(vehicle_id, newest, units, server.clock()))

    app.router.routes.insert(0, app.router.routes.pop())
    # and none of the tracker's own shortcuts in front of it
    app.user_middleware = [m for m in app.user_middleware if m.cls is not LocationFastLane]


def _serve(url: str, naive: bool, ready: Any, stop: Any) -> None:
    """Child process: the real server, with the naive route in front when asked."""
    if naive:
        create_app = tracker.api.create_app

        def with_naive_route(server: Any) -> Any:
            app = create_app(server)
            _add_naive_route(app, server)
            return app

        tracker.api.create_app = with_naive_route

    async def main(data_dir: str) -> None:
        settings = Settings(
            http_port=0,
            database_url=url,
            admin_key="bench-admin",
            data_dir=Path(data_dir),
            protocols=(),
            retention_reindex_closed_months=False,  # no rebuild under the load
        )
        server = Server(settings)
        started = time.perf_counter()
        await server.start()
        ready.put((server.ports["http"], time.perf_counter() - started))
        await asyncio.to_thread(stop.wait)
        await server.stop()

    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as data_dir:
        asyncio.run(main(data_dir))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request, its whole answer, the next request."""

    def __init__(self, load: _Load) -> None:
        self.load = load
        self.buffer = bytearray()
        self.need = -1  # bytes of the answer in flight, once its head is read
        self.body_at = 0
        self.asked = 0
        self.sent_at = 0.0
        self.done = load.loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.asked = random.randrange(self.load.vehicles)
        self.sent_at = time.perf_counter()
        self.transport.write(self.load.request(self.asked))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower() + b"\r\n"
                at = head.find(b"\r\ncontent-length:")
                length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
                self.status = int(head[9:12])
                self.body_at = end + 4
                self.need = self.body_at + length
            if len(self.buffer) < self.need:
                return
            body = bytes(self.buffer[self.body_at : self.need])
            del self.buffer[: self.need]
            self.need = -1
            if not self.load.answered(self, body):
                self.transport.close()
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class _Load:
    port: int
    vehicles: int
    measure_from: float
    until: float
    loop: asyncio.AbstractEventLoop
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    errors: list[str] = field(default_factory=list)
    answers: int = 0

    def request(self, n: int) -> bytes:
        return (
            f"GET /api/v1/vehicles/{fleet.vehicle_id(n)}/location HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {fleet.API_KEY}\r\n\r\n"
        ).encode()

    def answered(self, conn: _Connection, body: bytes) -> bool:
        """Record one answer; False once the run is over."""
        now = time.perf_counter()
        self.answers += 1
        wanted = fleet.vehicle_id(conn.asked)
        if conn.status != 200 or wanted.encode() not in body:
            self.errors.append(f"{wanted}: HTTP {conn.status} {body[:200]!r}")
        elif self.answers % CHECK_EVERY == 0:
            got = orjson.loads(body)
            lat, lon = fleet.expected_lat(conn.asked), fleet.expected_lon(conn.asked)
            if got["vehicle_id"] != wanted or abs(got["lat"] - lat) + abs(got["lon"] - lon) > 1e-6:
                self.errors.append(f"{wanted}: wrong answer {got}")
        if conn.sent_at >= self.measure_from:
            self.latencies_ms.append((now - conn.sent_at) * 1000)
        return now < self.until


def _client(port: int, vehicles: int, connections: int, start: float, warmup: float,
            seconds: float, results: Any) -> None:  # fmt: skip
    """Child process: ``connections`` keep-alive connections until ``start + warmup + seconds``."""

    async def main() -> _Load:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start - time.time()))
        now = time.perf_counter()
        load = _Load(port, vehicles, now + warmup, now + warmup + seconds, loop)
        conns = []
        for _ in range(connections):
            _, conn = await loop.create_connection(lambda: _Connection(load), "127.0.0.1", port)
            conns.append(conn)
        await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), warmup + seconds + 30)
        return load

    cpu_s = time.process_time()
    load = asyncio.run(main())
    cpu_s = time.process_time() - cpu_s
    lat, errors = load.latencies_ms, load.errors
    results.put((len(lat), lat.tobytes(), errors[:20], len(errors), cpu_s, load.answers))


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: list[str]
    error_count: int
    start_s: float
    cpu_s: float  # the server process's, while measured
    client_cpu_ms: float  # per answer, in the load generator

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.requests if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


def run_one(name: str, url: str, naive: bool, args: argparse.Namespace) -> Result:
    ctx = multiprocessing.get_context("spawn")
    ready, stop, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    server = ctx.Process(target=_serve, args=(url, naive, ready, stop))
    server.start()
    clients = []
    try:
        port, start_s = fleet.wait_ready(ready, server, 600)
        start = time.time() + 0.5  # every client process up before the load starts
        per_client = max(1, args.connections // args.clients)
        clients = [
            ctx.Process(
                target=_client,
                args=(port, args.vehicles, per_client, start, args.warmup, args.seconds, results),
            )
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        time.sleep(max(0.0, start + args.warmup - time.time()))
        profile = _profile(server.pid, args) if args.profile and not naive else None
        cpu_s = _cpu_seconds(server.pid)
        time.sleep(max(0.0, start + args.warmup + args.seconds - time.time()))
        cpu_s = _cpu_seconds(server.pid) - cpu_s
        outcomes = [results.get(timeout=120) for _ in clients]
        if profile is not None:
            profile.wait(60)
    finally:
        for client in clients:
            client.join(30)
        stop.set()
        server.join(60)
        if server.is_alive():
            server.kill()
    latencies: list[float] = []
    errors: list[str] = []
    client_cpu_ms = sum(o[4] for o in outcomes) * 1000 / max(1, sum(o[5] for o in outcomes))
    for _, raw, some_errors, *_ in outcomes:
        values = array("d")
        values.frombytes(raw)
        latencies += values
        errors += some_errors
    requests = sum(o[0] for o in outcomes)
    return Result(
        name,
        requests,
        args.seconds,
        latencies,
        errors,
        sum(o[3] for o in outcomes),
        start_s,
        cpu_s,
        client_cpu_ms,
    )


def _profile(pid: int | None, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """py-spy on the server for the measured seconds (``--profile out.txt``)."""
    spy = Path(sys.executable).with_name("py-spy")
    seconds = max(1, int(args.seconds))
    command = [str(spy), "record", "-p", str(pid), "-d", str(seconds), "-f", "raw"]
    return subprocess.Popen([*command, "-o", args.profile], stdout=subprocess.DEVNULL)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process so far; NaN where /proc is not there.

    The machine is shared: requests/s moves with what else runs, CPU time per
    request much less.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(argv: list[str]) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured, per server")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32, help="in all clients together")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--profile", help="py-spy raw output of the tracker run, to this file")
    args = parser.parse_args(argv)

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench_rest")
        assert url is not None
        populate_s = asyncio.run(fleet.populate(url, args.vehicles))
        naive = run_one("naive: database query per request", url, True, args)
        ours = run_one("tracker: latest-state cache", url, False, args)
    finally:
        if pg is not None:
            pg.stop()

    what = f"{args.vehicles:,} vehicles"
    figures = [
        Figure(f"location requests/s, {what}", ours.rate, "/s", TARGET_RPS, naive.rate),
        Figure("location latency p50", ours.percentile(50), "ms", None, naive.percentile(50),
               higher_is_better=False),
        Figure("location latency p99", ours.percentile(99), "ms", TARGET_P99_MS,
               naive.percentile(99), higher_is_better=False),
        Figure("server CPU per request", ours.cpu_ms_per_request, "ms", None,
               naive.cpu_ms_per_request, higher_is_better=False),
    ]  # fmt: skip
    print_table(
        f"REST last-known location: {what} (bulk SQL set-up {populate_s:.1f} s), "
        f"{args.connections} keep-alive connections from {args.clients} client processes, "
        f"{args.seconds:g} s each, PostGIS on this machine ({os.cpu_count()} cores)",
        figures,
    )
    for result in (naive, ours):
        print(
            f"{result.name}: {result.requests:,} answers, server start {result.start_s:.1f} s,"
            f" load generator CPU {result.client_cpu_ms:.3f} ms per answer"
        )
        for error in result.errors:
            print(f"ERROR: {result.name}: {error}")
        if result.error_count > len(result.errors):
            print(f"ERROR: {result.name}: {result.error_count - len(result.errors)} more")
        if result.requests == 0:
            print(f"ERROR: {result.name}: no answer at all")
    if any(r.error_count or not r.requests for r in (naive, ours)):
        raise WrongAnswers("some locations were wrong or missing (ERROR lines above)")
    return figures


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except WrongAnswers:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
