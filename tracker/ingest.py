"""The one path a position takes after its codec: filter, store, cache, publish.

``Pipeline.accept`` filters a decoded fix and turns it into a row;
``Pipeline.commit`` hands rows to the group commit and returns only once the
batch holding them is durable, the latest-state cache is updated and the live
hub has the messages. Only then may the caller acknowledge the unit.

Group commit: the first row to arrive while the writer is idle starts a short
timer (``max_delay_s``); a full batch (``max_rows``) is written at once; rows
that arrive while a batch is being written form the next batch, written as
soon as the current one commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from protocols import Position
from tracker import views
from tracker.cache import LatestState
from tracker.filters import drop_reason
from tracker.live import Hub
from tracker.store import Store, StoredPosition, Unit

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Observer(Protocol):
    """Who hears about committed positions and other reports (the rules)."""

    def committed(self, rows: Sequence[StoredPosition]) -> None: ...

    def reported(self, unique_id: str, when: datetime, attributes: dict[str, Any]) -> None: ...


class StoreUnavailable(Exception):
    """The batch holding these positions did not commit: do not acknowledge them."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return views.iso(value)
    return value


class Pipeline:
    def __init__(
        self,
        store: Store,
        cache: LatestState,
        hub: Hub,
        stats: Counter[str],
        *,
        max_rows: int = 2000,
        max_delay_s: float = 0.005,
        future_limit: timedelta = timedelta(days=1),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._cache = cache
        self._hub = hub
        self.stats = stats
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.future_limit = future_limit
        self.clock = clock
        self._pending: list[tuple[list[StoredPosition], asyncio.Future[None]]] = []
        self._pending_rows = 0
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.observer: Observer | None = None

    def accept(self, unit: Unit, protocol: str, position: Position) -> StoredPosition | None:
        """The row to store for this fix, or None if a filter drops it (counted)."""
        now = self.clock()
        last = self._cache.unit(unit.unique_id)
        reason = drop_reason(position, last, now, future_limit=self.future_limit)
        if reason is not None:
            self.stats[f"positions_dropped.{reason}"] += 1
            return None
        attributes = dict(position.attributes)
        if position.raw:
            attributes["raw"] = _jsonable(position.raw)
        return StoredPosition(
            unique_id=unit.unique_id,
            vehicle_id=unit.vehicle_id,
            protocol=protocol,
            fix_time=position.fix_time.astimezone(UTC),
            server_time=now,
            lat=position.lat,
            lon=position.lon,
            valid=position.valid,
            speed_kmh=max(0.0, position.speed_kmh),
            course_deg=position.course_deg,
            altitude_m=position.altitude_m,
            accuracy_m=position.accuracy_m,
            satellites=position.satellites,
            attributes=_jsonable(attributes),
        )

    def saw(self, unique_id: str, attributes: dict[str, Any] | None = None) -> None:
        """The unit said something that is not a stored position (heartbeat,
        login, a dropped fix); a heartbeat's ``attributes`` may carry alarms."""
        now = self.clock()
        self._cache.saw(unique_id, now)
        if self.observer is not None:
            self.observer.reported(unique_id, now, attributes or {})

    async def commit(self, rows: list[StoredPosition]) -> None:
        """Return once ``rows`` are durable, cached and published.

        Raises:
            StoreUnavailable: the batch failed; the caller must not acknowledge.
        """
        if not rows:
            return
        if self._writer is None:
            raise StoreUnavailable("the pipeline is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._pending_rows += len(rows)
        self.stats["positions_in"] += len(rows)
        self._has_work.set()
        if self._pending_rows >= self.max_rows:
            self._full.set()
        # shield: a unit that disconnects does not cancel the batch others wait on
        await asyncio.shield(future)

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="group-commit")

    async def stop(self) -> None:
        """Write what is pending, then stop the writer."""
        if self._writer is None:
            return
        while self._pending:
            await self._write_batch()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def _write_loop(self) -> None:
        idle = True
        while True:
            await self._has_work.wait()
            if idle and self._pending_rows < self.max_rows and self.max_delay_s > 0:
                # the writer was idle: give other units a moment to join this batch
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay_s)
            await self._write_batch()
            idle = not self._pending

    def _take_batch(self) -> tuple[list[StoredPosition], list[asyncio.Future[None]]]:
        rows: list[StoredPosition] = []
        futures: list[asyncio.Future[None]] = []
        while self._pending and (not rows or len(rows) + len(self._pending[0][0]) <= self.max_rows):
            group, future = self._pending.pop(0)
            rows.extend(group)
            futures.append(future)
        self._pending_rows -= len(rows)
        if not self._pending:
            self._has_work.clear()
        if self._pending_rows < self.max_rows:
            self._full.clear()
        return rows, futures

    async def _write_batch(self) -> None:
        rows, futures = self._take_batch()
        if not rows:
            return
        try:
            inserted = await self._store.insert_positions(rows)
        except Exception as exc:
            log.error("batch of %d positions not stored: %s", len(rows), exc)
            self.stats["batches_failed"] += 1
            for future in futures:
                if not future.done():
                    future.set_exception(StoreUnavailable(str(exc)))
            return
        self.stats["batches"] += 1
        self.stats["positions_stored"] += inserted
        self.stats["positions_deduplicated"] += len(rows) - inserted
        self._after_commit(rows)
        for future in futures:
            if not future.done():
                future.set_result(None)

    def _after_commit(self, rows: list[StoredPosition]) -> None:
        for row in rows:
            before = self._cache.unit(row.unique_id)
            if before is not None and before.fix_time == row.fix_time:
                continue  # a resend of what the unit already gave us
            latest = self._cache.update(row)
            body = views.live_position(row, latest=latest)
            self._hub.publish(row.vehicle_id, row.unique_id, body, latest=latest)
        if self.observer is not None:
            try:
                self.observer.committed(rows)
            except Exception:  # a rule bug must not hold back acknowledgements
                log.exception("rules failed on a batch of %d positions", len(rows))
                self.stats["rule_failures"] += 1
