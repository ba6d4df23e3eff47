"""The production store: PostgreSQL with PostGIS, through a small asyncpg pool.

Positions live in a table partitioned by month of ``fix_time`` (UTC). A batch is
COPYed into a per-connection staging table, then moved over with one
``INSERT ... SELECT`` that fills the geometry and skips every (unique_id,
fix_time) already stored, in the table or earlier in the same batch.

Events, unit liveness, geofences and webhooks are in ``postgis_events``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from tracker.store.base import (
    StoredPosition,
    Unit,
    UnitConflict,
    UnknownSighting,
    UnknownUnit,
    Vehicle,
    migrations_dir,
    vehicle_units,
)
from tracker.store.postgis_events import PostgisEvents

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# Arbitrary 64-bit keys for pg_advisory_xact_lock: one migrator, one partition
# creator at a time across every process sharing the database.
MIGRATION_LOCK = 0x7472_6B72_6D69_6701
PARTITION_LOCK = 0x7472_6B72_7061_7201

PARTITION_NAME = re.compile(r"positions_y(\d{4})m(\d{2})")

# The staging table's columns are StoredPosition's fields, in order.
STAGING_COLUMNS = [f.name for f in dataclasses.fields(StoredPosition)]

# ON COMMIT DELETE ROWS: the staging rows never outlive the batch's transaction.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS positions_staging (
    unique_id text, vehicle_id text, protocol text,
    fix_time timestamptz, server_time timestamptz,
    lat double precision, lon double precision, valid boolean,
    speed_kmh real, course_deg real, altitude_m real, accuracy_m real,
    satellites smallint, attributes jsonb
) ON COMMIT DELETE ROWS
"""

# DO NOTHING also skips a row equal in key to one inserted earlier by the same statement.
INSERT_FROM_STAGING = """
INSERT INTO positions (unique_id, vehicle_id, protocol, fix_time, server_time, lat, lon, geom,
                       valid, speed_kmh, course_deg, altitude_m, accuracy_m, satellites,
                       attributes)
SELECT unique_id, vehicle_id, protocol, fix_time, server_time, lat, lon,
       ST_SetSRID(ST_MakePoint(lon, lat), 4326),
       valid, speed_kmh, course_deg, altitude_m, accuracy_m, satellites, attributes
FROM positions_staging
ON CONFLICT DO NOTHING
"""

# In StoredPosition's field order. real columns are read through their shortest
# text form, so 12.3 comes back as 12.3 and not as 12.300000190734863.
POSITION_FIELDS = """
p.unique_id, p.vehicle_id, p.protocol, p.fix_time, p.server_time, p.lat, p.lon, p.valid,
p.speed_kmh::text::float8, p.course_deg::text::float8, p.altitude_m::text::float8,
p.accuracy_m::text::float8, p.satellites, p.attributes
"""

LATEST = f"""
SELECT {POSITION_FIELDS}
FROM units u CROSS JOIN LATERAL (
    SELECT * FROM positions
    WHERE positions.unique_id = u.unique_id
    ORDER BY positions.fix_time DESC
    LIMIT 1
) p
ORDER BY u.unique_id
"""

TRACK = f"""
SELECT {POSITION_FIELDS}
FROM positions p
WHERE p.unique_id = ANY($1::text[]) AND p.fix_time >= $2 AND p.fix_time < $3
  {{after}}
ORDER BY p.fix_time, p.unique_id
LIMIT $4
"""

UPSERT_VEHICLE = """
INSERT INTO vehicles (vehicle_id, plate, vin, loan_ref, rules, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (vehicle_id) DO UPDATE
SET plate = EXCLUDED.plate, vin = EXCLUDED.vin, loan_ref = EXCLUDED.loan_ref,
    rules = EXCLUDED.rules, updated_at = EXCLUDED.updated_at
RETURNING updated_at, xmax = 0 AS created
"""

# A unit already installed in another vehicle is left alone and not returned.
UPSERT_UNITS = """
INSERT INTO units (unique_id, vehicle_id, kind, silent_after_s)
SELECT unique_id, $1, kind, silent_after_s
FROM unnest($2::text[], $3::text[], $4::integer[]) AS t(unique_id, kind, silent_after_s)
ON CONFLICT (unique_id) DO UPDATE
SET kind = EXCLUDED.kind, silent_after_s = EXCLUDED.silent_after_s
WHERE units.vehicle_id = EXCLUDED.vehicle_id
RETURNING unique_id
"""

