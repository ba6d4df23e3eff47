"""In-process pub/sub for live positions and events: ``publish`` never awaits.

Each message is encoded once and shared by every subscriber. A subscriber that
falls behind keeps only the newest position per unit (coalesced), so its
backlog is bounded by the number of units it watches, never by the rate of
positions. Late replays of old buffered fixes and events go into a small
bounded queue; when it overflows, the oldest are dropped.

Every message carries a ``cursor``. The hub keeps the last ``window``
messages, so a client that reconnects with the cursor of the last message it
saw gets what it missed, then live data; a cursor from before the window (or
from before a restart: cursors name the process) gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from typing import Any

import orjson

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
    def __init__(self, *, window: int = 10_000) -> None:
        self._everything: set[Subscriber] = set()
        self._by_vehicle: dict[str, set[Subscriber]] = {}
        self._boot = secrets.token_hex(4)
        self._seq = 0
        self._recent: deque[tuple[int, str, str]] = deque(maxlen=window)

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

    @property
    def cursor(self) -> str:
        """The cursor of the newest message (what a fresh client has seen)."""
        return f"{self._boot}-{self._seq}"

    def publish(
        self, vehicle_id: str, key: str, body: dict[str, Any], *, latest: bool = True
    ) -> None:
        """Encode ``body`` once, with its cursor, and offer it to the vehicle's
        watchers. Messages with the same ``key`` (a unit's positions) replace
        each other while waiting."""
        self._seq += 1
        body["cursor"] = f"{self._boot}-{self._seq}"
        message = orjson.dumps(body).decode()
        self._recent.append((self._seq, vehicle_id, message))
        for subscriber in self._everything:
            subscriber.offer(key, message, latest)
        for subscriber in self._by_vehicle.get(vehicle_id, ()):
            subscriber.offer(key, message, latest)

    def missed(self, cursor: str, vehicle_ids: frozenset[str] | None) -> list[str] | None:
        """Messages after ``cursor`` for these vehicles, or None when the cursor
        is unknown or older than the window (the client needs a snapshot)."""
        boot, _, seq_text = cursor.partition("-")
        if boot != self._boot or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self._seq or (self._recent and seq < self._recent[0][0] - 1):
            return None
        return [
            message
            for n, vehicle_id, message in self._recent
            if n > seq and (vehicle_ids is None or vehicle_id in vehicle_ids)
        ]
