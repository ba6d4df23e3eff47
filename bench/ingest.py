"""Ingest benchmark: GT06, JT/T 808 and Teltonika units on loopback against a real PostGIS.

    python -m bench.ingest [--units 600] [--window 32] [--burst 8] [--seconds 10]
                           [--rate 20000] [--paced-seconds S] [--fences 10000]
                           [--naive-seconds 5] [--profile FILE]

Starts a throwaway PostGIS (or uses TRACKER_BENCH_DATABASE_URL), registers
``--units`` units (a third of each protocol) and ``--fences`` geofences over
the area they drive in, then runs the server in a child process, the way it
runs in production: every position filtered, stored, rule-checked against
the fences and published to a live websocket subscriber of all vehicles.

Three runs, each on a fresh server:

- naive: one INSERT and one commit per position (the widely deployed server's
  way), as fast as the acks allow, for ``--naive-seconds``;
- tracker, as fast as the acks allow: positions stored and acknowledged per
  second, and the server's memory at the start and the end of the run;
- tracker paced at ``--rate`` positions/s: acknowledgement latency p50/p99.

The load generator is ``bench.load`` (one ``asyncio.Protocol`` per unit, no
task per unit). Each run also reports the CPU time per position spent by the
server process, by PostgreSQL and by the generator: on two shared cores the
ceiling is roughly 2 s / (their sum), whatever else the machine is doing.
The two tracker runs also say, from the server's own histograms
(``bench.server_metrics``), how late its event loop ran and how long the
store took to commit a batch: where the ack latency went. The benchmark
fails if any acknowledged position is not in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live_reader import LiveReader
from bench.load import PROTOCOLS, Run, Unit
from bench.report import Figure, print_table
from bench.server_metrics import describe, scrape
from bench.stages import print_summary
from tracker.settings import GatewaySettings, ProtocolSettings, Settings
from tracker.store import GeofenceRecord, StoredPosition
from tracker.store import Unit as StoreUnit
from tracker.store.postgis import PostgisStore, _create_partitions, _month

AREA = (-4.5, 42.5, 8.0, 51.0)  # west, south, east, north: a country (France) to drive in
TICKS = os.sysconf("SC_CLK_TCK")


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


def _serve(
    database_url: str, naive: bool, writers: int, delay_ms: float, ports: Any, stop: Any
) -> None:
    """Child process: the real server, optionally on the naive store (one writer)."""
    from tracker.server import Server

    async def main() -> None:
        settings = Settings(
            http_port=0,
            database_url=database_url,
            admin_key="bench",
            data_dir=Path("/tmp/tracker-bench"),
            protocols=tuple(ProtocolSettings(name, 0, host="127.0.0.1") for name in PROTOCOLS),
            gateway=GatewaySettings(max_connections_per_ip=1000),
            batch_max_rows=1 if naive else 5000,
            batch_max_delay_ms=0 if naive else delay_ms,
            batch_writers=1 if naive else writers,
        )
        server = Server(settings, store=NaiveStore(database_url) if naive else None)
        await server.start()
        ports.put({**server.ports, "pid": os.getpid()})
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(main())


def _units(count: int) -> list[Unit]:
    west, south, east, north = AREA
    rng = np.random.default_rng(7)
    return [
        Unit(PROTOCOLS[n % len(PROTOCOLS)], n, rng.uniform(south, north), rng.uniform(west, east))
        for n in range(count)
    ]


def _fences(count: int) -> list[GeofenceRecord]:
    """Octagons of 100 m to 2 km radius over the area, a tenth of them risk sites."""
    west, south, east, north = AREA
    rng = np.random.default_rng(11)
    now = datetime.now(UTC)
    records = []
    for n in range(count):
        lon, lat = rng.uniform(west, east), rng.uniform(south, north)
        r = rng.uniform(100, 2_000) / 111_320
        ring = [
            [lon + r * math.cos(a) / math.cos(math.radians(lat)), lat + r * math.sin(a)]
            for a in (i * math.pi / 4 for i in range(8))
        ]
        category = "risk_site" if n % 10 == 0 else "custom"
        geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
        records.append(GeofenceRecord(f"f{n}", f"fence {n}", category, geometry, None, now))
    return records


async def _prepare(database_url: str, units: list[Unit], fences: int) -> None:
    store = PostgisStore(database_url)
    await store.open()
    try:
        for unit in units:
            vehicle = f"bench-{unit.number}"
            await store.put_vehicle(
                vehicle, plate=None, vin=None, loan_ref=None,
                units=[StoreUnit(unit.unique_id, vehicle)],
            )  # fmt: skip
        for record in _fences(fences):
            await store.put_geofence(record)
    finally:
        await store.close()


async def _wal(database_url: str) -> int:
    """Where the cluster's WAL ends, in bytes. (Not ``pg_stat_wal``: backends
    report to it once a second or so, and an idle one only after 10 s.)"""
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - '0/0'"))
    finally:
        await conn.close()


async def _count_and_clear(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM positions")
        await conn.execute("TRUNCATE positions")
        await conn.execute("DELETE FROM events")
        return count
    finally:
        await conn.close()


def _cpu_s(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _postgres_pids(pg_dir: Path | None) -> list[int]:
    """The cluster's postmaster and its children (backends, walwriter, ...)."""
    if pg_dir is None:
        return []
    pidfile = next(pg_dir.rglob("postmaster.pid"), None)
    if pidfile is None:
        return []
    master = int(pidfile.read_text().split()[0])
    children = [
        int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == master
    ]
    return [master, *children]


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def _py_spy(pid: int, seconds: float, path: str) -> asyncio.subprocess.Process:
    """py-spy (``pip install py-spy``) samples the server while the fast run lasts:
    a raw file of folded stacks, or an SVG flame graph when ``path`` ends in .svg."""
    spy = _py_spy_path()
    assert spy is not None  # checked with the arguments
    form = "flamegraph" if path.endswith(".svg") else "raw"
    return await asyncio.create_subprocess_exec(
        str(spy), "record", "-p", str(pid), "-d", str(max(1, int(seconds - 1))), "-r", "200",
        "-f", form, "-o", path, "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


@dataclass
class Result:
    name: str
    sent: int = 0
    acked: int = 0  # in the end, after the last acks came in
    acked_in_time: int = 0  # within the run's seconds: the rate
    stored: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_us: dict[str, float] = field(default_factory=dict)  # per acked position
    rss_mb: list[float] = field(default_factory=list)  # the server's, twice a second

    @property
    def rss_growth_mb(self) -> float:
        """Growth over the second half of the run: the first half fills the caches
        (latest state, rule state, the live replay window) and warms the allocator;
        after that a server that keeps up must hold steady."""
        if len(self.rss_mb) < 4:
            return math.nan
        return self.rss_mb[-1] - self.rss_mb[len(self.rss_mb) // 2]

    live_messages: int = 0
    skipped: int = 0
    server_metrics: str = ""  # the server's loop lag and commit time over the run
    wal_bytes: int = 0  # written by the whole cluster over the run

    @property
    def rate(self) -> float:
        return self.acked_in_time / self.seconds if self.seconds else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return math.nan
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]


async def _load(
    name: str, url: str, servers: list[dict[str, int]], units: list[Unit],
    args: argparse.Namespace, seconds: float, rate: float | None, pg_dir: Path | None,
) -> Result:  # fmt: skip
    """One run against ``servers`` (the ports of each server process): with more
    than one, each protocol's units are dealt out between them in turn, and each
    has its own live subscriber."""
    result = Result(name)
    dealt: Counter[str] = Counter()

    def port(protocol: str) -> int:
        dealt[protocol] += 1
        return servers[(dealt[protocol] - 1) % len(servers)][protocol]

    run = Run(units, port, window=args.window, burst=args.burst, rate=rate)
    lives = [LiveReader(ports["http"], "bench") for ports in servers]
    for live in lives:
        await live.connect()
    await run.connect()
    server_pid = servers[0]["pid"]
    server_pids = [ports["pid"] for ports in servers]
    spy = None
    if args.profile and rate is None and not name.startswith("naive"):
        spy = await _py_spy(server_pid, seconds, args.profile)
    pg = _postgres_pids(pg_dir)
    before = (_cpu_s(server_pids), _cpu_s(pg), resource.getrusage(resource.RUSAGE_SELF))

    async def sample_rss() -> None:
        while True:
            result.rss_mb.append(sum(_rss_mb(pid) for pid in server_pids))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    live_before = sum(live.messages for live in lives)
    histograms = await scrape(servers[0]["http"])
    wal_before = await _wal(url)
    result.sent, result.acked, result.acked_in_time, result.seconds = await run.drive(seconds)
    result.server_metrics = describe(histograms, await scrape(servers[0]["http"]))
    result.wal_bytes = await _wal(url) - wal_before
    result.live_messages = sum(live.messages for live in lives) - live_before
    after = (_cpu_s(server_pids), _cpu_s(_postgres_pids(pg_dir)), resource.getrusage(0))
    per = 1e6 / max(result.acked, 1)
    result.cpu_us = {
        "server": (after[0] - before[0]) * per,
        "postgres": (after[1] - before[1]) * per if pg else math.nan,
        "generator": (
            after[2].ru_utime + after[2].ru_stime - before[2].ru_utime - before[2].ru_stime
        ) * per,
    }  # fmt: skip
    sampler.cancel()
    result.latencies_ms = [s * 1000 for s in run.latencies]
    result.skipped = run.skipped
    run.close()
    for live in lives:
        live.close()
    if spy is not None:
        await spy.wait()
    return result


def run_one(
    name: str, url: str, naive: bool, units: list[Unit], args: argparse.Namespace,
    seconds: float, rate: float | None, pg_dir: Path | None,
) -> Result:  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    children = [
        ctx.Process(target=_serve, args=(url, naive, args.writers, args.delay_ms, ports, stop))
        for _ in range(1 if naive else args.servers)
    ]
    for child in children:
        child.start()
    try:
        found = [ports.get(timeout=120) for _ in children]
        result = asyncio.run(_load(name, url, found, units, args, seconds, rate, pg_dir))
    finally:
        stop.set()
        for child in children:
            child.join(60)
    result.stored = asyncio.run(_count_and_clear(url))
    return result


def run(argv: list[str]) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=600)
    parser.add_argument("--window", type=int, default=32, help="unacknowledged fixes per unit")
    parser.add_argument("--burst", type=int, default=8, help="fixes per write (per packet)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--naive-seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20_000, help="paced run, positions/s")
    parser.add_argument("--paced-seconds", type=float, help="default: --seconds")
    parser.add_argument("--fences", type=int, default=10_000)
    parser.add_argument(
        "--writers", type=int, default=Settings().batch_writers, help="store.batch_writers"
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=Settings().batch_max_delay_ms,
        help="store.batch_max_delay_ms",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="server processes, the units dealt out between them (an upper bound for a"
        " multi-process server: they share no state)",
    )
    parser.add_argument("--profile", metavar="FILE", help="py-spy the server's fast run into FILE")
    parser.add_argument(
        "--pg",
        metavar="SETTING=VALUE",
        action="append",
        default=[],
        help="a postgresql.conf line for the PostgreSQL the benchmark starts (repeatable), "
        "e.g. --pg wal_compression=lz4",
    )
    args = parser.parse_args(argv)
    if args.profile and _py_spy_path() is None:
        parser.error("--profile needs py-spy: pip install py-spy")
    settings = dict(setting.partition("=")[::2] for setting in args.pg)
    if any(not key or not value for key, value in settings.items()):
        parser.error("--pg takes SETTING=VALUE")

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    if url and settings:
        parser.error("--pg sets up the PostgreSQL the benchmark starts, not the one at "
                     "TRACKER_BENCH_DATABASE_URL")  # fmt: skip
    pg = None if url else PgServer(settings=settings)
    units = _units(args.units)
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench")
        assert url is not None
        pg_dir = pg.directory if pg is not None else None
        asyncio.run(_prepare(url, units, args.fences))
        naive = run_one("naive", url, True, units, args, args.naive_seconds, None, pg_dir)
        fast = run_one("tracker", url, False, _units(args.units), args, args.seconds, None, pg_dir)
        paced = run_one(
            "paced",
            url,
            False,
            _units(args.units),
            args,
            args.paced_seconds or args.seconds,
            args.rate,
            pg_dir,
        )
    finally:
        if pg is not None:
            pg.stop()

    print(
        f"\ningest: {args.units} units (GT06, JT/T 808, Teltonika), {args.fences:,} fences, "
        f"window {args.window}, bursts of {args.burst}, one live subscriber to all"
        f"{f' of each of {args.servers} server processes' if args.servers > 1 else ''}, "
        f"PostGIS on this machine ({os.cpu_count()} cores)\n"
    )
    print(f"{'run':<9} {'acked/s':>9} {'stored':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'live msgs':>9} {'us/pos server':>13} {'postgres':>9} {'generator':>9}")  # fmt: skip
    for r in (naive, fast, paced):
        print(
            f"{r.name:<9} {r.rate:>9,.0f} {r.stored:>9,} {r.percentile(50):>7.1f} "
            f"{r.percentile(99):>7.1f} {r.live_messages:>9,} {r.cpu_us['server']:>13.1f} "
            f"{r.cpu_us['postgres']:>9.1f} {r.cpu_us['generator']:>9.1f}"
        )
    errors = [f"{r.name}: {r.acked - r.stored} acknowledged positions not stored"
              for r in (naive, fast, paced) if r.stored < r.acked]  # fmt: skip
    if fast.rss_mb:
        print(
            f"server RSS during the fast run: {fast.rss_mb[0]:,.0f} MB at the start, "
            f"{fast.rss_mb[len(fast.rss_mb) // 2]:,.0f} MB half way, {fast.rss_mb[-1]:,.0f} MB "
            "at the end"
        )
    if args.profile and not args.profile.endswith(".svg"):
        print_summary(Path(args.profile), fast.cpu_us["server"])
    for r in (fast, paced):
        print(f"{r.name}: {r.server_metrics}{' (server 1)' if args.servers > 1 else ''}")
    for r in (fast, paced):
        per_position = r.wal_bytes / max(r.acked, 1)
        print(f"{r.name}: PostgreSQL wrote {per_position:,.0f} bytes of WAL a position")
    if paced.skipped:
        print(f"paced: {paced.skipped} bursts not sent (their unit had a full window unacked)")
    for error in errors:
        print(f"ERROR: {error}")
    if errors:
        raise SystemExit(1)
    return [
        Figure("ingest, positions/s stored + acked (3-protocol mix)", fast.rate, "/s",
               50_000, naive.rate),
        Figure(f"ack latency p99 at {args.rate:,.0f} positions/s", paced.percentile(99), "ms",
               100, None, higher_is_better=False),
        Figure("server CPU per position", fast.cpu_us["server"], "us",
               None, naive.cpu_us["server"], higher_is_better=False),
        Figure("server memory growth, second half of the run", fast.rss_growth_mb, "MB",
               None, None, higher_is_better=False),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    figures = run(sys.argv[1:] if argv is None else argv)
    print_table("ingest", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
