"""Rebuilding a closed month's indexes (migration 0007): PostGIS rebuilds one
partition per call, the oldest due first, each once, and only a day after its
month ends; reads go on as before. SQLite has no partitions to rebuild. The
retention loop does it (``retention.reindex_closed_months``, read in
tests/tracker/test_settings.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from tracker.devices import Registry
from tracker.retention import Retention
from tracker.store import StoredPosition, open_store
from tracker.store.postgis import PostgisStore


def fix(when: datetime) -> StoredPosition:
    return StoredPosition(
        unique_id="u1",
        vehicle_id="v1",
        protocol="gt06",
        fix_time=when,
        server_time=when,
        lat=-6.2,
        lon=106.8,
    )


ROWS = [fix(datetime(2026, month, day, 12, tzinfo=UTC)) for month in (9, 10, 11) for day in (1, 30)]


@pytest.fixture
async def store(postgis_store: PostgisStore) -> PostgisStore:
    await postgis_store.insert_positions(ROWS)
    return postgis_store


@pytest.mark.postgis
async def test_closed_months_are_rebuilt_once_each_oldest_first(
    store: PostgisStore, postgis_url: str
) -> None:
    conn = await asyncpg.connect(postgis_url)
    files = (  # each index of a partition gets a new file when it is rebuilt
        "SELECT array_agg(c.relfilenode ORDER BY c.relname) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1::regclass"
    )
    september = await conn.fetchval(files, "positions_y2026m09")
    october = await conn.fetchval(files, "positions_y2026m10")
    mid_november = datetime(2026, 11, 15, tzinfo=UTC)
    assert await store.reindex_closed_month(mid_november) == "positions_y2026m09"
    rebuilt = await conn.fetchval(files, "positions_y2026m09")
    assert len(rebuilt) == len(september) == 4  # primary key, geometry, both track indexes
    assert not set(rebuilt) & set(september)
    assert await conn.fetchval(files, "positions_y2026m10") == october
    await conn.close()
    assert await store.reindex_closed_month(mid_november) == "positions_y2026m10"
    assert await store.reindex_closed_month(mid_november) is None  # November is not over
    # November ends on December 1st: a day's grace for fixes units still buffer
    assert await store.reindex_closed_month(datetime(2026, 12, 1, 23, tzinfo=UTC)) is None
    december_2nd = datetime(2026, 12, 2, 1, tzinfo=UTC)
    assert await store.reindex_closed_month(december_2nd) == "positions_y2026m11"
    assert await store.reindex_closed_month(december_2nd) is None
    start = datetime(2026, 9, 1, tzinfo=UTC)
    track = await store.track(["u1"], start=start, end=start + timedelta(days=91), limit=100)
    assert track == ROWS


@pytest.mark.postgis
async def test_an_interrupted_rebuilds_invalid_index_is_dropped_first(
    store: PostgisStore, postgis_url: str
) -> None:
    # REINDEX CONCURRENTLY cut short leaves an invalid "<index>_ccnew" that every
    # insert into the partition still pays for. A failed CREATE INDEX
    # CONCURRENTLY leaves one behind just the same.
    conn = await asyncpg.connect(postgis_url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY positions_y2026m09_track_idx_ccnew"
                " ON positions_y2026m09 (vehicle_id)"
            )
        invalid = "SELECT count(*) FROM pg_index WHERE NOT indisvalid"
        assert await conn.fetchval(invalid) == 1
        assert await store.reindex_closed_month(datetime(2026, 10, 15, tzinfo=UTC)) == (
            "positions_y2026m09"
        )
        assert await conn.fetchval(invalid) == 0
    finally:
        await conn.close()


@pytest.mark.postgis
async def test_a_cancelled_rebuild_leaves_no_lock_behind(
    store: PostgisStore, postgis_url: str
) -> None:
    # The rebuild's advisory lock is a session's (REINDEX CONCURRENTLY runs in no
    # transaction), and its connection goes back to the pool: cut short
    # mid-REINDEX, the rebuild must not keep it.
    blocker = await asyncpg.connect(postgis_url)
    conn = await asyncpg.connect(postgis_url)
    advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE positions_y2026m09 IN EXCLUSIVE MODE")
        rebuild = asyncio.create_task(
            store.reindex_closed_month(datetime(2026, 10, 15, tzinfo=UTC))
        )
        for _ in range(200):  # until the REINDEX waits on the table lock
            if await conn.fetchval(advisory) and await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'REINDEX%'"
                " AND wait_event_type = 'Lock'"
            ):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the rebuild never waited on the lock")
        rebuild.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rebuild
        await blocking.rollback()
        for _ in range(200):  # the unlock may land a moment after the cancel
            if not await conn.fetchval(advisory):
                break
            await asyncio.sleep(0.02)
        assert await conn.fetchval(advisory) == 0
    finally:
        await blocker.close()
        await conn.close()
    # and the next call (this process's, or another server's) can take it
    assert await store.reindex_closed_month(datetime(2026, 10, 15, tzinfo=UTC)) == (
        "positions_y2026m09"
    )


async def test_sqlite_has_nothing_to_rebuild(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/tracker.db")
    await store.open()
    try:
        await store.insert_positions(ROWS)
        assert await store.reindex_closed_month(datetime(2027, 1, 1, tzinfo=UTC)) is None
    finally:
        await store.close()


@pytest.mark.postgis
async def test_retention_rebuilds_a_closed_month_and_counts_it(store: PostgisStore) -> None:
    stats: Counter[str] = Counter()
    retention = Retention(
        store,
        Registry(store),
        stats,
        positions_days=365.0,
        closed_purge_days=30.0,
        clock=lambda: datetime(2026, 10, 15, tzinfo=UTC),
    )
    assert await retention.reindex() == "positions_y2026m09"
    assert await retention.reindex() is None
    assert stats["retention.partitions_reindexed"] == 1
