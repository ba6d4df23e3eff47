"""The embedded store: SQLite (the stdlib ``sqlite3``) on one worker thread.

``SqliteDb`` is the plain, blocking adapter; ``SqliteStore`` runs each of its
calls on a single dedicated thread that owns the connection, so the event loop
never waits on the disk and no two calls interleave. WAL with
``synchronous=FULL``: a committed batch survives a power cut, as an ack promises.

Times are stored as unix microseconds (UTC), attributes as JSON text
(``sqlite_codec``). Events, unit liveness, geofences and webhooks are in
``sqlite_events``; users, keys, assignees, share links and the audit log in
``sqlite_access``.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

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
from tracker.store.sqlite_access import AccessDb, SqliteAccess
from tracker.store.sqlite_codec import from_us, from_us_or_none, json_text, to_us, utc_text
from tracker.store.sqlite_events import EventsDb, SqliteEvents

P = ParamSpec("P")
T = TypeVar("T")

POSITION_COLUMNS = (
    "unique_id, vehicle_id, protocol, fix_time, server_time, lat, lon, valid, "
    "speed_kmh, course_deg, altitude_m, accuracy_m, satellites, attributes"
)

LATEST = f"""
SELECT {", ".join("p." + c for c in POSITION_COLUMNS.split(", "))}
FROM units u JOIN positions p ON p.unique_id = u.unique_id
    AND p.fix_time = (SELECT max(fix_time) FROM positions WHERE unique_id = u.unique_id)
ORDER BY u.unique_id
"""

TRACK = f"""
SELECT {POSITION_COLUMNS}
FROM positions
WHERE unique_id IN (SELECT value FROM json_each(?)) AND fix_time >= ? AND fix_time < ?
  {{after}}
ORDER BY fix_time, unique_id
LIMIT ?
"""

UPSERT_UNKNOWN = """
INSERT INTO unknown_units (unique_id, protocol, remote_addr, first_seen, last_seen, count)
VALUES (?, ?, ?, ?, ?, 1)
ON CONFLICT (unique_id) DO UPDATE
SET protocol = excluded.protocol, remote_addr = excluded.remote_addr,
    first_seen = min(first_seen, excluded.first_seen),
    last_seen = max(last_seen, excluded.last_seen),
    count = count + 1
