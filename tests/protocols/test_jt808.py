"""JT/T 808 codec: the shared vectors, then hand-made frames for what the vectors do not show.

Vectors: ``vectors/jt808.jsonl`` and ``jt808.frames.jsonl`` beside /work/shared/PROTOCOLS.md
(set TRACKER_VECTORS to another directory), real packets from traccar's decoder tests
(traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently checked expectations. Each
vector is named by its line in Jt808ProtocolDecoderTest.java (``L18``); ``data`` and
``ack_hex`` are escaped wire bytes, each vector is fed to a fresh codec (reply serial 0).

Checksum policy: a frame whose XOR check fails is dropped and counted (``bad_crc``) unless
``accept_bad_crc=True``. Five vectors need it: L142 (E-lock 0x5501), L232, L328, L409, L415.

Where we deliberately differ from traccar, the tables below say so: REPLIES (answers),
UNIQUE_IDS and VENDOR_ALARMS (alarms traccar reads from vendor items or per device model).
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
from protocols.jt808 import ALARM_BITS, MAX_ASSEMBLIES, Jt808Codec
from protocols.messages import ALARMS, ATTRIBUTES, Heartbeat, Login, Message, Other, Position
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

JT808 = {line(v): v for v in load("jt808.jsonl")}
FRAMES = load("jt808.frames.jsonl")

CLOCK = datetime(2026, 3, 1, 4, 5, 6, tzinfo=UTC)
PHONE = "013912345678"  # 2011/2013 header: 12 digits, the unit's number padded with a 0
UID = "13912345678"


def escape(inner: bytes) -> bytes:
    """7D as 7D 01, 7E as 7D 02, between flags [G10LS 1.4.2]."""
    return b"\x7e" + inner.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02") + b"\x7e"


def escaped(payload: bytes) -> bytes:
    """The wire frame of ``payload``: its XOR check appended [G10LS 1.4.4], escaped."""
    check = 0
    for byte in payload:
        check ^= byte
    return escape(payload + bytes([check]))


def frame(
    msg_id: int,
    body: bytes = b"",
    *,
    serial: int = 1,
    phone: str = PHONE,
    version: int | None = None,
    packet: tuple[int, int] | None = None,
    attr: int = 0,
) -> bytes:
    """A well-formed frame: header (2019 when ``version``; sub-package when ``packet``), body."""
    attr |= len(body) | (0x4000 if version is not None else 0) | (0x2000 if packet else 0)
    head = msg_id.to_bytes(2, "big") + attr.to_bytes(2, "big")
    head += b"" if version is None else bytes([version])
    head += bytes.fromhex(phone) + serial.to_bytes(2, "big")
    if packet:
        head += packet[0].to_bytes(2, "big") + packet[1].to_bytes(2, "big")
    return escaped(head + body)


def reply(msg_id: int, body: bytes, *, serial: int = 0, phone: str = PHONE) -> bytes:
    return frame(msg_id, body, serial=serial, phone=phone)


def general(to_serial: int, to_id: int, *, serial: int = 0, phone: str = PHONE) -> bytes:
    """0x8001: serial and id of the unit's message, result 0."""
    body = to_serial.to_bytes(2, "big") + to_id.to_bytes(2, "big") + b"\x00"
    return reply(0x8001, body, serial=serial, phone=phone)


def location(
    when: str = "2024-05-01T20:30:45",  # GMT+8
    lat: float = 52.52,
    lon: float = -13.4,
    *,
    alarm: int = 0,
    status: int = 0x03,  # ACC on, fix valid
    speed: int = 605,  # 60.5 km/h
    course: int = 90,
    items: bytes = b"",
) -> bytes:
    status |= (0x04 if lat < 0 else 0) | (0x08 if lon < 0 else 0)
    return (
        alarm.to_bytes(4, "big")
        + status.to_bytes(4, "big")
        + round(abs(lat) * 1e6).to_bytes(4, "big")
        + round(abs(lon) * 1e6).to_bytes(4, "big")
        + (120).to_bytes(2, "big")
        + speed.to_bytes(2, "big")
        + course.to_bytes(2, "big")
        + bytes.fromhex(datetime.fromisoformat(when).strftime("%y%m%d%H%M%S"))
        + items
    )


def data(vector: dict[str, Any]) -> bytes:
    if vector["encoding"] == "text":
        return str(vector["data"]).encode()
    return bytes.fromhex(vector["data"])


