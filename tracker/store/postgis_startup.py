"""What the server reads once, at start-up: every vehicle and each unit's newest
position. With a million units these are the longest reads it makes, so they
are shaped for it: whole tables in one query each (not pages), one index probe
per unit per month kept at most (newest month first), and shared strings for
the values a million rows repeat.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, get_args

import asyncpg

from tracker.store.base import LoanState, StoredPosition, Unit, UnitKind, Vehicle

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

PARTITION_NAME = re.compile(r"positions_y(\d{4})m(\d{2})")

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

# LATEST within one monthly partition, for the units in {units}. On the whole
# table each unit's probe reads every partition's index (a merge of them all);
# a month at a time, newest first, a unit found there needs no older month.
LATEST_IN = f"""
SELECT {POSITION_FIELDS}
FROM {{units}} CROSS JOIN LATERAL (
    SELECT * FROM {{partition}} p
    WHERE p.unique_id = u.unique_id
    ORDER BY p.fix_time DESC
    LIMIT 1
) p
"""

# rules: NULL for the usual '{}' saves decoding a million empty JSON objects
VEHICLE_FIELDS = (
    "vehicle_id, plate, vin, loan_ref, updated_at, NULLIF(rules, '{}'), loan_state,"
    " loan_state_since, group_id"
)

# The one str object for each value of these columns: a million vehicles share
# two, instead of holding a million copies.
KINDS = {kind: kind for kind in get_args(UnitKind)}
LOAN_STATES = {state: state for state in get_args(LoanState)}


class PostgisStartup:
    """The start-up reads of ``PostgisStore`` (see the module docstring)."""

    @property
    def _pool(self) -> asyncpg.Pool[asyncpg.Record]:
        raise NotImplementedError  # PostgisStore's

    async def all_vehicles(self) -> list[Vehicle]:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(f"SELECT {VEHICLE_FIELDS} FROM vehicles ORDER BY vehicle_id")
            unit_rows = await conn.fetch(
                "SELECT unique_id, vehicle_id, kind, silent_after_s FROM units ORDER BY unique_id"
            )
            assignee_rows = await conn.fetch(
                "SELECT vehicle_id, user_id FROM vehicle_assignees ORDER BY user_id"
            )
        return assemble_vehicles(rows, unit_rows, assignee_rows)

    async def latest_positions(self) -> list[StoredPosition]:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            # a million short probes: compiling the plan would cost more than it saves
            await conn.execute("SET LOCAL jit = off")
            try:
                rows: list[asyncpg.Record] | None = await _latest_by_partition(conn)
            except asyncpg.UndefinedTableError:  # a month dropped meanwhile (retention)
                rows = None
        if rows is None:
            rows = await self._pool.fetch(LATEST)
        return [StoredPosition(*r) for r in rows]


def assemble_vehicles(
    rows: Sequence[asyncpg.Record],
    unit_rows: Sequence[asyncpg.Record],
    assignee_rows: Sequence[asyncpg.Record],
) -> list[Vehicle]:
    """Vehicles from rows of ``VEHICLE_FIELDS``, with their units (rows of
    unique_id, vehicle_id, kind, silent_after_s) and assignees (vehicle_id,
    user_id), each in the order given."""
    units: dict[str, list[Unit]] = {}
    for unique_id, vehicle_id, kind, silent_after_s in unit_rows:
        units.setdefault(vehicle_id, []).append(
            Unit(unique_id, vehicle_id, KINDS.get(kind, kind), silent_after_s)
        )
    assignees: dict[str, list[str]] = {}
    for vehicle_id, user_id in assignee_rows:
        assignees.setdefault(vehicle_id, []).append(user_id)
    return [
        Vehicle(
            vehicle_id,
            plate,
            vin,
            loan_ref,
            tuple(units.get(vehicle_id, ())),
            updated_at,
            {} if rules is None else rules,
            LOAN_STATES.get(loan_state, loan_state),
            since,
            tuple(assignees.get(vehicle_id, ())),
            group,
        )
        for vehicle_id, plate, vin, loan_ref, updated_at, rules, loan_state, since, group in rows
    ]


async def partition_months(conn: PoolConnectionProxy[asyncpg.Record]) -> set[tuple[int, int]]:
    """(year, month) of every partition of positions, as the catalog has them now."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'positions'::regclass"
    )
    months = set()
    for row in rows:
        if match := PARTITION_NAME.fullmatch(row["relname"]):
            months.add((int(match[1]), int(match[2])))
    return months


async def _latest_by_partition(
    conn: PoolConnectionProxy[asyncpg.Record],
) -> list[asyncpg.Record]:
    """``LATEST``, one monthly partition at a time, newest first."""
    months = sorted(await partition_months(conn), reverse=True)
    found: list[asyncpg.Record] = []
    wanted: list[str] | None = None  # units still without a position; None: every unit
    for year, month in months:
        partition = f"positions_y{year:04d}m{month:02d}"
        if wanted is None:
            rows = await conn.fetch(LATEST_IN.format(units="units u", partition=partition))
            if len(months) > 1:
                wanted = [r[0] for r in await conn.fetch("SELECT unique_id FROM units")]
        elif wanted:
            units = "unnest($1::text[]) AS u(unique_id)"
            rows = await conn.fetch(LATEST_IN.format(units=units, partition=partition), wanted)
        else:
            break
        found += rows
        if wanted is not None and rows:
            got = {r[0] for r in rows}
            wanted = [unique_id for unique_id in wanted if unique_id not in got]
    found.sort(key=itemgetter(0))  # by unique_id; "C" collation orders as Python does
    return found
