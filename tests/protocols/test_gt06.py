"""GT06 codec: the shared vectors, then hand-made frames for what the vectors do not show.

Vectors: ``vectors/gt06.jsonl`` and ``gt06.frames.jsonl`` beside /work/shared/PROTOCOLS.md
(set TRACKER_VECTORS to another directory), real packets from traccar's decoder tests
(traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently checked expectations. Each
vector is named by its line in Gt06ProtocolDecoderTest.java (``L24``).

Where we deliberately differ from traccar, the tables below say so: REPLIES (answers),
NOT_DECODED (types or layouts whose fix we do not decode) and ALARM_CODES_NOT_MAPPED.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import Codec
from protocols.binary import bcd_digits, crc16_x25
from protocols.errors import ProtocolError
from protocols.gt06 import Gt06Codec
from protocols.messages import ALARMS, ATTRIBUTES, Heartbeat, Login, Message, Other, Position
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

GT06 = {line(v): v for v in load("gt06.jsonl")}
FRAMES = load("gt06.frames.jsonl")

# Traccar test login (L17): IMEI 864717003283581, serial 9.
LOGIN = bytes.fromhex("78780d01086471700328358100093f040d0a")
IMEI = "864717003283581"
CLOCK = datetime(2015, 12, 29, 0, 0, 21, tzinfo=UTC)  # the time in VL03's 0x8A example


def frame(kind: int, content: bytes, serial: int = 1) -> bytes:
    """A well-formed 78 78 frame: LEN, TYPE, CONTENT, SERIAL, CRC-ITU, 0D 0A."""
    body = bytes([len(content) + 5, kind]) + content + serial.to_bytes(2, "big")
    return b"\x78\x78" + body + crc16_x25(body).to_bytes(2, "big") + b"\r\n"


# Replies that differ from traccar's, on purpose. Bytes, or None for no reply. Also: the
# 0x17 WiFi frames without CRC (L291, L363, L372, L381) are dropped as bad CRC where traccar
# echoes their time, and L14 (0x12 without content; traccar fails) gets the plain ack.
REPLIES: dict[str, tuple[bytes | None, str]] = {
    # An ack is a frame without content.
    "L177": (frame(0x24, b"", serial=0x00BE), "0x24 acked; traccar returns before its reply"),
    "L200": (frame(0x19, b"", serial=0x0654), "0x19 acked; traccar returns before its reply"),
    "L417": (None, "0x35 photo info: traccar asks for the photo; we take no photos"),
    # VL03 §8 example: the time reply echoes the request's serial (traccar sends 0000).
    "L550": (bytes.fromhex("78780b8a0f0c1d0000150006f0860d0a"), "time reply, VL03 example"),
    # Address reply: traccar's "no address" text, but the request's serial (0x2a), not 0000.
    "L547": (
        bytes.fromhex("79790015970b000000004e4126264e412626302323002a68460d0a"),
        "address reply echoes the serial",
    ),
}
# Fixes we do not decode: model specific types or layouts; traccar needs a model setting.
NOT_DECODED = {
    "0x36": "0x36 is X1 photo data on other models",
    "0x38": "extended (79 79) frame types are model specific",
    "0x61": "0x61: terminal id before the GPS block, model specific",
    "L623": "QH302R: terminal id before the GPS block (traccar model setting)",
}
# Alarm codes traccar reports as tampering that we do not: VL03 §5 says 0C is "powered on"
# and does not list 25.
ALARM_CODES_NOT_MAPPED = {0x0C, 0x25}
TRACCAR_ALARMS = {
    "sos": "sos",
    "powerCut": "power_cut",
    "lowBattery": "low_battery",
    "vibration": "vibration",
    "overspeed": "overspeed",
    "tampering": "removed",
    "removing": "removed",
}


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in GT06.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def data(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["data"])


def decode(frame: bytes, **options: Any) -> tuple[list[Message], Gt06Codec]:
    """Feed ``frame`` after the traccar test login; the login's own message is left out."""
    codec = Gt06Codec(now=lambda: CLOCK, **options)
    codec.feed(LOGIN)
    return codec.feed(frame), codec


