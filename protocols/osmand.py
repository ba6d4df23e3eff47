"""OsmAnd / Traccar Client over HTTP: one request in, one ``Position`` out.

Forms (PROTOCOLS.md section 5): a query string ``?id=..&lat=..&lon=..&timestamp=..``; the
same pairs in an ``application/x-www-form-urlencoded`` POST body, added after the query;
a JSON body (Traccar Client >= 9) ``{"location": {...}, "device_id": ".."}``.
Query ``speed`` is in knots unless ``speed_unit`` says otherwise; JSON speed is m/s.
``timestamp``: unix seconds (below 2**31) or milliseconds, ISO 8601 with ``T``, or
``yyyy-MM-dd HH:mm:ss``; a time without a zone is UTC (traccar takes its own zone). No
timestamp: the caller's ``now`` (this module never reads the clock).

Position fields (id, time, coordinates, speed, course, altitude, accuracy, valid) are
strict: a bad value is a client bug, named in the error. Other keys are lenient: names in
``ATTRIBUTES`` (and ``batt``, ``charge``) become attributes when their value parses;
everything else, parsed or not, is kept in ``raw``.

The HTTP layer answers ``NoFix`` (a good report without coordinates, e.g. cell/wifi only)
with 200 and stores nothing: this server stores fixes only, and a refused report would be
resent forever. Catch it before ``OsmandError``, which is a 400 whose message says what to
fix. Whether the id is a known device is decided by ``devices.py``, not here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl

from protocols.messages import ATTRIBUTES, UNIT_ID, Position

__all__ = ["NoFix", "OsmandError", "SpeedUnit", "decode", "decode_form", "decode_json"]

SpeedUnit = Literal["kn", "kmh", "mps", "mph"]
KMH_PER_UNIT: dict[str, float] = {"kn": 1.852, "kmh": 1.0, "mps": 3.6, "mph": 1.609344}
MS_FROM = 2**31  # traccar: a number below Integer.MAX_VALUE is seconds, else milliseconds
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

POSITION_FIELDS = frozenset(
    {"id", "deviceid", "timestamp", "lat", "lon", "location", "speed", "bearing", "heading"}
    | {"altitude", "accuracy", "valid"}
)
REPEATED = frozenset({"cell", "wifi"})  # cell=mcc,mnc,lac,cid[,rssi]; wifi=mac,rssi; kept as lists
ALIASES = {"batt": "battery_pct", "charge": "charging"}

_UNIX = re.compile(r"([0-9]+)(?:\.([0-9]+))?")
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
MAX_DEPTH = 16  # nesting of a JSON body: Traccar Client sends 3


class OsmandError(ValueError):
    """The request cannot be read; the message says what to fix. Answer 400."""


class NoFix(OsmandError):
    """A good report without coordinates. Answer 200 (or the unit resends it); store nothing."""

    def __init__(self, unique_id: str, fix_time: datetime, raw: dict[str, Any]) -> None:
        super().__init__("no lat/lon: this server stores fixes only")
        self.unique_id = unique_id
        self.fix_time = fix_time
        self.raw = raw


def decode(
    method: str,
    query: str,
    body: bytes,
    content_type: str | None,
    *,
    speed_unit: SpeedUnit = "kn",
    now: datetime | None = None,
) -> Position:
    """Decode one request; ``query`` is the raw URL query string, without ``?``."""
    if method.upper() not in ("GET", "POST"):
        raise OsmandError(f"method must be GET or POST, got {method!r}")
    media = (content_type or "").partition(";")[0].strip().lower()
    params = parse_qsl(query, keep_blank_values=True)
    if method.upper() == "POST" and body:
        if media == JSON:
            return decode_json(body, now=now)
        if media not in ("", FORM):
            raise OsmandError(
                f"Content-Type {content_type!r} not understood: send {FORM} or {JSON}"
            )
        params += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return decode_form(params, speed_unit=speed_unit, now=now)


def decode_form(
    params: Iterable[tuple[str, str]],
    *,
    speed_unit: SpeedUnit = "kn",
    now: datetime | None = None,
) -> Position:
    """Decode the query or form pairs, in order; a later value of a field wins."""
    if speed_unit not in KMH_PER_UNIT:
        raise ValueError(f"unknown speed_unit {speed_unit!r}; known: {', '.join(KMH_PER_UNIT)}")
    fields: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for key, value in params:
        if value == "":  # clients leave a template's unknown values empty
            continue
        if key in POSITION_FIELDS:
            fields[key] = value
        elif key in REPEATED:
            raw.setdefault(key, []).append(value)
        else:
            _pass_through(key, value, attributes, raw)
    unique_id = (fields.get("id") or fields.get("deviceid") or "").strip()
    if not unique_id:
        raise OsmandError("missing id: send id=<the unit's identifier> (or deviceid=)")
    _check_id("id", unique_id)
    fix_time = _fix_time(fields.get("timestamp"), now)
    if "location" in fields and "lat" not in fields and "lon" not in fields:
        parts = fields["location"].split(",")
        if len(parts) != 2:
            raise OsmandError(f"location must be 'lat,lon', got {fields['location']!r}")
        fields["lat"], fields["lon"] = parts
    if "lat" not in fields and "lon" not in fields:
        raise NoFix(unique_id, fix_time, raw)
    if (valid := _as_bool(fields.get("valid", "true"))) is None:
        raise OsmandError(f"valid must be true or false, got {fields['valid']!r}")
    course_key = "bearing" if "bearing" in fields else "heading"
    return Position(
        unique_id=unique_id,
        fix_time=fix_time,
        lat=_coordinate("lat", fields.get("lat"), 90),
        lon=_coordinate("lon", fields.get("lon"), 180),
        valid=valid,
        speed_kmh=_speed_kmh(_number("speed", fields.get("speed")), KMH_PER_UNIT[speed_unit]),
        course_deg=_course(_number(course_key, fields.get(course_key))),
        altitude_m=_number("altitude", fields.get("altitude")),
        accuracy_m=_accuracy(_number("accuracy", fields.get("accuracy"))),
        attributes=attributes,
        raw=raw,
    )


def decode_json(body: bytes, *, now: datetime | None = None) -> Position:
    """Decode a Traccar Client JSON body: speed in m/s, battery level 0..1 (-1: unknown)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise OsmandError(f"body is not JSON: {error}") from None
    location = document.get("location") if isinstance(document, dict) else None
    if not isinstance(location, dict):
        raise OsmandError('JSON body must be {"location": {...}, "device_id": "..."}')
    device_id = document.get("device_id")
    unique_id = str(device_id).strip() if isinstance(device_id, str | int) else ""
    if not unique_id or isinstance(device_id, bool):
        raise OsmandError('missing device_id: send "device_id": "<the unit\'s identifier>"')
    _check_id("device_id", unique_id)
    if _deeper_than(MAX_DEPTH, document):
        raise OsmandError(f"JSON body nests objects or arrays more than {MAX_DEPTH} deep")
    stamp = location.get("timestamp")
    fix_time = _fix_time(None if stamp is None else str(stamp), now)
    coords, battery = _object(location, "coords"), _object(location, "battery")
    attributes: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for key, value in _object(location, "extras").items():
        _pass_through(key, value, attributes, raw)
    for name, value in [
        ("motion", location.get("is_moving")),
        ("odometer_m", location.get("odometer")),
        ("event", location.get("event")),
        ("charging", battery.get("is_charging")),
    ]:
        if value is not None:
            _pass_through(name, value, attributes, raw)
    level = _as_float(battery.get("level"))
    if level is not None and 0 <= level <= 1:
        attributes["battery_pct"] = round(level * 100)
    if (activity := _object(location, "activity").get("type")) is not None:
        raw["activity"] = activity
    if coords.get("latitude") is None and coords.get("longitude") is None:
        raise NoFix(unique_id, fix_time, raw)
    return Position(
        unique_id=unique_id,
        fix_time=fix_time,
        lat=_coordinate("coords.latitude", coords.get("latitude"), 90),
        lon=_coordinate("coords.longitude", coords.get("longitude"), 180),
        speed_kmh=_speed_kmh(_number("coords.speed", coords.get("speed")), KMH_PER_UNIT["mps"]),
        course_deg=_course(_number("coords.heading", coords.get("heading"))),
        altitude_m=_number("coords.altitude", coords.get("altitude")),
        accuracy_m=_accuracy(_number("coords.accuracy", coords.get("accuracy"))),
        attributes=attributes,
        raw=raw,
    )


