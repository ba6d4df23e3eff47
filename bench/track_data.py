"""Positions for bench/track.py, generated in PostgreSQL at a few hundred thousand rows/s.

``--vehicles`` units each report every 10 s, written in time order as the server
writes them (every unit's fix of one moment together), so one unit's day lies
on as many heap pages as it has fixes. The data ends weeks before "now" and
straddles a month boundary, so some days read two partitions.

The load: ``INSERT ... SELECT generate_series`` on two connections into the
schema the migrations made, its indexes dropped first and built afterwards per
partition (then the parent's index attaches them instead of building again),
autovacuum held off until one explicit VACUUM ANALYZE at the end.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from tracker.store.postgis import PostgisStore

FIRST_IMEI = 868_000_000_000_000
FIX_EVERY_S = 10
DAY_FIXES = 86_400 // FIX_EVERY_S
MONTH_BOUNDARY = datetime(2026, 11, 1, tzinfo=UTC)  # the data straddles it
NAIVE_TABLE = "positions_naive"  # the baseline's copy: unpartitioned, unit-only index

# Row g of the load is fix number g // vehicles of unit g % vehicles: time-major,
# the order in which a server receiving from every unit at once writes them.
GENERATE = """
INSERT INTO {table} (unique_id, vehicle_id, protocol, fix_time, server_time, lat, lon, geom,
                     valid, speed_kmh, course_deg, altitude_m, accuracy_m, satellites, attributes)
SELECT ({first} + v)::text, 'bench-' || lpad(v::text, 6, '0'), 'gt06',
       $3::timestamptz + make_interval(secs => tick * {every}),
       $3::timestamptz + make_interval(secs => tick * {every} + 2),
       lat, lon, ST_SetSRID(ST_MakePoint(lon, lat), 4326), true,
       (tick % 90)::real, (tick % 360)::real, NULL, NULL, 9, '{{"ignition": true}}'::jsonb
FROM (SELECT g / $4 AS tick, g % $4 AS v FROM generate_series($1::bigint, $2::bigint) g) s,
     LATERAL (SELECT -6.2 + (v % 100) * 0.01 + 0.005 * sin(tick / 300.0) AS lat,
                     106.8 + (v / 100) * 0.01 + 0.005 * cos(tick / 300.0) AS lon) c
