"""Which units are registered: unique id -> unit, in memory, loaded at start-up.

The REST API changes vehicles through ``Registry`` so the store and this
cache stay in step. The gateway asks ``unit_for`` on every login (no database
round trip); an unknown unit is remembered for ``GET /api/v1/units/unknown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from protocols.messages import UNIT_ID
from tracker.store import LoanState, Store, Unit, UnknownSighting, Vehicle


class Registry:
    def __init__(self, store: Store, *, register_unknown_units: bool = False) -> None:
        self._store = store
        self.register_unknown_units = register_unknown_units
        self._units: dict[str, Unit] = {}
        self._vehicles: dict[str, Vehicle] = {}
        self._groups: dict[str, set[str]] = {}  # group -> its vehicles' ids
        self._lock = asyncio.Lock()  # one vehicle change at a time keeps the maps consistent

    async def load(self) -> None:
        """Every vehicle, at start-up: one read of the whole registry (a million
        vehicles in a few seconds; paging costs a round trip and a re-planned
        query per page)."""
        loaded = await self._store.all_vehicles()
        self._vehicles.update({vehicle.vehicle_id: vehicle for vehicle in loaded})
        self._units.update({unit.unique_id: unit for vehicle in loaded for unit in vehicle.units})
        for vehicle in loaded:
            if vehicle.group is not None:
                self._groups.setdefault(vehicle.group, set()).add(vehicle.vehicle_id)

    def _remember(self, vehicle: Vehicle) -> None:
        self._vehicles[vehicle.vehicle_id] = vehicle
        for unit in vehicle.units:
            self._units[unit.unique_id] = unit
        if vehicle.group is not None:
            self._groups.setdefault(vehicle.group, set()).add(vehicle.vehicle_id)

    def _forget(self, vehicle_id: str) -> None:
        old = self._vehicles.pop(vehicle_id, None)
        if old is not None:
            for unit in old.units:
                if self._units.get(unit.unique_id) == unit:
                    del self._units[unit.unique_id]
            if old.group is not None and (members := self._groups.get(old.group)) is not None:
                members.discard(vehicle_id)
                if not members:
                    del self._groups[old.group]

    def members(self, group: str) -> frozenset[str]:
        """The ids of the vehicles in this group now."""
        return frozenset(self._groups.get(group, ()))

    def refresh(self, vehicle: Vehicle) -> None:
        """The store changed this vehicle outside ``put_vehicle`` (its assignees)."""
        self._forget(vehicle.vehicle_id)
        self._remember(vehicle)

    def unit_for(self, unique_id: str) -> Unit | None:
        return self._units.get(unique_id)

    def vehicle(self, vehicle_id: str) -> Vehicle | None:
        return self._vehicles.get(vehicle_id)

    def units(self) -> list[Unit]:
        return list(self._units.values())

    def vehicle_ids(self) -> list[str]:
        return list(self._vehicles)

    async def put_vehicle(
        self,
        vehicle_id: str,
        *,
        plate: str | None,
        vin: str | None,
        loan_ref: str | None,
        units: Sequence[Unit],
        rules: Mapping[str, Any] | None = None,
        loan_state: LoanState = "current",
        group: str | None = None,
    ) -> tuple[Vehicle, bool]:
        """Create or replace a vehicle (``rules``: its threshold overrides, None
        for none) in the store, then here."""
        async with self._lock:
            vehicle, created = await self._store.put_vehicle(
                vehicle_id,
                plate=plate,
                vin=vin,
                loan_ref=loan_ref,
                units=units,
                rules=rules,
                loan_state=loan_state,
                group=group,
            )
            self._forget(vehicle_id)
            self._remember(vehicle)
            return vehicle, created

    async def delete_vehicle(self, vehicle_id: str) -> bool:
        async with self._lock:
            deleted = await self._store.delete_vehicle(vehicle_id)
            self._forget(vehicle_id)
            return deleted

    async def knock(
        self, unique_id: str, protocol: str, remote_addr: str, now: datetime
    ) -> Unit | None:
        """An unregistered unit spoke. Register it on a vehicle of its own when
        that is switched on; otherwise record the sighting and return None."""
        if UNIT_ID.fullmatch(unique_id) is None:
            return None  # no unit can be registered under it: neither listed nor registered
        if self.register_unknown_units:
            async with self._lock:
                if (unit := self._units.get(unique_id)) is not None:
                    return unit
                vehicle_id = self._free_vehicle_id(unique_id)
                vehicle, _ = await self._store.put_vehicle(
                    vehicle_id,
                    plate=None,
                    vin=None,
                    loan_ref=None,
                    units=[Unit(unique_id, vehicle_id, "wired")],
                )
                self._remember(vehicle)
                return self._units[unique_id]
        await self._store.record_unknown([UnknownSighting(unique_id, protocol, remote_addr, now)])
        return None

    def _free_vehicle_id(self, unique_id: str) -> str:
        """A vehicle id for a unit registering itself: its own id, unless a
        vehicle has that id already (which must never be replaced)."""
        candidate, n = unique_id, 1
        while candidate in self._vehicles:
            n += 1
            candidate = f"{unique_id}-{n}"
        return candidate
