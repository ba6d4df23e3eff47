"""Rules about places: where a car spends its nights, and cars that gather.

``night_location_changed``: for each vehicle, the H3 cell (resolution 8, about
0.7 km^2) of its last fix of each local night (00:00-05:00, local time taken
from the longitude: the solar zone, since a vehicle has no time zone of its
own) over the last 14 nights. Once a night is over, the night's cell is
compared with the usual one (the majority, needing at least 5 nights on
record); a cell that is neither the usual one nor next to it opens the alert,
and a night back at the usual place clears it.

``gathering``: every minute, vehicles whose latest fix (at most a day old)
lies within ``gathering_radius_m`` of a common centre, at least
``gathering_vehicles`` of them, for ``gathering_minutes``: one alert per
vehicle in the group, keyed by the group's cell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import h3

from tracker.rules.alerts import AlertRules, iso
from tracker.rules.geo import distance_m
from tracker.store import Event, StoredPosition, Unit

if TYPE_CHECKING:
    from tracker.rules.engine import RuleSettings

NIGHT_RES = 8
GROUP_RES = 9  # cells of ~200 m edge: the ring around one holds a 200 m gathering
NIGHTS = 14
MIN_NIGHTS = 5
NIGHT_ENDS_H = 5


@dataclass(slots=True)
class _Nights:
    # night (its local date) -> its last fix's (lat, lon), or its H3 cell once judged:
    # a car reports all night, and only the last spot of each night is ever used
    spots: dict[date, tuple[float, float] | str] = field(default_factory=dict)
    judged: date | None = None

    def cell(self, night: date) -> str:
        spot = self.spots[night]
        if not isinstance(spot, str):
            spot = self.spots[night] = h3.latlng_to_cell(*spot, NIGHT_RES)
        return spot


_ZONES = {zone: timedelta(hours=zone) for zone in range(-12, 13)}  # made once, not per fix


def local_time(moment: datetime, lon: float) -> datetime:
    """Solar local time: UTC shifted by the longitude's 15-degree zone."""
    zone = round(lon / 15)
    shift = _ZONES.get(zone)
    return moment + (timedelta(hours=zone) if shift is None else shift)


class PlaceRules(AlertRules):
    settings: RuleSettings

    def __init__(self, new_id: Callable[[], str]) -> None:
        super().__init__(new_id)
        self._nights: dict[str, _Nights] = {}
        self._groups: dict[str, tuple[datetime, frozenset[str]]] = {}  # cell -> since, members

    def _night(self, unit: Unit, row: StoredPosition, now: datetime) -> list[Event]:
        nights = self._nights.get(unit.vehicle_id)
        if nights is None:
            nights = self._nights[unit.vehicle_id] = _Nights()
        local = local_time(row.fix_time, row.lon)
        if local.hour < NIGHT_ENDS_H:  # a night fix: remember where, for that night
            night = local.date()
            if night not in nights.spots and len(nights.spots) >= NIGHTS:
                for old in sorted(nights.spots)[: len(nights.spots) - NIGHTS + 1]:
                    del nights.spots[old]
            nights.spots[night] = (row.lat, row.lon)
            return []
        last_night = local.date()
        if nights.judged == last_night or last_night not in nights.spots:
            return []
        nights.judged = last_night
        tonight = nights.cell(last_night)
        before = [nights.cell(d) for d in list(nights.spots) if d != last_night]
        if len(before) < MIN_NIGHTS - 1:
            return []
        usual, _ = Counter(before).most_common(1)[0]
        key = "night_location_changed"
        details = {
            "night": last_night.isoformat(),
            "cell": tonight,
            "usual_cell": usual,
            "nights_on_record": len(before) + 1,
        }
        if tonight == usual or tonight in h3.grid_disk(usual, 1):
            event = self._event(
                f"{key}_cleared", "info", unit, row.fix_time, now, row=row, details=details
            )
            return [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
        lat, lon = h3.cell_to_latlng(usual)
        details["moved_m"] = round(distance_m(lat, lon, *h3.cell_to_latlng(tonight)))
        event = self._event(key, "warning", unit, row.fix_time, now, row=row, details=details)
        return [e for e in [self._open(unit.vehicle_id, key, event)] if e]

    def gatherings(
        self, latest: Iterable[tuple[Unit, StoredPosition]], now: datetime
    ) -> list[Event]:
        """Check every vehicle's latest fix for groups; call about once a minute."""
        fresh: dict[str, tuple[Unit, StoredPosition]] = {}
        for unit, row in latest:
            if now - row.fix_time <= timedelta(days=1):
                best = fresh.get(unit.vehicle_id)
                if best is None or row.fix_time > best[1].fix_time:
                    fresh[unit.vehicle_id] = (unit, row)
        by_cell: dict[str, list[str]] = {}
        for vehicle_id, (_, row) in fresh.items():
            by_cell.setdefault(h3.latlng_to_cell(row.lat, row.lon, GROUP_RES), []).append(
                vehicle_id
            )
        groups: dict[str, frozenset[str]] = {}
        for cell in by_cell:
            near = [v for c in h3.grid_disk(cell, 1) for v in by_cell.get(c, ())]
            if len(near) < self.settings.gathering_vehicles:
                continue
            lat, lon = h3.cell_to_latlng(cell)
            members = frozenset(
                v
                for v in near
                if distance_m(lat, lon, fresh[v][1].lat, fresh[v][1].lon)
                <= self.settings.gathering_radius_m
            )
            if len(members) >= self.settings.gathering_vehicles and not any(
                members <= other for other in groups.values()
            ):
                groups[cell] = members
        events: list[Event] = []
        for cell, members in groups.items():
            since, _ = self._groups.get(cell, (now, members))
            self._groups[cell] = (since, members)
            if now - since < timedelta(minutes=self.settings.gathering_minutes):
                continue
            lat, lon = h3.cell_to_latlng(cell)
            for vehicle_id in sorted(members):
                unit, row = fresh[vehicle_id]
                details = {
                    "vehicles": sorted(members),
                    "cell": cell,
                    "since": iso(since),
                    "centre": [lon, lat],
                }
                event = self._event(
                    "gathering", "warning", unit, row.fix_time, now, row=row, details=details
                )
                opened = self._open(vehicle_id, f"gathering:{cell}", event)
                events += [opened] if opened else []
        for cell in [c for c in self._groups if c not in groups]:
            _, members = self._groups.pop(cell)
            for vehicle_id in sorted(members):
                if (vehicle_id, f"gathering:{cell}") in self.open and vehicle_id in fresh:
                    unit, row = fresh[vehicle_id]
                    event = self._event("gathering_cleared", "info", unit, now, now, row=row)
                    cleared = self._clear(vehicle_id, f"gathering:{cell}", event)
                    events += [cleared] if cleared else []
        return events