"""


class SqliteStore(SqliteEvents, SqliteAccess):
    """``Store`` on SQLite. ``url``: ``sqlite:///relative/path.db``,
    ``sqlite:////absolute/path.db`` or ``sqlite:///:memory:``."""

    kind = "sqlite"

    def __init__(self, url: str) -> None:
        self.path = path_of(url)
        self._executor: ThreadPoolExecutor | None = None
        self._db_or_none: SqliteDb | None = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            self._db_or_none = await self._run(SqliteDb.connect, self.path)
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            if self._db_or_none is not None:
                await self._run(self._db_or_none.close)
        finally:
            self._db_or_none = None
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)  # idle by now: returns at once

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            raise RuntimeError("SqliteStore is not open")
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    @property
    def _db(self) -> SqliteDb:
        if self._db_or_none is None:
            raise RuntimeError("SqliteStore is not open")
        return self._db_or_none

    async def ping(self) -> None:
        await self._run(self._db.ping)

    def rejects_rows(self, error: Exception) -> bool:
        # OperationalError (locked, disk full, I/O) is the store's; these are the data's
        rows_fault = (
            sqlite3.IntegrityError | sqlite3.DataError | ValueError | TypeError | ArithmeticError
        )
        return isinstance(error, rows_fault)

    async def migrate(self) -> list[str]:
        return await self._run(self._db.migrate)

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
        db, wanted_rules = self._db, dict(rules or {})
        return await self._run(
            db.put_vehicle, vehicle_id, plate, vin, loan_ref, units, wanted_rules, loan_state, group
        )

    async def get_vehicle(self, vehicle_id: str) -> Vehicle | None:
        vehicles = await self._run(self._db.vehicles, "WHERE vehicle_id = ?", vehicle_id)
        return vehicles[0] if vehicles else None

    async def delete_vehicle(self, vehicle_id: str) -> bool:
        return await self._run(self._db.delete_vehicle, vehicle_id)

    async def list_vehicles(self, *, after: str | None, limit: int) -> list[Vehicle]:
        db, limit = self._db, max(limit, 0)
        if after is None:
            return await self._run(db.vehicles, "ORDER BY vehicle_id LIMIT ?", limit)
        where = "WHERE vehicle_id > ? ORDER BY vehicle_id LIMIT ?"
        return await self._run(db.vehicles, where, after, limit)

    async def all_vehicles(self) -> list[Vehicle]:
        return await self._run(self._db.vehicles, "ORDER BY vehicle_id")

    async def all_units(self) -> list[Unit]:
        return await self._run(self._db.all_units)

    async def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        if not rows:
            return 0
        return await self._run(self._db.insert_positions, rows)

    async def latest_positions(self) -> list[StoredPosition]:
        return await self._run(self._db.latest_positions)

    async def track(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[StoredPosition]:
        return await self._run(self._db.track, unique_ids, start, end, limit, after, position)

    async def track_rows(
        self,
        unique_ids: Sequence[str],
        *,
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[TrackRow]:
        return await self._run(self._db.track, unique_ids, start, end, limit, after, track_row)

    async def record_unknown(self, sightings: Sequence[UnknownSighting]) -> None:
        if sightings:
            await self._run(self._db.record_unknown, sightings)

    async def unknown_units(self, *, limit: int) -> list[UnknownUnit]:
        return await self._run(self._db.unknown_units, max(limit, 0))

    async def delete_positions_before(self, cutoff: datetime) -> int:
        return await self._run(self._db.delete_positions, "fix_time < ?", to_us(cutoff))

    async def purge_vehicle_positions(self, vehicle_id: str) -> int:
        return await self._run(self._db.delete_positions, "vehicle_id = ?", vehicle_id)

    async def reindex_closed_month(self, now: datetime) -> str | None:
        return None  # one table, no monthly partitions


class SqliteDb(EventsDb, AccessDb):
    """The blocking adapter: one connection, used from one thread only."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, path: str) -> SqliteDb:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; ours are explicit.
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # NORMAL may lose the last commits
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return cls(conn)

    def close(self) -> None:
        self.conn.close()

    def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    @contextmanager
    def transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """IMMEDIATE takes the write lock up front: no upgrade deadlock between processes."""
        self.conn.execute(begin)
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # also when COMMIT itself failed (busy, disk full)
                self.conn.execute("ROLLBACK")
            raise

    def migrate(self) -> list[str]:
        files = sorted(migrations_dir("sqlite").glob("*.sql"))
        applied: list[str] = []
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
            )
            done = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
            for path in files:
                if path.name in done:
                    continue
                for statement in statements(path.read_text(encoding="utf-8")):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                    (path.name, to_us(datetime.now(UTC))),
                )
                applied.append(path.name)
        return applied

    def put_vehicle(
        self,
        vehicle_id: str,
        plate: str | None,
        vin: str | None,
        loan_ref: str | None,
        units: Sequence[Unit],
        rules: dict[str, Any],
        loan_state: LoanState,
        group: str | None,
    ) -> tuple[Vehicle, bool]:
        wanted = vehicle_units(vehicle_id, units)
        now = to_us(datetime.now(UTC))
        with self.transaction() as conn:
            for unit in wanted:  # in unique_id order, like PostGIS: the first conflict
                row = conn.execute(
                    "SELECT vehicle_id FROM units WHERE unique_id = ?", (unit.unique_id,)
                ).fetchone()
                if row is not None and row[0] != vehicle_id:
                    raise UnitConflict(unit.unique_id, row[0])
            old = conn.execute(
                "SELECT loan_state, loan_state_since FROM vehicles WHERE vehicle_id = ?",
                (vehicle_id,),
            ).fetchone()
            created = old is None
            # loan_state_since moves only when loan_state does (or the vehicle is new)
            since = now if old is None or old[0] != loan_state else old[1]
            conn.execute(
                "INSERT INTO vehicles (vehicle_id, plate, vin, loan_ref, updated_at, rules,"
                " loan_state, loan_state_since, group_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (vehicle_id) DO UPDATE"
                " SET plate = excluded.plate, vin = excluded.vin, loan_ref = excluded.loan_ref,"
                " updated_at = excluded.updated_at, rules = excluded.rules,"
                " loan_state = excluded.loan_state, loan_state_since = excluded.loan_state_since,"
                " group_id = excluded.group_id",
                (vehicle_id, plate, vin, loan_ref, now, json_text(rules), loan_state, since, group),
            )
            conn.execute(
                "DELETE FROM units WHERE vehicle_id = ?"
                " AND unique_id NOT IN (SELECT value FROM json_each(?))",
                (vehicle_id, orjson.dumps([u.unique_id for u in wanted]).decode()),
            )
            conn.executemany(
                "INSERT INTO units (unique_id, vehicle_id, kind, silent_after_s)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (unique_id) DO UPDATE"
                " SET kind = excluded.kind, silent_after_s = excluded.silent_after_s",
                [(u.unique_id, vehicle_id, u.kind, u.silent_after_s) for u in wanted],
            )
            # a registered unit is no longer an unknown one
            conn.executemany(
                "DELETE FROM unknown_units WHERE unique_id = ?", [(u.unique_id,) for u in wanted]
            )
            assignees = conn.execute(
                "SELECT user_id FROM vehicle_assignees WHERE vehicle_id = ? ORDER BY user_id",
                (vehicle_id,),
            ).fetchall()
        vehicle = Vehicle(
            vehicle_id,
            plate,
            vin,
            loan_ref,
            wanted,
            from_us(now),
            rules,
            loan_state,
            from_us_or_none(since),
            tuple(user_id for (user_id,) in assignees),
            group,
        )
        return vehicle, created

    def vehicles(self, where: str, *args: Any) -> list[Vehicle]:
        """Vehicles selected by ``where``, their units and their assignees
        loaded in one more query each."""
        with self.transaction("BEGIN") as conn:  # one snapshot for every read
            rows = conn.execute(
                "SELECT vehicle_id, plate, vin, loan_ref, updated_at, rules, loan_state,"
                f" loan_state_since, group_id FROM vehicles {where}",
                args,
            ).fetchall()
            ids = orjson.dumps([r[0] for r in rows]).decode()
            unit_rows = conn.execute(
                "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units"
                " WHERE vehicle_id IN (SELECT value FROM json_each(?)) ORDER BY unique_id",
                (ids,),
            ).fetchall()
            assignee_rows = conn.execute(
                "SELECT vehicle_id, user_id FROM vehicle_assignees"
                " WHERE vehicle_id IN (SELECT value FROM json_each(?)) ORDER BY user_id",
                (ids,),
            ).fetchall()
        units: dict[str, list[Unit]] = {}
        for u in unit_rows:
            units.setdefault(u[1], []).append(Unit(*u))
        assignees: dict[str, list[str]] = {}
        for vid, user_id in assignee_rows:
            assignees.setdefault(vid, []).append(user_id)
        return [
            Vehicle(
                vid,
                plate,
                vin,
                loan_ref,
                tuple(units.get(vid, ())),
                from_us(updated_at),
                orjson.loads(rules),
                loan_state,
                from_us_or_none(since),
                tuple(assignees.get(vid, ())),
                group,
            )
            for vid, plate, vin, loan_ref, updated_at, rules, loan_state, since, group in rows
        ]

    def delete_vehicle(self, vehicle_id: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute("DELETE FROM vehicles WHERE vehicle_id = ?", (vehicle_id,))
        return cursor.rowcount > 0

    def all_units(self) -> list[Unit]:
        rows = self.conn.execute(
            "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units ORDER BY unique_id"
        )
        return [Unit(*r) for r in rows]

    def insert_positions(self, rows: Sequence[StoredPosition]) -> int:
        params = [
            (p.unique_id, p.vehicle_id, p.protocol, to_us(p.fix_time), to_us(p.server_time),
             p.lat, p.lon, p.valid, p.speed_kmh, p.course_deg, p.altitude_m, p.accuracy_m,
             p.satellites, orjson.dumps(p.attributes).decode())
            for p in rows
        ]  # fmt: skip
        with self.transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                f"INSERT OR IGNORE INTO positions ({POSITION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
            return conn.total_changes - before

    def latest_positions(self) -> list[StoredPosition]:
        return [position(r) for r in self.conn.execute(LATEST)]

    def track(
        self,
        unique_ids: Sequence[str],
        start: datetime,
        end: datetime,
        limit: int,
        after: tuple[datetime, str] | None,
        row: Callable[[tuple[Any, ...]], T],
    ) -> list[T]:
        if not unique_ids or limit <= 0:
            return []
        ids = orjson.dumps(list(unique_ids)).decode()
        if after is None:
            sql = TRACK.format(after="")
            args: tuple[Any, ...] = (ids, to_us(start), to_us(end), limit)
        else:
            sql = TRACK.format(after="AND (fix_time, unique_id) > (?, ?)")
            args = (ids, to_us(start), to_us(end), to_us(after[0]), after[1], limit)
        return [row(r) for r in self.conn.execute(sql, args)]

    def record_unknown(self, sightings: Sequence[UnknownSighting]) -> None:
        params = [
            (s.unique_id, s.protocol, s.remote_addr, to_us(s.seen_at), to_us(s.seen_at))
            for s in sightings
        ]
        with self.transaction() as conn:
            conn.executemany(UPSERT_UNKNOWN, params)

    def delete_positions(self, where: str, value: Any) -> int:
        """Retention. No index on fix_time or vehicle_id (inserts would pay for
        it): the delete scans the table, fine for an hourly or admin job."""
        with self.transaction() as conn:
            return conn.execute(f"DELETE FROM positions WHERE {where}", (value,)).rowcount

    def unknown_units(self, limit: int) -> list[UnknownUnit]:
        rows = self.conn.execute(
            "SELECT unique_id, protocol, remote_addr, first_seen, last_seen, count"
            " FROM unknown_units ORDER BY last_seen DESC, unique_id LIMIT ?",
            (limit,),
        )
        return [
            UnknownUnit(uid, protocol, addr, from_us(first), from_us(last), count)
            for uid, protocol, addr, first, last, count in rows
        ]


def path_of(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (SQLAlchemy's convention)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(
            f"SQLite URL must be sqlite:///relative/path.db, sqlite:////absolute/path.db"
            f" or sqlite:///:memory:, got {url!r}"
        )
    return url[len(prefix) :]


def statements(script: str) -> Iterator[str]:
    """The SQL statements of a script, each complete (triggers included)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""


def position(row: tuple[Any, ...]) -> StoredPosition:
    (uid, vid, protocol, fix, server, lat, lon, valid, speed, course, alt, acc, sats, attrs) = row
    return StoredPosition(uid, vid, protocol, from_us(fix), from_us(server), lat, lon, bool(valid),
                          speed, course, alt, acc, sats, orjson.loads(attrs))  # fmt: skip


def track_row(row: tuple[Any, ...]) -> TrackRow:
    (uid, vid, protocol, fix, server, lat, lon, valid, speed, course, alt, acc, sats, attrs) = row
    return (uid, vid, protocol, utc_text(fix), utc_text(server), lat, lon, bool(valid),
            speed, course, alt, acc, sats, attrs)  # fmt: skip