def decode(stream: bytes, **options: Any) -> tuple[list[Message], Jt808Codec]:
    codec = Jt808Codec(now=lambda: CLOCK, **options)
    return codec.feed(stream), codec


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in JT808.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def is_binary(vector: dict[str, Any]) -> bool:
    return bool(vector["encoding"] == "hex")


def crc_ok(vector: dict[str, Any]) -> bool:
    return bool(vector["expect"].get("checksum_ok", True))


# Replies that differ from traccar's, on purpose. Every message without a reply of its own
# gets the general reply 0x8001 [G10LS 2.2]; traccar sends none to these.
REPLIES: dict[str, tuple[bytes | None, str]] = {
    "L41": (general(444, 0x0702, phone="018270611514"), "0x0702 driver identity"),
    "L81": (general(8, 0x0701, phone="012076463279"), "0x0701 electronic waybill"),
    "L238": (general(71, 0x2070, phone="012152300153"), "0x2070 acceleration (vendor)"),
    "L267": (general(265, 0x1300, phone="045450091546"), "0x1300 text reply (vendor)"),
}
# The phone has no digits but zeros: stripping them leaves "0", not traccar's "".
UNIQUE_IDS = {"L18": "0", "L22": "0", "L364": "0"}
# Traccar's alarm names -> ours.
TRACCAR_ALARMS = {
    "sos": "sos",
    "overspeed": "overspeed",
    "lowBattery": "low_battery",
    "powerOff": "power_cut",  # bit 8, main power off
    "vibration": "vibration",
    "tampering": "removed",
    "removing": "removed",
}
# Alarms traccar reads from vendor items or per device model: we keep those items raw and
# report only the alarm flags' bits (ALARM_BITS). Our alarms, and traccar's reading.
VENDOR_ALARMS: dict[str, tuple[set[str], str]] = {
    "L49": (set(), "removing: item 0xEB, sub-item 0x0089"),
    "L53": (set(), "vibration: item 0xEB, sub-item 0x00C5"),
    "L203": (set(), "hardAcceleration: item 0xFE"),
    "L224": ({"low_battery"}, "lowBattery (bit 7) and removing: item 0xEB"),
    "L385": (set(), "door: item 0x57, model MV710G"),
    "L391": ({"vibration"}, "movement: bit 16 on model AL300; vibration [G10LS Table 18]"),
    "L401": (set(), "sos: item 0xE8, model JC371"),
    "L405": (set(), "vibration: item 0xE8, model JC371"),
}


def expected_uid(vector: dict[str, Any]) -> str:
    expect = vector["expect"]
    if line(vector) in UNIQUE_IDS:
        return UNIQUE_IDS[line(vector)]
    return str(expect.get("device_id_stripped", expect.get("device_id")))


def expected_reply(vector: dict[str, Any]) -> bytes | None:
    ack = vector["expect"].get("ack_hex")
    if ack is not None:
        return bytes.fromhex(ack)
    if "traccar_response_hex" in vector:  # taken before traccar's frame encoder: unescaped
        return escape(bytes.fromhex(vector["traccar_response_hex"][0])[1:-1])
    return None


# --- the vectors ------------------------------------------------------------------------


def test_escaping_example() -> None:
    # G10LS 1.4.2: 30 7E 08 7D 55 is sent as 7E 30 7D 02 08 7D 01 55 7E.
    codec = Jt808Codec()
    wire = bytes.fromhex("7e307d02087d01557e")
    assert escape(bytes.fromhex("307e087d55")) == wire
    assert codec.frames(wire) == [wire]
    messages = codec.feed(wire)  # 5 bytes: too short for a header
    assert (messages, codec.stats) == ([], {"short_frame": 1})


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = Jt808Codec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]


@vectors()
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = Jt808Codec()
    assert codec.frames(data(vector)) == [data(vector)]
    assert codec.pending == b""


