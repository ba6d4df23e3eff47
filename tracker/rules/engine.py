"""The rule engine: stored positions and the passing of time in, events out.

Pure (no I/O, no clock: ``now`` is passed in). The server feeds it each
committed batch, every report a unit makes, and the clock; it returns events
to store, publish and deliver. One alert per rule, vehicle (and fence or unit)
stays open until its condition clears: ``Event.alert_key`` names it, and a
clearing event closes it, so no storm of duplicates.

Rules: geofence enter/exit with hysteresis and sparse-segment crossings,
outside_allowed_area, risk_site_visit, unit_silent / unit_back,
wired_silent_battery_alive, the units' own alarms (power_cut, removed,
low_battery, sos, jamming), units_separated, towed, long_stay.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from geofences.index import FenceIndex
from geofences.model import Fence
from tracker.rules.alerts import iso
from tracker.rules.fences import FenceState, Seen, observe
from tracker.rules.kinds import ALARM_EVENTS, ALARM_NAMES, ALARM_SEVERITY
from tracker.rules.motion import MotionRules, Tow
from tracker.rules.silence import Deadlines
from tracker.store import Event, StoredPosition, Unit, Vehicle


def _quiet(alarmed: set[str], unique_id: str, attributes: dict[str, Any]) -> bool:
    """Nearly every fix: it raises no alarm, and its unit has none open to clear
    (a function, not a method: the batch loop asks it before calling ``alarms``)."""
    return unique_id not in alarmed and ALARM_NAMES.isdisjoint(attributes)


@dataclass(frozen=True, slots=True)
class RuleSettings:
    margin_m: float = 30.0
    dwell_s: float = 60.0
    dwell_fixes: int = 2
    silent_wired_s: int = 30 * 60
    silent_battery_s: int = 26 * 3600
    separation_m: float = 1000.0
    separation_window_s: float = 600.0
    towed_speed_kmh: float = 10.0
    towed_displacement_m: float = 300.0
    towed_after_s: float = 120.0
    long_stay_days: float = 3.0
    long_stay_radius_m: float = 200.0
    alarm_clear_s: float = 600.0
    risk_window_days: float = 30.0
    late_after_s: float = 300.0
    gathering_vehicles: int = 3
    gathering_radius_m: float = 200.0
    gathering_minutes: float = 30.0


@dataclass(slots=True)
class _UnitState:
    last: StoredPosition | None = None
    fences: dict[str, FenceState] = field(default_factory=dict)
    tow: Tow | None = None


class RuleEngine(MotionRules):
    def __init__(
        self,
        settings: RuleSettings,
        *,
        unit: Callable[[str], Unit | None],
        vehicle: Callable[[str], Vehicle | None],
        latest: Callable[[str], StoredPosition | None],
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        super().__init__(new_id)
        self.settings = settings
        self._unit, self._vehicle, self._latest = unit, vehicle, latest
        self.deadlines = Deadlines()
        self._units: dict[str, _UnitState] = {}
        self._alarm_at: dict[tuple[str, str], datetime] = {}
        self._alarmed: set[str] = set()  # units with one of their alarms open
        self._risk_visits: dict[str, deque[datetime]] = {}
        self._index: FenceIndex | None = None
        self._fences: dict[str, Fence] = {}
        self._allowed: dict[str | None, list[str]] = {}

    # set-up

    def set_fences(self, index: FenceIndex | None, fences: Sequence[Fence]) -> None:
        """Use a new fence index; per-unit fence states of removed fences go."""
        self._index = index
        self._fences = {f.id: f for f in fences}
        self._allowed = {}
        for fence in fences:
            if fence.category == "allowed_area":
                for vehicle_id in (None,) if fence.vehicle_ids is None else fence.vehicle_ids:
                    self._allowed.setdefault(vehicle_id, []).append(fence.id)
        for state in self._units.values():
            for fence_id in [f for f in state.fences if f not in self._fences]:
                del state.fences[fence_id]

    def forget_vehicle(self, vehicle_id: str) -> None:
        """A deleted vehicle's open alerts: nothing of it can clear them now."""
        for key in [k for k in self.open if k[0] == vehicle_id]:
            del self.open[key]

    def restore(
        self,
        open_alerts: Iterable[Event],
        last_seen: dict[str, datetime],
        units: Iterable[Unit],
        risk_visits: Iterable[Event],
        now: datetime,
    ) -> None:
        """Start-up: open alerts and silence deadlines from the store. A deadline
        that passed while the server was down fires on the next ``due``, once."""
        for event in open_alerts:
            if self._vehicle(event.vehicle_id) is None:
                continue  # deleted: nothing of it can clear them
            if event.alert_key is not None:
                self.open[(event.vehicle_id, event.alert_key)] = event
                name, _, unique_id = event.alert_key.partition(":")
                if name in ALARM_NAMES:
                    self._alarmed.add(unique_id)
                    # raised then at least: it clears after alarm_clear_s without it
                    self._alarm_at[(unique_id, name)] = event.fix_time or event.detected_at
        # _silent_after for a million units, without a timedelta and a settings
        # look-up each where the global thresholds apply
        default = {
            "wired": timedelta(seconds=self.settings.silent_wired_s),
            "battery": timedelta(seconds=self.settings.silent_battery_s),
        }
        vehicle_of = self._vehicle
        deadlines = []
        for unit in units:
            seen = last_seen.get(unit.unique_id)
            if seen is None:
                continue
            if unit.silent_after_s is None and unit.kind in default:
                vehicle = vehicle_of(unit.vehicle_id)
                if vehicle is None or not vehicle.rules:
                    deadlines.append((unit.unique_id, seen + default[unit.kind]))
                    continue
            deadlines.append((unit.unique_id, seen + self._silent_after(unit)))
        self.deadlines.restore(deadlines)
        for event in risk_visits:
            if event.fix_time is not None:
                self._visits(event.vehicle_id, event.fix_time)

    # inputs

    def report(self, unique_id: str, when: datetime) -> list[Event]:
        """The unit said something (any message) at server time ``when``."""
        unit = self._unit(unique_id)
        if unit is None:
            return []
        self.deadlines.set(unique_id, when + self._silent_after(unit))
        if (unit.vehicle_id, f"unit_silent:{unique_id}") not in self.open:
            return []  # the common case: no event to build
        events = []
        back = self._clear(
            unit.vehicle_id,
            f"unit_silent:{unique_id}",
            self._event("unit_back", "info", unit, when, when),
        )
        if back is not None:
            events.append(back)
            if unit.kind == "wired":
                cleared = self._clear(
                    unit.vehicle_id,
                    f"wired_silent_battery_alive:{unique_id}",
                    self._event("wired_silent_battery_alive_cleared", "info", unit, when, when),
                )
                events += [cleared] if cleared else []
        return events

    def alarms(
        self,
        unique_id: str,
        attributes: dict[str, Any],
        when: datetime,
        now: datetime,
        *,
        lat: float | None = None,
        lon: float | None = None,
        late: bool = False,
    ) -> list[Event]:
        """The unit's own alarms (a heartbeat's or a position's attributes)."""
        if _quiet(self._alarmed, unique_id, attributes):
            return []
        unit = self._unit(unique_id)
        if unit is None:
            return []
        events = []
        still_open = False
        for name in ALARM_EVENTS:
            key = f"{name}:{unique_id}"
            if attributes.get(name):
                self._alarm_at[(unique_id, name)] = when
                # open already: no event to make (a unit repeats it every fix)
                if (unit.vehicle_id, key) not in self.open:
                    event = self._event(
                        name,
                        ALARM_SEVERITY.get(name, "warning"),
                        unit,
                        when,
                        now,
                        lat=lat,
                        lon=lon,
                        late=late,
                        details={"source": "unit"},
                    )
                    events += [e for e in [self._open(unit.vehicle_id, key, event)] if e]
            elif (unit.vehicle_id, key) in self.open and not late:
                last = self._alarm_at.get((unique_id, name))
                if (
                    last is None
                    or (when - last).total_seconds()
                    >= self.settings_for(unit.vehicle_id).alarm_clear_s
                ):
                    event = self._event(
                        f"{name}_cleared", "info", unit, when, now, lat=lat, lon=lon
                    )
                    events += [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
            still_open = still_open or (unit.vehicle_id, key) in self.open
        if still_open:
            self._alarmed.add(unique_id)
        else:
            self._alarmed.discard(unique_id)
        return events

    def positions(self, rows: Sequence[StoredPosition], now: datetime) -> list[Event]:
        """Evaluate a committed batch, each unit's fixes in fix-time order."""
        keys = [(row.unique_id, row.fix_time) for row in rows]
        order = sorted(range(len(rows)), key=keys.__getitem__)
        with self.batch():
            return self._positions(rows, order, now)

    def _positions(
        self, rows: Sequence[StoredPosition], order: list[int], now: datetime
    ) -> list[Event]:
        observed = self._classify(rows)
        events: list[Event] = []
        late_before = now - timedelta(seconds=self.settings.late_after_s)
        for i in order:
            row = rows[i]
            unit = self._unit(row.unique_id)
            if unit is None:
                continue
            state = self._units.get(row.unique_id)
            if state is None:  # not setdefault: it would build a state for every fix
                state = self._units[row.unique_id] = _UnitState()
            out_of_order = state.last is not None and row.fix_time <= state.last.fix_time
            late = out_of_order or row.fix_time < late_before
            if not _quiet(self._alarmed, row.unique_id, row.attributes):
                events += self.alarms(
                    row.unique_id,
                    row.attributes,
                    row.fix_time,
                    now,
                    lat=row.lat,
                    lon=row.lon,
                    late=late,
                )
            if out_of_order:
                continue  # the state machines move forward in time only
            events += self._fence_rules(unit, state, row, observed.get(i, {}), now, late)
            events += self._separation(unit, row, now, late)
            events += self._towed(unit, state, row, now, late)
            events += self._long_stay(unit, row, now, late)
            events += self._night(unit, row, now)
            state.last = row
        return events

    def due(self, now: datetime) -> list[Event]:
        """Silence deadlines that passed by ``now``."""
        events = []
        for unique_id, deadline in self.deadlines.pop_due(now):
            unit = self._unit(unique_id)
            if unit is None:
                continue
            silent_s = self._silent_after(unit).total_seconds()
            event = self._event(
                "unit_silent",
                "warning",
                unit,
                deadline,
                now,
                details={
                    "silent_after_s": silent_s,
                    "last_seen": iso(deadline - self._silent_after(unit)),
                },
            )
            opened = self._open(unit.vehicle_id, f"unit_silent:{unique_id}", event)
            if opened is None:
                continue
            events.append(opened)
            if unit.kind == "wired" and self._battery_alive(unit, now):
                pulled = self._event(
                    "wired_silent_battery_alive",
                    "critical",
                    unit,
                    deadline,
                    now,
                    details={"hint": "the wired unit may have been found and removed"},
                )
                key = f"wired_silent_battery_alive:{unique_id}"
                events += [e for e in [self._open(unit.vehicle_id, key, pulled)] if e]
        return events

    def next_due(self) -> datetime | None:
        return self.deadlines.next_due()

    # rules on positions

    def _classify(self, rows: Sequence[StoredPosition]) -> dict[int, dict[str, Seen]]:
        if self._index is None or not len(self._index) or not rows:
            return {}
        lons = np.fromiter((r.lon for r in rows), dtype=np.float64, count=len(rows))
        lats = np.fromiter((r.lat for r in rows), dtype=np.float64, count=len(rows))
        margin_of = {v: self.settings_for(v).margin_m for v in {r.vehicle_id for r in rows}}
        margins = np.fromiter(
            (max(margin_of[r.vehicle_id], r.accuracy_m or 0.0) for r in rows),
            dtype=np.float64,
            count=len(rows),
        )
        result: dict[int, dict[str, Seen]] = {}
        for i, fence_id, side in self._index.classify_many(lons, lats, margins):
            if self._index.applies(fence_id, rows[i].vehicle_id):
                result.setdefault(int(i), {})[fence_id] = Seen[side.name]
        return result

    def _fence_rules(
        self,
        unit: Unit,
        state: _UnitState,
        row: StoredPosition,
        seen: dict[str, Seen],
        now: datetime,
        late: bool,
    ) -> list[Event]:
        if self._index is None:
            return []
        allowed = self._allowed.get(None, []) + self._allowed.get(unit.vehicle_id, [])
        if not seen and not state.fences and not allowed:  # the common case: no fence about
            return self._sparse_crossings(unit, state, row, seen, now, late)
        cfg = self.settings_for(unit.vehicle_id)
        events: list[Event] = []
        tracked = [f for f, s in state.fences.items() if s.confirmed is Seen.INSIDE or s.candidate]
        for fence_id in dict.fromkeys([*seen, *tracked, *allowed]):
            fence = self._fences.get(fence_id)
            if fence is None:
                continue
            fence_state = state.fences.get(fence_id)
            if fence_state is None:
                # a unit seen before was not inside this fence: it was outside
                known = Seen.OUTSIDE if state.last is not None else None
                fence_state = state.fences[fence_id] = FenceState(confirmed=known)
            change = observe(
                fence_state,
                seen.get(fence_id, Seen.OUTSIDE),
                row.fix_time,
                dwell_fixes=cfg.dwell_fixes,
                dwell_s=cfg.dwell_s,
            )
            if change is not None:
                events += self._crossing(unit, fence, change.before, change.after, row, now, late)
        for fence_id in [f for f, s in state.fences.items() if s.confirmed is Seen.OUTSIDE]:
            if state.fences[fence_id].candidate is None and fence_id not in allowed:
                del state.fences[fence_id]  # outside is the default: keep memory small
        events += self._sparse_crossings(unit, state, row, seen, now, late)
        if allowed:
            events += self._allowed_area(unit, state, allowed, row, now, late)
        return events

    def _crossing(
        self,
        unit: Unit,
        fence: Fence,
        before: Seen | None,
        after: Seen,
        row: StoredPosition,
        now: datetime,
        late: bool,
        *,
        inferred: bool = False,
    ) -> list[Event]:
        details: dict[str, Any] = {
            "fence_id": fence.id,
            "fence_name": fence.name,
            "category": fence.category,
        }
        if inferred:
            details["inferred"] = True
        events = []
        if before is not None:
            kind = "geofence_enter" if after is Seen.INSIDE else "geofence_exit"
            events.append(
                self._event(
                    kind, "info", unit, row.fix_time, now, row=row, late=late, details=details
                )
            )
        if after is Seen.INSIDE and fence.category == "risk_site":
            visits = self._visits(unit.vehicle_id, row.fix_time)
            severity = "critical" if visits > 1 else "warning"
            events.append(
                self._event(
                    "risk_site_visit",
                    severity,
                    unit,
                    row.fix_time,
                    now,
                    row=row,
                    late=late,
                    details=details | {"visits_30d": visits},
                )
            )
        return events

    def _sparse_crossings(
        self,
        unit: Unit,
        state: _UnitState,
        row: StoredPosition,
        seen: dict[str, Seen],
        now: datetime,
        late: bool,
    ) -> list[Event]:
        """A sparse unit whose segment between two fixes crossed a fence."""
        prev = state.last
        if self._index is None or prev is None:
            return []
        if (row.fix_time - prev.fix_time).total_seconds() <= self.settings_for(
            unit.vehicle_id
        ).dwell_s:
            return []
        events = []
        for fence_id in self._index.crossed(prev.lon, prev.lat, row.lon, row.lat, unit.vehicle_id):
            fence = self._fences.get(fence_id)
            fence_state = state.fences.get(fence_id)
            was = fence_state.confirmed if fence_state else None
            if fence is None or fence_id in seen or was is Seen.INSIDE:
                continue
            events += self._crossing(
                unit, fence, Seen.OUTSIDE, Seen.INSIDE, row, now, late, inferred=True
            )
            events += self._crossing(
                unit, fence, Seen.INSIDE, Seen.OUTSIDE, row, now, late, inferred=True
            )
        return events

    def _allowed_area(
        self,
        unit: Unit,
        state: _UnitState,
        allowed: list[str],
        row: StoredPosition,
        now: datetime,
        late: bool,
    ) -> list[Event]:
        sides = [state.fences[f].confirmed for f in allowed if f in state.fences]
        if len(sides) < len(allowed) or None in sides:
            return []  # not known yet for every allowed area
        key = "outside_allowed_area"
        if Seen.INSIDE in sides:
            if (unit.vehicle_id, key) not in self.open:
                return []
            event = self._event(
                f"{key}_cleared", "info", unit, row.fix_time, now, row=row, late=late
            )
            return [e for e in [self._clear(unit.vehicle_id, key, event)] if e]
        if (unit.vehicle_id, key) in self.open:
            return []  # open already, as for every fix until the vehicle is back
        event = self._event(
            key,
            "critical",
            unit,
            row.fix_time,
            now,
            row=row,
            late=late,
            details={"allowed_areas": allowed},
        )
        return [e for e in [self._open(unit.vehicle_id, key, event)] if e]

    # helpers

    def _silent_after(self, unit: Unit) -> timedelta:
        if unit.silent_after_s is not None:
            return timedelta(seconds=unit.silent_after_s)
        default = (
            self.settings_for(unit.vehicle_id).silent_battery_s
            if unit.kind == "battery"
            else (self.settings_for(unit.vehicle_id).silent_wired_s)
        )
        return timedelta(seconds=default)

    def _battery_alive(self, unit: Unit, now: datetime) -> bool:
        vehicle = self._vehicle(unit.vehicle_id)
        for other in vehicle.units if vehicle else ():
            deadline = self.deadlines.deadline(other.unique_id)
            if other.kind == "battery" and deadline is not None and deadline > now:
                return True
        return False

    def _visits(self, vehicle_id: str, when: datetime) -> int:
        visits = self._risk_visits.setdefault(vehicle_id, deque())
        visits.append(when)
        window = timedelta(days=self.settings_for(vehicle_id).risk_window_days)
        while visits and visits[0] < when - window:
            visits.popleft()
        return sum(1 for v in visits if v <= when)
