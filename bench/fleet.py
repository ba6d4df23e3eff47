"""A registered fleet in a PostGIS database, written in bulk for benchmarks.

Registering 100,000 or 1,000,000 vehicles through ``put_vehicle`` would take
longer than the benchmarks themselves, so the rows are made by PostgreSQL
(``INSERT ... SELECT generate_series``) straight into the tables the store
migrated. Vehicle ``n`` is ``vehicle_id(n)`` with one unit, ``imei(n)``; its
newest position is at ``expected_lat(n), expected_lon(n)``: the load
generators check the answers against these.
"""

from __future__ import annotations

import hashlib
import queue
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tracker.store.postgis import PostgisStore, _create_partitions, _month

FIRST_IMEI = 868_000_000_000_000
API_KEY = "bench-servicing-key"  # a servicing user's key, looked up like any other
# Between a unit's positions: a month, so that ``positions_per_unit`` months
# (monthly partitions) hold history, as in production (six months kept).
STEP_S = 31 * 86_400
SPREAD_S = 3600  # newest fixes spread over the hour before the start of the run
SEEN_S = 600  # last heard of within this: no silence deadline passes during a run


def vehicle_id(n: int) -> str:
    return f"bench-{n:07d}"


def imei(n: int) -> str:
    return str(FIRST_IMEI + n)


def expected_lat(n: int) -> float:
    return -6.2 + (n % 1000) * 0.001


def expected_lon(n: int) -> float:
    return 106.8 + (n // 1000 % 1000) * 0.001


async def populate(
    url: str,
    vehicles: int,
    *,
    positions_per_unit: int = 1,
    last_seen: bool = False,
    open_alerts: int = 0,
) -> float:
    """Migrate, then write the fleet; return the seconds it took.

    Each unit's newest position is within ``SPREAD_S`` of now, and each older
    one ``STEP_S`` (a month) before the one after it.

    ``last_seen``: a ``unit_seen`` row per unit, within ``SEEN_S`` of now (a
    heartbeat since its newest fix);
    ``open_alerts``: that many units with an open ``unit_silent`` alert.
    """
    started = time.perf_counter()
    store = PostgisStore(url)
    await store.open()  # migrations
    await store.close()
    newest = datetime.now(UTC).replace(microsecond=0)
    months = {
        _month(newest - timedelta(seconds=spread + STEP_S * k))
        for k in range(positions_per_unit)
        for spread in (0, SPREAD_S)
    }
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET synchronous_commit = off")  # set-up data, not the measurement
        await _create_partitions(conn, months)  # type: ignore[arg-type]
        await conn.execute(
            "INSERT INTO vehicles (vehicle_id, loan_ref, loan_state, loan_state_since)"
            " SELECT 'bench-' || lpad(n::text, 7, '0'), 'L-' || n, 'delinquent', now()"
            " FROM generate_series(0, $1 - 1) n",
            vehicles,
        )
        await conn.execute(
            "INSERT INTO units (unique_id, vehicle_id, kind)"
            " SELECT ($2::bigint + n)::text, 'bench-' || lpad(n::text, 7, '0'),"
            " CASE WHEN n % 10 = 9 THEN 'battery' ELSE 'wired' END"
            " FROM generate_series(0, $1 - 1) n",
            vehicles,
            FIRST_IMEI,
        )
        # position k = 0 is the newest: at expected_lat/lon(n)
        await conn.execute(
            """
            INSERT INTO positions (unique_id, vehicle_id, protocol, fix_time, server_time,
                                   lat, lon, geom, valid, speed_kmh, course_deg, satellites,
                                   attributes)
            SELECT unique_id, vehicle_id, 'gt06', t, t + interval '1 second', lat, lon,
                   ST_SetSRID(ST_MakePoint(lon, lat), 4326), true, 42.5, 90, 9,
                   '{"ignition": true}'::jsonb
            FROM (
                SELECT ($2::bigint + n)::text AS unique_id,
                       'bench-' || lpad(n::text, 7, '0') AS vehicle_id,
                       $3::timestamptz - make_interval(secs => n % $5 + k * $6) AS t,
                       (-6.2 + (n % 1000) * 0.001 + k * 0.0001)::float8 AS lat,
                       (106.8 + (n / 1000 % 1000) * 0.001)::float8 AS lon
                FROM generate_series(0, $1 - 1) n, generate_series(0, $4 - 1) k
            ) s
            """,
            vehicles,
            FIRST_IMEI,
            newest,
            positions_per_unit,
            SPREAD_S,
            STEP_S,
        )
        if last_seen:
            await conn.execute(
                "INSERT INTO unit_seen (unique_id, last_seen)"
                " SELECT ($2::bigint + n)::text,"
                " $3::timestamptz - make_interval(secs => n % $4)"
                " FROM generate_series(0, $1 - 1) n",
                vehicles,
                FIRST_IMEI,
                newest,
                SEEN_S,
            )
        if open_alerts:
            await conn.execute(
                "INSERT INTO events (id, type, severity, vehicle_id, unique_id, fix_time,"
                " detected_at, alert_key)"
                " SELECT 'bench-silent-' || n, 'unit_silent', 'warning',"
                " 'bench-' || lpad(n::text, 7, '0'), ($2::bigint + n)::text, $3, $3,"
                " 'unit_silent:' || ($2::bigint + n)::text"
                " FROM generate_series(0, $1 - 1) n",
                min(open_alerts, vehicles),
                FIRST_IMEI,
                newest,
            )
        await conn.execute(
            "INSERT INTO users (id, name, role, created_at)"
            " VALUES ('bench', 'benchmark', 'servicing', now())"
        )
        await conn.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, prefix, created_at)"
            " VALUES ('bench-key', 'bench', $1, 'bench', now())",
            hashlib.sha256(API_KEY.encode()).hexdigest(),
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def wait_ready(ready: Any, child: Any, timeout_s: float) -> Any:
    """What a server child process puts on ``ready`` once started; an error as
    soon as the child dies instead (its traceback is on stderr)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ready.get(timeout=1)
        except queue.Empty:
            if not child.is_alive():
                exited = f"the server exited ({child.exitcode}) before it was ready"
                raise RuntimeError(exited) from None
    raise TimeoutError(f"the server was not ready within {timeout_s:g} s")