@vectors(where=lambda v: is_binary(v) and crc_ok(v))
def test_vector_with_good_checksum_decodes(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    messages, codec = decode(data(vector))
    assert messages
    assert not codec.stats["bad_crc"]
    for message in messages:
        assert message.unique_id == expected_uid(vector)
        assert message.raw["type"] == f"0x{expect['msg_id']}"
        serial = expect["serial"]
        if expect["msg_id"] in ("5501", "5502"):  # a 1-byte serial (traccar); 2 in the vector
            serial >>= 8
        assert message.raw["serial"] == serial
        assert message.raw.get("version") == expect.get("proto_version")


@vectors(where=lambda v: not crc_ok(v))
def test_vector_with_bad_checksum_is_dropped_unless_accepted(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    assert messages == []
    assert codec.stats == {"bad_crc": 1}
    accepted, codec = decode(data(vector), accept_bad_crc=True)
    assert len(accepted) >= 1
    assert accepted[0].unique_id == expected_uid(vector)


@vectors(where=lambda v: "ack_template" not in v["expect"] and line(v) not in REPLIES)
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert [m.reply for m in messages[:-1]] == [None] * (len(messages) - 1)
    assert messages[-1].reply == expected_reply(vector)


@vectors(where=lambda v: line(v) in REPLIES)
def test_vector_reply_where_traccar_sends_none(vector: dict[str, Any]) -> None:
    assert expected_reply(vector) is None  # traccar's
    [message], codec = decode(data(vector))
    assert message.reply == REPLIES[line(vector)][0]
    assert codec.stats == {"unknown_type": 1}


@vectors(where=lambda v: line(v) in UNIQUE_IDS)
def test_vector_phone_of_zeros_is_unique_id_0(vector: dict[str, Any]) -> None:
    assert vector["expect"]["device_id_stripped"] == ""  # traccar's
    assert [m.unique_id for m in decode(data(vector))[0]] == ["0"]


@vectors(where=lambda v: "ack_template" in v["expect"])
def test_vector_time_request_is_answered_with_utc_time(vector: dict[str, Any]) -> None:
    [message], _ = decode(data(vector))
    template = vector["expect"]["ack_template"]
    assert message.reply == template.replace("{yyyyMMddHHmmss UTC now}", "20260301040506").encode()
    assert message.unique_id == "794104004140"


def fixes(vector: dict[str, Any]) -> list[dict[str, Any]]:
    expect = vector["expect"]
    return list(expect.get("positions") or ([expect] if "time" in expect else []))


def positions_of(vector: dict[str, Any]) -> list[Position]:
    messages, _ = decode(data(vector), accept_bad_crc=True)
    assert all(isinstance(m, Position) for m in messages)
    return [m for m in messages if isinstance(m, Position)]


@vectors(where=lambda v: bool(fixes(v)))
def test_vector_fix(vector: dict[str, Any]) -> None:
    positions = positions_of(vector)
    wanted = fixes(vector)
    assert len(positions) == len(wanted) == vector["expect"].get("batch_count", 1)
    for position, expect in zip(positions, wanted, strict=True):
        assert position.fix_time == datetime.fromisoformat(expect["time"])
        assert round(position.lat, 6) == expect["lat"]
        assert round(position.lon, 6) == expect["lon"]
        assert position.speed_kmh == expect["speed_kmh"]
        assert position.course_deg == expect["course"]
        assert position.valid is expect["valid"]
        assert position.raw["alarm"] == expect["alarm_flags"]
        assert position.raw["status"] == expect["status_flags"]
        assert position.attributes["ignition"] is expect["ignition"]
        optional = {  # not given for batch positions
            "altitude_m": position.altitude_m,
            "satellites": position.satellites,
            "rssi": position.attributes.get("gsm_signal"),
            "odometer_m": position.attributes.get("odometer_m"),
        }
        assert optional == {key: expect.get(key, optional[key]) for key in optional}
        assert position.unique_id == expected_uid(vector)
        assert set(position.attributes) <= ATTRIBUTES
        if "batch_type" in vector["expect"]:
            assert position.raw["batch_type"] == vector["expect"]["batch_type"]


def alarms(message: Message) -> set[str]:
    assert isinstance(message, Position)
    return {name for name in ALARMS if message.attributes.get(name)}


@vectors(where=lambda v: bool(fixes(v)))
def test_vector_alarms_are_the_alarm_bits(vector: dict[str, Any]) -> None:
    for position in positions_of(vector):
        bits = {name for bit, name in ALARM_BITS.items() if position.raw["alarm"] >> bit & 1}
        assert alarms(position) == bits


@vectors(where=lambda v: "alarm" in v["expect"])
def test_vector_alarm_names(vector: dict[str, Any]) -> None:
    names = str(vector["expect"]["alarm"]).split(",")
    [position] = positions_of(vector)
    assert alarms(position) == {TRACCAR_ALARMS[n] for n in names if n in TRACCAR_ALARMS}


@vectors(where=lambda v: line(v) in VENDOR_ALARMS)
def test_vendor_alarms_are_kept_raw(vector: dict[str, Any]) -> None:
    [position] = positions_of(vector)
    assert alarms(position) == VENDOR_ALARMS[line(vector)][0]
    assert position.raw["items"]  # the vendor items, as hex


def traccar_value(vector: dict[str, Any], key: str) -> Any:
    return vector["expect"].get("traccar_attribute", {}).get(key)


@vectors(where=lambda v: traccar_value(v, "sat") is not None)
def test_vector_satellites(vector: dict[str, Any]) -> None:
    assert positions_of(vector)[-1].satellites == traccar_value(vector, "sat")


def test_vendor_battery_item() -> None:
    # L159: item 0x56 (level 9 of 10, then a reserved byte) [G10LS Table 20]; traccar: 90.
    [position] = positions_of(JT808["L159"])
    assert position.attributes["battery_pct"] == traccar_value(JT808["L159"], "batteryLevel")


@vectors(where=lambda v: v["kind"] == "login")
def test_vector_login(vector: dict[str, Any]) -> None:
    [login], _ = decode(data(vector))
    assert isinstance(login, Login)
    assert login.unique_id == expected_uid(vector)


# --- hand-made frames ---------------------------------------------------------------------


def test_registration_is_answered_with_the_terminal_id_as_code() -> None:
    [login], _ = decode(frame(0x0100, bytes(25), serial=0x0A))
    auth = b"\x00\x0a\x00" + PHONE.encode()  # reply serial, result 0, code [G10LS 2.5]
    assert login == Login(UID, reply(0x8100, auth), {"type": "0x0100", "serial": 10})


def test_authentication_is_a_login_with_the_general_reply() -> None:
    [login], _ = decode(frame(0x0102, b"secret-code", serial=0x64))
    assert login == Login(UID, general(0x64, 0x0102), {"type": "0x0102", "serial": 0x64})


def test_the_platform_serial_counts_replies_per_connection() -> None:
    codec = Jt808Codec()
    first = codec.feed(frame(0x0002, serial=7))
    second = codec.feed(frame(0x0002, serial=8) + frame(0x0001, bytes(5), serial=9))
    assert first == [
        Heartbeat(UID, general(7, 0x0002, serial=0), raw={"type": "0x0002", "serial": 7})
    ]
    assert [m.reply for m in second] == [general(8, 0x0002, serial=1), None]  # 0x0001: a reply
    assert [m.reply for m in Jt808Codec().feed(frame(0x0002, serial=8))] == [general(8, 2)]


def test_2019_header_is_mirrored_in_the_reply() -> None:
    phone = "00000866496077582164"
    [heartbeat], _ = decode(frame(0x0002, serial=3, version=1, phone=phone))
    body = bytes.fromhex("0003 0002 00")
    head = bytes.fromhex("8001 4005 01") + bytes.fromhex(phone) + b"\x00\x00"
    assert heartbeat.reply == escaped(head + body)
    assert heartbeat.unique_id == "866496077582164"  # as its 12-digit form would give
    assert heartbeat.raw == {"type": "0x0002", "serial": 3, "version": 1}


def test_location_is_decoded_and_acknowledged() -> None:
    items = bytes.fromhex("01 04 00000d8030 01 1731 01 0c61 02 04b0eb 03 010203")
    [position], _ = decode(frame(0x0200, location(items=items), serial=0x0102))
    assert position == Position(
        UID,
        datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC),
        52.52,
        -13.4,
        valid=True,
        speed_kmh=60.5,
        course_deg=90,
        altitude_m=120,
        satellites=12,
        attributes={
            "ignition": True,
            "odometer_m": 345_600.0,
            "gsm_signal": 23,
            "external_power_v": 12.0,
        },
        raw={
            "type": "0x0200",
            "serial": 0x0102,
            "alarm": 0,
            "status": 0x0B,
            "items": {"0xeb": "010203"},
        },
        reply=general(0x0102, 0x0200),
    )


@pytest.mark.parametrize(("bit", "alarm"), sorted(ALARM_BITS.items()))
def test_alarm_bit(bit: int, alarm: str) -> None:
    [position], _ = decode(frame(0x0200, location(alarm=1 << bit | 1 << 2)))  # 2: fatigue
    assert alarms(position) == {alarm}
    assert position.raw["alarm"] == 1 << bit | 1 << 2


@pytest.mark.parametrize(("status", "ignition"), [(0x02, False), (0x03, True)])
def test_ignition_is_status_bit_0(status: int, ignition: bool) -> None:
    [position], _ = decode(frame(0x0200, location(status=status)))
    assert isinstance(position, Position)
    assert position.attributes["ignition"] is ignition


def test_south_and_west_are_status_bits() -> None:
    [position], _ = decode(frame(0x0200, location(lat=-33.9, lon=18.4, status=0x02)))
    assert isinstance(position, Position)
    assert (position.lat, position.lon, position.raw["status"]) == (-33.9, 18.4, 0x06)


def test_batch_is_answered_once_on_its_last_position() -> None:
    one, bad, two = (
        location(course=1),
        location()[:22] + bytes.fromhex("241301000000"),
        location(course=2),
    )
    items = b"".join(len(b).to_bytes(2, "big") + b for b in (one, bad, two))
    messages, codec = decode(frame(0x0704, b"\x00\x03\x01" + items, serial=5))
    assert [(type(m), m.reply) for m in messages] == [
        (Position, None),
        (Position, general(5, 0x0704)),
    ]
    assert [m.raw["batch_type"] for m in messages] == [1, 1]
    assert codec.stats == {"bad_time": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (location()[:22] + bytes.fromhex("240230000000"), "bad_time"),
        (location()[:22] + bytes.fromhex("ffffffffffff"), "bad_time"),
        (location()[:8] + (91_000_000).to_bytes(4, "big") + location()[12:], "bad_position"),
        (location()[:12] + (181_000_000).to_bytes(4, "big") + location()[16:], "bad_position"),
        (location(course=361), "bad_position"),
        (location()[:27], "short_content"),
    ],
    ids=["day", "bcd", "lat", "lon", "course", "short"],
)
def test_implausible_location_is_dropped_and_counted(body: bytes, reason: str) -> None:
    [message], codec = decode(frame(0x0200, body, serial=4))
    assert message == Other(UID, "0x0200", general(4, 0x0200), {"type": "0x0200", "serial": 4})
    assert codec.stats == {reason: 1}


