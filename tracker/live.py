"""In-process pub/sub for live positions: ``publish`` never awaits.

Each message is encoded once and shared by every subscriber. A subscriber that
falls behind keeps only the newest position per unit (coalesced), so its
backlog is bounded by the number of units it watches, never by the rate of
positions. Late replays of old buffered fixes (not the vehicle's newest) go
into a small bounded queue; when it overflows, the oldest are dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque

ALL = "*"


class Subscriber:
    def __init__(self, vehicle_ids: frozenset[str] | None, *, max_extra: int = 256) -> None:
        self.vehicle_ids = vehicle_ids  # None: every vehicle
        self._latest: dict[str, str] = {}
        self._extra: deque[str] = deque(maxlen=max_extra)
        self._ready = asyncio.Event()
        self.coalesced = 0

    def offer(self, key: str, message: str, latest: bool) -> None:
        if latest:
            if key in self._latest:
                self.coalesced += 1
            self._latest[key] = message
        else:
            self._extra.append(message)
        self._ready.set()

    async def next_batch(self) -> list[str]:
        """Wait for messages; return all pending ones, replays first."""
        await self._ready.wait()
        self._ready.clear()
        batch = [*self._extra, *self._latest.values()]
        self._extra.clear()
        self._latest.clear()
        return batch


class Hub:
    def __init__(self) -> None:
        self._everything: set[Subscriber] = set()
        self._by_vehicle: dict[str, set[Subscriber]] = {}

    def subscribe(self, vehicle_ids: frozenset[str] | None) -> Subscriber:
        subscriber = Subscriber(vehicle_ids)
        if vehicle_ids is None:
            self._everything.add(subscriber)
        else:
            for vehicle_id in vehicle_ids:
                self._by_vehicle.setdefault(vehicle_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._everything.discard(subscriber)
        for vehicle_id in subscriber.vehicle_ids or ():
            watchers = self._by_vehicle.get(vehicle_id)
            if watchers is not None:
                watchers.discard(subscriber)
                if not watchers:
                    del self._by_vehicle[vehicle_id]

    @property
    def subscriber_count(self) -> int:
        unique = set(self._everything)
        for watchers in self._by_vehicle.values():
            unique |= watchers
        return len(unique)

    def publish(self, vehicle_id: str, key: str, message: str, *, latest: bool = True) -> None:
        """Offer ``message`` about ``vehicle_id`` to its watchers. Messages with
        the same ``key`` (a unit's positions) replace each other while waiting."""
        for subscriber in self._everything:
            subscriber.offer(key, message, latest)
        for subscriber in self._by_vehicle.get(vehicle_id, ()):
            subscriber.offer(key, message, latest)
