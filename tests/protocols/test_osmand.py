"""OsmAnd / Traccar Client decoding.

Vectors: /work/shared/vectors/osmand.jsonl, requests from traccar's OsmAndProtocolDecoderTest
(Apache-2.0), decoded independently (see the vectors' README). Hand-written cases below.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.messages import ATTRIBUTES, Position
from protocols.osmand import NoFix, OsmandError, decode

VECTORS = Path(
    os.environ.get("TRACKER_VECTORS", Path(__file__).resolve().parents[3] / "shared" / "vectors")
)
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)  # the caller's clock, for requests without one
FORM = "application/x-www-form-urlencoded"

# `expect` keys asserted below, and those not asserted: speed in other units, a prose note.
CHECKED = {"device_id", "time", "time_local_server_tz", "lat", "lon", "speed_kmh", "course"}
CHECKED |= {"valid", "altitude_m", "battery_level", "motion", "ignition", "traccar_attribute"}
CHECKED |= {"http_status"}
IGNORED = {"speed_knots", "speed_mps", "note"}


def load_vectors() -> list[Any]:
    lines = (VECTORS / "osmand.jsonl").read_text().splitlines()
    vectors = [json.loads(line) for line in lines if line.strip()]
    return [pytest.param(v, id=v["source"].rpartition("#")[2]) for v in vectors]


def send(vector: dict[str, Any]) -> Position:
    http = vector["http"]
    query = http["uri"].partition("?")[2]
    headers = {k.lower(): v for k, v in http.get("headers", {}).items()}
    body = http.get("body", "").encode()
    return decode(http["method"], query, body, headers.get("content-type"), now=NOW)


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@pytest.mark.parametrize("vector", load_vectors())
def test_vector(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    assert set(expect) <= CHECKED | IGNORED, "a new expect key: assert it here"
    if expect["http_status"] == 400:
        with pytest.raises(OsmandError) as refused:
            send(vector)
        assert not isinstance(refused.value, NoFix)
        return
    assert expect["http_status"] == 200
    if "lat" not in expect:  # no coordinates: answered 200, nothing stored
        with pytest.raises(NoFix) as no_fix:
            send(vector)
        assert no_fix.value.unique_id == expect["device_id"]
        assert no_fix.value.fix_time == utc(expect["time"])
        return
    position = send(vector)
    assert position.unique_id == expect["device_id"]
    # Traccar reads "yyyy-MM-dd HH:mm:ss" in the server's zone; we read UTC (documented).
    time = expect.get("time") or expect.get("time_local_server_tz")
    assert position.fix_time == (utc(time) if time else NOW)
    assert position.fix_time.tzinfo is UTC
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.valid is expect["valid"]
    assert round(position.speed_kmh, 3) == expect.get("speed_kmh", 0.0)
    assert position.course_deg == pytest.approx(expect.get("course", 0.0))
    if "altitude_m" in expect:
        assert position.altitude_m == pytest.approx(expect["altitude_m"])
    for key, name in [
        ("battery_level", "battery_pct"),
        ("motion", "motion"),
        ("ignition", "ignition"),
    ]:
        if key in expect:
            assert position.attributes[name] == expect[key]
    for key, value in expect.get("traccar_attribute", {}).items():
        assert position.raw[key] == value
    assert set(position.attributes) <= ATTRIBUTES


def get(query: str, **options: Any) -> Position:
    return decode("GET", query, b"", None, **options)


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("1442068686", datetime(2015, 9, 12, 14, 38, 6, tzinfo=UTC)),
        ("1442068686579", datetime(2015, 9, 12, 14, 38, 6, 579000, tzinfo=UTC)),
        ("1442068686.25", datetime(2015, 9, 12, 14, 38, 6, 250000, tzinfo=UTC)),
        (str(2**31 - 1), datetime(2038, 1, 19, 3, 14, 7, tzinfo=UTC)),  # last one in seconds
        (str(2**31), datetime(1970, 1, 25, 20, 31, 23, 648000, tzinfo=UTC)),  # milliseconds
        ("2016-01-27T20:55:47+02:00", datetime(2016, 1, 27, 18, 55, 47, tzinfo=UTC)),
        (
            "2016-01-27T20:55:47 02:00",
            datetime(2016, 1, 27, 18, 55, 47, tzinfo=UTC),
        ),  # "+" unescaped
        ("2016-01-27T18:55:47.5Z", datetime(2016, 1, 27, 18, 55, 47, 500000, tzinfo=UTC)),
        ("2016-01-27T18:55:47", datetime(2016, 1, 27, 18, 55, 47, tzinfo=UTC)),
        ("2014-06-04 09:10:11", datetime(2014, 6, 4, 9, 10, 11, tzinfo=UTC)),
    ],
)
def test_timestamp_forms(timestamp: str, expected: datetime) -> None:
    fix_time = get(f"id=1&lat=1&lon=2&timestamp={timestamp.replace('+', '%2B')}").fix_time
    assert fix_time == expected
    assert fix_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "timestamp", ["xyz", "-5", "2016-13-01T00:00:00", "99999999999999999999999"]
)
def test_timestamp_not_understood(timestamp: str) -> None:
    with pytest.raises(OsmandError, match="timestamp not understood"):
        get(f"id=1&lat=1&lon=2&timestamp={timestamp}")


def test_missing_timestamp_takes_now_or_is_refused() -> None:
    assert get("id=1&lat=1&lon=2", now=NOW).fix_time == NOW
    with pytest.raises(OsmandError, match="missing timestamp"):
        get("id=1&lat=1&lon=2")


@pytest.mark.parametrize(
    ("unit", "kmh"), [("kn", 18.52), ("kmh", 10.0), ("mps", 36.0), ("mph", 16.09344)]
)
def test_speed_units(unit: Any, kmh: float) -> None:
    position = get("id=1&timestamp=0&lat=1&lon=2&speed=10", speed_unit=unit)
    assert position.speed_kmh == pytest.approx(kmh)


def test_unknown_values_are_neutral() -> None:
    position = get("id=1&timestamp=0&lat=1&lon=2&speed=-1&bearing=-1&accuracy=-1&hdop=")
    assert (position.speed_kmh, position.course_deg, position.accuracy_m) == (0.0, 0.0, None)
    assert "hdop" not in position.attributes
    assert get("id=1&timestamp=0&lat=1&lon=2&heading=370").course_deg == pytest.approx(10.0)


@pytest.mark.parametrize("lat", ["abc", "90.5", "-91", "nan", "inf"])
def test_bad_lat(lat: str) -> None:
    with pytest.raises(OsmandError, match="lat must be a number between -90 and 90"):
        get(f"id=1&timestamp=0&lat={lat}&lon=2")


def test_lon_without_lat_is_refused() -> None:
    with pytest.raises(OsmandError, match="lat must be"):
        get("id=1&timestamp=0&lon=2")


@pytest.mark.parametrize("query", ["timestamp=0&lat=1&lon=2", "id=&lat=1&lon=2", "id=%20"])
def test_missing_id(query: str) -> None:
    with pytest.raises(OsmandError, match="missing id") as refused:
        get(query)
    assert not isinstance(refused.value, NoFix)


def test_post_form_body_is_merged_with_the_query() -> None:
    body = b"lat=-6.5&lon=106.25&timestamp=1377177267&batt=87&charge=true&valid=0"
    position = decode("POST", "id=abc", body, f"{FORM}; charset=utf-8")
    assert (position.unique_id, position.lat, position.lon) == ("abc", -6.5, 106.25)
    assert position.valid is False
    assert position.attributes == {"battery_pct": 87, "charging": True}


def test_post_with_unknown_content_type_is_refused() -> None:
    with pytest.raises(OsmandError, match="Content-Type"):
        decode("POST", "", b"<xml/>", "text/xml")


def test_attributes_are_normalised_and_the_rest_kept_raw() -> None:
    query = "id=1&timestamp=0&lat=1&lon=2&ignition=true&motion=maybe&rpm=933&rpm=940"
    query += "&event=start&driverUniqueId=D7&hdop=1.5&cell=257,02,16,2224"
    position = get(query)
    assert position.attributes == {"ignition": True, "event": "start", "hdop": 1.5}
    assert position.raw == {
        "motion": "maybe",
        "rpm": ["933", "940"],
        "driverUniqueId": "D7",
        "cell": ["257,02,16,2224"],
    }


def test_no_fix_carries_what_the_unit_sent() -> None:
    with pytest.raises(NoFix) as no_fix:
        get("id=7&timestamp=0&wifi=00-14-22-01-23-45,-80&wifi=00-1C-B3-09-85-15,-70")
    assert no_fix.value.raw == {"wifi": ["00-14-22-01-23-45,-80", "00-1C-B3-09-85-15,-70"]}
    assert (no_fix.value.unique_id, no_fix.value.fix_time) == (
        "7",
        datetime(1970, 1, 1, tzinfo=UTC),
    )


def json_body(**location: Any) -> bytes:
    fix = {"timestamp": "2021-07-21T08:06:34Z", "coords": {"latitude": 1, "longitude": 2}}
    return json.dumps({"location": fix | location, "device_id": "d1"}).encode()


def test_json_unknowns_and_odometer() -> None:
    coords = {"latitude": 1, "longitude": 2, "speed": -1, "heading": -1, "accuracy": -1}
    body = json_body(coords=coords, battery={"level": -1, "is_charging": True}, odometer=12.5)
    position = decode("POST", "", body, "application/json")
    assert (position.speed_kmh, position.course_deg, position.accuracy_m) == (0.0, 0.0, None)
    assert position.attributes == {"charging": True, "odometer_m": 12.5}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not JSON"),
        (b"[]", "location"),
        (json.dumps({"location": {"coords": {}}}).encode(), "device_id"),
        (json_body(coords={"latitude": "x", "longitude": 2}), "coords.latitude"),
        (json_body(coords={"latitude": 1, "longitude": 2, "speed": "fast"}), "coords.speed"),
    ],
)
def test_json_errors(body: bytes, message: str) -> None:
    with pytest.raises(OsmandError, match=message):
        decode("POST", "", body, "application/json")


def assert_plausible(position: Position) -> None:
    assert -90 <= position.lat <= 90
    assert -180 <= position.lon <= 180
    assert 0 <= position.speed_kmh < math.inf
    assert 0 <= position.course_deg < 360
    assert position.fix_time.utcoffset() == timedelta(0)
    assert set(position.attributes) <= ATTRIBUTES


KEYS = ["id", "deviceid", "timestamp", "lat", "lon", "location", "speed", "bearing", "heading"]
KEYS += ["altitude", "accuracy", "valid", "hdop", "batt", "charge", "motion", "event", "cell"]
VALUES = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.floats().map(str),
    st.sampled_from(["true", "0", "60.0,30.0", "2016-01-27T18:55:47Z", "2014-06-04 09:10:11"]),
)
PAIRS = st.lists(st.tuples(st.sampled_from(KEYS) | st.text(max_size=8), VALUES), max_size=12)
QUERIES = st.text() | PAIRS.map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


@settings(max_examples=300, deadline=None)
@given(query=QUERIES)
def test_any_query_decodes_plausibly_or_raises_osmand_error(query: str) -> None:
    try:
        position = get(query, now=NOW)
    except OsmandError:
        return
    assert_plausible(position)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(), content_type=st.sampled_from(["application/json", FORM, None]))
def test_any_body_decodes_plausibly_or_raises_osmand_error(
    body: bytes, content_type: str | None
) -> None:
    try:
        position = decode("POST", "id=1", body, content_type, now=NOW)
    except OsmandError:
        return
    assert_plausible(position)


@pytest.mark.parametrize(
    "unique_id", ["evil\n2026-11-30 CRITICAL forged", "ph\x00one", "a/b", "has space", "9" * 65]
)
def test_ids_a_unit_could_never_be_registered_under_are_refused(unique_id: str) -> None:
    query = urlencode({"id": unique_id, "timestamp": "1700000000", "lat": "1", "lon": "1"})
    with pytest.raises(OsmandError, match=r"id must be 1-64 letters, digits or \. _ : -"):
        decode("GET", query, b"", None)
    body = orjson.dumps({"device_id": unique_id, "location": {"coords": {}}})
    with pytest.raises(OsmandError, match=r"device_id must be 1-64"):
        decode("POST", "", body, "application/json")


def test_json_nested_deeper_than_16_is_refused() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(300):
        deep = {"a": deep}
    document = {"device_id": "phone-1", "location": {"timestamp": 1, "extras": deep}}
    with pytest.raises(OsmandError, match="more than 16 deep"):  # orjson nests 255 at most
        decode("POST", "", json.dumps(document).encode(), "application/json")
    document["location"]["extras"] = {"a": {"b": {"c": 1}}}
    with pytest.raises(NoFix):  # shallow: accepted (a request without a fix)
        decode("POST", "", orjson.dumps(document), "application/json")
