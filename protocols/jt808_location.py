"""JT/T 808 location body (0x0200, and each item of a 0x0704 batch), sans-I/O.

Location 0x0200 [G10LS 2.12]::

    ALARM (4) | STATUS (4) | LAT (4) | LON (4) 1e-6 deg | ALTITUDE (2) m | SPEED (2) 0.1 km/h
    | COURSE (2) | TIME BCD YYMMDDhhmmss, GMT+8 | items: ID (1) LEN (1) VALUE

The alarm and status bits, the additional items [G10LS Table 20] and the time (BCD, GMT+8)
become a ``Position``; an implausible one raises ``Dropped`` with the reason to count.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from protocols.binary import NOT_BCD, bcd_values
from protocols.messages import Position

# A location's basic block, as above; ALTITUDE is signed in traccar, a WORD in G10LS.
LOCATION_BLOCK = struct.Struct(">I I I I h H H 6s")

GMT8_OFFSET = timedelta(hours=8)  # "GMT+8 time" [G10LS Table 16]

# Alarm flags [G10LS Table 18]: bits 0, 1, 7, 8 are the standard's; 15-17 are that vendor's
# default (traccar reads 15 as vibration and 16-17 as tampering).
ALARM_BITS = {
    0: "sos", 1: "overspeed", 7: "low_battery", 8: "power_cut",
    15: "low_battery", 16: "vibration", 17: "removed",
}  # fmt: skip
STATUS_ACC, STATUS_FIX, STATUS_SOUTH, STATUS_WEST = 0, 1, 2, 3
ITEM_KEYS = tuple(f"0x{item:02x}" for item in range(256))  # how unread items are kept


class Dropped(Exception):
    """A location is implausible: count the reason, ``args[0]``."""


def read_time(data: bytes) -> datetime:
    """BCD YYMMDDhhmmss in GMT+8, as UTC."""
    fields = bcd_values(data)
    if NOT_BCD in fields:
        raise Dropped("bad_time")
    year, month, day, hour, minute, second = fields
    try:  # read as UTC, then moved back by GMT+8's 8 hours: cheaper than astimezone
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC) - GMT8_OFFSET
    except ValueError:
        raise Dropped("bad_time") from None


def read_location(uid: str, body: bytes, raw: dict[str, Any], reply: bytes | None) -> Position:
    """A 0x0200 body: the 28-byte basic block, then the additional items."""
    if len(body) < 28:
        raise Dropped("short_content")
    alarm, status, lat_e6, lon_e6, altitude, speed, course, time = LOCATION_BLOCK.unpack_from(body)
    fix_time = read_time(time)
    lat = -lat_e6 / 1e6 if status >> STATUS_SOUTH & 1 else lat_e6 / 1e6
    lon = -lon_e6 / 1e6 if status >> STATUS_WEST & 1 else lon_e6 / 1e6
    if abs(lat) > 90 or abs(lon) > 180 or course > 360:
        raise Dropped("bad_position")
    attributes: dict[str, Any] = {"ignition": bool(status >> STATUS_ACC & 1)}
    if alarm:
        for bit, name in ALARM_BITS.items():
            if alarm >> bit & 1:
                attributes[name] = True
    items, satellites = read_items(body[28:], attributes)
    raw = {**raw, "alarm": alarm, "status": status}
    if items:
        raw["items"] = items
    return Position(
        uid, fix_time, lat, lon, bool(status >> STATUS_FIX & 1), speed / 10, float(course),
        altitude_m=float(altitude), satellites=satellites, attributes=attributes, raw=raw,
        reply=reply,
    )  # fmt: skip


def read_items(data: bytes, attributes: dict[str, Any]) -> tuple[dict[str, str], int | None]:
    """Additional items [G10LS Table 20] into ``attributes``; the others as hex, by id.

    0x01 mileage 0.1 km, 0x30 CSQ, 0x31 satellites (standard); 0x56 battery level 0-10 and
    0x61 main power 0.01 V (vendor, G10LS). The others (vendor items 0xE1-0xFF, nested 0xEB,
    ...) are kept as hex, a repeated id's values joined by commas.
    """
    kept: dict[str, str] = {}
    satellites = None
    pos, end = 0, len(data)
    while pos + 2 <= end:
        item, size = data[pos], data[pos + 1]
        start, pos = pos + 2, pos + 2 + size
        if pos > end:  # cut short: keep what is there
            kept["truncated"] = data[start - 2 :].hex()
            break
        value = data[start:pos]
        if item == 0x01 and size == 4:
            attributes["odometer_m"] = int.from_bytes(value) * 100.0
        elif item == 0x30 and size == 1:
            attributes["gsm_signal"] = value[0]
        elif item == 0x31 and size == 1:
            satellites = value[0]
        elif item == 0x56 and size == 2 and value[0] <= 10:
            attributes["battery_pct"] = value[0] * 10
        elif item == 0x61 and size == 2:
            attributes["external_power_v"] = int.from_bytes(value) / 100
        else:
            key = ITEM_KEYS[item]
            kept[key] = f"{kept[key]},{value.hex()}" if key in kept else value.hex()
    return kept, satellites