def gps(
    when: str = "2024-05-01T12:30:45",
    lat: float = 52.52,
    lon: float = -13.4,
    *,
    speed: int = 60,
    course: int = 90,
    valid: bool = True,
) -> bytes:
    t = datetime.fromisoformat(when)
    flags = course | (0x1000 if valid else 0) | (0x0400 if lat >= 0 else 0)
    flags |= 0x0800 if lon < 0 else 0
    return (
        bytes([t.year - 2000, t.month, t.day, t.hour, t.minute, t.second, 0xC9])
        + round(abs(lat) * 1_800_000).to_bytes(4, "big")
        + round(abs(lon) * 1_800_000).to_bytes(4, "big")
        + bytes([speed])
        + flags.to_bytes(2, "big")
    )


CELL = bytes.fromhex("01cc00287d001f71")  # MCC 460, MNC 0, LAC 0x287d, cell 0x1f71


def alarm_frame(info: int, code: int, *, voltage: int = 4) -> bytes:
    """0x16: GPS, cell with its length (9), info, voltage, GSM, alarm code, language."""
    return frame(0x16, gps() + b"\x09" + CELL + bytes([info, voltage, 4, code, 2]))


# --- the vectors ------------------------------------------------------------------------


def test_crc_itu_check_value() -> None:
    assert crc16_x25(b"123456789") == 0x906E
    assert bcd_digits(bytes.fromhex("0864717003283581")) == "0864717003283581"


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = Gt06Codec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]


@vectors()
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = Gt06Codec()
    frames = codec.frames(data(vector))
    if vector["expect"]["frame_ok"]:
        assert frames == [data(vector)]
        assert codec.pending == b""
    else:  # a wrong LEN: L266 lacks its 0A, L514 is three good frames; nothing is lost
        assert b"".join(frames) + codec.pending == data(vector)


