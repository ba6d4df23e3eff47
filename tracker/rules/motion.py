"""Rules about how a vehicle moves: its units drift apart, it is towed, it
stays put for days. A mixin of ``RuleEngine``: it uses the engine's settings,
``_open``/``_clear`` (one alert until cleared) and ``_event``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from tracker.rules.alerts import iso
from tracker.rules.geo import distance_m, farther_than
from tracker.rules.places import PlaceRules
from tracker.store import Event, StoredPosition, Unit, Vehicle

if TYPE_CHECKING:
    from tracker.rules.engine import RuleSettings


@dataclass(slots=True)
class Tow:
    anchor: tuple[float, float]
    since: datetime | None = None


@dataclass(slots=True)
class Stay:
    lat: float
    lon: float
    since: datetime


class TowState(Protocol):
    """A unit's rule state, as far as towing goes."""

    tow: Tow | None


class MotionRules(PlaceRules):
    settings: RuleSettings
    _vehicle: Callable[[str], Vehicle | None]
    _latest: Callable[[str], StoredPosition | None]

    def __init__(self, new_id: Callable[[], str]) -> None:
        super().__init__(new_id)
        self._stays: dict[str, Stay] = {}

    def _separation(
        self, unit: Unit, row: StoredPosition, now: datetime, late: bool
    ) -> list[Event]:
        vehicle = self._vehicle(unit.vehicle_id)
        if vehicle is None or len(vehicle.units) < 2:
            return []
        cfg = self.settings_for(unit.vehicle_id)
        events = []
        for other in vehicle.units:
            theirs = self._latest(other.unique_id) if other.unique_id != unit.unique_id else None
            if theirs is None:
                continue
            gap = abs((row.fix_time - theirs.fix_time).total_seconds())
            if gap > cfg.separation_window_s:
                continue
            apart = distance_m(row.lat, row.lon, theirs.lat, theirs.lon)
            key = "units_separated:" + ":".join(sorted((unit.unique_id, other.unique_id)))
            details = {"distance_m": round(apart), "other_unique_id": other.unique_id}
            if apart > cfg.separation_m and (unit.vehicle_id, key) not in self.open:
                event = self._event(
                    "units_separated",
                    "critical",
                    unit,
                    row.fix_time,
                    now,
                    row=row,
                    late=late,
                    details=details,
                )
                events += [e for e in [self._open(unit.vehicle_id, key, event)] if e]
            elif (unit.vehicle_id, key) in self.open and apart < 0.8 * cfg.separation_m:
                event = self._event(
                    "units_separated_cleared",
                    "info",
                    unit,
                    row.fix_time,
                    now,
                    row=row,
                    late=late,
                    details=details,
                )
                events += [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
        return events

    def _towed(
        self, unit: Unit, state: TowState, row: StoredPosition, now: datetime, late: bool
    ) -> list[Event]:
        ignition = row.attributes.get("ignition")
        key = f"towed:{unit.unique_id}"
        if ignition is not False:
            state.tow = None
            if ignition is True and (unit.vehicle_id, key) in self.open:
                event = self._event("towed_cleared", "info", unit, row.fix_time, now, row=row)
                return [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
            return []
        if state.tow is None:
            state.tow = Tow((row.lat, row.lon))
        moved = distance_m(row.lat, row.lon, *state.tow.anchor)
        moving = row.speed_kmh > self.settings_for(unit.vehicle_id).towed_speed_kmh or (
            moved > self.settings_for(unit.vehicle_id).towed_displacement_m
        )
        if not moving:
            return []
        state.tow.since = state.tow.since or row.fix_time
        if (row.fix_time - state.tow.since).total_seconds() < self.settings_for(
            unit.vehicle_id
        ).towed_after_s:
            return []
        if (unit.vehicle_id, key) in self.open:
            return []  # open already, as for every fix of the tow
        event = self._event(
            "towed",
            "critical",
            unit,
            row.fix_time,
            now,
            row=row,
            late=late,
            details={"moved_m": round(moved), "speed_kmh": row.speed_kmh},
        )
        return [e for e in [self._open(unit.vehicle_id, key, event)] if e]

    def _long_stay(self, unit: Unit, row: StoredPosition, now: datetime, late: bool) -> list[Event]:
        stay = self._stays.get(unit.vehicle_id)
        key = "long_stay"
        if stay is None or farther_than(
            row.lat,
            row.lon,
            stay.lat,
            stay.lon,
            self.settings_for(unit.vehicle_id).long_stay_radius_m,
        ):
            self._stays[unit.vehicle_id] = Stay(row.lat, row.lon, row.fix_time)
            if stay is None or (unit.vehicle_id, key) not in self.open:
                return []
            event = self._event("long_stay_cleared", "info", unit, row.fix_time, now, row=row)
            return [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
        days = (row.fix_time - stay.since).total_seconds() / 86_400
        if days < self.settings_for(unit.vehicle_id).long_stay_days:
            return []
        if (unit.vehicle_id, key) in self.open:
            return []  # open already, as for every fix of the stay
        event = self._event(
            "long_stay",
            "warning",
            unit,
            row.fix_time,
            now,
            row=row,
            late=late,
            details={"days": round(days, 2), "since": iso(stay.since)},
        )
        return [e for e in [self._open(unit.vehicle_id, key, event)] if e]
