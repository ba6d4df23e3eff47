"""The latest-state cache: the newest stored position of every unit.

Updated after each commit; it never moves backwards in time when a unit
replays old buffered fixes. A vehicle's latest position is the newest of its
units', computed on read (a vehicle has one to three units), so it can never
disagree with the registry. The REST last-known endpoint and the websocket
snapshot read it, not the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from tracker.store import StoredPosition


class LatestState:
    def __init__(self) -> None:
        self._units: dict[str, StoredPosition] = {}
        self._seen: dict[str, datetime] = {}

    def load(self, rows: Iterable[StoredPosition]) -> None:
        """Start-up: what ``update`` does for each row, inlined (a million rows)."""
        units, seen = self._units, self._seen
        for row in rows:
            unique_id = row.unique_id
            current = units.get(unique_id)
            if current is None or row.fix_time > current.fix_time:
                units[unique_id] = row
            last = seen.get(unique_id)
            if last is None or row.server_time > last:
                seen[unique_id] = row.server_time

    def update(self, row: StoredPosition) -> bool:
        """Take a committed position; True when it is the unit's newest."""
        self.saw(row.unique_id, row.server_time)
        current = self._units.get(row.unique_id)
        if current is not None and current.fix_time >= row.fix_time:
            return False
        self._units[row.unique_id] = row
        return True

    def saw(self, unique_id: str, when: datetime) -> None:
        """The unit said something (a position, a heartbeat) at server time ``when``."""
        last = self._seen.get(unique_id)
        if last is None or when > last:
            self._seen[unique_id] = when

    def unit(self, unique_id: str) -> StoredPosition | None:
        return self._units.get(unique_id)

    def last_seen(self, unique_id: str) -> datetime | None:
        return self._seen.get(unique_id)

    def vehicle(self, unique_ids: Iterable[str], vehicle_id: str) -> StoredPosition | None:
        """The newest position among these units (a vehicle's units) stored
        for that vehicle: a unit moved from another car brings none of its fixes."""
        best: StoredPosition | None = None
        for unique_id in unique_ids:
            row = self._units.get(unique_id)
            if (
                row is not None
                and row.vehicle_id == vehicle_id
                and (best is None or row.fix_time > best.fix_time)
            ):
                best = row
        return best