@vectors(where=lambda v: v["expect"]["crc_ok"])
def test_vector_with_good_crc_gives_one_message(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    assert len(messages) == 1
    assert messages[0].unique_id == vector["expect"].get("device_id", IMEI)
    assert not codec.stats["bad_crc"]


# L514 is three well-formed frames back to back, each with a good CRC (see the splitting test).
@vectors(
    where=lambda v: (
        not v["expect"]["crc_ok"] and v["expect"]["type"] != "0x69" and line(v) != "L514"
    )
)
def test_vector_with_bad_crc_is_dropped_unless_accepted(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    assert messages == []
    if codec.pending:  # L266 ends without 0A: not a frame yet
        return
    assert codec.stats["bad_crc"] + codec.stats["short_frame"] == 1
    accepted, codec = decode(data(vector), accept_bad_crc=True)
    assert len(accepted) == 1 or codec.stats["short_frame"] == 1


@vectors(where=lambda v: v["expect"]["type"] == "0x69")
def test_wifi_frames_have_no_crc_and_get_their_time_back(vector: dict[str, Any]) -> None:
    # LEN counts the access points and the frame carries no serial or CRC (traccar).
    messages, _ = decode(data(vector))
    assert [type(m) for m in messages] == [Other]
    assert messages[0].reply == bytes.fromhex(vector["traccar_response_hex"][0])


def expected_reply(vector: dict[str, Any]) -> bytes | None:
    if line(vector) in REPLIES:
        return REPLIES[line(vector)][0]
    if "traccar_response_hex" in vector:
        return bytes.fromhex(vector["traccar_response_hex"][0])
    ack: str | None = vector["expect"]["ack_hex"]
    return None if ack is None else bytes.fromhex(ack)


def has_reply(vector: dict[str, Any]) -> bool:
    known = "ack_hex" in vector["expect"] or "traccar_response_hex" in vector
    # frames we do not split as traccar, or too short to carry a serial and CRC (L544)
    return known and vector["expect"]["frame_ok"] and len(data(vector)) >= 10


@vectors(where=has_reply)
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert [m.reply for m in messages] == [expected_reply(vector)]


def decoded(vector: dict[str, Any]) -> bool:
    """False for layouts whose fix we do not decode (NOT_DECODED), and for frames
    whose LEN disagrees with the frame (traccar reads the fix over the serial and CRC)."""
    not_decoded = vector["expect"]["type"] in NOT_DECODED or line(vector) in NOT_DECODED
    return not not_decoded and vector["expect"]["frame_ok"]


@vectors(where=lambda v: "time" in v["expect"] and not decoded(v))
def test_model_specific_layouts_are_not_guessed(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert not any(isinstance(m, Position) for m in messages)


def fix_of(vector: dict[str, Any]) -> Position:
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert [type(m) for m in messages] == [Position]
    message = messages[0]
    assert isinstance(message, Position)
    return message


@vectors(where=lambda v: "time" in v["expect"] and decoded(v))
def test_vector_fix(vector: dict[str, Any]) -> None:
    position = fix_of(vector)
    expect = vector["expect"]
    assert position.fix_time == datetime.fromisoformat(expect["time"])
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.speed_kmh == expect["speed_kmh"]
    assert position.course_deg == expect["course"]
    assert position.valid is expect["valid"]
    assert position.satellites == expect["satellites"]
    assert position.unique_id == IMEI


STATUS_KEYS = ("ignition", "battery_level", "status", "alarm")


@vectors(where=lambda v: any(k in v["expect"] for k in STATUS_KEYS) and decoded(v))
def test_vector_status(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert len(messages) == 1
    message = messages[0]
    assert isinstance(message, Position | Heartbeat)
    attributes, raw = message.attributes, message.raw
    assert set(attributes) <= ATTRIBUTES
    if "ignition" in expect:
        assert attributes.get("ignition") == expect["ignition"]
    if "battery_level" in expect:
        assert attributes.get("battery_pct") == expect["battery_level"]
    if "status" in expect:
        assert raw["status"] == expect["status"]
    if "alarm" in expect:
        names = (expect["alarm"] or "").split(",")
        wanted = {TRACCAR_ALARMS[n] for n in names if n in TRACCAR_ALARMS}
        if raw.get("alarm_code") in ALARM_CODES_NOT_MAPPED and (raw["status"] >> 3) & 7 != 7:
            wanted.discard("removed")
        assert {name for name in ALARMS if attributes.get(name)} == wanted


@vectors(where=lambda v: v["expect"]["type"] == "0x01" and v["expect"]["frame_ok"])
def test_vector_login(vector: dict[str, Any]) -> None:
    messages = Gt06Codec(accept_bad_crc=True).feed(data(vector))
    assert len(messages) == 1
    login = messages[0]
    assert isinstance(login, Login)
    assert login.unique_id == vector["expect"]["device_id"]
    assert login.reply == bytes.fromhex(vector["expect"]["ack_hex"])
    # Kept, not applied: times are UTC in the VL03 packets; ingest may apply a zone.
    assert login.raw.get("tz_offset_s") == vector["expect"].get("tz_offset_s")


# --- hand-made frames ---------------------------------------------------------------------


def test_login_reply_echoes_its_serial() -> None:
    # VL03 §1 example: login with serial 0005 and its reply.
    request = bytes.fromhex("78781101075253367890024270003201000512790d0a")
    [login] = Gt06Codec().feed(request)
    assert isinstance(login, Login)
    assert login.unique_id == "752533678900242"
    assert login.reply == bytes.fromhex("7878050100059ff80d0a")
    assert login.raw == {"type": "0x01", "serial": 5, "tz_offset_s": 8 * 3600}


def test_messages_before_login_have_no_unique_id() -> None:
    codec = Gt06Codec()
    [before] = codec.feed(frame(0x22, gps() + CELL + b"\x01\x00\x00"))
    codec.feed(LOGIN)
    [after] = codec.feed(frame(0x22, gps() + CELL + b"\x01\x00\x00"))
    assert before.unique_id is None
    assert after.unique_id == IMEI


def test_location_is_decoded_and_acknowledged() -> None:
    messages, _ = decode(frame(0x22, gps() + CELL + b"\x01\x00\x00", serial=0x0102))
    assert messages == [
        Position(
            IMEI,
            datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC),
            52.52,
            -13.4,
            valid=True,
            speed_kmh=60,
            course_deg=90,
            satellites=9,
            attributes={"ignition": True},
            raw={
                "type": "0x22",
                "serial": 0x0102,
                "mcc": 460,
                "mnc": 0,
                "lac": 0x287D,
                "cell": 0x1F71,
                "upload_mode": 0,
                "reupload": False,
            },
            reply=frame(0x22, b"", serial=0x0102),
        )
    ]


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(data(v) for v in GT06.values())
    whole = Gt06Codec(now=lambda: CLOCK)
    bytewise = Gt06Codec(now=lambda: CLOCK)
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


def test_stop_bytes_inside_a_frame_do_not_end_it() -> None:
    # 0D 0A inside the content (L123: 0x9b result text), and inside a longitude.
    inside = frame(0x12, gps(lon=0x0D0A0D0A / 1_800_000) + CELL)
    for stream in (data(GT06["L123"]), inside):
        codec = Gt06Codec()
        assert [f for b in stream for f in codec.frames(bytes([b]))] == [stream]
    [position], _ = decode(inside)
    assert isinstance(position, Position)
    assert position.lon == 0x0D0A0D0A / 1_800_000


def test_garbage_before_and_between_frames_is_skipped() -> None:
    location = frame(0x12, gps() + CELL)
    # Not handled: garbage ending in 78 right before a frame (78 78 78 ...) looks like a start.
    stream = b"\x00\x78\x01" + LOGIN + b"\x0d\x0a\x79\x01" + location
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = Gt06Codec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Login, Position]
        assert messages[1].unique_id == IMEI
        assert codec.stats["garbage_bytes"] == 7


def test_endless_garbage_closes_the_connection() -> None:
    codec = Gt06Codec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


@pytest.mark.parametrize(
    "start",
    [b"\x78\x78\x20", b"\x78\x78\xff", b"\x79\x79\xff\xff"],
    ids=["short-len", "long-len", "extended-len-over-limit"],
)
def test_frame_without_end_closes_the_connection(start: bytes) -> None:
    codec = Gt06Codec(max_frame_bytes=1024)
    codec.feed(start + bytes(1024 - len(start) - 1))  # still within the limit: waiting
    with pytest.raises(ProtocolError):
        codec.feed(b"\x00")


def test_short_gps_frame_is_other_not_a_position() -> None:
    messages, codec = decode(data(GT06["L14"]))  # 0x12 without content
    reply = frame(0x12, b"", serial=0x99)
    assert messages == [Other(IMEI, "0x12", reply, {"type": "0x12", "serial": 0x99})]
    assert codec.stats["short_content"] == 1


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (gps("2024-02-29T00:00:00")[:2] + b"\x1e" + gps()[3:], "bad_time"),  # 30 February
        (b"\x64" + gps()[1:], "bad_time"),  # year 2100: YY is two digits
        (gps()[:7] + (91 * 1_800_000).to_bytes(4, "big") + gps()[11:], "bad_position"),
        (gps()[:11] + (181 * 1_800_000).to_bytes(4, "big") + gps()[15:], "bad_position"),
        (gps()[:16] + (0x1000 | 400).to_bytes(2, "big"), "bad_position"),  # course 400
    ],
    ids=["day", "year", "lat", "lon", "course"],
)
def test_implausible_fix_is_dropped_and_counted(block: bytes, reason: str) -> None:
    messages, codec = decode(frame(0x12, block + CELL))
    assert [type(m) for m in messages] == [Other]
    assert messages[0].reply is not None  # still answered
    assert codec.stats[reason] == 1


