"""The production store: PostgreSQL with PostGIS, through a small asyncpg pool.

Positions live in a table partitioned by month of ``fix_time`` (UTC). A batch is
COPYed straight into ``positions``, the geometry sent as EWKB: one statement,
two round trips, its own transaction. A batch holding a (unique_id, fix_time)
already stored (a unit resending what it was not acknowledged for) fails that
COPY as a whole; it goes through a per-connection staging table instead, and
one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` skips every such row, in
the table or earlier in the same batch. Resends come in runs (after a restart
or an outage every unit sends its backlog), so for ``DEDUPLICATE_FOR_S`` after
one every batch takes the staging way, without first trying the COPY.

Events, unit liveness, geofences and webhooks are in ``postgis_events``; users,
keys, assignees, share links and the audit log in ``postgis_access``.

Retention drops whole monthly partitions: this process forgets them at once,
another one finds out when an insert into such a month finds no partition, and
creates it again. It also rebuilds a closed month's indexes once
(``postgis_maintenance``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import struct
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from tracker.store.base import (
    LoanState,
    StoredPosition,
    TrackRow,
    Unit,
    UnitConflict,
    UnknownSighting,
    UnknownUnit,
    Vehicle,
    migrations_dir,
    vehicle_units,
)
from tracker.store.postgis_access import PostgisAccess
from tracker.store.postgis_events import PostgisEvents
from tracker.store.postgis_maintenance import reindex_closed_month
from tracker.store.postgis_startup import POSITION_FIELDS as POSITION_FIELDS  # re-exported
from tracker.store.postgis_startup import (
    VEHICLE_FIELDS,
    PostgisStartup,
    assemble_vehicles,
)
from tracker.store.postgis_startup import partition_months as _partition_months

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# Arbitrary 64-bit keys for pg_advisory_xact_lock: one migrator, one partition
# creator at a time across every process sharing the database.
MIGRATION_LOCK = 0x7472_6B72_6D69_6701
PARTITION_LOCK = 0x7472_6B72_7061_7201

CLOSE_TIMEOUT_S = 5.0  # then the pool's connections are cut instead
POOL_BESIDE_WRITERS = 4  # connections for reads, events and the audit log, beside the writers

# The columns of a batch's records: StoredPosition's fields in order, the
# geometry after lon. Straight in, the batch's acks wait for two round trips
# to PostgreSQL; through staging (BEGIN, COPY, INSERT, COMMIT), for five.
_FIELDS = [f.name for f in dataclasses.fields(StoredPosition)]
POSITION_COLUMNS = [*_FIELDS[:7], "geom", *_FIELDS[7:]]

# A point as EWKB (PostGIS's binary input): little-endian, Point with an SRID, 4326, x, y.
EWKB_POINT = struct.Struct("<BIIdd")
EWKB_POINT_WITH_SRID = 0x2000_0001
SRID = 4326
DEDUPLICATE_FOR_S = 60.0  # after a COPY met a stored fix: batches take the staging way

# ON COMMIT DELETE ROWS: the staging rows never outlive the batch's transaction.
CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS positions_staging (
    unique_id text, vehicle_id text, protocol text,
    fix_time timestamptz, server_time timestamptz,
    lat double precision, lon double precision, geom geometry, valid boolean,
    speed_kmh real, course_deg real, altitude_m real, accuracy_m real,
    satellites smallint, attributes jsonb
) ON COMMIT DELETE ROWS
"""

# DO NOTHING also skips a row equal in key to one inserted earlier by the same statement.
INSERT_FROM_STAGING = f"""
INSERT INTO positions ({", ".join(POSITION_COLUMNS)})
SELECT {", ".join(POSITION_COLUMNS)} FROM positions_staging
ON CONFLICT DO NOTHING
"""

