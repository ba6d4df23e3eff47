"""Where rules meet I/O: feed the engine, store its events, push them live.

``Events`` takes each committed batch and every report a unit makes from the
pipeline, runs the pure ``RuleEngine`` and queues what it returns. A writer
task stores the queued events in one transaction each (which also queues
their webhook deliveries), then publishes them on the live hub. A clock task
fires silence deadlines within a second. Last-seen times are saved every few
seconds so silence survives a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tracker import views
from tracker.aio import cancel_all
from tracker.live import Hub
from tracker.rules import RuleEngine
from tracker.store import Event, Store, StoredPosition, Unit

log = logging.getLogger(__name__)

TICK_S = 0.25
SAVE_SEEN_S = 5.0
GATHERING_S = 60.0


class Events:
    def __init__(
        self,
        store: Store,
        engine: RuleEngine,
        hub: Hub,
        stats: Counter[str],
        *,
        clock: Callable[[], datetime],
        on_stored: Callable[[Sequence[Event]], None] = lambda events: None,
        latest_fixes: Callable[[], Iterable[tuple[Unit, StoredPosition]]] = lambda: (),
    ) -> None:
        self._latest_fixes = latest_fixes
        self._store = store
        self.engine = engine
        self._hub = hub
        self.stats = stats
        self.clock = clock
        self._on_stored = on_stored
        self._queue: list[Event] = []
        self._queued = asyncio.Event()
        self._seen: dict[str, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, risk_window: timedelta, units: Sequence[Unit] | None = None) -> None:
        """Restore open alerts, silence deadlines and risk-site visits, then run.
        ``units``: the registered units when the caller has them (the server's
        registry, loaded already), else read from the store."""
        now = self.clock()
        visits, open_alerts, last_seen = await asyncio.gather(
            self._store.events(types=["risk_site_visit"], since=now - risk_window, limit=100_000),
            self._store.open_alerts(),
            self._store.last_seen(),
        )
        if units is None:
            units = await self._store.all_units()
        self.engine.restore(open_alerts, last_seen, units, visits, now)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="events-writer"),
            asyncio.create_task(self._clock_loop(), name="events-clock"),
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        await self._flush()

    # inputs from the pipeline (synchronous: never blocks a position)

    def committed(self, rows: Sequence[StoredPosition]) -> None:
        now = self.clock()
        self.stats["rule_evaluations"] += len(rows)
        heard: dict[str, datetime] = {}  # a unit's fixes in one batch: one report, the last
        for row in rows:
            last = heard.get(row.unique_id)
            if last is None or row.server_time > last:
                heard[row.unique_id] = row.server_time
        for unique_id, when in heard.items():
            self._saw(unique_id, when)
        self._emit(self.engine.positions(rows, now))

    def reported(self, unique_id: str, when: datetime, attributes: dict[str, Any]) -> None:
        self._saw(unique_id, when)
        if attributes:
            self._emit(self.engine.alarms(unique_id, attributes, when, when))

    def tick(self) -> None:
        """Fire the silence deadlines that passed."""
        self._emit(self.engine.due(self.clock()))

    def look_for_gatherings(self) -> None:
        self._emit(self.engine.gatherings(self._latest_fixes(), self.clock()))

    # internals

    def _saw(self, unique_id: str, when: datetime) -> None:
        last = self._seen.get(unique_id)
        if last is None or when > last:
            self._seen[unique_id] = when
        self._emit(self.engine.report(unique_id, when))

    def _emit(self, events: list[Event]) -> None:
        if events:
            self._queue.extend(events)
            self._queued.set()

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            await self._flush_events()

    async def _flush_events(self) -> None:
        self._queued.clear()
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            stored = await self._store.insert_events(batch)
        except Exception as exc:
            log.error("%d events not stored, retrying: %s", len(batch), exc)
            self.stats["event_batches_failed"] += 1
            self._queue[:0] = batch
            await asyncio.sleep(1.0)
            self._queued.set()
            return
        self.stats["events"] += len(stored)
        open_alerts = self.engine.open
        for event in stored:
            self.stats[f"events.{event.type}"] += 1
            if event.alert_key is not None:  # still open: hold the stored one, with its seq
                key = (event.vehicle_id, event.alert_key)
                held = open_alerts.get(key)
                if held is not None and held.id == event.id:
                    open_alerts[key] = event
            body = views.event(event)
            body["event_type"] = body.pop("type")
            self._hub.publish(
                event.vehicle_id, f"event:{event.id}", {"type": "event", **body}, latest=False
            )
        self._on_stored(stored)

    async def _clock_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            ticks += 1
            self.tick()
            if ticks % round(SAVE_SEEN_S / TICK_S) == 0:
                await self._save_seen()
            if ticks % round(GATHERING_S / TICK_S) == 0:
                self.look_for_gatherings()

    async def _save_seen(self) -> None:
        seen, self._seen = self._seen, {}
        if seen:
            try:
                await self._store.save_last_seen(list(seen.items()))
            except Exception as exc:
                log.error("last-seen times not saved, retrying: %s", exc)
                for unique_id, when in seen.items():
                    self._seen.setdefault(unique_id, when)

    async def _flush(self) -> None:
        await self._flush_events()
        await self._save_seen()