def _fix_time(text: str | None, now: datetime | None) -> datetime:
    if text is None:
        if now is None:
            raise OsmandError("missing timestamp: send unix seconds, milliseconds or ISO 8601")
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        return now.astimezone(UTC)
    try:
        if unix := _UNIX.fullmatch(text):
            whole, fraction = int(unix[1]), (unix[2] or "")[:6].ljust(6, "0")
            if whole >= MS_FROM:
                return EPOCH + timedelta(milliseconds=whole)
            return EPOCH + timedelta(seconds=whole, microseconds=int(fraction))
        if _DATE_TIME.match(text):
            # An unescaped "+" of an ISO offset reaches us as a space: "...T18:55:47 02:00".
            moment = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise OsmandError(
        f"timestamp not understood: {text!r}; send unix seconds, milliseconds or ISO 8601"
    )


def _coordinate(name: str, value: object, limit: int) -> float:
    degrees = _as_float(value)
    if degrees is None or not -limit <= degrees <= limit:
        raise OsmandError(f"{name} must be a number between -{limit} and {limit}, got {value!r}")
    return degrees


def _number(name: str, value: object) -> float | None:
    if value is None:
        return None
    if (number := _as_float(value)) is None:
        raise OsmandError(f"{name} must be a number, got {value!r}")
    return number


