"""What codecs produce: frozen dataclasses, units in the names.

Every decoded fix becomes one ``Position``: UTC time, WGS84 degrees, km/h,
degrees of course, and attributes from one small closed vocabulary shared by
all protocols (``ATTRIBUTES``). Protocol-specific values go in ``raw``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A frozen dataclass to the type checker, a plain slots one at run time.

    For the records made once per position: a frozen dataclass's ``__init__``
    sets each field through ``object.__setattr__``, 1.1 us more per object of
    a dozen fields than plain assignment, on every fix and every row of a track
    read. mypy still rejects any assignment to a field."""
    return dataclass(slots=True)(cls)


# The normalised attribute names every protocol maps onto.
ATTRIBUTES = frozenset(
    {
        "ignition",  # bool: ACC / ignition on
        "charging",  # bool: external power connected / charging
        "power_cut",  # bool: alarm, external power removed
        "external_power_v",  # float: supply voltage
        "battery_v",  # float: internal battery voltage
        "battery_pct",  # int 0..100
        "low_battery",  # bool: alarm
        "removed",  # bool: alarm, unit removed / tamper / light sensor
        "sos",  # bool: alarm
        "vibration",  # bool: alarm
        "overspeed",  # bool: alarm
        "jamming",  # bool: alarm, GSM/GPS jamming
        "odometer_m",  # float
        "motion",  # bool: the unit says it is moving
        "gsm_signal",  # int: protocol's own scale, see raw
        "hdop",  # float
        "event",  # str: the unit's own event name (OsmAnd "event", ...)
    }
)

# What a unit's identifier may be, as the REST API registers units: ids outside
# it could never be registered, and would only reach logs and lists.
UNIT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Attribute names that mean "the unit raised an alarm".
ALARMS = frozenset(
    {"power_cut", "low_battery", "removed", "sos", "vibration", "overspeed", "jamming"}
)


@dataclass(frozen=True, slots=True)
class Login:
    """The unit told us who it is. Later frames on this connection are its own."""

    unique_id: str
    reply: bytes | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The unit is alive; it may carry status attributes (ignition, battery, alarms)."""

    unique_id: str | None
    reply: bytes | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


@record
class Position:
    """One fix, normalised. ``fix_time`` is an aware UTC datetime."""

    unique_id: str | None
    fix_time: datetime
    lat: float
    lon: float
    valid: bool = True
    speed_kmh: float = 0.0
    course_deg: float = 0.0
    altitude_m: float | None = None
    accuracy_m: float | None = None
    satellites: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    reply: bytes | None = None


@dataclass(frozen=True, slots=True)
class Other:
    """A well-framed message we do not turn into data (info, LBS-only, unknown type).

    It is still answered when the protocol wants an answer (``reply``).
    """

    unique_id: str | None
    kind: str
    reply: bytes | None = None
    raw: dict[str, Any] = field(default_factory=dict)


Message = Login | Heartbeat | Position | Other