def test_location_query_reply_is_a_position() -> None:
    [position], _ = decode(frame(0x0201, b"\x00\x09" + location()))
    assert isinstance(position, Position)
    assert position.speed_kmh == 60.5


def test_unknown_type_is_counted_and_answered() -> None:
    [message], codec = decode(frame(0x0900, b"\x41hello", serial=2))
    assert message == Other(UID, "0x0900", general(2, 0x0900), {"type": "0x0900", "serial": 2})
    assert codec.stats == {"unknown_type": 1}


def test_encrypted_body_is_dropped_and_counted() -> None:
    messages, codec = decode(frame(0x0200, location(), attr=0x0400))
    assert messages == []
    assert codec.stats == {"encrypted": 1}


def test_bad_checksum_is_dropped_unless_accepted() -> None:
    good = frame(0x0200, location())
    bad = good[:-2] + bytes([good[-2] ^ 0x01]) + b"\x7e"
    messages, codec = decode(bad)
    assert (messages, codec.stats) == ([], {"bad_crc": 1})
    [position], codec = decode(bad, accept_bad_crc=True)
    assert isinstance(position, Position)
    assert codec.stats == {"bad_crc": 1}


def test_bad_escape_and_short_frames_are_dropped_and_counted() -> None:
    messages, codec = decode(b"\x7e\x00\x02\x7d\x03\x7e" + b"\x7e\x00\x02\x00\x7e")
    assert messages == []
    assert codec.stats == {"bad_escape": 1, "short_frame": 1}


