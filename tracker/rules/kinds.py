"""The names of what the rules raise: unit alarms, and every event type."""

from __future__ import annotations

ALARM_EVENTS = ("power_cut", "removed", "low_battery", "sos", "jamming")
ALARM_NAMES = frozenset(ALARM_EVENTS)
ALARM_SEVERITY = {"sos": "critical", "removed": "critical", "power_cut": "critical"}
# Every event type the rules make (tests/tracker/test_rules.py holds the code to it):
# what the events route and webhook subscriptions may name.
_CLEARABLE = (
    *ALARM_EVENTS,
    "outside_allowed_area",
    "wired_silent_battery_alive",
    "units_separated",
    "towed",
    "long_stay",
    "night_location_changed",
    "gathering",
)
EVENT_TYPES = frozenset(
    {
        "geofence_enter",
        "geofence_exit",
        "risk_site_visit",
        "unit_silent",
        "unit_back",
        *_CLEARABLE,
        *(f"{name}_cleared" for name in _CLEARABLE),
    }
)
