"""Ingest benchmark: simulated GT06 units on loopback against a real PostGIS.

    python -m bench.ingest [--units 200] [--window 4] [--seconds 10]

Starts a throwaway PostGIS (or uses TRACKER_BENCH_DATABASE_URL), then runs the
server in a child process twice: once as built (group commit, COPY batches)
and once with a naive store (one INSERT and one commit per position, no
batching), the baseline. The load generator (this process) opens one TCP
connection per unit, logs in, and sends positions as fast as the
acknowledgements allow, with up to ``--window`` unacknowledged fixes per unit
(units send their buffer in bursts). It prints positions stored and
acknowledged per second, reply latency p50/p99, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracker.settings import ProtocolSettings, Settings
from tracker.simulate import ACK_BYTES, gt06_location, gt06_login
from tracker.store import StoredPosition
from tracker.store.postgis import PostgisStore, _create_partitions, _month

FIRST_IMEI = 868000000000000


class NaiveStore(PostgisStore):
    """The baseline: one INSERT, one transaction, one round trip per position."""

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        inserted = 0
        async with self._pool.acquire() as conn:
            months = {_month(r.fix_time) for r in rows} - self._partitions
            if months:
                async with conn.transaction():
                    await _create_partitions(conn, months)
                self._partitions |= months
            for r in rows:
                status = await conn.execute(
                    "INSERT INTO positions (unique_id, vehicle_id, protocol, fix_time,"
                    " server_time, lat, lon, geom, valid, speed_kmh, course_deg, altitude_m,"
                    " accuracy_m, satellites, attributes) VALUES ($1,$2,$3,$4,$5,$6,$7,"
                    " ST_SetSRID(ST_MakePoint($7,$6),4326),$8,$9,$10,$11,$12,$13,$14)"
                    " ON CONFLICT DO NOTHING",
                    r.unique_id, r.vehicle_id, r.protocol, r.fix_time, r.server_time, r.lat,
                    r.lon, r.valid, r.speed_kmh, r.course_deg, r.altitude_m, r.accuracy_m,
                    r.satellites, r.attributes,
                )  # fmt: skip
                inserted += int(status.rsplit(" ", 1)[-1])
        return inserted


def _serve(database_url: str, naive: bool, ports: Any, stop: Any) -> None:
    """Child process: the real server, optionally on the naive store."""
    from tracker.server import Server

    async def main() -> None:
        settings = Settings(
            http_port=0,
            database_url=database_url,
            admin_key="bench",
            data_dir=Path("/tmp/tracker-bench"),
            protocols=(ProtocolSettings("gt06", 0, host="127.0.0.1"),),
            batch_max_rows=1 if naive else 5000,
            batch_max_delay_ms=0 if naive else 5,
        )
        server = Server(settings, store=NaiveStore(database_url) if naive else None)
        await server.start()
        ports.put(server.ports)
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(main())


@dataclass
class Result:
    name: str
    acked: int
    stored: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.acked / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[int(q) - 1]


async def _unit(port: int, imei: str, window: int, until: float, lat: list[float]) -> int:
    # units come from many addresses in real life: spread them over 127.0.0.2-254
    # (loopback only), which also keeps each under the per-address connection cap
    source = f"127.0.0.{2 + int(imei) % 253}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(gt06_login(imei))
    await reader.readexactly(ACK_BYTES)
    sent_at: list[float] = []
    acked = 0
    serial = 2
    fix_time = datetime(2026, 11, 1, tzinfo=UTC)
    base_lat = 10 + (int(imei) % 1000) / 1000

    caught_up = asyncio.Event()

    async def receive() -> None:
        nonlocal acked
        while True:
            await reader.readexactly(ACK_BYTES)
            lat.append((time.perf_counter() - sent_at[acked]) * 1000)
            acked += 1
            if acked == len(sent_at):
                caught_up.set()

    receiver = asyncio.create_task(receive())
    try:
        while time.monotonic() < until:
            while len(sent_at) - acked < window:
                fix_time += timedelta(seconds=1)
                frame = gt06_location(
                    fix_time, base_lat + serial * 1e-5, 20.0, serial=serial, speed_kmh=50
                )
                sent_at.append(time.perf_counter())
                writer.write(frame)
                serial += 1
            await asyncio.sleep(0)
            if len(sent_at) - acked >= window:
                await asyncio.sleep(0.001)
        if acked < len(sent_at):
            caught_up.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up.wait(), 5)
    finally:
        receiver.cancel()
        writer.close()
    return acked


async def _register(database_url: str, units: int) -> None:
    store = PostgisStore(database_url)
    await store.open()
    from tracker.store import Unit

    for n in range(units):
        imei = str(FIRST_IMEI + n)
        await store.put_vehicle(
            f"bench-{n}", plate=None, vin=None, loan_ref=None, units=[Unit(imei, f"bench-{n}")]
        )
    await store.close()


async def _count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM positions")
        await conn.execute("TRUNCATE positions")
        return count
    finally:
        await conn.close()


async def _load(
    port: int, units: int, window: int, seconds: float
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    started = time.monotonic()
    acked = await asyncio.gather(
        *(
            _unit(port, str(FIRST_IMEI + n), window, started + seconds, latencies)
            for n in range(units)
        )
    )
    return sum(acked), time.monotonic() - started, latencies


def run_one(name: str, database_url: str, naive: bool, args: argparse.Namespace) -> Result:
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve, args=(database_url, naive, ports, stop))
    child.start()
    try:
        port = ports.get(timeout=60)["gt06"]
        acked, seconds, latencies = asyncio.run(_load(port, args.units, args.window, args.seconds))
    finally:
        stop.set()
        child.join(30)
    stored = asyncio.run(_count(database_url))
    return Result(name, acked, stored, seconds, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--window", type=int, default=4, help="unacknowledged fixes per unit")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench")
        assert url is not None
        asyncio.run(_register(url, args.units))
        results = [
            run_one("naive: INSERT + commit per position", url, True, args),
            run_one("tracker: group commit, COPY batches", url, False, args),
        ]
    finally:
        if pg is not None:
            pg.stop()

    print(
        f"\ningest benchmark: {args.units} GT06 units, window {args.window}, "
        f"{args.seconds:.0f} s each, PostGIS on this machine ({os.cpu_count()} cores)\n"
    )
    header = f"{'store':<40} {'acked/s':>10} {'stored':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<40} {r.rate:>10,.0f} {r.stored:>9,} "
            f"{r.percentile(50):>8.1f} {r.percentile(99):>8.1f}"
        )
    naive, ours = results
    print(
        f"\nratio tracker/naive: {ours.rate / max(naive.rate, 1e-9):.1f}x   "
        f"target for issue 2: >= 10,000 positions/s stored and acknowledged"
    )
    for r in results:
        if r.stored < r.acked:
            print(f"ERROR: {r.name}: {r.acked - r.stored} acknowledged positions not stored")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