"""

REGISTER = """
INSERT INTO vehicles (vehicle_id) SELECT 'bench-' || lpad(v::text, 6, '0')
FROM generate_series(0, $1 - 1) v
"""
REGISTER_UNITS = """
INSERT INTO units (unique_id, vehicle_id)
SELECT ({first} + v)::text, 'bench-' || lpad(v::text, 6, '0') FROM generate_series(0, $1 - 1) v
"""

# Our own server: a production-like cache (the 128 MB default is a laptop's) and
# room for the bulk load. Reads are what is measured; fsync stays on.
PG_SETTINGS = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "4GB",  # more would go faster, but the disk is shared
    "checkpoint_timeout": "30min",
}


@dataclass(frozen=True)
class Layout:
    """Where the generated fixes are: ``ticks`` fixes per unit from ``start``."""

    rows: int
    vehicles: int

    @property
    def ticks(self) -> int:
        return math.ceil(self.rows / self.vehicles)

    @property
    def start(self) -> datetime:
        return MONTH_BOUNDARY - timedelta(seconds=self.ticks // 2 * FIX_EVERY_S)

    @property
    def day_fixes(self) -> int:
        return min(DAY_FIXES, self.ticks)

    def months(self) -> list[tuple[int, int]]:
        end = self.start + timedelta(seconds=self.ticks * FIX_EVERY_S)
        month, months = (self.start.year, self.start.month), []
        while datetime(*month, 1, tzinfo=UTC) < end:
            months.append(month)
            month = (month[0] + month[1] // 12, month[1] % 12 + 1)
        return months


if TYPE_CHECKING:
    Conn = asyncpg.Connection[Any]


async def load(
    url: str, layout: Layout, naive: bool, *, index_as_loaded: bool = False
) -> dict[str, float]:
    """Fill positions (and the naive copy); return the seconds each phase took.

    ``index_as_loaded``: keep the indexes while the rows go in, 10 ticks per
    statement, as a server fills them (a unit's day then lies on half-full
    pages scattered through each index), instead of building them after."""
    store = PostgisStore(url)
    await store.open()  # the real migrations
    await store.close()
    times: dict[str, float] = {}
    conns = [await asyncpg.connect(url) for _ in range(2)]
    try:
        c = conns[0]
        await c.execute(REGISTER, layout.vehicles)
        await c.execute(REGISTER_UNITS.format(first=FIRST_IMEI), layout.vehicles)
        names = [f"positions_y{y:04d}m{m:02d}" for y, m in layout.months()]
        for (y, m), name in zip(layout.months(), names, strict=True):
            start = datetime(y, m, 1, tzinfo=UTC).isoformat()
            end = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=UTC).isoformat()
            await c.execute(
                f"CREATE TABLE {name} PARTITION OF positions"
                f" FOR VALUES FROM ('{start}') TO ('{end}')"
            )
            # explicit VACUUM after the load: autovacuum would scan while rows arrive
            await c.execute(f"ALTER TABLE {name} SET (autovacuum_enabled = off)")
        # Whatever indexes the migrations gave positions (their names all start
        # "positions_") are built after the load, far faster than row by row.
        constraints: list[tuple[str, str]] = []
        indexes: list[tuple[str, str]] = []
        if not index_as_loaded:
            constraints, indexes = await _index_definitions(c)
        for name, _ in constraints:
            await c.execute(f"ALTER TABLE positions DROP CONSTRAINT {name}")
        for name, _ in indexes:
            await c.execute(f"DROP INDEX {name}")
        started = time.perf_counter()
        await _generate(conns, "positions", layout, ticks=10 if index_as_loaded else None)
        times["insert"] = time.perf_counter() - started

        started = time.perf_counter()
        work = [
            (n, f"ALTER TABLE {n} ADD CONSTRAINT {n}_{name[10:]} {sql}")
            for name, sql in constraints
            for n in names
        ] + [
            (n, sql.replace(f"{name} ON ONLY public.positions ", f"{n}_{name[10:]} ON {n} "))
            for name, sql in indexes
            for n in names
        ]
        await _parallel(conns, work)
        for name, definition in constraints:
            await c.execute(f"ALTER TABLE positions ADD CONSTRAINT {name} {definition}")
        for _, definition in indexes:
            await c.execute(definition.replace(" ON ONLY ", " ON "))
        times["index"] = time.perf_counter() - started

        started = time.perf_counter()
        await _parallel(conns, [(n, f"VACUUM (ANALYZE) {n}") for n in names])
        for name in names:
            await c.execute(f"ALTER TABLE {name} RESET (autovacuum_enabled)")
        await c.execute("ANALYZE positions")
        times["vacuum"] = time.perf_counter() - started

        if naive:
            started = time.perf_counter()
            await c.execute(
                f"CREATE TABLE {NAIVE_TABLE} (LIKE positions INCLUDING DEFAULTS)"
                " WITH (autovacuum_enabled = off)"
            )
            await _generate(conns, NAIVE_TABLE, layout)
            await c.execute(f"CREATE INDEX {NAIVE_TABLE}_unit_idx ON {NAIVE_TABLE} (unique_id)")
            await c.execute(f"VACUUM (ANALYZE) {NAIVE_TABLE}")
            times["naive"] = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    return times


async def _index_definitions(conn: Conn) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, definition) of the constraints with an index on positions, and of its
    other indexes (``CREATE INDEX name ON ONLY public.positions ...``)."""
    constraints = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = 'positions'::regclass AND conindid <> 0 ORDER BY conname"
    )
    indexes = await conn.fetch(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index i"
        " WHERE indrelid = 'positions'::regclass AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1"
    )
    return [(r[0], r[1]) for r in constraints], [(r[0], r[1]) for r in indexes]


async def _generate(
    conns: list[Conn], table: str, layout: Layout, ticks: int | None = None
) -> None:
    """All rows into ``table``, ``ticks`` whole ticks per statement and transaction
    (default: about a million rows)."""
    sql = GENERATE.format(table=table, first=FIRST_IMEI, every=FIX_EVERY_S)
    total = layout.ticks * layout.vehicles
    step = (ticks or max(1, 1_000_000 // layout.vehicles)) * layout.vehicles
    chunks = [(lo, min(lo + step, total) - 1) for lo in range(0, total, step)]

    async def worker(conn: Conn) -> None:
        while chunks:
            lo, hi = chunks.pop(0)
            await conn.execute(sql, lo, hi, layout.start, layout.vehicles)

    await asyncio.gather(*(worker(conn) for conn in conns))


async def _parallel(conns: list[Conn], work: list[tuple[str, str]]) -> None:
    """(table, statement) pairs on every connection at once, one statement per
    table at a time: DDL on a busy table would only wait for its lock."""
    busy: set[str] = set()

    async def worker(conn: Conn) -> None:
        while work:
            pick = next((w for w in work if w[0] not in busy), None)
            if pick is None:
                await asyncio.sleep(0.05)
                continue
            work.remove(pick)
            busy.add(pick[0])
            try:
                await conn.execute(pick[1])
            finally:
                busy.discard(pick[0])

    await asyncio.gather(*(worker(conn) for conn in conns))