# One statement per index of migration 0006, whose WHERE clauses they repeat word
# for word (the planner matches them): positions with small attributes, nearly
# all, come from an index-only scan of the covering index, a few hundred pages
# for a unit's day instead of one heap page per fix; the rest from the heap.
# Two statements merged by ``_track``, not one UNION ALL: for one unit
# (``= $1``) each is read in fix_time order straight from its index, the months
# in order, with no sort of the wide rows. A day of 8,640: 7 ms of execution
# against 14 for the UNION ALL, its sort and its subquery scans. (Two reads,
# not one snapshot: a fix committed between them may show in the second only,
# as it may in any later read.) attributes comes as text, which track() parses
# with one orjson.loads for the whole page and track_rows() passes on as is.
TRACK = """
SELECT {fields} FROM positions p
WHERE p.unique_id {units} AND p.fix_time >= $2 AND p.fix_time < $3
  AND octet_length(p.attributes::text) {size} {after}
ORDER BY p.fix_time, p.unique_id
LIMIT $4
"""
TRACK_FIELDS = POSITION_FIELDS.replace("p.attributes", "p.attributes::text")
TRACK_AFTER = "AND (p.fix_time, p.unique_id) > ($5, $6)"
# TrackRow: the times as text, which PostgreSQL prints faster than asyncpg
# makes datetimes of them (a day's 17,280 cost 8 ms as datetimes)
TRACK_ROW_FIELDS = TRACK_FIELDS.replace(
    "p.fix_time, p.server_time",
    "(p.fix_time AT TIME ZONE 'UTC')::text, (p.server_time AT TIME ZONE 'UTC')::text",
)

