"""Cold-start benchmark: the server starting on a store of 1,000,000 units.

    python -m bench.coldstart [--units 1000000] [--positions 3] [--alerts 10000]

Starts a throwaway PostGIS (or uses TRACKER_BENCH_DATABASE_URL) and writes in
bulk SQL (``bench.fleet``, about a minute for a million units) ``--units``
vehicles with one unit each, ``--positions`` positions per unit, a last-seen
row per unit and ``--alerts`` open ``unit_silent`` alerts. Then it starts the
server in a fresh child process, twice, and times ``Server.start()`` until it
serves: registry, latest-state cache, fences, open alerts and a silence
deadline per unit loaded, HTTP listening (``GET /readyz`` answers 200).

- naive: the same server with the registry and the latest-state cache loaded
  the obvious way (as before issue 6), one after the other: the registry paged
  1,000 vehicles at a time; each unit's newest position by one query over the
  partitioned positions table (for each unit, a probe of every month's index),
  the rows taken one at a time; the garbage collector running. Alerts and
  silence deadlines are then restored as built.
- tracker: the server as built.

``--positions`` per unit are a month apart: that many monthly partitions hold
history (production keeps six months).

Each run must load every unit, position, deadline and alert, and answer
``GET /api/v1/vehicles/{id}/location`` for a sample of vehicles with the
position written for them: otherwise the run fails. It prints the seconds to
ready, the server's CPU seconds for them, and its memory (RSS) once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet
from bench.report import Figure, WrongAnswers, print_table
from tracker.server import Server
from tracker.settings import Settings
from tracker.store import StoredPosition
from tracker.store.postgis import PostgisStore
from tracker.store.postgis_startup import LATEST

TARGET_S = 30.0
SAMPLE = 200  # vehicles whose location is checked after start-up


class NaiveServer(Server):
    """The baseline: start-up loading written the obvious way."""

    async def _load(self) -> None:
        after = None
        while page := await self.store.list_vehicles(after=after, limit=1000):
            for vehicle in page:
                self.registry.refresh(vehicle)
            after = page[-1].vehicle_id
        assert isinstance(self.store, PostgisStore)
        for row in await self.store._pool.fetch(LATEST):
            self.cache.update(StoredPosition(*row))
        await self.fences.load()
        await self.events.start(timedelta(days=self.settings.rules.risk_window_days))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _serve(url: str, naive: bool, ready: Any, stop: Any) -> None:
    """Child process: start the server, say how long it took and what it holds."""

    async def main(data_dir: str) -> None:
        settings = Settings(
            http_port=0,
            database_url=url,
            admin_key="bench-admin",
            data_dir=Path(data_dir),
            protocols=(),
            retention_reindex_closed_months=False,  # no rebuild under the start
        )
        server = (NaiveServer if naive else Server)(settings)
        wall, cpu = time.perf_counter(), time.process_time()
        await server.start()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        held = {
            "units": len(server.registry.units()),
            "latest": sum(1 for u in server.registry.units() if server.cache.unit(u.unique_id)),
            "deadlines": len(server.engine.deadlines),
            "alerts": len(server.engine.open),
        }
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ready.put((server.ports["http"], wall, cpu, _rss_mb(), peak_mb, held))
        await asyncio.to_thread(stop.wait)
        await server.stop()

    with tempfile.TemporaryDirectory(prefix="tracker-bench-") as data_dir:
        asyncio.run(main(data_dir))


@dataclass
class Result:
    name: str
    seconds: float
    cpu_s: float
    rss_mb: float
    peak_mb: float
    errors: list[str]


def _check(port: int, held: dict[str, int], args: argparse.Namespace) -> list[str]:
    """What a started server must hold and answer."""
    wanted = {
        "units": args.units,
        "latest": args.units,
        "deadlines": args.units,
        "alerts": min(args.alerts, args.units),
    }
    errors = [f"{k}: {held[k]:,} loaded, {v:,} stored" for k, v in wanted.items() if held[k] != v]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/readyz")
    response = conn.getresponse()
    if response.status != 200:
        errors.append(f"GET /readyz: {response.status} {response.read()[:200]!r}")
    else:
        response.read()
    for n in random.sample(range(args.units), min(SAMPLE, args.units)):
        vehicle_id = fleet.vehicle_id(n)
        headers = {"Authorization": f"Bearer {fleet.API_KEY}"}
        conn.request("GET", f"/api/v1/vehicles/{vehicle_id}/location", headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            errors.append(f"{vehicle_id}: HTTP {response.status} {body[:200]!r}")
            continue
        got = orjson.loads(body)
        lat, lon = fleet.expected_lat(n), fleet.expected_lon(n)
        if abs(got["lat"] - lat) + abs(got["lon"] - lon) > 1e-6:
            errors.append(f"{vehicle_id}: at {got['lat']}, {got['lon']}, stored {lat}, {lon}")
    conn.close()
    return errors


def run_one(name: str, url: str, naive: bool, args: argparse.Namespace) -> Result:
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve, args=(url, naive, ready, stop))
    child.start()
    try:
        port, wall, cpu, rss_mb, peak_mb, held = fleet.wait_ready(ready, child, 900)
        errors = _check(port, held, args)
    finally:
        stop.set()
        child.join(120)
        if child.is_alive():
            child.kill()
    return Result(name, wall, cpu, rss_mb, peak_mb, errors)


def run(argv: list[str]) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--positions", type=int, default=3, help="stored per unit, a month apart")
    parser.add_argument("--alerts", type=int, default=10_000, help="open unit_silent alerts")
    args = parser.parse_args(argv)

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer()
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench_coldstart")
        assert url is not None
        populate_s = asyncio.run(
            fleet.populate(
                url,
                args.units,
                positions_per_unit=args.positions,
                last_seen=True,
                open_alerts=args.alerts,
            )
        )
        naive = run_one("naive: one thing at a time", url, True, args)
        ours = run_one("tracker: as built", url, False, args)
    finally:
        if pg is not None:
            pg.stop()

    what = f"{args.units:,} units"
    figures = [
        Figure(f"cold start to ready, {what}", ours.seconds, "s", TARGET_S, naive.seconds,
               higher_is_better=False),
        Figure("server CPU during start", ours.cpu_s, "s", None, naive.cpu_s,
               higher_is_better=False),
        Figure("server RSS once ready", ours.rss_mb, "MB", None, naive.rss_mb,
               higher_is_better=False),
    ]  # fmt: skip
    print_table(
        f"cold start: {what}, {args.positions} positions each, {args.alerts:,} open alerts "
        f"(bulk SQL set-up {populate_s:.0f} s), PostGIS on this machine "
        f"({os.cpu_count()} cores)",
        figures,
    )
    for result in (naive, ours):
        print(f"{result.name}: peak RSS {result.peak_mb:,.0f} MB")
        for error in result.errors:
            print(f"ERROR: {result.name}: {error}")
    if naive.errors or ours.errors:
        raise WrongAnswers("a server did not load or answer what is stored (ERROR lines above)")
    return figures


def main(argv: list[str] | None = None) -> int:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except WrongAnswers:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