UPSERT_UNKNOWN = """
INSERT INTO unknown_units (unique_id, protocol, remote_addr, first_seen, last_seen, count)
VALUES ($1, $2, $3, $4, $4, 1)
ON CONFLICT (unique_id) DO UPDATE
SET protocol = EXCLUDED.protocol, remote_addr = EXCLUDED.remote_addr,
    first_seen = LEAST(unknown_units.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(unknown_units.last_seen, EXCLUDED.last_seen),
    count = unknown_units.count + 1
"""


class PostgisStore(PostgisEvents):
    """``Store`` on PostgreSQL + PostGIS; ``url`` is a ``postgresql://`` DSN.

    Events, unit liveness, geofences and webhooks: ``PostgisEvents``.

    Known partitions are read at ``open()`` and remembered: a process must be
    restarted after partitions are dropped (say, by a retention job).
    """

    kind = "postgis"

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 4) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool_or_none: asyncpg.Pool[asyncpg.Record] | None = None
        # (year, month) of the partitions known to exist: each is created once.
        self._partitions: set[tuple[int, int]] = set()

    async def open(self) -> None:
        self._pool_or_none = await asyncpg.create_pool(
            self._url, min_size=self._min_size, max_size=self._max_size, init=_init_connection
        )
        try:
            await self.migrate()
            await self._load_partitions()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool_or_none is not None:
            pool, self._pool_or_none = self._pool_or_none, None
            await pool.close()

    @property
    def _pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool_or_none is None:
            raise RuntimeError("PostgisStore is not open")
        return self._pool_or_none

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in _migration_files():
                if path.name in done:
                    continue
                await conn.execute(_read(path))
                await conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, now())",
                    path.name,
                )
                applied.append(path.name)
        return applied

    async def _load_partitions(self) -> None:
        rows = await self._pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'positions'::regclass"
        )
        for row in rows:
            if match := PARTITION_NAME.fullmatch(row["relname"]):
                self._partitions.add((int(match[1]), int(match[2])))

    # vehicles and units

    async def put_vehicle(
        self,
        vehicle_id: str,
        *,
        plate: str | None,
        vin: str | None,
        loan_ref: str | None,
        units: Sequence[Unit],
        rules: Mapping[str, Any] | None = None,
    ) -> tuple[Vehicle, bool]:
        wanted = vehicle_units(vehicle_id, units)
        wanted_rules = dict(rules or {})
        ids = [u.unique_id for u in wanted]
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                UPSERT_VEHICLE, vehicle_id, plate, vin, loan_ref, wanted_rules
            )
            assert row is not None
            await conn.execute(
                "DELETE FROM units WHERE vehicle_id = $1 AND unique_id <> ALL($2::text[])",
                vehicle_id,
                ids,
            )
            if wanted:
                stored = await conn.fetch(
                    UPSERT_UNITS,
                    vehicle_id,
                    ids,
                    [u.kind for u in wanted],
                    [u.silent_after_s for u in wanted],
                )
                if len(stored) < len(wanted):
                    taken = min(set(ids) - {r["unique_id"] for r in stored})
                    other = await conn.fetchval(
                        "SELECT vehicle_id FROM units WHERE unique_id = $1", taken
                    )
                    raise UnitConflict(taken, other)
                # a registered unit is no longer an unknown one
                await conn.execute("DELETE FROM unknown_units WHERE unique_id = ANY($1)", ids)
        vehicle = Vehicle(vehicle_id, plate, vin, loan_ref, wanted, row["updated_at"], wanted_rules)
        return vehicle, row["created"]

    async def get_vehicle(self, vehicle_id: str) -> Vehicle | None:
        vehicles = await self._vehicles("WHERE vehicle_id = $1 LIMIT 1", vehicle_id)
        return vehicles[0] if vehicles else None

    async def delete_vehicle(self, vehicle_id: str) -> bool:
        status = await self._pool.execute("DELETE FROM vehicles WHERE vehicle_id = $1", vehicle_id)
        return _row_count(status) > 0

    async def list_vehicles(self, *, after: str | None, limit: int) -> list[Vehicle]:
        if after is None:
            return await self._vehicles("ORDER BY vehicle_id LIMIT $1", max(limit, 0))
        return await self._vehicles(
            "WHERE vehicle_id > $1 ORDER BY vehicle_id LIMIT $2", after, max(limit, 0)
        )

    async def _vehicles(self, where: str, *args: Any) -> list[Vehicle]:
        """Vehicles selected by ``where``, their units loaded in one more query."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch(
                f"SELECT vehicle_id, plate, vin, loan_ref, updated_at, rules FROM vehicles {where}",
                *args,
            )
            if not rows:
                return []
            unit_rows = await conn.fetch(
                "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units"
                " WHERE vehicle_id = ANY($1::text[]) ORDER BY unique_id",
                [r["vehicle_id"] for r in rows],
            )
        units: dict[str, list[Unit]] = {}
        for u in unit_rows:
            units.setdefault(u["vehicle_id"], []).append(Unit(*u))
        return [
            Vehicle(
                r["vehicle_id"],
                r["plate"],
                r["vin"],
                r["loan_ref"],
                tuple(units.get(r["vehicle_id"], ())),
                r["updated_at"],
                r["rules"],
            )
            for r in rows
        ]

    async def all_units(self) -> list[Unit]:
        rows = await self._pool.fetch(
            "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units ORDER BY unique_id"
        )
        return [Unit(*r) for r in rows]

    # positions

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        if not rows:
            return 0
        months = {_month(p.fix_time) for p in rows} - self._partitions
        records = [
            (p.unique_id, p.vehicle_id, p.protocol, p.fix_time, p.server_time, p.lat, p.lon,
             p.valid, p.speed_kmh, p.course_deg, p.altitude_m, p.accuracy_m, p.satellites,
             p.attributes)
            for p in rows
        ]  # fmt: skip
        async with self._pool.acquire() as conn, conn.transaction():
            if months:
                await _create_partitions(conn, months)
            await conn.copy_records_to_table(
                "positions_staging", records=records, columns=STAGING_COLUMNS
            )
            status = await conn.execute(INSERT_FROM_STAGING)
        self._partitions |= months  # only once committed
        return _row_count(status)

    async def latest_positions(self) -> list[StoredPosition]:
        return [StoredPosition(*r) for r in await self._pool.fetch(LATEST)]

    async def track(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[StoredPosition]:
        args: list[Any] = [list(unique_ids), start, end, max(limit, 0)]
        if after is None:
            sql = TRACK.format(after="")
        else:
            sql = TRACK.format(after="AND (p.fix_time, p.unique_id) > ($5, $6)")
            args += after
        return [StoredPosition(*r) for r in await self._pool.fetch(sql, *args)]

    # unknown units

    async def record_unknown(self, sightings: Sequence[UnknownSighting]) -> None:
        if not sightings:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                UPSERT_UNKNOWN,
                [(s.unique_id, s.protocol, s.remote_addr, s.seen_at) for s in sightings],
            )

    async def unknown_units(self, *, limit: int) -> list[UnknownUnit]:
        rows = await self._pool.fetch(
            "SELECT unique_id, protocol, remote_addr, first_seen, last_seen, count"
            " FROM unknown_units ORDER BY last_seen DESC, unique_id LIMIT $1",
            max(limit, 0),
        )
        return [UnknownUnit(*r) for r in rows]


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # jsonb's binary form is a version byte (1) then the JSON text.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )
    await conn.execute(CREATE_STAGING)


async def _create_partitions(
    conn: PoolConnectionProxy[asyncpg.Record], months: set[tuple[int, int]]
) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
    for year, month in sorted(months):
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS positions_y{year:04d}m{month:02d}"
            f" PARTITION OF positions FOR VALUES FROM ('{start.isoformat()}')"
            f" TO ('{end.isoformat()}')"
        )


def _month(fix_time: datetime) -> tuple[int, int]:
    utc = fix_time.astimezone(UTC)
    return utc.year, utc.month


def _row_count(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12`` or ``DELETE 1``."""
    return int(status.rsplit(" ", 1)[1])


def _migration_files() -> list[Path]:
    return sorted(migrations_dir().glob("*.sql"))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