# loan_state_since moves only when loan_state does (or the vehicle is new).
UPSERT_VEHICLE = """
INSERT INTO vehicles (vehicle_id, plate, vin, loan_ref, rules, loan_state, loan_state_since,
                      updated_at, group_id)
VALUES ($1, $2, $3, $4, $5, $6, now(), now(), $7)
ON CONFLICT (vehicle_id) DO UPDATE
SET plate = EXCLUDED.plate, vin = EXCLUDED.vin, loan_ref = EXCLUDED.loan_ref,
    rules = EXCLUDED.rules, updated_at = EXCLUDED.updated_at, group_id = EXCLUDED.group_id,
    loan_state = EXCLUDED.loan_state,
    loan_state_since = CASE WHEN vehicles.loan_state = EXCLUDED.loan_state
                            THEN vehicles.loan_state_since
                            ELSE EXCLUDED.loan_state_since END
RETURNING updated_at, loan_state_since, xmax = 0 AS created
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


class PostgisStore(PostgisStartup, PostgisEvents, PostgisAccess):
    """``Store`` on PostgreSQL + PostGIS; ``url`` is a ``postgresql://`` DSN.

    Events, unit liveness, geofences and webhooks: ``PostgisEvents``; users,
    keys, assignees, shares and the audit log: ``PostgisAccess``; the reads of
    everything at start-up: ``PostgisStartup``.

    Known partitions are read at ``open()`` and remembered; one dropped by
    another process is created again by the first insert that misses it.
    """

    kind = "postgis"

    def __init__(
        self, url: str, *, min_size: int = 2, max_size: int = 2 + POOL_BESIDE_WRITERS
    ) -> None:
        self._url = url
        self._min_size = min_size
        self._max_size = max_size
        self._pool_or_none: asyncpg.Pool[asyncpg.Record] | None = None
        # (year, month) of the partitions known to exist: each is created once.
        self._partitions: set[tuple[int, int]] = set()
        self._deduplicate_until = 0.0  # time.monotonic(): until then, no COPY straight in

    async def open(self) -> None:
        self._pool_or_none = await asyncpg.create_pool(
            self._url, min_size=self._min_size, max_size=self._max_size, init=_init_connection
        )
        try:
            if await self.migrate():  # connected before PostGIS was in: init them again
                await self._pool.expire_connections()
            await self._load_partitions()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool_or_none is not None:
            pool, self._pool_or_none = self._pool_or_none, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:  # a server that does not answer: do not wait for it
                pool.terminate()

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    def rejects_rows(self, error: Exception) -> bool:
        if isinstance(error, ValueError | TypeError | ArithmeticError):
            return True  # a value the driver cannot encode (OverflowError: out of range)
        # SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation)
        sqlstate = getattr(error, "sqlstate", None) or ""
        return isinstance(error, asyncpg.PostgresError) and sqlstate[:2] in ("22", "23")

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
        async with self._pool.acquire() as conn:
            self._partitions |= await _partition_months(conn)

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
        loan_state: LoanState = "current",
        group: str | None = None,
    ) -> tuple[Vehicle, bool]:
        wanted = vehicle_units(vehicle_id, units)
        wanted_rules = dict(rules or {})
        ids = [u.unique_id for u in wanted]
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                UPSERT_VEHICLE, vehicle_id, plate, vin, loan_ref, wanted_rules, loan_state, group
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
            assignees = await conn.fetch(
                "SELECT user_id FROM vehicle_assignees WHERE vehicle_id = $1 ORDER BY user_id",
                vehicle_id,
            )
        vehicle = Vehicle(
            vehicle_id,
            plate,
            vin,
            loan_ref,
            wanted,
            row["updated_at"],
            wanted_rules,
            loan_state,
            row["loan_state_since"],
            tuple(a["user_id"] for a in assignees),
            group,
        )
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
        """Vehicles selected by ``where``, their units and their assignees
        loaded in one more query each."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            rows = await conn.fetch(f"SELECT {VEHICLE_FIELDS} FROM vehicles {where}", *args)
            if not rows:
                return []
            ids = [r["vehicle_id"] for r in rows]
            unit_rows = await conn.fetch(
                "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units"
                " WHERE vehicle_id = ANY($1::text[]) ORDER BY unique_id",
                ids,
            )
            assignee_rows = await conn.fetch(
                "SELECT vehicle_id, user_id FROM vehicle_assignees"
                " WHERE vehicle_id = ANY($1::text[]) ORDER BY user_id",
                ids,
            )
        return assemble_vehicles(rows, unit_rows, assignee_rows)

    async def all_units(self) -> list[Unit]:
        rows = await self._pool.fetch(
            "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units ORDER BY unique_id"
        )
        return [Unit(*r) for r in rows]

    # positions

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        if not rows:
            return 0
        months = self._new_months(rows)
        point = EWKB_POINT.pack
        records = [
            (p.unique_id, p.vehicle_id, p.protocol, p.fix_time, p.server_time, p.lat, p.lon,
             point(1, EWKB_POINT_WITH_SRID, SRID, p.lon, p.lat),
             p.valid, p.speed_kmh, p.course_deg, p.altitude_m, p.accuracy_m, p.satellites,
             p.attributes)
            for p in rows
        ]  # fmt: skip
        try:
            status = await self._insert(records, months)
        except asyncpg.CheckViolationError as exc:
            if "no partition" not in str(exc):
                raise
            # a month this process knew of was dropped (by another's retention run)
            months = {_month(p.fix_time) for p in rows}
            status = await self._insert(records, months)
        self._partitions |= months  # only once committed
        return _row_count(status)

    def _new_months(self, rows: Sequence[StoredPosition]) -> set[tuple[int, int]]:
        """The months of these rows without a partition known to exist. A batch
        nearly always lies in one known month: its first and last fix tell."""
        first = min(row.fix_time for row in rows)
        month = _month(first)
        if month in self._partitions and _month(max(row.fix_time for row in rows)) == month:
            return set()
        return {_month(row.fix_time) for row in rows} - self._partitions

    async def _insert(self, records: list[tuple[Any, ...]], months: set[tuple[int, int]]) -> str:
        async with self._pool.acquire() as conn:
            try:
                if months:
                    async with conn.transaction():
                        await _create_partitions(conn, months)
                if time.monotonic() >= self._deduplicate_until:
                    try:
                        return await conn.copy_records_to_table(
                            "positions", records=records, columns=POSITION_COLUMNS
                        )
                    except asyncpg.UniqueViolationError:  # a resend: nothing of it was stored
                        self._deduplicate_until = time.monotonic() + DEDUPLICATE_FOR_S
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "positions_staging", records=records, columns=POSITION_COLUMNS
                    )
                    return await conn.execute(INSERT_FROM_STAGING)
            except BaseException as exc:
                if _connection_broken(exc):
                    # never handed out again: the pool connects afresh on a later acquire
                    # (resetting it on release could wait forever on a dead server)
                    conn.terminate()
                raise

    async def track(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[StoredPosition]:
        rows = await self._track(TRACK_FIELDS, unique_ids, start, end, limit, after)
        attributes = orjson.loads("[" + ",".join([r[13] for r in rows]) + "]")
        return [StoredPosition(*[*r[:13], a]) for r, a in zip(rows, attributes, strict=True)]

    async def track_rows(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> Sequence[TrackRow]:
        return await self._track(TRACK_ROW_FIELDS, unique_ids, start, end, limit, after)

    async def _track(
        self,
        fields: str,
        unique_ids: Sequence[str],
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Any]:  # asyncpg Records: indexed like tuples
        one = len(unique_ids) == 1
        args: list[Any] = [unique_ids[0] if one else list(unique_ids), start, end, max(limit, 0)]
        small_sql, large_sql = (
            TRACK.format(
                fields=fields,
                units="= $1" if one else "= ANY($1::text[])",
                size=size,
                after="" if after is None else TRACK_AFTER,
            )
            for size in ("<= 1000", "> 1000")
        )
        if after is not None:
            args += after
        async with self._pool.acquire() as conn:
            small = await conn.fetch(small_sql, *args)
            large = await conn.fetch(large_sql, *args)
        if not large:  # nearly always
            return small
        return list(heapq.merge(small, large, key=_track_order))[:limit]

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

    # retention

    async def delete_positions_before(self, cutoff: datetime) -> int:
        if cutoff.tzinfo is None:
            cutoff = cutoff.astimezone(UTC)  # local time, as asyncpg takes it
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                months = await _partition_months(conn)
                old = sorted(m for m in months if _month_end(m) <= cutoff)
                # Counted first, then dropped: DROP locks the whole positions table
                # (every insert waits) until commit, so the counts run before it.
                # A fix stored into such a month between its count and its drop
                # goes uncounted: no fix that old arrives in practice.
                dropped = 0
                for year, month in old:
                    dropped += await conn.fetchval(
                        f"SELECT count(*) FROM positions_y{year:04d}m{month:02d}"
                    )
                for year, month in old:
                    await conn.execute(f"DROP TABLE IF EXISTS positions_y{year:04d}m{month:02d}")
            self._partitions -= set(old)  # only once committed
            # The month holding the cutoff (pruning skips every other partition),
            # apart from the drops: inserts do not wait on this delete. Each step
            # is safe to run again if the other fails.
            status = await conn.execute("DELETE FROM positions WHERE fix_time < $1", cutoff)
        return dropped + _row_count(status)

    async def reindex_closed_month(self, now: datetime) -> str | None:
        return await reindex_closed_month(self._pool, now)

    async def purge_vehicle_positions(self, vehicle_id: str) -> int:
        # No index on positions.vehicle_id (ingest pays for every index, and only
        # this rare admin job would use it): the delete scans every partition.
        status = await self._pool.execute("DELETE FROM positions WHERE vehicle_id = $1", vehicle_id)
        return _row_count(status)


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # jsonb's binary form is a version byte (1) then the JSON text.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + orjson.dumps(value),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )
    schema = await conn.fetchval(
        "SELECT typnamespace::regnamespace::text FROM pg_type WHERE oid = to_regtype('geometry')"
    )
    if schema is not None:  # None before the first migration: open() connects afresh after it
        # geometry's binary form is EWKB: bytes in, bytes out, in asyncpg's C codec
        await conn.set_builtin_type_codec(
            "geometry", schema=schema, codec_name="bytea", format="binary"
        )
        await conn.execute(CREATE_STAGING)


async def _create_partitions(
    conn: PoolConnectionProxy[asyncpg.Record], months: set[tuple[int, int]]
) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
    for year, month in sorted(months):
        start = datetime(year, month, 1, tzinfo=UTC)
        end = _month_end((year, month))
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS positions_y{year:04d}m{month:02d}"
            f" PARTITION OF positions FOR VALUES FROM ('{start.isoformat()}')"
            f" TO ('{end.isoformat()}')"
            # vacuumed as it fills, not only when it is 20% new: a day's track is read
            # from the covering index alone (0006) only once VACUUM marks its pages
            " WITH (autovacuum_vacuum_insert_scale_factor = 0.01)"
        )


def _connection_broken(exc: BaseException) -> bool:
    """Whether a connection is unfit for use after ``exc``: the link failed, the
    server ended the session (SQLSTATE classes 08 and 57), or a statement was
    cut off half-way (timeout, cancellation). An error the server reports about
    the statement itself leaves the connection usable."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate[:2] in ("08", "57")
    return True


def _month(fix_time: datetime) -> tuple[int, int]:
    utc = fix_time.astimezone(UTC)
    return utc.year, utc.month


def _month_end(month: tuple[int, int]) -> datetime:
    """Where the partition of (year, month) ends: the first of the next month, UTC."""
    year, number = month
    return datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)


def _track_order(row: Any) -> tuple[Any, str]:
    """(fix_time, unique_id): datetimes, or PostgreSQL's UTC text of them, which
    sorts the same (fixed width to the second, then the fraction's digits)."""
    return row[3], row[0]


def _row_count(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12`` or ``DELETE 1``."""
    return int(status.rsplit(" ", 1)[1])


def _migration_files() -> list[Path]:
    return sorted(migrations_dir().glob("*.sql"))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")