def test_sub_packages_are_reassembled_and_each_acknowledged() -> None:
    body = location(items=bytes.fromhex("31010c"))
    first = frame(0x0200, body[:20], serial=40, packet=(2, 1))
    second = frame(0x0200, body[20:], serial=41, packet=(2, 2))
    other = frame(0x0002, serial=50)
    codec = Jt808Codec()
    messages = codec.feed(second + other + first)  # out of order, interleaved
    assert [(type(m), m.reply) for m in messages] == [
        (Other, general(41, 0x0200, serial=0)),
        (Heartbeat, general(50, 0x0002, serial=1)),
        (Position, general(40, 0x0200, serial=2)),
    ]
    assert messages[0].raw == {"type": "0x0200", "serial": 41, "packets": 2, "packet": 2}
    position = messages[2]
    assert isinstance(position, Position)
    assert position.satellites == 12
    assert codec.stats == {}


def test_sub_packages_of_undecoded_types_are_acknowledged_not_kept() -> None:
    codec = Jt808Codec()
    parts = [frame(0x0801, bytes(1000), serial=s, packet=(300, s)) for s in range(1, 300)]
    messages = [m for part in parts for m in codec.feed(part)]
    assert [m.reply for m in messages] == [general(s, 0x0801, serial=s - 1) for s in range(1, 300)]
    assert codec.stats == {}  # 299 kB would be over the bound: nothing was kept


