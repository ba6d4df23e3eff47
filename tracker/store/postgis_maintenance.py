"""Rebuilding a closed month's indexes (migration 0007 says why), on PostGIS.

One partition per call, with ``REINDEX TABLE CONCURRENTLY``: inserts and reads
go on meanwhile. An interrupted rebuild (the server stopped, the connection
dropped) leaves invalid ``*_ccnew``/``*_ccold`` indexes behind that every insert
into the partition still maintains; each call drops those first. An advisory
lock keeps servers sharing the database from rebuilding at the same time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from tracker.store.postgis_startup import partition_months

if TYPE_CHECKING:
    import asyncpg

REINDEX_LOCK = 0x7472_6B72_7269_6E01  # pg_try_advisory_lock key: one rebuilder at a time
GRACE = timedelta(days=1)  # after the month ends, for the last fixes buffered by units

LEFTOVERS = r"""
SELECT c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
WHERE NOT i.indisvalid AND t.relname ~ '^positions_y\d{4}m\d{2}$' AND c.relname ~ '_cc(new|old)\d*$'
"""


async def reindex_closed_month(pool: asyncpg.Pool[asyncpg.Record], now: datetime) -> str | None:
    """Rebuild the indexes of the oldest partition whose month ended more than
    ``GRACE`` before ``now`` and that was not rebuilt since; return its name, or
    None when none is due (or another server holds the lock)."""
    async with pool.acquire() as conn:
        # released with the connection too: the pool's reset unlocks everything
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REINDEX_LOCK):
            return None
        try:
            for row in await conn.fetch(LEFTOVERS):
                await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{row[0]}"')
            done = {row[0] for row in await conn.fetch("SELECT name FROM reindexed_partitions")}
            for year, month in sorted(await partition_months(conn)):
                name = f"positions_y{year:04d}m{month:02d}"
                end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
                if name in done or end + GRACE > now:
                    continue
                await conn.execute(f"REINDEX TABLE CONCURRENTLY {name}")
                await conn.execute(
                    "INSERT INTO reindexed_partitions (name, reindexed_at) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO UPDATE SET reindexed_at = EXCLUDED.reindexed_at",
                    name,
                    now,
                )
                return name
            return None
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", REINDEX_LOCK)
