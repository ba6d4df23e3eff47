"""How PostGIS takes a batch of positions: a COPY straight into ``positions``
with the geometry as EWKB, and, for a batch holding a fix already stored, the
staging table and ``ON CONFLICT DO NOTHING``, which every batch then takes for
``DEDUPLICATE_FOR_S``. What each way stores is held to the same rows by
tests/integration/test_store_contract.py; here, the geometry and the switch."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest

from tests.pgserver import PgServer
from tracker.store import StoredPosition, postgis
from tracker.store.postgis import DEDUPLICATE_FOR_S, PostgisStore

pytestmark = pytest.mark.postgis

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def fix(n: int, *, lat: float = -6.2, lon: float = 106.8) -> StoredPosition:
    when = T0 + timedelta(seconds=n)
    return StoredPosition("u1", "v1", "gt06", when, when, lat, lon)


POINTS = "SELECT ST_X(geom), ST_Y(geom), ST_SRID(geom) FROM positions ORDER BY fix_time"


async def points(url: str) -> list[tuple[float, float, int]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(POINTS)]
    finally:
        await conn.close()


async def test_a_batch_goes_straight_in_with_its_point(
    postgis_store: PostgisStore, postgis_url: str
) -> None:
    corners = [fix(0, lat=-89.999999, lon=-180.0), fix(1, lat=90.0, lon=179.123456789)]
    assert await postgis_store.insert_positions(corners) == 2
    assert postgis_store._deduplicate_until == 0.0  # no resend: nothing went through staging
    assert await points(postgis_url) == [(-180.0, -89.999999, 4326), (179.123456789, 90.0, 4326)]


async def test_a_resend_goes_through_staging_and_so_do_the_batches_after_it(
    postgis_store: PostgisStore, postgis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(postgis.time, "monotonic", lambda: now[0])
    assert await postgis_store.insert_positions([fix(0), fix(1)]) == 2
    # a resend of fix 1 beside two new fixes, one of them twice
    assert await postgis_store.insert_positions([fix(1), fix(2, lat=1.5), fix(3), fix(2)]) == 2
    assert postgis_store._deduplicate_until == 1000.0 + DEDUPLICATE_FOR_S
    now[0] += DEDUPLICATE_FOR_S - 1
    assert await postgis_store.insert_positions([fix(4, lon=-0.5)]) == 1  # still the staging way
    assert await postgis_store.insert_positions([fix(4)]) == 0  # skipped, not an error
    assert postgis_store._deduplicate_until == 1000.0 + DEDUPLICATE_FOR_S
    now[0] += 1
    assert await postgis_store.insert_positions([fix(5)]) == 1  # straight in again
    assert postgis_store._deduplicate_until == 1000.0 + DEDUPLICATE_FOR_S
    assert await points(postgis_url) == [
        (106.8, -6.2, 4326),
        (106.8, -6.2, 4326),
        (106.8, 1.5, 4326),  # the first of the key in the batch is kept
        (106.8, -6.2, 4326),
        (-0.5, -6.2, 4326),
        (106.8, -6.2, 4326),
    ]


async def test_a_database_without_postgis_yet_takes_batches_once_migrated(
    pg_server: PgServer,
) -> None:
    """The pool connects before the first migration creates PostGIS, so those
    connections cannot know its geometry type; open() connects afresh."""
    name = f"bare_{os.getpid()}"
    admin = await asyncpg.connect(pg_server.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        url = pg_server.database_url(name)
        store = PostgisStore(url)
        await store.open()
        try:
            assert await store.insert_positions([fix(0), fix(1)]) == 2
            assert await store.insert_positions([fix(1), fix(2)]) == 1
        finally:
            await store.close()
        assert await points(url) == [(106.8, -6.2, 4326)] * 3
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_a_batch_names_the_months_it_needs_a_partition_for() -> None:
    store = PostgisStore("postgresql://unused")
    store._partitions = {(2026, 11)}
    nov = [fix(n) for n in range(3)]
    assert store._new_months(nov) == set()
    dec = StoredPosition("u1", "v1", "gt06", datetime(2026, 12, 1, tzinfo=UTC), T0, 1.0, 2.0)
    assert store._new_months([*nov, dec]) == {(2026, 12)}
    assert store._new_months([dec, *nov]) == {(2026, 12)}  # by time, not by order
    # 01:00 on 1 December at UTC+2 is still November in UTC, as the partitions are
    plus2 = timezone(timedelta(hours=2))
    early = datetime(2026, 12, 1, 1, 0, tzinfo=plus2)
    assert store._new_months([StoredPosition("u1", "v1", "gt06", early, T0, 1.0, 2.0)]) == set()
    store._partitions = set()
    assert store._new_months(nov) == {(2026, 11)}