def test_alarm_without_plausible_fix_keeps_the_alarm() -> None:
    content = b"\x00" * 18 + b"\x09" + CELL + bytes([0x22, 4, 4, 0x02, 2])  # no date
    [heartbeat], codec = decode(frame(0x16, content))
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.attributes["power_cut"] is True  # info bits 010 and alarm code 02
    assert codec.stats["bad_time"] == 1


@pytest.mark.parametrize(
    ("code", "alarm"),
    [
        (0x01, "sos"),
        (0x02, "power_cut"),
        (0x03, "vibration"),
        (0x06, "overspeed"),
        (0x0E, "low_battery"),
        (0x19, "low_battery"),
        (0x13, "removed"),
        (0x18, "removed"),
        (0x32, "removed"),
    ],
)
def test_alarm_code(code: int, alarm: str) -> None:
    [position], _ = decode(alarm_frame(0x40, code))
    assert isinstance(position, Position)
    assert {name for name in ALARMS if position.attributes.get(name)} == {alarm}
    assert position.raw["alarm_code"] == code
    assert position.reply == frame(0x16, b"", serial=1)  # the ack VL03 §5 requires


@pytest.mark.parametrize(
    ("bits", "alarm"),
    [
        (0b100, "sos"),
        (0b011, "low_battery"),
        (0b010, "power_cut"),
        (0b001, "vibration"),
        (0b111, "removed"),
        (0b000, None),
        (0b110, None),  # geofence: no attribute
    ],
)
def test_terminal_info_alarm_bits(bits: int, alarm: str | None) -> None:
    [position], _ = decode(alarm_frame(bits << 3, 0x00))
    assert isinstance(position, Position)
    expected = set() if alarm is None else {alarm}
    assert {name for name in ALARMS if position.attributes.get(name)} == expected


