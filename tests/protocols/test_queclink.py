"""Queclink @Track codec: the shared vectors, then hand-made frames for what they do not show.

Vectors: ``vectors/queclink.jsonl`` and ``queclink.frames.jsonl`` beside
/work/shared/PROTOCOLS.md (set TRACKER_VECTORS to another directory), real packets from
traccar's Gl200 decoder tests (traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently
checked expectations. Text vectors are named by their line in Gl200TextProtocolDecoderTest
(``L14``), HEX ones by their line in Gl200BinaryProtocolDecoderTest (``B13``).

Traccar's test strings often lack the closing ``$`` (its frame decoder strips it): ``wire()``
puts it back. The ASCII format has no checksum, so no text vector needs ``accept_bad_crc``;
the eight HEX vectors all carry a good CRC (CRC-16/CCITT-FALSE, Protocol Pro CRC-8).

Where we deliberately differ from traccar or from a vector's expectation, the tables below
say so: NO_FIX (GPS accuracy 0 is not a valid fix), DEVICE_IDS (GT300 dialect), the HEX
frames (not decoded) and NOT_NORMALISED (traccar attributes we keep raw only).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import Codec
from protocols.errors import ProtocolError
from protocols.messages import ALARMS, ATTRIBUTES, Heartbeat, Message, Other, Position
from protocols.queclink import QueclinkCodec, crc8, crc16_ccitt
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import load


def line(vector: dict[str, Any]) -> str:
    number = str(vector["source"]).rsplit(":L", 1)[-1]
    return ("B" if vector["encoding"] == "hex" else "L") + number


QUECLINK = {line(v): v for v in load("queclink.jsonl")}
FRAMES = load("queclink.frames.jsonl")

# GPS accuracy 0: "the current GPS fix fails and the last known GPS info is reported"
# (@Track Air Interface, <GPS Accuracy>). Traccar and the vectors call it valid; we keep the
# fix but not as valid. Line -> the groups (0-based) that have accuracy 0.
NO_FIX = dict.fromkeys(
    ["L14", "L17", "L33", "L179", "L204", "L276", "L324", "L333", "L339", "L342", "L438",
     "L447", "L456", "L459", "L501", "L519", "L564", "L570"],
    (0,),
) | {"L441": (1,), "L528": (1,), "L561": (1,)}  # fmt: skip
# GT300 dialect: field 1 is the IMEI (15 digits) and there is no protocol version; the
# vectors take field 2 (a report id, an ICCID) as the id, traccar drops L513.
DEVICE_IDS = {"L327": "862370030005908", "L513": "359464030073766"}
# Traccar attributes outside our vocabulary or layouts we do not decode: the text stays in
# raw["fields"] (line -> the field holding it).
NOT_NORMALISED = {
    "L42": ">I:5014|DB|607|0|0.00|0.00|0.00|0|0|0|0|1679|4|<",  # GTDAT data
    "L50": "01DF",  # fuel sensor, hex
    "L66": "12",  # GTHBM: harsh cornering (type 2 in the low nibble), no normalised name
    "L70": "P100.00",  # AdBlue level
    "L74": "13985",  # power2, mV
    "L149": "3065",  # accessory voltage, mV
    "L153": "2934",
    "L157": "45637561747261636b0d0a434f4d422c302c39342e302c2d312e302c2c2c4844430d0a",  # fuel
    "L164": "0099",
    "L171": "0190",  # 1-wire temperature, 1/16 degree
    "L175": "4",  # GTDAR warning type
    "L208": "220100",  # device status: inputs byte 01 (traccar in1 false)
    "L215": "9",  # GTCTN: battery % before the location group; not decoded
    "L219": "10",  # GTHBM: harsh braking
    "L223": "+RESP:GTPFA",  # power off
    "L227": "+RESP:GTPNA",  # power on
    "L607": "0",  # adc3
}
TRACCAR_ATTRIBUTES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "alarm": lambda value: {"sos": True} if value == "sos" else {},
    "batteryLevel": lambda value: {"battery_pct": value},
    "ignition": lambda value: {"ignition": value},
    "power": lambda value: {"external_power_v": value},
}


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in QUECLINK.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def text(vector: dict[str, Any]) -> bool:
    return bool(vector["encoding"] == "text")


def wire(vector: dict[str, Any]) -> bytes:
    if not text(vector):
        return bytes.fromhex(vector["data"])
    data = str(vector["data"])
    return (data if data.endswith("$") else data + "$").encode()


def decode(data: bytes, **options: Any) -> tuple[list[Message], QueclinkCodec]:
    codec = QueclinkCodec(**options)
    return codec.feed(data), codec


def positions(vector: dict[str, Any]) -> list[Position]:
    messages, _ = decode(wire(vector))
    found = [m for m in messages if isinstance(m, Position)]
    assert len(found) == len(messages)
    return found


def expected_fixes(vector: dict[str, Any]) -> list[dict[str, Any]]:
    expect = vector["expect"]
    return list(expect.get("positions") or ([expect] if "time" in expect else []))


def report(frame: str) -> bytes:
    return frame.encode()


# A GL200 GTFRI (traccar L525) and a heartbeat (L588), with their frame delimiter.
FRI = (
    "+RESP:GTFRI,020102,135790246811220,,0,0,1,1,4.3,92,70.0,121.354335,31.222073,"
    "20090214013254,0460,0000,18d8,6141,00,,20090214093254,11F0$"
)
HBD = "+ACK:GTHBD,1A0401,135790246811220,,20100214093254,11F0$"
IMEI = "135790246811220"


def with_type(name: str, frame: str = FRI) -> bytes:
    return frame.replace("GTFRI", name).encode()


# --- the vectors ------------------------------------------------------------------------


def test_checksums() -> None:
    assert crc16_ccitt(b"123456789") == 0x29B1
    # Protocol Pro's own check vector [GL601 @Track Protocol Pro, frames/report]
    assert crc8(bytes.fromhex("2B0123456789012345FE01060102 01FF5DB38C80")) == 0xFE


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = QueclinkCodec()
    frames = [frame.hex() for chunk in chunks for _, frame in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]


@vectors()
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = QueclinkCodec()
    frames = [frame for b in wire(vector) for _, frame in codec.frames(bytes([b]))]
    assert frames == [wire(vector).removesuffix(b"$") if text(vector) else wire(vector)]
    assert codec.pending == b""


@vectors(where=lambda v: text(v) and line(v) not in DEVICE_IDS)
def test_vector_device_id(vector: dict[str, Any]) -> None:
    messages, codec = decode(wire(vector))
    assert messages
    assert {m.unique_id for m in messages} == {vector["expect"]["device_id"]}
    assert not codec.stats


@vectors(where=lambda v: line(v) in DEVICE_IDS)
def test_gt300_dialect_takes_its_imei_from_field_one(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector))
    assert [m.unique_id for m in messages] == [DEVICE_IDS[line(vector)]]
    assert vector["expect"]["device_id"] != DEVICE_IDS[line(vector)]
    assert messages[0].raw["version"] is None


def assert_fix(position: Position, fix: dict[str, Any], *, valid: bool) -> None:
    assert position.fix_time == datetime.fromisoformat(fix["time"])
    assert round(position.lat, 6) == fix["lat"]
    assert round(position.lon, 6) == fix["lon"]
    assert position.speed_kmh == fix["speed_kmh"]
    assert position.course_deg == fix["course"]
    assert position.valid is valid


@vectors(where=lambda v: bool(expected_fixes(v)) and line(v) not in NO_FIX)
def test_vector_fix(vector: dict[str, Any]) -> None:
    found = positions(vector)
    fixes = expected_fixes(vector)
    assert len(found) == len(fixes)
    for position, fix in zip(found, fixes, strict=True):
        assert_fix(position, fix, valid=fix["valid"])
        assert position.unique_id == vector["expect"]["device_id"]


@vectors(where=lambda v: line(v) in NO_FIX)
def test_gps_accuracy_zero_is_the_last_known_fix_not_a_valid_one(vector: dict[str, Any]) -> None:
    found = positions(vector)
    fixes = expected_fixes(vector)
    assert len(found) == len(fixes)
    for group, (position, fix) in enumerate(zip(found, fixes, strict=True)):
        stale = group in NO_FIX[line(vector)]
        assert fix["valid"] is True  # traccar and the vector
        assert_fix(position, fix, valid=not stale)
        assert (position.raw["gps_accuracy"] == "0") is stale
        assert ("hdop" in position.attributes) is not stale


@vectors(where=lambda v: "traccar_decoded" in v and not expected_fixes(v))
def test_fixes_traccar_decodes_agree(vector: dict[str, Any]) -> None:
    """Vectors whose fix was not checked independently (reports traccar decodes by type)."""
    decoded = vector["traccar_decoded"]
    [position] = positions(vector)
    assert position.fix_time == datetime.fromisoformat(decoded["fixTime"])
    assert round(position.lat, 6) == decoded["lat"]
    assert round(position.lon, 6) == decoded["lon"]
    assert position.speed_kmh * 0.539957 == pytest.approx(decoded["speedKn"])  # traccar's factor
    assert position.course_deg == decoded["course"]
    assert position.valid is (decoded["valid"] and position.raw["gps_accuracy"] != "0")


@vectors(where=text)
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector))
    ack = vector["expect"]["ack_text"]
    assert messages[-1].reply == (None if ack is None else ack.encode())
    assert all(m.reply is None for m in messages[:-1])


# HEX and Protocol Pro layouts depend on the model and on report masks the server configured;
# traccar decodes positions from them, we frame them, check their CRC and keep them as Other.
@vectors(where=lambda v: not text(v))
def test_hex_frames_are_framed_checked_and_not_decoded(vector: dict[str, Any]) -> None:
    messages, codec = decode(wire(vector))
    assert [type(m) for m in messages] == [Other]
    assert messages[0].reply is None
    assert messages[0].raw["crc_ok"] is True
    assert codec.stats == {"unknown_type": 1}
    assert "position" in vector["traccar_result"] or vector["traccar_result"] == "null"


def attributes_of(vector: dict[str, Any]) -> dict[str, Any]:
    messages, _ = decode(wire(vector))
    last = messages[-1]
    assert set(getattr(last, "attributes", {})) <= ATTRIBUTES
    return dict(getattr(last, "attributes", {}))


@vectors(where=lambda v: "traccar_attribute" in v["expect"] and line(v) not in NOT_NORMALISED)
def test_vector_attributes(vector: dict[str, Any]) -> None:
    attributes = attributes_of(vector)
    for key, value in vector["expect"]["traccar_attribute"].items():
        for name, expected in TRACCAR_ATTRIBUTES[key](value).items():
            assert attributes.get(name) == expected  # None: absent (L46, GTPNA)


@vectors(where=lambda v: line(v) in NOT_NORMALISED)
def test_attributes_we_keep_raw(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector))
    assert NOT_NORMALISED[line(vector)] in messages[-1].raw["fields"]
    [(key, value)] = vector["expect"]["traccar_attribute"].items()
    attributes = attributes_of(vector)
    for name in TRACCAR_ATTRIBUTES.get(key, lambda _: {})(value):
        assert name not in attributes  # L215: battery_pct, not decoded
    assert {name for name in ALARMS if attributes.get(name)} == set()


# --- hand-made frames ---------------------------------------------------------------------


def test_heartbeat_is_answered_with_its_version_and_count() -> None:
    [heartbeat], _ = decode(HBD.encode())
    assert heartbeat == Heartbeat(
        IMEI,
        reply=b"+SACK:GTHBD,1A0401,11F0$",
        raw={
            "type": "+ACK:GTHBD",
            "version": "1A0401",
            "send_time": "20100214093254",
            "count": "11F0",
        },
    )


def test_heartbeat_reply_echoes_the_count_as_sent() -> None:
    [heartbeat], _ = decode(HBD.replace("11F0", "0a0f").encode())
    assert heartbeat.reply == b"+SACK:GTHBD,1A0401,0a0f$"


def test_reports_are_acknowledged_only_in_sack_mode() -> None:
    vector = QUECLINK["L234"]  # four location groups
    assert all(m.reply is None for m in decode(wire(vector))[0])
    messages, _ = decode(wire(vector), ack=True)
    assert [m.reply for m in messages] == [None, None, None, b"+SACK:0654$"]
    [heartbeat], _ = decode(HBD.encode(), ack=True)
    assert heartbeat.reply == b"+SACK:GTHBD,1A0401,11F0$"  # one answer, not two
    [command_ack], _ = decode(wire(QUECLINK["L591"]), ack=True)
    assert command_ack.reply is None  # answers to our commands are not reports


def test_location_is_decoded() -> None:
    [position], codec = decode(FRI.encode())
    assert position == Position(
        IMEI,
        datetime(2009, 2, 14, 1, 32, 54, tzinfo=UTC),
        31.222073,
        121.354335,
        valid=True,
        speed_kmh=4.3,
        course_deg=92.0,
        altitude_m=70.0,
        attributes={"hdop": 1.0},
        raw={
            "type": "+RESP:GTFRI",
            "group": 0,
            "gps_accuracy": "1",
            "mcc": 460,
            "mnc": 0,
            "lac": 0x18D8,
            "cell": 0x6141,
            "version": "020102",
            "send_time": "20090214093254",
            "count": "11F0",
            "fields": FRI.removesuffix("$").split(","),
        },
    )
    assert not codec.stats


@pytest.mark.parametrize(
    ("name", "attributes"),
    [
        ("GTSOS", {"sos": True}),
        ("GTPNL", {"sos": True}),
        ("GTJDR", {"jamming": True}),
        ("GTSPD", {"overspeed": True}),
        ("GTBPL", {"low_battery": True}),
        ("GTMPF", {"power_cut": True, "charging": False}),
        ("GTEPF", {"power_cut": True, "charging": False}),
        ("GTMPN", {"charging": True}),
        ("GTIGN", {"ignition": True}),
        ("GTIGF", {"ignition": False}),
        ("GTVGN", {"ignition": True}),
        ("GTVGF", {"ignition": False}),
        ("GTTOW", {}),
        ("GTPFA", {}),
    ],
)
def test_report_type_alarms(name: str, attributes: dict[str, Any]) -> None:
    [position], _ = decode(with_type(name))
    assert isinstance(position, Position)
    assert position.attributes == {"hdop": 1.0} | attributes
    assert position.raw["type"] == f"+RESP:{name}"


def test_alarm_without_fix_is_a_heartbeat_with_the_alarm() -> None:
    no_fix = FRI.replace("4.3,92,70.0,121.354335,31.222073,20090214013254", ",,,,,")
    [heartbeat], _ = decode(with_type("GTSOS", no_fix))
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.attributes == {"sos": True}
    [other], _ = decode(no_fix.encode())
    assert isinstance(other, Other)
    assert other.kind == "+RESP:GTFRI"


@pytest.mark.parametrize(
    ("status", "attributes"),
    [
        ("110000", {"ignition": False, "motion": False}),
        ("120000", {"ignition": False, "motion": True}),
        ("210100", {"ignition": True, "motion": False}),
        ("220100", {"ignition": True, "motion": True}),
        ("410000", {"motion": False}),
        ("1A0000", {"ignition": False}),  # "fake tow": neither rest nor moving
    ],
)
def test_device_status(status: str, attributes: dict[str, Any]) -> None:
    # GV series tail: odometer, hour meter, adc 1, adc 2, backup battery %, device status
    frame = FRI.replace("6141,00,,", f"6141,00,2000.0,12345:12:34,,,80,{status},,,,")
    [position], _ = decode(frame.encode())
    assert isinstance(position, Position)
    assert position.attributes == {"hdop": 1.0, "battery_pct": 80} | attributes


def test_information_report_is_a_heartbeat() -> None:
    [info], _ = decode(wire(QUECLINK["L417"]))
    assert isinstance(info, Heartbeat)
    assert info.attributes == {
        "gsm_signal": 16,
        "external_power_v": 11.87,
        "battery_v": 4.1,
        "charging": False,
    }


def test_buffered_report_is_decoded_like_a_live_one() -> None:
    [live], _ = decode(FRI.encode())
    [buffered], _ = decode(FRI.replace("+RESP:", "+BUFF:").encode())
    assert isinstance(live, Position)
    assert isinstance(buffered, Position)
    assert buffered.raw["type"] == "+BUFF:GTFRI"
    assert (buffered.fix_time, buffered.lat, buffered.lon) == (live.fix_time, live.lat, live.lon)


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("20090214013254", "20090230013254", "bad_time"),
        ("31.222073", "91.222073", "bad_position"),
        ("121.354335", "181.354335", "bad_position"),
        (",92,", ",361,", "bad_position"),
    ],
    ids=["day", "lat", "lon", "course"],
)
def test_implausible_fix_is_dropped_and_counted(old: str, new: str, reason: str) -> None:
    messages, codec = decode(FRI.replace(old, new, 1).encode(), ack=True)
    assert [type(m) for m in messages] == [Other]
    assert messages[0].reply == b"+SACK:11F0$"  # still answered
    assert codec.stats == {reason: 1}


def test_frame_without_device_id_is_dropped() -> None:
    messages, codec = decode(FRI.replace(IMEI, "ABC").encode())
    assert messages == []
    assert codec.stats == {"bad_id": 1}


def test_frames_end_at_dollar_nul_or_the_next_header() -> None:
    unterminated = FRI.removesuffix("$")
    stream = (FRI + unterminated + "\x00" + unterminated + HBD).encode()
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = QueclinkCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Position, Position, Heartbeat]
        assert not codec.stats
        assert codec.pending == b""


def test_plus_signs_inside_a_frame_do_not_end_it() -> None:
    vector = QUECLINK["L534"]  # GTLBC with the phone number +8613800000000
    assert b"+86138" in wire(vector)
    [position], _ = decode(wire(vector))
    assert isinstance(position, Position)


def test_garbage_before_and_between_frames_is_skipped() -> None:
    binary = wire(QUECLINK["B31"])  # +EVT, 92 bytes
    stream = b"\x00\xffxx$" + FRI.encode() + b"-+RES\r\n" + binary + b"++" + HBD.encode()
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = QueclinkCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Other, Heartbeat]
        assert messages[1].unique_id == IMEI  # HEX frames: the IMEI this connection gave
        assert codec.stats == {"garbage_bytes": 14, "unknown_type": 1}


def test_hex_frame_with_bad_crc_is_dropped_unless_accepted() -> None:
    binary = bytearray(wire(QUECLINK["B31"]))
    binary[40] ^= 0xFF
    messages, codec = decode(bytes(binary))
    assert messages == []
    assert codec.stats == {"bad_crc": 1}
    messages, codec = decode(bytes(binary), accept_bad_crc=True)
    assert [m.raw["crc_ok"] for m in messages] == [False]
    assert codec.stats == {"bad_crc": 1, "unknown_type": 1}


def test_hex_frame_with_wrong_tail_is_garbage() -> None:
    binary = wire(QUECLINK["B31"])[:-2] + b"\r\r" + FRI.encode()
    messages, codec = decode(binary)
    assert [type(m) for m in messages] == [Position]
    assert codec.stats["garbage_bytes"] == 92


def test_endless_garbage_closes_the_connection() -> None:
    codec = QueclinkCodec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


def test_text_frame_without_end_closes_the_connection() -> None:
    codec = QueclinkCodec(max_frame_bytes=1024)
    codec.feed(b"+RESP:GTFRI," + b"1" * (1024 - 12))  # exactly the limit: waiting
    with pytest.raises(ProtocolError):
        codec.feed(b"1")


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(wire(v) for v in QUECLINK.values())
    whole = QueclinkCodec()
    bytewise = QueclinkCodec()
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


# --- properties -------------------------------------------------------------------------


FIELD = st.one_of(
    st.sampled_from(["", "0", "1", "00", "4.3", "-58.1", "110000", "210100", "+0800"]),
    st.from_regex(r"-?[0-9]{1,3}\.[0-9]{6}", fullmatch=True),
    st.from_regex(r"[0-9]{14}", fullmatch=True),
    st.text(alphabet="0123456789ABCDEF.:-|", max_size=12),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    header=st.sampled_from(["+RESP:GTFRI", "+BUFF:GTERI", "+RESP:GTINF", "+ACK:GTHBD"]),
    fields=st.lists(FIELD, min_size=1, max_size=40),
)
def test_any_text_report_decodes_safely(header: str, fields: list[str]) -> None:
    frame = ",".join([header, "020102", IMEI, *fields]) + "$"
    codec = QueclinkCodec()
    assert [f for b in frame.encode() for _, f in codec.frames(bytes([b]))] == [frame[:-1].encode()]
    messages, _ = decode(frame.encode(), ack=True)
    assert len(messages) >= 1
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([wire(v) for v in QUECLINK.values()] or [FRI.encode()]),
            st.binary(max_size=40),
            st.sampled_from([b"+", b"$", b"\x00", b"+RESP:", b"+ACK", b"+EVT", b"+\x00", b","]),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(1, 40), max_size=30),
)
def test_any_stream_splits_the_same_however_it_is_chunked(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)

    def codec() -> Codec:
        return QueclinkCodec(accept_bad_crc=True, max_frame_bytes=2048)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
