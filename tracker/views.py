"""JSON shapes shared by the REST API and the live websocket."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from tracker.store import Event, StoredPosition, TrackRow, Unit, Vehicle


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, milliseconds kept when present.

    Every REST row and live message carries two of these, so the common case
    (UTC) is orjson's C formatting, cut to milliseconds: a third of the cost
    of ``isoformat``."""
    if moment.tzinfo is UTC:
        quoted = orjson.dumps(moment, option=orjson.OPT_UTC_Z)  # b'"...05.123456Z"'
        return quoted[1:24].decode() + "Z" if moment.microsecond else quoted[1:-1].decode()
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def plain(attributes: dict[str, Any]) -> dict[str, Any]:
    """``attributes`` as JSON and PostgreSQL take them. Codecs nearly always give
    plain values already: one orjson pass (C) proves it, and only the rare
    dict it refuses (bytes, datetimes, non-str keys) or that holds a NUL is
    rebuilt by ``jsonable``."""
    try:
        encoded = orjson.dumps(attributes, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:
        return jsonable(attributes)  # type: ignore[no-any-return]
    return jsonable(attributes) if b"\\u0000" in encoded else attributes


def jsonable(value: Any) -> Any:
    if isinstance(value, str):
        # PostgreSQL text and jsonb cannot hold NUL: such a row would never be stored
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, dict):
        return {jsonable(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def position(row: StoredPosition) -> dict[str, Any]:
    return {
        "vehicle_id": row.vehicle_id,
        "unique_id": row.unique_id,
        "protocol": row.protocol,
        "fix_time": iso(row.fix_time),
        "server_time": iso(row.server_time),
        "lat": row.lat,
        "lon": row.lon,
        "speed_kmh": row.speed_kmh,
        "course": row.course_deg,
        "valid": row.valid,
        "altitude_m": row.altitude_m,
        "accuracy_m": row.accuracy_m,
        "satellites": row.satellites,
        "attributes": row.attributes,
    }


def track_items(rows: Iterable[TrackRow]) -> list[dict[str, Any]]:
    """``position`` of each row, built straight from ``TrackRow``s for orjson.

    A day is 8,640 rows: this takes about 0.9 us a row where reading them as
    ``StoredPosition``s and ``position`` took 3.2, and the attributes go out
    as the JSON text they were stored as (an ``orjson.Fragment``), never parsed.
    ``tests/integration/test_store_contract.py`` holds it to ``position``."""
    fragment = orjson.Fragment
    return [
        {
            "vehicle_id": r[1],
            "unique_id": r[0],
            "protocol": r[2],
            "fix_time": iso_text(r[3]),
            "server_time": iso_text(r[4]),
            "lat": r[5],
            "lon": r[6],
            "speed_kmh": r[8],
            "course": r[9],
            "valid": r[7],
            "altitude_m": r[10],
            "accuracy_m": r[11],
            "satellites": r[12],
            "attributes": fragment(r[13]),
        }
        for r in rows
    ]


def stored_for(vehicle_id: str, rows: Sequence[TrackRow]) -> Sequence[TrackRow]:
    """The rows stored for this vehicle: its units' fixes from before one of
    them was moved to it belong to the car it was on then."""
    if all(r[1] == vehicle_id for r in rows):  # nearly always: no copy
        return rows
    return [r for r in rows if r[1] == vehicle_id]


def iso_text(utc: str) -> str:
    """``iso`` of a time given as UTC text, ``YYYY-MM-DD HH:MM:SS[.f...]``."""
    text = utc.replace(" ", "T", 1)
    return text + "Z" if len(text) == 19 else (text + "00")[:23] + "Z"


def track_key(row: TrackRow) -> tuple[datetime, str]:
    """The row's (fix_time, unique_id): the cursor of the page it ends."""
    return datetime.fromisoformat(row[3]).replace(tzinfo=UTC), row[0]


def live_position(row: StoredPosition, *, latest: bool) -> dict[str, Any]:
    body = position(row)
    body["type"], body["latest"] = "position", latest
    return body


def live_position_later(row: StoredPosition, *, latest: bool) -> Callable[[], dict[str, Any]]:
    """``live_position``, made when called: the ingest path publishes every
    stored row, and the hub builds nothing for a vehicle nobody watches."""
    return partial(live_position, row, latest=latest)


def location(
    vehicle_id: str,
    newest: StoredPosition,
    units: list[tuple[Unit, StoredPosition | None, datetime | None]],
    now: datetime,
) -> dict[str, Any]:
    """The last known location of a vehicle, and the last report of each unit."""
    body = position(newest)
    body["vehicle_id"] = vehicle_id
    body["age_s"] = round((now - newest.fix_time).total_seconds(), 3)
    body["units"] = [
        {
            "unique_id": unit.unique_id,
            "kind": unit.kind,
            "last_seen": iso(seen) if seen else None,
            "last_position": position(row) if row else None,
        }
        for unit, row, seen in units
    ]
    return body


def vehicle(item: Vehicle) -> dict[str, Any]:
    return {
        "vehicle_id": item.vehicle_id,
        "plate": item.plate,
        "vin": item.vin,
        "loan_ref": item.loan_ref,
        "units": [
            {"unique_id": u.unique_id, "kind": u.kind, "silent_after_s": u.silent_after_s}
            for u in item.units
        ],
        "updated_at": iso(item.updated_at) if item.updated_at else None,
        "loan_state": item.loan_state,
        "loan_state_since": iso(item.loan_state_since) if item.loan_state_since else None,
        "assignees": list(item.assignees),
        "group": item.group,
        "rules": item.rules,
    }


# details that say where the vehicle was (H3 cells, a gathering's centre)
PLACE_DETAILS = frozenset({"cell", "usual_cell", "centre"})


def event(item: Event, *, located: bool = True) -> dict[str, Any]:
    """``located=False`` for a reader who may not see the vehicle's positions
    (loan-state gating): the event without where it happened."""
    if not located:
        body = event(item)
        body["lat"] = body["lon"] = None
        body["details"] = {k: v for k, v in item.details.items() if k not in PLACE_DETAILS}
        return body
    return {
        "id": item.id,
        "seq": item.seq,
        "type": item.type,
        "severity": item.severity,
        "vehicle_id": item.vehicle_id,
        "unique_id": item.unique_id,
        "fix_time": iso(item.fix_time) if item.fix_time else None,
        "detected_at": iso(item.detected_at),
        "lat": item.lat,
        "lon": item.lon,
        "late": item.late,
        "alert_key": item.alert_key,
        "clears": item.clears,
        "details": item.details,
    }


def protocol_counters(stats: Counter[str], ports: dict[str, int]) -> dict[str, dict[str, int]]:
    """Counters per protocol: ``frames_dropped.gt06.bad_crc`` -> gt06: frames_dropped.bad_crc."""
    grouped: dict[str, dict[str, int]] = {name: {} for name in ports if name != "http"}
    for key, count in stats.items():
        kind, _, rest = key.partition(".")
        name, _, reason = rest.partition(".")
        if name in grouped:
            grouped[name][f"{kind}.{reason}" if reason else kind] = count
    return grouped
