"""Silence deadlines: a heap with one live entry per unit, O(log n) per change.

A unit's deadline is the last time it said anything plus its threshold. The
heap holds at most one entry per unit (plus stale ones when a threshold
shrank); an entry that pops after the unit spoke again is pushed back at the
unit's current deadline instead of firing. So a unit that reports every 10 s
costs one heap push per threshold period, not one per report.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[datetime, str]] = []
        self._deadline: dict[str, datetime] = {}
        self._queued: dict[str, datetime] = {}  # the entry the heap holds for a unit

    def __len__(self) -> int:
        return len(self._deadline)

    def set(self, unique_id: str, deadline: datetime) -> None:
        """The unit is due to say something by ``deadline``."""
        self._deadline[unique_id] = deadline
        queued = self._queued.get(unique_id)
        if queued is None or deadline < queued:
            self._queued[unique_id] = deadline
            heapq.heappush(self._heap, (deadline, unique_id))

    def restore(self, deadlines: Iterable[tuple[str, datetime]]) -> None:
        """Start-up: ``set`` for each unit, at once. A heap made in one pass costs
        O(n); a million pushes, O(n log n) and a Python call each."""
        if not self._deadline and not self._queued:  # the usual start: nothing yet
            self._deadline = dict(deadlines)
            self._queued = self._deadline.copy()
            self._heap = [(deadline, unique_id) for unique_id, deadline in self._queued.items()]
            heapq.heapify(self._heap)
            return
        for unique_id, deadline in deadlines:
            self._deadline[unique_id] = deadline
            queued = self._queued.get(unique_id)
            if queued is None or deadline < queued:
                self._queued[unique_id] = deadline
        self._heap = [(deadline, unique_id) for unique_id, deadline in self._queued.items()]
        heapq.heapify(self._heap)

    def forget(self, unique_id: str) -> None:
        self._deadline.pop(unique_id, None)
        self._queued.pop(unique_id, None)

    def deadline(self, unique_id: str) -> datetime | None:
        return self._deadline.get(unique_id)

    def next_due(self) -> datetime | None:
        """The earliest time ``pop_due`` may return something (may be stale: then
        ``pop_due`` returns nothing and this moves on)."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[tuple[str, datetime]]:
        """Units whose deadline passed, with that deadline; each fires once
        until ``set`` gives it a new deadline."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, unique_id = heapq.heappop(self._heap)
            if self._queued.get(unique_id) != when:
                continue  # stale: a newer entry stands for this unit
            current = self._deadline.get(unique_id)
            if current is None:
                del self._queued[unique_id]
            elif current > when:  # it spoke since: wait for the newer deadline
                self._queued[unique_id] = current
                heapq.heappush(self._heap, (current, unique_id))
            else:
                del self._queued[unique_id]
                del self._deadline[unique_id]
                due.append((unique_id, when))
        return due
