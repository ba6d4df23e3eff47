"""The rule engine on synthetic tracks, with a controllable clock."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from geofences.index import FenceIndex
from geofences.model import Fence, shape_from_request
from tracker.rules import RuleEngine, RuleSettings
from tracker.rules.geo import distance_m, farther_than
from tracker.rules.silence import Deadlines
from tracker.store import Event, StoredPosition, Unit, Vehicle

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WIRED = Unit("111", "car", "wired")
BATTERY = Unit("222", "car", "battery")
CAR = Vehicle("car", units=(WIRED, BATTERY))
# a 500 m circle centred on (lon 106.8, lat -6.2)
CENTRE = (106.8, -6.2)
M_PER_DEG = 111_320.0


def circle_fence(fence_id: str, category: str, radius_m: float = 500.0, **kw: Any) -> Fence:
    shape = shape_from_request(circle={"lon": CENTRE[0], "lat": CENTRE[1], "radius_m": radius_m})
    return Fence(fence_id, category, shape, kw.get("vehicle_ids"), name=fence_id)  # type: ignore[arg-type]


class World:
    """An engine with one vehicle (a wired and a battery unit) and a clock."""

    def __init__(
        self, fences: list[Fence] | None = None, car: Vehicle = CAR, **settings: Any
    ) -> None:
        self.latest: dict[str, StoredPosition] = {}
        ids = itertools.count()
        self.engine = RuleEngine(
            RuleSettings(**settings),
            unit={u.unique_id: u for u in CAR.units}.get,
            vehicle={"car": car}.get,
            latest=self.latest.get,
            new_id=lambda: f"e{next(ids)}",
        )
        fences = fences or []
        self.engine.set_fences(FenceIndex(fences) if fences else None, fences)

    def fix(
        self,
        seconds: float,
        east_m: float,
        *,
        unit: Unit = WIRED,
        accuracy_m: float | None = None,
        **attributes: Any,
    ) -> list[Event]:
        """A fix ``east_m`` metres east of the centre, ``seconds`` after T0."""
        when = T0 + timedelta(seconds=seconds)
        lon = CENTRE[0] + east_m / (M_PER_DEG * math.cos(math.radians(CENTRE[1])))
        row = StoredPosition(
            unit.unique_id,
            "car",
            "gt06",
            when,
            when,
            CENTRE[1],
            lon,
            speed_kmh=attributes.pop("speed_kmh", 0.0),
            accuracy_m=accuracy_m,
            attributes=attributes,
        )
        events = self.engine.report(unit.unique_id, when) + self.engine.positions([row], when)
        self.latest[unit.unique_id] = row
        return events


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


def test_jitter_along_an_edge_does_not_flap() -> None:
    world = World([circle_fence("lot", "risk_site")])
    rng = random.Random(7)
    events = []
    for k in range(200):  # parked on the edge, GPS wandering +-25 m
        events += world.fix(k * 10, 500 + rng.uniform(-25, 25))
    assert [t for t in types(events) if t.startswith("geofence")] == []


def test_enter_and_exit_after_dwell_with_one_visit_event() -> None:
    world = World([circle_fence("lot", "risk_site")])
    events = world.fix(0, 2000) + world.fix(10, 1500)  # outside, known
    assert types(events) == []
    events = world.fix(20, 100)
    assert types(events) == []  # one fix inside is not yet a visit
    events = world.fix(30, 50)
    assert types(events) == ["geofence_enter", "risk_site_visit"]
    visit = events[1]
    assert visit.details["visits_30d"] == 1
    assert visit.severity == "warning"
    assert visit.details["fence_id"] == "lot"
    events = world.fix(40, 1000) + world.fix(50, 1200)
    assert types(events) == ["geofence_exit"]
    # a second visit within 30 days is more severe
    events = world.fix(60, 0) + world.fix(70, 0)
    assert types(events) == ["geofence_enter", "risk_site_visit"]
    assert events[1].details["visits_30d"] == 2
    assert events[1].severity == "critical"


def test_a_fix_with_poor_accuracy_near_the_edge_says_nothing() -> None:
    world = World([circle_fence("home", "home")])
    world.fix(0, 0)
    world.fix(10, 0)
    events = world.fix(20, 600, accuracy_m=150) + world.fix(30, 620, accuracy_m=150)
    assert types(events) == []  # 100-120 m outside, but the fix is only good to 150 m
    events = world.fix(40, 700) + world.fix(50, 700)
    assert types(events) == ["geofence_exit"]


def test_sparse_unit_crossing_a_fence_between_two_fixes() -> None:
    world = World([circle_fence("lot", "risk_site", radius_m=200)])
    world.fix(0, -5000, unit=BATTERY)
    events = world.fix(3600, 5000, unit=BATTERY)  # an hour later, on the other side
    assert types(events) == ["geofence_enter", "risk_site_visit", "geofence_exit"]
    assert all(e.details.get("inferred") for e in events)


def test_outside_allowed_area_raised_once_and_cleared_on_return() -> None:
    world = World([circle_fence("province", "allowed_area", radius_m=1000)])
    world.fix(0, 0)
    world.fix(10, 0)
    events = world.fix(20, 5000) + world.fix(30, 5100) + world.fix(40, 5200) + world.fix(50, 6000)
    assert types(events) == ["geofence_exit", "outside_allowed_area"]
    assert events[1].severity == "critical"
    assert events[1].alert_key == "outside_allowed_area"
    assert not events[1].clears
    events = world.fix(60, 0) + world.fix(70, 0)
    assert types(events) == ["geofence_enter", "outside_allowed_area_cleared"]
    assert events[1].clears


def test_silence_fires_at_the_deadline_and_clears_when_back() -> None:
    world = World()
    world.engine.report("111", T0)
    world.engine.report("222", T0)
    assert world.engine.due(T0 + timedelta(minutes=29, seconds=59)) == []
    fired = world.engine.due(T0 + timedelta(minutes=30))
    assert types(fired) == ["unit_silent", "wired_silent_battery_alive"]
    assert fired[0].fix_time == T0 + timedelta(minutes=30)
    assert fired[1].severity == "critical"
    assert world.engine.due(T0 + timedelta(hours=2)) == []  # once, not a storm
    back = world.engine.report("111", T0 + timedelta(hours=3))
    assert types(back) == ["unit_back", "wired_silent_battery_alive_cleared"]
    assert all(e.clears for e in back)


def test_a_unit_that_keeps_talking_never_goes_silent() -> None:
    world = World()
    for minute in range(0, 240, 5):
        world.engine.report("111", T0 + timedelta(minutes=minute))
        assert world.engine.due(T0 + timedelta(minutes=minute)) == []
    assert len(world.engine.deadlines) == 1


def test_restart_mid_silence_fires_once_and_keeps_open_alerts() -> None:
    world = World()
    world.engine.restore([], {"111": T0}, CAR.units, [], T0 + timedelta(hours=1))
    fired = world.engine.due(T0 + timedelta(hours=1))
    assert types(fired) == ["unit_silent"]  # the battery unit is not known alive
    again = World()
    again.engine.restore(fired, {"111": T0}, CAR.units, [], T0 + timedelta(hours=2))
    assert again.engine.due(T0 + timedelta(hours=2)) == []  # already open: no duplicate


def test_unit_alarms_open_once_and_clear_later() -> None:
    world = World()
    events = world.fix(0, 0, power_cut=True) + world.fix(10, 0, power_cut=True)
    assert types(events) == ["power_cut"]
    assert events[0].severity == "critical"
    assert types(world.fix(20, 0)) == []  # too soon to call it over
    assert types(world.fix(700, 0)) == ["power_cut_cleared"]


def test_an_alarm_open_before_a_restart_clears_as_it_would_have_without_one() -> None:
    """alarm_clear_s (600 s) from when it was raised: a restart does not cut it short."""
    world = World()
    opened = world.fix(0, 0, power_cut=True)
    again = World()
    again.engine.restore(opened, {"111": T0}, CAR.units, [], T0 + timedelta(minutes=1))
    assert types(again.fix(20, 0)) == []  # too soon to call it over
    assert types(again.fix(700, 0)) == ["power_cut_cleared"]
    assert types(again.fix(800, 0)) == []  # cleared once


def test_an_allowed_area_for_no_vehicle_confines_none() -> None:
    area = circle_fence("area", "allowed_area", vehicle_ids=frozenset())
    world = World([area])
    events = [e for k in range(4) for e in world.fix(k * 60, 5000)]
    assert "outside_allowed_area" not in types(events)


def test_a_deleted_vehicles_alerts_are_not_kept_open() -> None:
    """Deleted while alerts were open: nothing of it can clear them, so neither
    the running engine nor the next start-up holds them."""
    world = World()
    opened = world.fix(0, 0, power_cut=True)
    gone = [replace(e, vehicle_id="gone") for e in opened]
    again = World()
    again.engine.restore([*opened, *gone], {"111": T0}, CAR.units, [], T0)
    assert list(again.engine.open) == [("car", "power_cut:111")]
    again.engine.forget_vehicle("car")
    assert again.engine.open == {}


def test_the_risk_window_is_the_vehicles_own() -> None:
    """A second visit within the vehicle's risk_window_days is a repeat (critical);
    outside it, a first visit again."""
    lot = circle_fence("lot", "risk_site")
    world = World([lot], car=Vehicle("car", units=CAR.units, rules={"risk_window_days": 0.01}))
    severities = []
    for start in (0, 2000, 2600):  # in, out, back in: enter needs two fixes
        for k, east in enumerate((0, 0, 5000, 5000)):
            events = world.fix(start + k * 60, east)
            severities += [e.severity for e in events if e.type == "risk_site_visit"]
    assert severities == ["warning", "warning", "critical"]


def test_units_separated_when_far_apart_at_about_the_same_time() -> None:
    world = World()
    world.fix(0, 0, unit=BATTERY)
    events = world.fix(60, 3000)
    assert types(events) == ["units_separated"]
    assert events[0].details["distance_m"] > 2900
    assert types(world.fix(120, 100)) == ["units_separated_cleared"]


def test_towed_moving_with_ignition_off_for_two_minutes() -> None:
    world = World()
    events = []
    for k in range(10):
        events += world.fix(k * 20, k * 100, ignition=False, speed_kmh=25.0)
    assert types(events) == ["towed"]
    assert events[0].fix_time == T0 + timedelta(seconds=120)
    assert types(world.fix(300, 1000, ignition=True)) == ["towed_cleared"]


def test_an_open_alert_makes_no_event_for_the_fixes_that_repeat_it() -> None:
    world = World()
    for k in range(10):  # towed from the 7th fix, power cut on every one
        world.fix(k * 20, k * 100, ignition=False, speed_kmh=25.0, power_cut=True)
    assert set(world.engine.open) == {("car", "towed:111"), ("car", "power_cut:111")}
    assert world.fix(220, 1100, ignition=False, speed_kmh=25.0, power_cut=True) == []
    opened = [world.engine.open[("car", key)].id for key in ("power_cut:111", "towed:111")]
    cleared = world.fix(240, 1200, ignition=True)
    assert types(cleared) == ["towed_cleared"]
    # ids are drawn in order, one per event made: none was made to be thrown away
    assert [*opened, cleared[0].id] == ["e0", "e1", "e2"]


def test_long_stay_after_days_without_moving() -> None:
    world = World(long_stay_days=3)
    events = []
    for hour in range(0, 24 * 4, 6):
        events += world.fix(hour * 3600, 50 * math.sin(hour), unit=BATTERY)
    assert types(events) == ["long_stay"]
    assert types(world.fix(24 * 5 * 3600, 5000, unit=BATTERY)) == ["long_stay_cleared"]


def test_old_buffered_fix_only_feeds_stateless_rules_and_is_late() -> None:
    world = World([circle_fence("lot", "risk_site")])
    world.fix(1000, 2000)
    events = world.fix(0, 0, sos=True)  # older than what we evaluated already
    assert types(events) == ["sos"]
    assert events[0].late


def test_deadlines_heap_pushes_once_per_period() -> None:
    deadlines = Deadlines()
    for second in range(1000):
        deadlines.set("a", T0 + timedelta(seconds=second + 60))
    assert deadlines.pop_due(T0 + timedelta(seconds=100)) == []
    assert deadlines.pop_due(T0 + timedelta(seconds=1059)) == [("a", T0 + timedelta(seconds=1059))]
    assert deadlines.pop_due(T0 + timedelta(days=1)) == []


def test_gathering_of_three_cars_for_half_an_hour() -> None:
    world = World()
    cars = [Unit(f"g{n}", f"car-{n}", "wired") for n in range(4)]
    latest = [
        (
            unit,
            StoredPosition(
                unit.unique_id,
                unit.vehicle_id,
                "gt06",
                T0,
                T0,
                CENTRE[1] + n * 0.0004,
                CENTRE[0],
                attributes={},
            ),
        )
        for n, unit in enumerate(cars[:3])
    ]
    far = StoredPosition("g3", "car-3", "gt06", T0, T0, CENTRE[1] + 0.05, CENTRE[0])
    latest.append((cars[3], far))
    assert world.engine.gatherings(latest, T0) == []
    assert world.engine.gatherings(latest, T0 + timedelta(minutes=29)) == []
    events = world.engine.gatherings(latest, T0 + timedelta(minutes=30))
    assert types(events) == ["gathering"] * 3
    assert {e.vehicle_id for e in events} == {"car-0", "car-1", "car-2"}
    assert events[0].details["vehicles"] == ["car-0", "car-1", "car-2"]
    assert world.engine.gatherings(latest, T0 + timedelta(minutes=31)) == []  # still open
    parted = [
        (
            u,
            StoredPosition(
                u.unique_id, u.vehicle_id, "gt06", T0, T0, CENTRE[1] + n * 0.01, CENTRE[0]
            ),
        )
        for n, (u, _) in enumerate(latest)
    ]
    assert (
        types(world.engine.gatherings(parted, T0 + timedelta(minutes=40)))
        == ["gathering_cleared"] * 3
    )


def test_night_location_changed_after_a_usual_place() -> None:
    world = World()
    # Jakarta (lon 106.8): local solar time is UTC+7; 19:00 UTC is 02:00 local
    night = datetime(2026, 11, 1, 19, 0, tzinfo=UTC)
    events = []
    for n in range(6):  # six nights at home, each followed by a morning fix
        start = (night + timedelta(days=n) - T0).total_seconds()
        events += world.fix(start, 0, unit=BATTERY)
        events += world.fix(start + 6 * 3600, 0, unit=BATTERY)
    assert [t for t in types(events) if t.startswith("night")] == []  # (long_stay is due)
    start = (night + timedelta(days=6) - T0).total_seconds()
    events = world.fix(start, 8000, unit=BATTERY) + world.fix(start + 6 * 3600, 8000, unit=BATTERY)
    assert types(events) == ["long_stay_cleared", "night_location_changed"]
    assert events[1].details["moved_m"] > 6000
    start = (night + timedelta(days=7) - T0).total_seconds()
    events = world.fix(start, 0, unit=BATTERY) + world.fix(start + 6 * 3600, 0, unit=BATTERY)
    assert [t for t in types(events) if t.startswith("night")] == ["night_location_changed_cleared"]


def test_a_vehicle_can_have_its_own_thresholds() -> None:
    patient = Vehicle("car", units=(WIRED, BATTERY), rules={"silent_wired_s": 7200})
    engine = RuleEngine(
        RuleSettings(),
        unit={u.unique_id: u for u in patient.units}.get,
        vehicle={"car": patient}.get,
        latest=lambda unique_id: None,
    )
    engine.report("111", T0)
    assert engine.due(T0 + timedelta(hours=1)) == []  # the global 30 min does not apply
    assert types(engine.due(T0 + timedelta(hours=2))) == ["unit_silent"]
    assert engine.settings_for("car").silent_wired_s == 7200
    assert engine.settings_for("other").silent_wired_s == 1800


def test_farther_than_agrees_with_the_distance_and_skips_it_when_latitudes_settle_it() -> None:
    rng = random.Random(5)
    for _ in range(20_000):
        lat1, lon1 = rng.uniform(-89, 89), rng.uniform(-180, 180)
        lat2 = lat1 + rng.uniform(-0.01, 0.01)
        lon2 = lon1 + rng.uniform(-0.01, 0.01)
        metres = rng.choice([0.0, 50.0, 200.0, 1_000.0])
        assert farther_than(lat1, lon1, lat2, lon2, metres) is (
            distance_m(lat1, lon1, lat2, lon2) > metres
        )
    # a pure north-south step: the meridian arc is the distance itself, either side of it
    step = distance_m(45.0, 7.0, 45.001, 7.0)
    assert farther_than(45.0, 7.0, 45.001, 7.0, step - 0.01)
    assert not farther_than(45.0, 7.0, 45.001, 7.0, step + 0.01)


def test_every_event_the_rules_can_make_is_a_known_type() -> None:
    """EVENT_TYPES is what the events route and webhooks accept: each type the
    rules name when they make an event is in it (literal names, and the
    ``f"{name}_cleared"`` of every clearable one)."""
    import ast
    import sys
    from pathlib import Path

    from tracker.rules import EVENT_TYPES

    named: set[str] = set()
    for source in Path(sys.modules[RuleEngine.__module__].__file__ or "").parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_event"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                named.add(node.args[0].value)
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "key" for t in node.targets)
            ):
                named |= {node.value.value, f"{node.value.value}_cleared"}
    assert len(named) > 10
    assert named <= EVENT_TYPES, named - EVENT_TYPES