def _speed_kmh(speed: float | None, kmh_per_unit: float) -> float:
    if speed is None or speed < 0:  # negative: the client does not know
        return 0.0
    if not math.isfinite(kmh := speed * kmh_per_unit):
        raise OsmandError(f"speed out of range: {speed!r}")
    return kmh


def _course(degrees: float | None) -> float:
    return 0.0 if degrees is None or degrees < 0 else degrees % 360.0  # negative: unknown


def _check_id(name: str, unique_id: str) -> None:
    """The id as a unit is registered (1-64 letters, digits and ``. _ : -``):
    anything else could never be registered, and would reach logs and lists."""
    if UNIT_ID.fullmatch(unique_id) is None:
        shown = unique_id if len(unique_id) <= 64 else unique_id[:64] + "..."
        raise OsmandError(
            f"{name} must be 1-64 letters, digits or . _ : - (the unit's identifier), got {shown!r}"
        )


def _deeper_than(limit: int, value: object) -> bool:
    """Whether JSON ``value`` nests objects or arrays more than ``limit`` levels."""
    if isinstance(value, dict):
        children: Iterable[object] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return limit <= 0 or any(_deeper_than(limit - 1, child) for child in children)


def _accuracy(metres: float | None) -> float | None:
    return None if metres is None or metres < 0 else metres  # negative: unknown


def _pass_through(key: str, value: object, attributes: dict[str, Any], raw: dict[str, Any]) -> None:
    """A key outside the Position fields: a normalised attribute if it is one, else raw."""
    name = ALIASES.get(key, key)
    if name in ATTRIBUTES:
        parsed = _ATTRIBUTE_PARSERS.get(name, _as_bool)(value)
        if parsed is not None:
            attributes[name] = parsed
            return
    if key in raw:  # a repeated key keeps every value
        previous = raw[key]
        raw[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
    else:
        raw[key] = value


def _object(parent: dict[str, Any], key: str) -> dict[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    return _BOOLEANS.get(value.strip().lower()) if isinstance(value, str) else None


def _as_int(value: object) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _as_percent(value: object) -> int | None:
    number = _as_float(value)
    return round(number) if number is not None and 0 <= number <= 100 else None


def _as_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


# The types the ATTRIBUTES vocabulary gives its names; every other name there is a bool.
_ATTRIBUTE_PARSERS: dict[str, Callable[[object], object]] = {
    "external_power_v": _as_float,
    "battery_v": _as_float,
    "odometer_m": _as_float,
    "hdop": _as_float,
    "battery_pct": _as_percent,
    "gsm_signal": _as_int,
    "event": _as_text,
}
