"""The fences in force: stored records in, an in-memory index out.

Evaluation never queries the database per position: the rule engine gets an
immutable ``FenceIndex``, rebuilt off the event loop (a thread) whenever a
fence is created, replaced or deleted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shapely.geometry import shape

from geofences.index import FenceIndex
from geofences.model import Category, Fence, FenceError, shape_from_request, shape_to_geojson
from tracker.rules import RuleEngine
from tracker.store import GeofenceRecord, Store, Vehicle

Members = Callable[[str], frozenset[str]]  # a group's vehicle ids now


def to_fence(record: GeofenceRecord, members: Members | None = None) -> Fence:
    """The fence in force: a group's fence applies to the group's vehicles now."""
    category: Category = record.category  # type: ignore[assignment]  # checked on the way in
    if (group := record.details.get("group")) is not None:
        vehicle_ids: frozenset[str] | None = members(group) if members else frozenset()
    elif record.vehicle_ids is not None:
        vehicle_ids = frozenset(record.vehicle_ids)
    else:
        vehicle_ids = None
    return Fence(
        id=record.id,
        category=category,
        geometry=shape(record.geometry),  # type: ignore[arg-type]  # Polygon | MultiPolygon
        vehicle_ids=vehicle_ids,
        name=record.name,
    )


class Fences:
    def __init__(
        self,
        store: Store,
        engine: RuleEngine,
        clock: Callable[[], datetime],
        *,
        members: Members | None = None,
    ) -> None:
        """``members``: a group's vehicle ids (the registry's), for group fences."""
        self._store = store
        self._engine = engine
        self._clock = clock
        self._members = members
        self._records: dict[str, GeofenceRecord] = {}
        self._fences: dict[str, Fence] = {}  # built once per record, not at every change
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        records = await self._store.list_geofences()
        built = await asyncio.to_thread(lambda: [to_fence(r, self._members) for r in records])
        self._records = {r.id: r for r in records}
        self._fences = {f.id: f for f in built}
        await self._rebuild()

    async def _rebuild(self) -> None:
        """Put the fences in force. Only the index is built again (in a thread):
        the loop spends no time per fence, however many there are."""
        fences = list(self._fences.values())
        index = await asyncio.to_thread(FenceIndex, fences) if fences else None
        self._engine.set_fences(index, fences)

    def get(self, fence_id: str) -> GeofenceRecord | None:
        return self._records.get(fence_id)

    def vehicle_ids(self, fence_id: str) -> frozenset[str] | None:
        """The vehicles a fence in force applies to (a group's resolved to its
        members, as the rules see them); None: every vehicle."""
        return self._fences[fence_id].vehicle_ids

    def all(self) -> list[GeofenceRecord]:
        return sorted(self._records.values(), key=lambda r: r.id)

    async def create(
        self,
        *,
        name: str,
        category: str,
        vehicle_ids: list[str] | None,
        geometry: dict[str, Any] | None,
        circle: dict[str, Any] | None,
        corridor: dict[str, Any] | None,
        fence_id: str | None = None,
        group: str | None = None,
    ) -> GeofenceRecord:
        """Validate and store a fence, then put it in force.

        Raises:
            FenceError: the shape is not usable; the message says why.
        """
        drawn = shape_from_request(geometry=geometry, circle=circle, corridor=corridor)
        details: dict[str, Any] = {}
        if circle is not None:
            details["circle"] = circle
        if corridor is not None:
            details["corridor"] = corridor
        if group is not None:  # instead of vehicle_ids: whichever vehicles are in it
            details["group"] = group
        record = GeofenceRecord(
            id=fence_id or uuid.uuid4().hex,
            name=name,
            category=category,
            geometry=shape_to_geojson(drawn),
            vehicle_ids=tuple(vehicle_ids) if vehicle_ids is not None else None,
            created_at=self._clock(),
            details=details,
        )
        async with self._lock:
            await self._store.put_geofence(record)
            self._records[record.id] = record
            self._fences[record.id] = to_fence(record, self._members)
            await self._rebuild()
        return record

    async def regroup(self, before: Vehicle | None, after: Vehicle | None) -> None:
        """A vehicle changed (``after`` None: deleted): the fences of the groups
        it left or joined follow. Nothing to do for the usual sync of a vehicle
        whose group stays as it was."""
        moved = {v.group for v in (before, after) if v is not None and v.group is not None}
        if not moved or (before is not None and after is not None and before.group == after.group):
            return
        async with self._lock:
            stale = [r for r in self._records.values() if r.details.get("group") in moved]
            if not stale:
                return
            for record in stale:
                self._fences[record.id] = to_fence(record, self._members)
            await self._rebuild()

    async def delete(self, fence_id: str) -> bool:
        async with self._lock:
            if not await self._store.delete_geofence(fence_id):
                return False
            self._records.pop(fence_id, None)
            self._fences.pop(fence_id, None)
            await self._rebuild()
            return True


__all__ = ["FenceError", "Fences", "to_fence"]
