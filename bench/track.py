"""Track benchmark: one vehicle's day of 10 s fixes out of many stored rows.

    python -m bench.track [--rows 5000000] [--vehicles N] [--queries 200] [--rest-queries 200]
                          [--index-as-loaded [--reindex]] [--cold]

Fills a throwaway PostGIS (or TRACKER_BENCH_DATABASE_URL) through the real
migrations with generated fixes (``bench/track_data.py``: time-ordered as the
server writes them, so one unit's day lies on as many heap pages as it has
fixes) and reports the load rate. Then one day (8,640 fixes) of random units,
each (unit, day) read once, is timed through ``PostgisStore.track`` and
through the REST route (a server in a child process; the client follows
``next_cursor`` to the end of the day). ``--reuse`` skips the load and reads
what the database holds (the same --rows and --vehicles). The indexes are
built after the load, so a unit's day lies on consecutive index pages;
``--index-as-loaded`` fills them as the rows go in, as a server does,
``--reindex`` then rebuilds each month's as the retention loop does once the
month is over, and ``--cold`` restarts PostgreSQL and drops the OS page cache
before each phase.

Naive baseline, same data, same run: an unpartitioned copy of the table with a
single-column index on the unit (how a positions table starts out before
anyone needs history fast), asked the same query for the same (unit, day),
decoded the same way. Every answer is checked: the unit's fixes of that day,
in order, none missing; a wrong one makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.http_client import HttpConnection
from bench.report import Figure, print_table
from bench.track_data import (
    DAY_FIXES,
    FIRST_IMEI,
    FIX_EVERY_S,
    NAIVE_TABLE,
    PG_SETTINGS,
    Layout,
    load,
)
from tracker.server import GC_THRESHOLDS
from tracker.settings import Settings
from tracker.store.postgis import PostgisStore

if TYPE_CHECKING:
    from tests.pgserver import PgServer

TARGET_P99_MS = 50.0
ADMIN_KEY = "bench"
MAX_PAGE = 10_000  # tracker.api.MAX_TRACK_LIMIT

# The fields as PostgisStore.track and .track_rows read them.
NAIVE_TRACK = f"""
SELECT {{fields}}
FROM {NAIVE_TABLE} p
WHERE p.unique_id = ANY($1::text[]) AND p.fix_time >= $2 AND p.fix_time < $3
ORDER BY p.fix_time, p.unique_id
LIMIT $4
"""


class WrongTrack(AssertionError):
    """A track answer that is not the unit's fixes of that day, in order."""


@dataclass(frozen=True)
class Day:
    """One unit's day: ``fixes`` fixes from fix number ``tick`` on."""

    vehicle: int
    tick: int
    fixes: int
    layout_start: datetime

    @property
    def unique_id(self) -> str:
        return str(FIRST_IMEI + self.vehicle)

    @property
    def vehicle_id(self) -> str:
        return f"bench-{self.vehicle:06d}"

    @property
    def start(self) -> datetime:
        return self.layout_start + timedelta(seconds=self.tick * FIX_EVERY_S)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.fixes * FIX_EVERY_S)

    def check(self, unique_ids: list[str], fix_times: list[datetime]) -> None:
        expected = [self.start + timedelta(seconds=i * FIX_EVERY_S) for i in range(self.fixes)]
        if fix_times != expected or set(unique_ids) - {self.unique_id}:
            raise WrongTrack(
                f"{self.vehicle_id} from {self.start:%Y-%m-%d %H:%M:%S}: got {len(fix_times)}"
                f" fixes of {sorted(set(unique_ids))}, expected {self.fixes} of {self.unique_id}"
            )


class NaiveTrackStore(PostgisStore):
    """The baseline: the same query on the unpartitioned copy with a unit-only index."""

    async def _track(
        self,
        fields: str,
        unique_ids: Sequence[str],
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Any]:
        """Both ``track`` and ``track_rows`` read through this: decoded as ours."""
        if after is not None:  # a day is one page (MAX_PAGE): no cursor needed
            return []
        sql = NAIVE_TRACK.format(fields=fields)
        return await self._pool.fetch(sql, list(unique_ids), start, end, limit)


def sample(layout: Layout, count: int, rng: random.Random) -> list[Day]:
    """``count`` distinct random (unit, day) windows inside the data."""
    days: set[Day] = set()
    while len(days) < count:
        tick = rng.randrange(layout.ticks - layout.day_fixes + 1)
        days.add(Day(rng.randrange(layout.vehicles), tick, layout.day_fixes, layout.start))
    return sorted(days, key=lambda d: rng.random())


# Reads a day, checks it, and returns how long the read took in ms (checking
# and, for REST, parsing the JSON on the client are not counted).
Timed = Callable[[Day], Awaitable[float]]