def test_incomplete_sub_packages_are_bounded() -> None:
    codec = Jt808Codec()
    body = location()
    count = MAX_ASSEMBLIES + 5
    for n in range(count):  # each the first of two parts of another message
        codec.feed(frame(0x0200, body[:10], serial=2 * n, packet=(2, 1)))
    assert codec.stats == {"packets_dropped": 5}  # the oldest
    [evicted] = codec.feed(frame(0x0200, body[10:], serial=1, packet=(2, 2)))
    [kept] = codec.feed(frame(0x0200, body[10:], serial=2 * count - 1, packet=(2, 2)))
    assert (type(evicted), type(kept)) == (Other, Position)
    for n in range(70):  # one message of 100 parts of 1000 bytes: over the 64 KiB kept
        codec.feed(frame(0x0704, bytes(1000), serial=1000 + n, packet=(100, n + 1)))
    assert codec.stats["packets_dropped"] > 5 + MAX_ASSEMBLIES


def test_text_sentence_on_the_same_connection() -> None:
    stream = b"(740190311185,1,001,ELOCK,3,529439)" + frame(0x0002)
    messages, _ = decode(stream)
    assert messages[0] == Other(
        "740190311185", "text", None, {"text": "(740190311185,1,001,ELOCK,3,529439)"}
    )
    assert isinstance(messages[1], Heartbeat)


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(data(v) for v in JT808.values())
    whole = Jt808Codec(now=lambda: CLOCK)
    bytewise = Jt808Codec(now=lambda: CLOCK)
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


def test_garbage_before_and_between_frames_is_skipped() -> None:
    heartbeat = frame(0x0002, serial=1)
    located = frame(0x0200, location(), serial=2)
    # "(" without a sentence; a cut frame whose end flag opens the next frame (lost: no ack,
    # so the unit sends it again); 7E 7E; a stray flag before a frame.
    stream = b"\x00(\x01" + heartbeat + b"$$" + located[:20] + heartbeat + b"\x7e" + located
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = Jt808Codec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Heartbeat, Position]
        assert codec.stats["garbage_bytes"] > 0


def test_endless_garbage_closes_the_connection() -> None:
    codec = Jt808Codec(max_frame_bytes=1024)
    codec.feed(b"\x00" * 1024)  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


def test_frame_without_end_closes_the_connection() -> None:
    codec = Jt808Codec(max_frame_bytes=1024)
    codec.feed(b"\x7e" + bytes(1022))  # 1023 bytes: a frame could still end
    with pytest.raises(ProtocolError):
        codec.feed(b"\x00")


def test_longest_frame_fits_the_default_limit() -> None:
    items = (b"\xeb\xff" + b"\x7e" * 255) * 3 + b"\xeb\xde" + b"\x7e" * 222  # all escaped
    body = location(items=items)
    assert len(body) == 1023  # the most ATTR can declare
    built = frame(0x0200, body, version=1, phone="7e" * 10, packet=(1, 1))
    [message], _ = decode(built)
    assert isinstance(message, Position)


# --- properties -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(
    msg_id=st.sampled_from([0x0001, 0x0002, 0x0100, 0x0102, 0x0200, 0x0201, 0x0704, 0x5501]),
    body=st.binary(max_size=120),
    serial=st.integers(0, 0xFFFF),
    version=st.none() | st.integers(0, 255),
    packet=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_any_well_formed_frame_is_one_frame_and_decodes_safely(
    msg_id: int, body: bytes, serial: int, version: int | None, packet: tuple[int, int] | None
) -> None:
    phone = "0" * 20 if version is not None else PHONE
    built = frame(msg_id, body, serial=serial, version=version, phone=phone, packet=packet)
    codec = Jt808Codec()
    assert [f for b in built for f in codec.frames(bytes([b]))] == [built]
    messages, _ = decode(built)
    assert len(messages) >= 1
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([data(v) for v in JT808.values()] or [frame(2)]),
            st.binary(max_size=40),
            st.sampled_from([b"\x7e", b"\x7d", b"(", b")", b"\x7e\x7e"]),
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
        return Jt808Codec(accept_bad_crc=True, max_frame_bytes=1024, now=lambda: CLOCK)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
