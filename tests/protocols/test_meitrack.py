"""Meitrack codec: the shared vectors, then hand-made frames for what they do not show.

Vectors: ``vectors/meitrack.jsonl`` and ``meitrack.frames.jsonl`` beside
/work/shared/PROTOCOLS.md (set TRACKER_VECTORS to another directory), real packets from
traccar's MeitrackProtocolDecoderTest (traccar/traccar 9e5c458ad0bf, Apache-2.0) with
independently checked expectations; each is named by its line there (``L65``).

Traccar's text test strings mostly lack the closing ``\\r\\n``: ``wire()`` puts it back.

Checksums: L65, L100, L121, L140 and L170 (``checksum_ok: false``, test data edited by hand)
and the binary L33 (sum B5, sent B8) carry a wrong CS; traccar checks none. We drop them
(``bad_crc``) and decode them only with ``accept_bad_crc=True``, as the value tests do.

Where we deliberately differ from traccar, the tables below say so: REPLIES (D03: we take
no photos), NOT_NORMALISED (traccar attributes kept raw) and ALARMS_AS_STATE (event 22).
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
from protocols.meitrack import MeitrackCodec, checksum, command_frame
from protocols.messages import ALARMS, ATTRIBUTES, Message, Other, Position
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

MEITRACK = {line(v): v for v in load("meitrack.jsonl")}
FRAMES = load("meitrack.frames.jsonl")

BAD_CHECKSUM = {"L33", "L65", "L100", "L121", "L140", "L170"}
TRUNCATED = "L85"  # the first 1024 bytes of a 1093-byte D00 photo frame
REPLIES = {"L118": (None, "D03 photo notice: traccar asks for the photo; we take no photos")}
# CCE parameters traccar turns into attributes outside our vocabulary: kept as the id list
# in raw["parameters"] (the values in the frame).
NOT_NORMALISED = {
    "L21": 0xFE31,  # image file name
    "L25": 0xFE73,  # BLE tag temperature
    "L33": 0xFE73,  # BLE tag name
    "L37": 0xFEA8,  # second battery level
    "L48": 0x47,  # lock state
}
# Traccar alarms that are states here: power restored is "charging", not an alarm.
ALARMS_AS_STATE = {"powerRestored": {"charging": True}}
IMEI = "867047043162018"
AAA = (  # L72, with its CRLF
    "$$D149,867047043162018,AAA,35,-1.264865,36.800705,211001105240,A,9,20,41.0,323,1,1697,1,0,"
    "000|00||,0000,4.33|12.96|1.92|2.72|2.69,0.000000|0|0.000000,*E1\r\n"
)


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in MEITRACK.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def wire(vector: dict[str, Any]) -> bytes:
    if vector["encoding"] == "hex":
        return bytes.fromhex(vector["data"])
    data = str(vector["data"])
    return (data if data.endswith("\r\n") else data + "\r\n").encode()


def decode(data: bytes, **options: Any) -> tuple[list[Message], MeitrackCodec]:
    codec = MeitrackCodec(**options)
    return codec.feed(data), codec


def frame(body: str | bytes, flag: str = "D", uid: str = IMEI) -> bytes:
    """A well-formed frame from the command on: ``AAA,35,...`` -> ``$$D<LEN>,<uid>,AAA,...``."""
    content = body.encode() if isinstance(body, str) else body
    length = 1 + len(uid) + 1 + len(content) + 1 + 2 + 2
    head = f"$${flag}{length},{uid},".encode() + content + b"*"
    return head + f"{checksum(head):02X}\r\n".encode()


def report(
    event: int = 35, analog: str = "0000|0000|0000|0191|0573", fields: dict[str, str] | None = None
) -> bytes:
    values = {
        "lat": "22.513015", "lon": "114.057235", "time": "240501123045", "fix": "A",
        "sats": "9", "gsm": "20", "speed": "41.5", "course": "323", "hdop": "1.2",
        "alt": "16", "odometer": "1697", "runtime": "120", "cell": "460|0|E78A|9FC2",
        "io": "0400",
    } | (fields or {})  # fmt: skip
    return frame(f"AAA,{event}," + ",".join(values.values()) + f",{analog},,")


# --- the vectors ------------------------------------------------------------------------


def test_checksum_and_command_frame() -> None:
    # traccar MeitrackProtocolEncoderTest: "@@A25,123456789012345,A10*58\r\n"
    assert checksum(b"@@A25,123456789012345,A10*") == 0x58
    assert command_frame("A", "123456789012345", "A10") == b"@@A25,123456789012345,A10*58\r\n"


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = MeitrackCodec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]


@vectors(where=lambda v: line(v) != TRUNCATED)
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = MeitrackCodec()
    assert [f for b in wire(vector) for f in codec.frames(bytes([b]))] == [wire(vector)]
    assert codec.pending == b""


def test_truncated_photo_frame_waits_for_its_length() -> None:
    messages, codec = decode(wire(MEITRACK[TRUNCATED]))
    assert messages == []
    assert codec.pending == wire(MEITRACK[TRUNCATED])
    assert not codec.stats


@vectors(where=lambda v: line(v) not in BAD_CHECKSUM and line(v) != TRUNCATED)
def test_vector_with_good_checksum_is_decoded(vector: dict[str, Any]) -> None:
    messages, codec = decode(wire(vector))
    assert messages
    assert not codec.stats["bad_crc"]
    if "device_id" in vector["expect"]:
        assert {m.unique_id for m in messages} == {vector["expect"]["device_id"]}


@vectors(where=lambda v: line(v) in BAD_CHECKSUM)
def test_vector_with_bad_checksum_is_dropped_unless_accepted(vector: dict[str, Any]) -> None:
    assert vector["expect"].get("checksum_ok", False) is False
    messages, codec = decode(wire(vector))
    assert messages == []
    assert codec.stats == {"bad_crc": 1}
    accepted, codec = decode(wire(vector), accept_bad_crc=True)
    assert len(accepted) == 1
    assert accepted[0].raw["crc_ok"] is False


def fix_of(vector: dict[str, Any]) -> Position:
    messages, _ = decode(wire(vector), accept_bad_crc=True)
    assert [type(m) for m in messages] == [Position]
    message = messages[0]
    assert isinstance(message, Position)
    return message


@vectors(where=lambda v: "time" in v["expect"])
def test_vector_fix(vector: dict[str, Any]) -> None:
    position, expect = fix_of(vector), vector["expect"]
    assert position.fix_time == datetime.fromisoformat(expect["time"])
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.speed_kmh == expect["speed_kmh"]
    assert position.course_deg == expect["course"]
    assert position.valid is expect["valid"]
    assert position.unique_id == expect["device_id"]
    assert position.raw["event"] == expect["event"]
    assert set(position.attributes) <= ATTRIBUTES


@vectors(where=lambda v: "traccar_decoded" in v)
def test_fixes_agree_with_traccar(vector: dict[str, Any]) -> None:
    position, decoded = fix_of(vector), vector["traccar_decoded"]
    assert position.fix_time == datetime.fromisoformat(decoded["fixTime"])
    assert (round(position.lat, 6), round(position.lon, 6)) == (decoded["lat"], decoded["lon"])
    assert position.speed_kmh * 0.539957 == pytest.approx(decoded["speedKn"])
    assert (position.course_deg, position.valid) == (decoded["course"], decoded["valid"])


@vectors(where=lambda v: "alarm" in v["expect"])
def test_vector_alarm(vector: dict[str, Any]) -> None:
    position, alarm = fix_of(vector), vector["expect"]["alarm"]
    wanted = ALARMS_AS_STATE.get(alarm, {alarm: True})
    assert {k: position.attributes.get(k) for k in wanted} == wanted
    raised = {name for name in ALARMS if position.attributes.get(name)}
    assert raised == {k for k in wanted if k in ALARMS}


@vectors(where=lambda v: "ack_text" in v["expect"] or "traccar_response" in v)
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector), accept_bad_crc=True)
    if line(vector) in REPLIES:
        expected = REPLIES[line(vector)][0]
    elif "traccar_response" in vector:
        expected = vector["traccar_response"][0].encode()
    else:
        expected = None
    assert [m.reply for m in messages] == [expected]


@vectors(where=lambda v: v["encoding"] == "hex" and line(v) != TRUNCATED)
def test_binary_records_are_positions(vector: dict[str, Any]) -> None:
    """CCE and CCC: as many positions as traccar decodes, the IMEI of the header."""
    messages, _ = decode(wire(vector), accept_bad_crc=True)
    count = int(vector["traccar_result"].split()[0])
    assert [type(m) for m in messages] == [Position] * count
    uid = wire(vector).split(b",")[1].decode()
    assert {m.unique_id for m in messages} == {uid}
    ccc = b",CCC," in wire(vector)[:32]
    acknowledged = command_frame(chr(wire(vector)[2]), uid, f"CCC,{count}") if ccc else None
    assert [m.reply for m in messages] == [None] * (count - 1) + [acknowledged]


@vectors(where=lambda v: "traccar_attribute" in v["expect"] and line(v) not in NOT_NORMALISED)
def test_vector_attributes(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector), accept_bad_crc=True)
    message = messages[0]
    [(key, value)] = vector["expect"]["traccar_attribute"].items()
    if key == "result":  # D82 command result: command and content
        assert isinstance(message, Other)
        assert f"{message.raw['command']},{message.raw['content']}" == value
    elif key == "input":
        assert message.raw["input"] == value
    else:
        assert isinstance(message, Position)
        name = {"power": "external_power_v", "batteryLevel": "battery_pct"}[key]
        assert message.attributes[name] == value


@vectors(where=lambda v: line(v) in NOT_NORMALISED)
def test_attributes_we_keep_raw(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector), accept_bad_crc=True)
    assert NOT_NORMALISED[line(vector)] in messages[0].raw["parameters"]


# --- hand-made frames ---------------------------------------------------------------------


def test_report_is_decoded() -> None:
    [position], codec = decode(report(1))
    assert position == Position(
        IMEI,
        datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC),
        22.513015,
        114.057235,
        valid=True,
        speed_kmh=41.5,
        course_deg=323.0,
        altitude_m=16.0,
        satellites=9,
        attributes={
            "sos": True,
            "gsm_signal": 20,
            "hdop": 1.2,
            "odometer_m": 1697.0,
            "battery_v": 4.01,
            "external_power_v": 13.95,
        },
        raw={
            "command": "AAA",
            "flag": "D",
            "crc_ok": True,
            "event": 1,
            "runtime": "120",
            "mcc": 460,
            "mnc": 0,
            "lac": 0xE78A,
            "cell": 0x9FC2,
            "input": 4,
            "output": 0,
            "analog": "0000|0000|0000|0191|0573",
        },
    )
    assert not codec.stats


@pytest.mark.parametrize(
    ("event", "attributes"),
    [
        (1, {"sos": True}),
        (17, {"low_battery": True}),
        (19, {"overspeed": True}),
        (22, {"charging": True}),
        (23, {"power_cut": True, "charging": False}),
        (44, {"jamming": True}),
        (18, {}),  # external power low: raw event only
        (20, {}),  # geofence enter
        (21, {}),  # geofence exit
        (36, {}),  # towed
        (78, {}),  # collision
        (35, {}),  # interval report
    ],
)
def test_event_codes(event: int, attributes: dict[str, Any]) -> None:
    [position], _ = decode(report(event))
    assert isinstance(position, Position)
    states = {k: v for k, v in position.attributes.items() if k in ALARMS | {"charging"}}
    assert states == attributes
    assert position.raw["event"] == event


def test_hex_analog_values_of_other_models_stay_raw() -> None:
    # MVT units scale battery and power otherwise (traccar keys it on the model): 0x964 is
    # 24.04 V at 1/100 V, impossible for the unit's Li-ion cell.
    [position], _ = decode(report(analog="0000|0000|0000|0964|0B04"))
    assert isinstance(position, Position)
    assert "battery_v" not in position.attributes
    assert "external_power_v" not in position.attributes
    assert position.raw["analog"] == "0000|0000|0000|0964|0B04"


def test_report_without_fields_is_other() -> None:
    [other], codec = decode(frame("AAA,35,1"))
    assert isinstance(other, Other)
    assert other.raw["content"] == "35,1"
    assert not codec.stats


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"time": "240231123045"}, "bad_time"),
        ({"lat": "92.000000"}, "bad_position"),
        ({"lon": "-181.000000"}, "bad_position"),
        ({"course": "400"}, "bad_position"),
        ({"lat": "north"}, "bad_position"),
    ],
    ids=["day", "lat", "lon", "course", "text"],
)
def test_implausible_fix_is_dropped_and_counted(fields: dict[str, str], reason: str) -> None:
    messages, codec = decode(report(fields=fields))
    assert [type(m) for m in messages] == [Other]
    assert codec.stats == {reason: 1}


def test_unknown_command_is_counted() -> None:
    [other], codec = decode(frame("A71,OK"))
    assert isinstance(other, Other)
    assert other.kind == "A71"
    assert codec.stats == {"unknown_type": 1}


def test_text_frame_with_wrong_length_ends_at_its_checksum() -> None:
    # L131: LEN 147 for a 145-byte frame; the next frame starts right after its CRLF.
    stream = wire(MEITRACK["L131"]) + AAA.encode()
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = MeitrackCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Position]
        assert codec.pending == b""


def test_binary_record_padding_is_skipped_by_its_length() -> None:
    messages, _ = decode(wire(MEITRACK["L18"]))  # record 1: 4 bytes of 0xFF padding
    assert [(m.fix_time.second, m.raw["event"]) for m in messages if isinstance(m, Position)] == [
        (53, 33),
        (55, 35),
        (57, 35),
    ]


def test_garbage_before_and_between_frames_is_skipped() -> None:
    binary = wire(MEITRACK["L48"])
    stream = b"\x00$\r\n" + AAA.encode() + b"$$x,," + binary + b"$"
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = MeitrackCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Position]
        assert codec.stats == {"garbage_bytes": 9}
        assert codec.pending == b"$"


def test_binary_frame_with_wrong_length_is_resynced() -> None:
    binary = bytearray(wire(MEITRACK["L48"]))
    binary[3:6] = b"119"  # one byte short: no CRLF where LEN ends
    messages, codec = decode(bytes(binary) + AAA.encode())
    assert [m.raw["command"] for m in messages] == ["AAA"]
    assert codec.stats["garbage_bytes"] == len(binary)


def test_endless_garbage_closes_the_connection() -> None:
    codec = MeitrackCodec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


def test_text_frame_without_end_closes_the_connection() -> None:
    codec = MeitrackCodec(max_frame_bytes=1024)
    start = b"$$D149,867047043162018,AAA,"
    codec.feed(start + b"1" * (1023 - len(start)))  # within the limit: waiting
    with pytest.raises(ProtocolError):
        codec.feed(b"1")


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(wire(v) for v in MEITRACK.values() if line(v) != TRUNCATED)
    whole = MeitrackCodec(accept_bad_crc=True)
    bytewise = MeitrackCodec(accept_bad_crc=True)
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


# --- properties -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(command=st.sampled_from(["CCE", "CCC", "D00"]), body=st.binary(max_size=400))
def test_any_binary_body_decodes_safely(command: str, body: bytes) -> None:
    built = frame(command.encode() + b"," + body)
    codec = MeitrackCodec()
    assert [f for b in built for f in codec.frames(bytes([b]))] == [built]
    messages, _ = decode(built)
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([wire(v) for v in MEITRACK.values()] or [AAA.encode()]),
            st.binary(max_size=40),
            st.sampled_from([b"$$", b"$", b"\r\n", b"*", b",", b"$$A12,", b"*00\r\n"]),
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
        return MeitrackCodec(accept_bad_crc=True, max_frame_bytes=2048)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