async def alternate(days: list[Day], ours: Timed, naive: Timed | None) -> tuple[list[float], ...]:
    """Time each day through ours and the baseline, alternating which goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    for n, day in enumerate(days):
        pair = [(0, ours), (1, naive)] if n % 2 == 0 else [(1, naive), (0, ours)]
        for which, read in pair:
            if read is None:
                continue
            times[which].append(await read(day))
    return times


async def store_reads(url: str, days: list[Day], naive: bool) -> tuple[list[float], ...]:
    # The store runs inside the server, under its collector thresholds: with the
    # interpreter's default (700) a day's 17,000 new objects trigger two dozen
    # young collections and, now and then, a full one, which is the p99 here.
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    ours, base = PostgisStore(url), NaiveTrackStore(url)
    await ours.open()
    await base.open()

    def reader(store: PostgisStore) -> Timed:
        async def read(day: Day) -> float:
            started = time.perf_counter()
            rows = await store.track([day.unique_id], start=day.start, end=day.end, limit=MAX_PAGE)
            elapsed = (time.perf_counter() - started) * 1000
            day.check([r.unique_id for r in rows], [r.fix_time for r in rows])
            return elapsed

        return read

    try:
        await alternate(days[:3], reader(ours), reader(base) if naive else None)  # warm-up
        return await alternate(days[3:], reader(ours), reader(base) if naive else None)
    finally:
        await ours.close()
        await base.close()
        gc.set_threshold(*thresholds)


def _serve(url: str, naive: bool, ports: Any, stop: Any) -> None:
    """Child process: the real server (the naive one reads the unpartitioned copy)."""
    from tracker.server import Server

    async def main() -> None:
        settings = Settings(
            http_port=0,
            database_url=url,
            admin_key=ADMIN_KEY,
            data_dir=Path(tempfile.gettempdir()) / "tracker-bench-track",
            protocols=(),
            retention_positions_days=36_500.0,  # the data is weeks old: keep it
            retention_reindex_closed_months=False,  # no rebuild under the reads
        )
        server = Server(settings, store=NaiveTrackStore(url) if naive else None)
        await server.start()
        ports.put(server.ports["http"])
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(main())


def rest_reader(client: HttpConnection) -> Timed:
    async def read(day: Day) -> float:
        params: dict[str, str | int] = {
            "from": day.start.isoformat(),
            "to": day.end.isoformat(),
            "limit": MAX_PAGE,
        }
        items: list[dict[str, Any]] = []
        elapsed = 0.0
        while True:
            started = time.perf_counter()
            status, content = await client.get(f"/api/v1/vehicles/{day.vehicle_id}/track", params)
            elapsed += (time.perf_counter() - started) * 1000  # the body is in
            if status != 200:
                raise WrongTrack(f"{day.vehicle_id}: HTTP {status}: {content[:200]!r}")
            body = orjson.loads(content)
            items += body["items"]
            if not body["next_cursor"]:
                break
            params["cursor"] = body["next_cursor"]
        day.check(
            [i["unique_id"] for i in items], [datetime.fromisoformat(i["fix_time"]) for i in items]
        )
        return elapsed

    return read


def rest_reads(url: str, days: list[Day], naive: bool) -> tuple[list[float], ...]:
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    children, ports = [], []
    for baseline in [False, True] if naive else [False]:
        queue = ctx.Queue()
        child = ctx.Process(target=_serve, args=(url, baseline, queue, stop))
        child.start()
        children.append(child)
        ports.append(queue.get(timeout=120))

    async def measure() -> tuple[list[float], ...]:
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        clients = [HttpConnection(p, auth) for p in ports]
        readers = [rest_reader(c) for c in clients]
        try:
            await alternate(days[:3], readers[0], readers[1] if naive else None)
            return await alternate(days[3:], readers[0], readers[1] if naive else None)
        finally:
            for client in clients:
                client.close()

    try:
        return asyncio.run(measure())
    finally:
        stop.set()
        for child in children:
            child.join(30)


async def reindex_every_month(url: str) -> list[str]:
    """Every partition through the retention loop's own rebuild, as if all were over."""
    store = PostgisStore(url)
    await store.open()
    try:
        rebuilt = []
        while name := await store.reindex_closed_month(datetime(9999, 1, 1, tzinfo=UTC)):
            rebuilt.append(name)
        return rebuilt
    finally:
        await store.close()


