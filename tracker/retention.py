"""Retention: positions are personal data, kept only as long as needed.

Every hour (and on demand), positions older than ``retention.positions_days``
are deleted (on PostGIS by dropping whole monthly partitions), and the tracks
of vehicles whose loan has been ``closed`` for ``retention.closed_purge_days``
are purged. Each run reports what it removed: a log line, counters, and the
last report at ``GET /api/v1/server``. After each hourly run (not the on-demand
ones: it may take minutes) the indexes of one monthly partition whose month is
over are rebuilt, when ``retention.reindex_closed_months`` is on (migration
0007 says why).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tracker.aio import cancel_all
from tracker.devices import Registry
from tracker.store import Store
from tracker.views import iso

log = logging.getLogger(__name__)

EVERY_S = 3600.0


class Retention:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        stats: Counter[str],
        *,
        positions_days: float,
        closed_purge_days: float,
        clock: Callable[[], datetime],
        reindex_closed_months: bool = True,
    ) -> None:
        self._store = store
        self._registry = registry
        self._stats = stats
        self.positions_days = positions_days
        self.closed_purge_days = closed_purge_days
        self.reindex_closed_months = reindex_closed_months
        self._clock = clock
        self.last_report: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run()
            except Exception:
                log.exception("retention run failed; next try in an hour")
            if self.reindex_closed_months:
                try:
                    await self.reindex()
                except Exception:
                    log.exception("rebuilding a closed month's indexes failed; next try in an hour")
            await asyncio.sleep(EVERY_S)

    async def reindex(self) -> str | None:
        """Rebuild the indexes of one closed month's partition, if one is due."""
        name = await self._store.reindex_closed_month(self._clock())
        if name is not None:
            self._stats["retention.partitions_reindexed"] += 1
            log.info("retention: rebuilt the indexes of %s, its month being over", name)
        return name

    async def run(self) -> dict[str, Any]:
        now = self._clock()
        cutoff = now - timedelta(days=self.positions_days)
        old = await self._store.delete_positions_before(cutoff)
        closed_before = now - timedelta(days=self.closed_purge_days)
        purged: dict[str, int] = {}
        for vehicle_id in self._registry.vehicle_ids():
            vehicle = self._registry.vehicle(vehicle_id)
            since = vehicle.loan_state_since if vehicle else None
            if not (
                vehicle and vehicle.loan_state == "closed" and since and since <= closed_before
            ):
                continue
            if count := await self._store.purge_vehicle_positions(vehicle_id):
                purged[vehicle_id] = count
        self._stats["retention.positions_deleted"] += old
        self._stats["retention.closed_loan_positions_purged"] += sum(purged.values())
        report = {
            "ran_at": iso(now),
            "older_than": iso(cutoff),
            "positions_deleted": old,
            "closed_loans_purged": purged,
        }
        self.last_report = report
        if old or purged:
            log.info(
                "retention: deleted %d positions before %s; purged closed loans %s",
                old,
                iso(cutoff),
                purged,
            )
        return report