@pytest.mark.parametrize(
    ("info", "ignition", "charging"),
    [(0x00, False, False), (0x02, True, False), (0x04, False, True), (0x46, True, True)],
)
def test_heartbeat_ignition_and_charging(info: int, ignition: bool, charging: bool) -> None:
    [heartbeat], _ = decode(frame(0x13, bytes([info, 3, 4, 0, 2]), serial=0x40))
    assert heartbeat == Heartbeat(
        IMEI,
        reply=bytes.fromhex("787805130040ba7c0d0a"),  # as for L70
        attributes={
            "ignition": ignition,
            "charging": charging,
            "battery_pct": 50,
            "gsm_signal": 4,
        },
        raw={"type": "0x13", "serial": 0x40, "status": info, "fuel_cut": False}
        | {"language": 2, "alarm_code": 0},
    )


def test_time_request_is_answered_with_utc_time() -> None:
    codec = Gt06Codec(now=lambda: datetime(2026, 3, 1, 4, 5, 6, tzinfo=UTC))
    [message] = codec.feed(data(GT06["L550"]))  # serial 6
    assert message.reply == frame(0x8A, bytes([26, 3, 1, 4, 5, 6]), serial=6)


# --- properties -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(kind=st.integers(0, 255), content=st.binary(max_size=80), serial=st.integers(0, 0xFFFF))
def test_any_well_formed_frame_is_one_frame_and_decodes_safely(
    kind: int, content: bytes, serial: int
) -> None:
    built = frame(kind, content, serial)
    codec = Gt06Codec()
    assert [f for b in built for f in codec.frames(bytes([b]))] == [built]
    messages, _ = decode(built)
    assert len(messages) == 1
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([data(v) for v in GT06.values()] or [LOGIN]),
            st.binary(max_size=40),
            st.sampled_from([b"\x78\x78", b"\x79\x79", b"\r\n", b"\x78", b"\x0d"]),
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
        return Gt06Codec(accept_bad_crc=True, max_frame_bytes=256, now=lambda: CLOCK)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