def cold(pg: PgServer) -> None:
    """Nothing of the table in PostgreSQL's buffers or the OS page cache."""
    pg.stop_server()
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold: cannot drop the OS page cache ({exc}); run as root") from None
    finally:
        pg.start_again()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def database_size(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        rows: int = await conn.fetchval(
            "SELECT sum(reltuples)::bigint FROM pg_class c JOIN pg_inherits i"
            " ON i.inhrelid = c.oid WHERE i.inhparent = 'positions'::regclass"
        )
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        return rows, size
    finally:
        await conn.close()


def run(argv: list[str]) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="positions stored")
    parser.add_argument(
        "--vehicles",
        type=int,
        help="units reporting every 10 s (default: enough for three days each, at most 1,000)",
    )
    parser.add_argument("--queries", type=int, default=200, help="(unit, day) reads via the store")
    parser.add_argument(
        "--rest-queries", type=int, default=200, help="... and via REST (p99 of 200: not the max)"
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the baseline table")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument(
        "--reuse", action="store_true", help="keep the rows already in the database"
    )
    parser.add_argument(
        "--index-as-loaded",
        action="store_true",
        help="fill the indexes as the rows go in, as a server does, not after the load",
    )
    parser.add_argument(
        "--reindex",
        action="store_true",
        help="then rebuild every month's indexes as the retention loop does once a month is over",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="restart PostgreSQL and drop the OS page cache (root) before the store and"
        " the REST reads",
    )
    args = parser.parse_args(argv)
    vehicles = args.vehicles or max(1, min(1000, args.rows // (3 * DAY_FIXES)))
    layout = Layout(args.rows, vehicles)
    naive = not args.no_naive

    from tests.pgserver import PgServer

    url = os.environ.get("TRACKER_BENCH_DATABASE_URL")
    if url and args.cold:
        parser.error("--cold restarts its own PostgreSQL: unset TRACKER_BENCH_DATABASE_URL")
    pg = None if url else PgServer(settings=PG_SETTINGS)
    try:
        if pg is not None:
            pg.start()
            url = pg.create_database("bench_track")
        assert url is not None
        times = (
            {}
            if args.reuse
            else asyncio.run(load(url, layout, naive, index_as_loaded=args.index_as_loaded))
        )
        if args.reindex:
            started = time.perf_counter()
            rebuilt = ", ".join(asyncio.run(reindex_every_month(url)))
            print(f"rebuilt the indexes of {rebuilt} in {time.perf_counter() - started:.0f} s")
        stored, size = asyncio.run(database_size(url))
        rng = random.Random(args.seed)
        days = sample(layout, 3 + args.queries + 3 + args.rest_queries, rng)
        if pg is not None and args.cold:
            cold(pg)
        store_ms = asyncio.run(store_reads(url, days[: 3 + args.queries], naive))
        if pg is not None and args.cold:
            cold(pg)
        rest_ms = rest_reads(url, days[3 + args.queries :], naive)
    finally:
        if pg is not None:
            pg.stop()

    rows = layout.ticks * layout.vehicles
    day = f"one day ({layout.day_fixes:,} fixes)"
    print(
        f"\ntrack benchmark: {rows:,} positions ({stored:,} by the planner's count),"
        f" {layout.vehicles:,} units x {layout.ticks * FIX_EVERY_S / 86_400:.1f} days of 10 s"
        f" fixes, {len(layout.months())} monthly partitions, database {size / 2**30:.1f} GiB;"
        f" {args.queries} store and {args.rest_queries} REST reads of random (unit, day);"
        f" naive: unpartitioned, index on the unit alone; {os.cpu_count()} cores shared;"
        + (" indexes filled as the rows went in" if args.index_as_loaded else " indexes built last")
        + (
            "; cold: PostgreSQL restarted and the OS page cache dropped before the store and"
            " the REST reads"
            if args.cold
            else ""
        )
    )
    if times:
        print(
            "load: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
            + f" ({rows / times['insert']:,.0f} rows/s inserted,"
            f" {rows / (times['insert'] + times['index'] + times['vacuum']):,.0f} rows/s"
            " with indexes and VACUUM ANALYZE)"
        )
    figures = []
    if times:
        figures.append(Figure("load: rows/s, INSERT ... SELECT", rows / times["insert"], "/s"))
        figures.append(
            Figure(
                "load: rows/s, + indexes + VACUUM ANALYZE",
                rows / (times["insert"] + times["index"] + times["vacuum"]),
                "/s",
            )
        )
    for where, (ours, base) in (("Store.track", store_ms), ("REST", rest_ms)):
        for q in (50, 99):
            figures.append(
                Figure(
                    f"track {day}, {where}, p{q}",
                    percentile(ours, q),
                    "ms",
                    target=TARGET_P99_MS if q == 99 else None,
                    naive=percentile(base, q) if naive else None,
                    higher_is_better=False,
                )
            )
    return figures


def main(argv: list[str] | None = None) -> int:
    try:
        figures = run(sys.argv[1:] if argv is None else argv)
    except WrongTrack as exc:
        print(f"ERROR: wrong track: {exc}")
        return 1
    print_table("track query", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
