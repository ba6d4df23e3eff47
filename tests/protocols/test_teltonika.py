"""Teltonika codec: the shared vectors, the wiki's examples, then hand-made packets for what
they do not show.

Vectors: ``vectors/teltonika.jsonl`` and ``teltonika.frames.jsonl`` beside
/work/shared/PROTOCOLS.md (set TRACKER_VECTORS to another directory), real packets from
traccar's decoder tests (traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently checked
expectations. Each vector is named by its line in TeltonikaProtocolDecoderTest.java (``L18``).

Checksums: the CRC-16/IBM of L60, L78, L84, L177 and L180 is wrong; they are dropped and
counted, and decoded only with ``accept_bad_crc=True`` (the reply and fix tests use it). L102,
L117, L126 and L138 (also with a wrong CRC) declare a data length their bytes do not have:
they cannot be framed in a stream at all (NOT_FRAMED).

Where we deliberately differ from traccar, the tables below say so: NOT_FRAMED, REPLIES
(codec 7 is not acknowledged) and KEPT_RAW (model specific IO that traccar names and we keep
in ``raw``). Also: traccar's UDP reply carries packet id 0000 (L191); we echo the packet id
as the wiki does, which is the vector's ``ack_hex``. Traccar's FMB model option takes the
speed from IO 24 (L161); we take the GPS speed, which is what the vectors expect.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocols
from protocols.binary import crc16_ibm
from protocols.errors import ProtocolError
from protocols.messages import ATTRIBUTES, Heartbeat, Login, Message, Other, Position
from protocols.teltonika import TeltonikaCodec
from tests.protocols.streams import assert_plausible
from tests.protocols.vectors import line, load

TELTONIKA = {line(v): v for v in load("teltonika.jsonl")}
FRAMES = load("teltonika.frames.jsonl")

LOGIN = bytes.fromhex("000f313233343536373839303132333435")  # traccar's test IMEI (L15)
IMEI = "123456789012345"

# The data length disagrees with the bytes (``length_ok: false``). Traccar's test hands them
# to its protocol decoder directly; a stream reader can only trust the length. We wait for the
# declared bytes (a wrong length means the frame or the stream is broken) and decode nothing.
NOT_FRAMED = {
    "L102": "length 0: no frame starts there; later bytes read as a length of 2049 are waited for",
    "L117": "declares 2 bytes more than it has",
    "L126": "codec 7, declares 1 byte more than it has",
    "L138": "declares 166 bytes of data, has 33",
}
# Replies that differ from traccar's: (what we send, why).
REPLIES: dict[str, tuple[bytes | None, str]] = {
    "L111": (None, "codec 7 (GH3000) is not decoded; traccar acknowledges its 4 records"),
    "L129": (None, "codec 7 (GH3000) is not decoded; traccar acknowledges its 2 records"),
}
# Attributes traccar decodes from model specific IO elements; we keep the element in raw.
KEPT_RAW: dict[str, tuple[str, Any, str]] = {
    "L21": ("io", 548, "tag1Voltage: BLE sensor data, NX element 548, kept as hex"),
    "L28": ("io", 10831, "tag1Battery: BLE sensor data, NX element 10831, kept as hex"),
    "L152": ("io", 10800, "eyeTemp1 -11.87: IO 10800 = 64349, -1187 as int16, kept as is"),
    "L32": ("response", "12749884", "driverUniqueId: the codec 13 text, kept in raw"),
}
RECORD_KEYS = {"time", "lat", "lon", "speed_kmh", "course", "valid", "altitude_m", "satellites"}
RECORD_KEYS |= {"priority", "event_io", "ignition", "movement"}
CHECKED = RECORD_KEYS | {"records", "record_count", "codec", "crc_ok", "length_ok", "count_match"}
CHECKED |= {"ack_hex", "device_id", "packet_id", "avl_packet_id", "traccar_attribute"}


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in TELTONIKA.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def data(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["data"])


def udp(vector: dict[str, Any]) -> bool:
    return bool(vector["transport"] == "udp")


def framed(vector: dict[str, Any]) -> bool:
    return line(vector) not in NOT_FRAMED


def decode(vector: dict[str, Any], **options: Any) -> tuple[list[Message], TeltonikaCodec]:
    """A UDP vector as one datagram; a TCP vector after the traccar test IMEI (left out)."""
    if udp(vector):
        codec = TeltonikaCodec(transport="udp", **options)
        return codec.feed(data(vector)), codec
    codec = TeltonikaCodec(**options)
    codec.feed(LOGIN)
    return codec.feed(data(vector)), codec


# --- building packets ---------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WHEN = datetime(2024, 5, 1, 12, 30, 45, 250_000, tzinfo=UTC)


def io_element(codec: int, values: dict[int, bytes], event: int = 0, generation: int = 0) -> bytes:
    """Event id, [generation,] total, then the 1/2/4/8-byte groups by value size; the rest of
    ``values`` goes in the NX group (codec 8E)."""
    wide = codec != 0x08
    ident, count = (2 if wide else 1), (2 if codec == 0x8E else 1)
    out = event.to_bytes(ident) + (bytes([generation]) if codec == 0x10 else b"")
    out += len(values).to_bytes(count)
    for size in (1, 2, 4, 8):
        group = {k: v for k, v in values.items() if len(v) == size}
        out += len(group).to_bytes(count)
        out += b"".join(k.to_bytes(ident) + v for k, v in group.items())
    if codec == 0x8E:
        nx = {k: v for k, v in values.items() if len(v) not in (1, 2, 4, 8)}
        out += len(nx).to_bytes(2)
        out += b"".join(k.to_bytes(2) + len(v).to_bytes(2) + v for k, v in nx.items())
    return out


def record(
    codec: int = 0x08,
    values: dict[int, bytes] | None = None,
    *,
    when: datetime = WHEN,
    lat: float = 52.52,
    lon: float = -13.4,
    priority: int = 0,
    altitude: int = -12,
    angle: int = 90,
    satellites: int = 9,
    speed: int = 60,
    event: int = 0,
    generation: int = 0,
    time_ms: int | None = None,
) -> bytes:
    ms = (when - EPOCH) // timedelta(milliseconds=1) if time_ms is None else time_ms
    gps = ms.to_bytes(8) + bytes([priority])
    gps += round(lon * 10_000_000).to_bytes(4, signed=True)
    gps += round(lat * 10_000_000).to_bytes(4, signed=True)
    gps += altitude.to_bytes(2, signed=True) + angle.to_bytes(2) + bytes([satellites])
    return gps + speed.to_bytes(2) + io_element(codec, values or {}, event, generation)


def packet(codec: int, records: list[bytes], count: int | None = None) -> bytes:
    """CODEC | N1 | records | N2."""
    n = len(records) if count is None else count
    return bytes([codec, n]) + b"".join(records) + bytes([n])


def tcp(body: bytes, crc: int | None = None) -> bytes:
    checksum = crc16_ibm(body) if crc is None else crc
    return bytes(4) + len(body).to_bytes(4) + body + checksum.to_bytes(4)


def datagram(body: bytes, imei: bytes = IMEI.encode(), packet_id: int = 0xCAFE) -> bytes:
    rest = packet_id.to_bytes(2) + b"\x01\x22" + len(imei).to_bytes(2) + imei + body
    return len(rest).to_bytes(2) + rest


def after_login(*frames: bytes, **options: Any) -> tuple[list[Message], TeltonikaCodec]:
    codec = TeltonikaCodec(**options)
    codec.feed(LOGIN)
    return [m for frame in frames for m in codec.feed(frame)], codec


def positions(messages: list[Message]) -> list[Position]:
    assert all(isinstance(m, Position) for m in messages)
    return [m for m in messages if isinstance(m, Position)]


# --- the vectors ------------------------------------------------------------------------


def test_crc16_ibm_check_value() -> None:
    assert crc16_ibm(b"123456789") == 0xBB3D
    assert crc16_ibm(b"") == 0


def crc16_ibm_bitwise(data: bytes) -> int:
    """The definition, one bit at a time: reflected 0x8005, init 0."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@given(st.binary(max_size=600), st.integers(0, 3))
def test_crc16_ibm_is_the_definition(data: bytes, skip: int) -> None:
    # odd and even lengths, and a memoryview that starts on an odd address
    assert crc16_ibm(data) == crc16_ibm_bitwise(data)
    assert crc16_ibm(memoryview(data)[skip:]) == crc16_ibm_bitwise(data[skip:])


@vectors()
def test_vector_expectations_are_all_checked(vector: dict[str, Any]) -> None:
    assert set(vector["expect"]) <= CHECKED, "a new expect key: assert it here"
    for expected in vector["expect"].get("records", []):
        assert set(expected) <= RECORD_KEYS


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = TeltonikaCodec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]
    assert not codec.stats


@vectors(where=lambda v: not udp(v))
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = TeltonikaCodec()
    frames = codec.frames(data(vector))
    assert framed(vector) is vector["expect"].get("length_ok", True)
    if framed(vector):
        assert frames == [data(vector)]
        assert codec.pending == b""
    else:  # nothing decoded and nothing lost: skipped as garbage or waiting for more
        assert frames == []
        assert codec.stats["garbage_bytes"] + len(codec.pending) == len(data(vector))


@vectors(where=lambda v: "crc_ok" in v["expect"] and framed(v))
def test_vector_checksum_and_counts(vector: dict[str, Any]) -> None:
    frame = data(vector)
    body = frame[8:-4]
    assert (crc16_ibm(body) == int.from_bytes(frame[-4:])) is vector["expect"]["crc_ok"]
    assert (body[1] == body[-1]) is vector["expect"]["count_match"]
    assert body[1] == vector["expect"]["record_count"]


def assert_count(vector: dict[str, Any], messages: list[Message]) -> None:
    """A position packet gives a position per record, a keep-alive nothing, the rest one."""
    if vector["kind"] == "position":
        assert len(positions(messages)) == vector["expect"]["record_count"]
    else:
        assert len(messages) == (0 if data(vector) == b"\xff" else 1)


@vectors(where=lambda v: v["expect"].get("crc_ok", True) and framed(v))
def test_vector_with_good_crc_is_decoded(vector: dict[str, Any]) -> None:
    messages, codec = decode(vector)
    assert_count(vector, messages)
    assert not codec.stats["bad_crc"]


@vectors(where=lambda v: v["expect"].get("crc_ok") is False and framed(v))
def test_vector_with_bad_crc_is_dropped_unless_accepted(vector: dict[str, Any]) -> None:
    messages, codec = decode(vector)
    assert messages == []
    assert codec.stats == {"bad_crc": 1}
    accepted, codec = decode(vector, accept_bad_crc=True)
    assert_count(vector, accepted)
    assert codec.stats["bad_crc"] == 1


@vectors(where=lambda v: not framed(v))
def test_vector_that_cannot_be_framed_gives_nothing(vector: dict[str, Any]) -> None:
    messages, codec = decode(vector, accept_bad_crc=True)
    assert messages == []
    assert codec.pending  # waiting for the bytes its length declares


def expected_reply(vector: dict[str, Any]) -> bytes | None:
    if line(vector) in REPLIES:
        return REPLIES[line(vector)][0]
    ack: str | None = vector["expect"].get("ack_hex")
    return None if ack is None else bytes.fromhex(ack)


@vectors(where=framed)
def test_vector_reply(vector: dict[str, Any]) -> None:
    """One reply per packet, on its last message: sent once all its records are stored."""
    messages, _ = decode(vector, accept_bad_crc=True)
    if not messages:  # the keep-alive
        assert expected_reply(vector) is None
        return
    assert [m.reply for m in messages[:-1]] == [None] * (len(messages) - 1)
    assert messages[-1].reply == expected_reply(vector)


def assert_record(position: Position, expected: dict[str, Any]) -> None:
    assert position.fix_time == datetime.fromisoformat(expected["time"])
    assert round(position.lat, 6) == expected["lat"]
    assert round(position.lon, 6) == expected["lon"]
    assert position.speed_kmh == expected["speed_kmh"]
    assert position.course_deg == expected["course"]
    assert position.valid is expected["valid"]
    if "altitude_m" in expected:
        assert position.altitude_m == expected["altitude_m"]
        assert position.satellites == expected["satellites"]
        assert position.raw["priority"] == expected["priority"]
        assert position.raw["event_io"] == expected["event_io"]
    if "ignition" in expected:
        assert position.attributes["ignition"] is expected["ignition"]
    if "movement" in expected:
        assert position.attributes["motion"] is expected["movement"]


@vectors(where=lambda v: "time" in v["expect"] and framed(v))
def test_vector_fix(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    fixes = positions(decode(vector, accept_bad_crc=True)[0])
    assert len(fixes) == expect["record_count"]
    assert_record(fixes[0], expect)  # the first record, as traccar's test reports it
    for position, expected in zip(fixes, expect.get("records", []), strict=True):
        assert_record(position, expected)
    for position in fixes:
        assert position.unique_id == expect.get("device_id", IMEI)
        assert position.raw["codec"] == int(expect["codec"], 16)
        assert set(position.attributes) <= ATTRIBUTES
    if udp(vector):
        assert fixes[0].raw["packet_id"] == expect["packet_id"]
        assert fixes[0].raw["avl_packet_id"] == expect["avl_packet_id"]


@vectors(where=lambda v: v["kind"] == "other" and "codec" in v["expect"] and framed(v))
def test_vector_other_codecs_are_counted_and_kept(vector: dict[str, Any]) -> None:
    messages, codec = decode(vector, accept_bad_crc=True)
    codec_id = int(vector["expect"]["codec"], 16)
    assert messages == [Other(IMEI, f"codec{codec_id}", None, messages[0].raw)]
    assert messages[0].raw["codec"] == codec_id
    assert messages[0].raw["count"] == vector["expect"]["record_count"]
    assert codec.stats["unknown_type"] == 1


@vectors(where=lambda v: "traccar_attribute" in v["expect"])
def test_vector_model_specific_attributes_are_kept_raw(vector: dict[str, Any]) -> None:
    key, value, _ = KEPT_RAW[line(vector)]
    messages, _ = decode(vector)
    raw = messages[0].raw
    if key == "io":
        assert value in raw["io"]
    else:
        assert value in raw[key]
    if line(vector) == "L152":
        traccar = vector["expect"]["traccar_attribute"]["eyeTemp1"]
        assert int.from_bytes(raw["io"][10800].to_bytes(2), signed=True) / 100 == traccar


@vectors(where=lambda v: v["kind"] == "login")
def test_vector_login(vector: dict[str, Any]) -> None:
    codec = TeltonikaCodec()
    assert codec.feed(data(vector)) == [
        Login(vector["expect"]["device_id"], reply=bytes.fromhex(vector["expect"]["ack_hex"]))
    ]


@vectors(where=lambda v: data(v) == b"\xff")
def test_vector_keepalive_is_consumed_silently(vector: dict[str, Any]) -> None:
    messages, codec = decode(vector)
    assert messages == []
    assert not codec.stats
    assert codec.pending == b""


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(data(v) for v in TELTONIKA.values() if not udp(v) and framed(v))
    whole, bytewise = TeltonikaCodec(), TeltonikaCodec()
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.stats["bad_crc"] == 5
    assert whole.pending == bytewise.pending == b""


# --- the vendor's examples ----------------------------------------------------------------

# Teltonika wiki, "Teltonika Data Sending Protocols" (TW): one example per codec, all without a
# fix (satellites 0, coordinates 0). (packet, fix times, IO elements, reply)
TW_EXAMPLES = {
    "codec8": (
        "000000000000003608010000016B40D8EA30010000000000000000000000000000000105021503010101425E0F"
        "01F10000601A014E0000000000000000010000C7CF",
        ["2019-06-10T10:04:46Z"],
        [{21: 3, 1: 1, 66: 0x5E0F, 241: 0x601A, 78: 0}],
        "00000001",
    ),
    "codec8e": (
        "000000000000004A8E010000016B412CEE000100000000000000000000000000000000010005000100010100"
        "010011001D00010010015E2C880002000B000000003544C87A000E000000001DD7E06A00000100002994",
        ["2019-06-10T11:36:32Z"],
        [{1: 1, 17: 0x1D, 16: 0x015E2C88, 11: 0x3544C87A, 14: 0x1DD7E06A}],
        "00000001",
    ),
    "codec16": (
        "000000000000005F10020000016BDBC7833000000000000000000000000000000000000B05040200010000030002"
        "000B00270042563A00000000016BDBC7871800000000000000000000000000000000000B05040200010000030002"
        "000B00260042563A00000200005FB3",
        ["2019-07-10T12:06:54Z", "2019-07-10T12:06:55Z"],
        [{1: 0, 3: 0, 11: 0x27, 66: 0x563A}, {1: 0, 3: 0, 11: 0x26, 66: 0x563A}],
        "00000002",
    ),
}


@pytest.mark.parametrize("example", TW_EXAMPLES.values(), ids=TW_EXAMPLES)
def test_vendor_example(example: tuple[str, list[str], list[dict[int, int]], str]) -> None:
    frame, times, io, reply = example
    assert crc16_ibm(bytes.fromhex(frame)[8:-4]) == int(frame[-4:], 16)
    messages, codec = after_login(bytes.fromhex(frame))
    fixes = positions(messages)
    assert [p.fix_time for p in fixes] == [datetime.fromisoformat(t) for t in times]
    assert [p.raw["io"] for p in fixes] == io
    assert [(p.lat, p.lon, p.valid, p.satellites) for p in fixes] == [(0, 0, False, 0)] * len(io)
    assert messages[-1].reply == bytes.fromhex(reply)
    assert not codec.stats


def test_vendor_udp_example() -> None:
    # TW, Codec 8 over UDP: packet id CAFE, AVL packet id 05; the server's answer 0005CAFE010501.
    dgram = bytes.fromhex(
        "003DCAFE0105000F33353230393330383634303336353508010000016B4F815B30010000000000000000000000"
        "000000000103021503010101425DBC000001"
    )
    [position] = TeltonikaCodec(transport="udp").feed(dgram)
    assert isinstance(position, Position)
    assert position.unique_id == "352093086403655"
    assert position.fix_time == datetime(2019, 6, 13, 6, 23, 26, tzinfo=UTC)
    assert position.raw["io"] == {21: 3, 1: 1, 66: 0x5DBC}
    assert position.attributes == {"gsm_signal": 3, "external_power_v": 23.996}
    assert position.reply == bytes.fromhex("0005CAFE010501")


# --- hand-made packets: TCP --------------------------------------------------------------


def test_imei_is_accepted_and_binds_the_connection() -> None:
    codec = TeltonikaCodec()
    frame = tcp(packet(0x08, [record()]))
    [before] = codec.feed(frame)
    assert codec.feed(LOGIN) == [Login(IMEI, reply=b"\x01")]
    [after] = codec.feed(frame)
    assert before.unique_id is None
    assert after.unique_id == IMEI


def test_record_is_decoded_and_acknowledged() -> None:
    values = {239: b"\x01", 240: b"\x00", 66: (12_480).to_bytes(2), 16: (98_765).to_bytes(4)}
    messages, codec = after_login(tcp(packet(0x08, [record(values=values, event=239)])))
    assert messages == [
        Position(
            IMEI,
            WHEN,
            52.52,
            -13.4,
            valid=True,
            speed_kmh=60.0,
            course_deg=90.0,
            altitude_m=-12.0,
            satellites=9,
            attributes={
                "ignition": True,
                "motion": False,
                "external_power_v": 12.48,
                "odometer_m": 98_765.0,
            },
            raw={
                "codec": 8,
                "priority": 0,
                "event_io": 239,
                "io": {239: 1, 240: 0, 66: 12_480, 16: 98_765},
            },
            reply=b"\x00\x00\x00\x01",
        )
    ]
    assert not codec.stats


def test_reply_counts_all_records_and_comes_with_the_last() -> None:
    records = [record(when=WHEN + timedelta(seconds=i)) for i in range(3)]
    messages, _ = after_login(tcp(packet(0x08, records)))
    assert [m.reply for m in messages] == [None, None, b"\x00\x00\x00\x03"]
    assert [m.fix_time for m in positions(messages)] == [
        WHEN + timedelta(seconds=i) for i in range(3)
    ]


def test_codec_8_extended_has_wide_ids_and_an_nx_group() -> None:
    values = {113: b"\x55", 10_800: b"\xfb\x5d", 385: bytes.fromhex("0102030405")}
    messages, _ = after_login(tcp(packet(0x8E, [record(0x8E, values, event=385)])))
    [position] = positions(messages)
    assert position.raw["io"] == {113: 0x55, 10_800: 0xFB5D, 385: "0102030405"}
    assert position.raw["event_io"] == 385
    assert position.attributes == {"battery_pct": 0x55}


def test_codec_16_has_a_generation_type() -> None:
    body = record(0x10, {21: b"\x04", 300: b"\x01"}, event=300, generation=5)
    messages, _ = after_login(tcp(packet(0x10, [body])))
    [position] = positions(messages)
    assert position.raw["generation_type"] == 5
    assert position.raw["io"] == {21: 4, 300: 1}
    assert position.attributes == {"gsm_signal": 4}


def test_a_16_byte_group_is_read_when_the_plain_layout_does_not_fit() -> None:
    # Codec 8 with a 16-byte group after the 8-byte one (traccar's "extended" option, L158).
    plain = record(0x08, {1: b"\x01"})
    extended = plain + b"\x01\xcb" + bytes(range(16))  # one 16-byte value, id 203
    messages, _ = after_login(tcp(packet(0x08, [extended, plain + b"\x00"])))
    first, second = positions(messages)
    assert first.raw["io"] == {1: 1, 203: bytes(range(16)).hex()}
    assert second.raw["io"] == {1: 1}


@pytest.mark.parametrize(
    ("io_id", "value", "attribute", "expected"),
    [
        (239, b"\x01", "ignition", True),
        (239, b"\x00", "ignition", False),
        (240, b"\x01", "motion", True),
        (66, (13_750).to_bytes(2), "external_power_v", 13.75),
        (67, (4_012).to_bytes(2), "battery_v", 4.012),
        (113, b"\x64", "battery_pct", 100),
        (21, b"\x03", "gsm_signal", 3),
        (16, (1_234_567).to_bytes(4), "odometer_m", 1_234_567.0),
        (182, b"\x00\x0c", "hdop", 1.2),
        (249, b"\x01", "jamming", True),
        (252, b"\x01", "power_cut", True),
        (252, b"\x00", "power_cut", False),
    ],
)
def test_well_known_io_elements_become_attributes(
    io_id: int, value: bytes, attribute: str, expected: Any
) -> None:
    messages, _ = after_login(tcp(packet(0x08, [record(values={io_id: value})])))
    [position] = positions(messages)
    assert position.attributes == {attribute: expected}
    assert position.raw["io"] == {io_id: int.from_bytes(value)}


@pytest.mark.parametrize(
    ("io_id", "value"),
    [
        (246, b"\x01"),  # towing: raw only
        (181, b"\x00\x0c"),  # PDOP is not HDOP
        (113, b"\x96"),  # 150 %: another family's id
        (21, b"\x09"),  # GSM signal is 0..5
        (239, b"\x02"),  # a flag is 0 or 1
    ],
)
def test_other_io_elements_stay_raw(io_id: int, value: bytes) -> None:
    messages, _ = after_login(tcp(packet(0x08, [record(values={io_id: value})])))
    [position] = positions(messages)
    assert position.attributes == {}
    assert position.raw["io"] == {io_id: int.from_bytes(value)}


def test_panic_priority_is_sos() -> None:
    messages, _ = after_login(tcp(packet(0x08, [record(priority=2), record(priority=1)])))
    panic, high = positions(messages)
    assert panic.attributes == {"sos": True}
    assert high.attributes == {}
    assert [panic.raw["priority"], high.raw["priority"]] == [2, 1]


def test_no_satellites_is_an_invalid_fix() -> None:
    messages, _ = after_login(tcp(packet(0x08, [record(satellites=0)])))
    [position] = positions(messages)
    assert position.valid is False
    assert (position.lat, position.lon) == (52.52, -13.4)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lat": 91.0}, "bad_position"),
        ({"lon": -181.0}, "bad_position"),
        ({"angle": 400}, "bad_position"),
        ({"time_ms": 2**63}, "bad_time"),  # beyond year 9999
    ],
    ids=["lat", "lon", "angle", "time"],
)
def test_implausible_gps_is_an_invalid_position_still_acknowledged(
    fields: dict[str, Any], reason: str
) -> None:
    # The unit counts the record as sent: it is acknowledged, and the filters drop it.
    records = [record(**fields), record()]
    messages, codec = after_login(tcp(packet(0x08, records)))
    bad, good = positions(messages)
    assert bad.valid is False
    assert bad.raw["implausible"] == [reason]
    assert good.valid is True
    assert good.reply == b"\x00\x00\x00\x02"
    assert codec.stats == {reason: 1}
    assert_plausible(messages)


@pytest.mark.parametrize(
    "body",
    [
        packet(0x08, [record()], count=2),  # N1 says 2 records, 1 follows
        packet(0x08, [record() + b"\x55"]),  # a byte left over
        packet(0x08, [record()[:-3]]),  # the IO element is cut short
        packet(0x8E, [record(0x08)]),  # codec 8 record in an 8E packet
    ],
    ids=["count", "left-over", "short", "layout"],
)
def test_undecodable_packet_is_dropped_unanswered(body: bytes) -> None:
    messages, codec = after_login(tcp(body))
    assert messages == []
    assert codec.stats == {"bad_record": 1}


def test_packet_without_records_is_acknowledged_as_a_heartbeat() -> None:
    messages, _ = after_login(tcp(packet(0x08, [])))
    assert messages == [Heartbeat(IMEI, b"\x00\x00\x00\x00", raw={"codec": 8})]


def test_bad_crc_is_dropped_and_counted_unless_accepted() -> None:
    frame = tcp(packet(0x08, [record()]), crc=0x1234)
    messages, codec = after_login(frame)
    assert messages == []
    assert codec.stats == {"bad_crc": 1}
    messages, codec = after_login(frame, accept_bad_crc=True)
    assert [m.reply for m in messages] == [b"\x00\x00\x00\x01"]
    assert codec.stats == {"bad_crc": 1}


@pytest.mark.parametrize(
    ("body", "kind", "raw"),
    [
        (
            bytes.fromhex("0c 01 06 00000004") + b"OK\r\n" + b"\x01",
            "codec12",
            {"codec": 12, "count": 1, "type": 6, "response": "OK"},
        ),
        (
            bytes.fromhex("0e 01 06 0000000a 0123456789012345") + b"ok" + b"\x01",
            "codec14",
            {"codec": 14, "count": 1, "type": 6, "response": "ok"},
        ),
        (bytes.fromhex("0f 01 abcd 01"), "codec15", {"codec": 15, "count": 1, "data": "abcd"}),
    ],
    ids=["codec12", "codec14", "unknown"],
)
def test_other_codecs_are_counted_and_not_answered(
    body: bytes, kind: str, raw: dict[str, Any]
) -> None:
    messages, codec = after_login(tcp(body))
    assert messages == [Other(IMEI, kind, None, raw)]
    assert codec.stats == {"unknown_type": 1}


def test_garbage_before_and_between_frames_is_skipped() -> None:
    frame = tcp(packet(0x08, [record()]))
    # A byte, a false header (00 00 00 00 with an impossible length), a cut IMEI.
    stream = b"\x42" + LOGIN + bytes(4) + b"\xff\xff\xff\xff" + b"\x00\x0f123" + frame
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = TeltonikaCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Login, Position]
        assert messages[1].unique_id == IMEI
        assert messages[1].reply == b"\x00\x00\x00\x01"
        assert codec.stats == {"garbage_bytes": 1 + 4 + 5}  # the four FF are keep-alives


def test_a_false_header_is_garbage_once_its_frame_does_not_end_right() -> None:
    # 00 00 00 00 and a plausible length, but where its N2 and CRC would be, 55 and the next
    # frame's preamble: it is skipped, and the frame it overlaps found.
    frame = tcp(packet(0x08, [record()]))
    false_start = bytes(4) + (64).to_bytes(4) + b"\x08\x01" + b"\x55" * 62
    messages, codec = after_login(false_start + frame)
    assert [m.reply for m in messages] == [b"\x00\x00\x00\x01"]
    assert codec.stats == {"garbage_bytes": len(false_start)}
    assert codec.pending == b""


def test_keepalives_are_silent() -> None:
    frame = tcp(packet(0x08, [record()]))
    messages, codec = after_login(b"\xff", frame, b"\xff\xff", frame)
    assert len(messages) == 2
    assert not codec.stats


def test_endless_garbage_closes_the_connection() -> None:
    codec = TeltonikaCodec(max_frame_bytes=1024)
    codec.feed(b"\x42" * 1024)  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x42")


def test_endless_keepalives_close_the_connection() -> None:
    codec = TeltonikaCodec(max_frame_bytes=1024)
    codec.feed(b"\xff" * 1024)
    with pytest.raises(ProtocolError):
        codec.feed(b"\xff")


def test_a_frame_within_the_limit_is_waited_for_and_one_over_it_is_garbage() -> None:
    codec = TeltonikaCodec(max_frame_bytes=1024)
    waiting = bytes(4) + (1024 - 12).to_bytes(4) + b"\x08\x01"
    assert codec.feed(waiting) == []
    assert codec.pending == waiting
    codec = TeltonikaCodec(max_frame_bytes=1024)
    assert codec.feed(bytes(4) + (1024 - 11).to_bytes(4) + b"\x08\x01") == []
    assert codec.stats == {"garbage_bytes": 10}
    assert codec.pending == b""


def test_transport_is_tcp_or_udp() -> None:
    with pytest.raises(ValueError, match="transport"):
        TeltonikaCodec(transport="sctp")  # type: ignore[arg-type]


# --- hand-made datagrams: UDP ------------------------------------------------------------


def test_datagram_carries_the_imei_and_is_acknowledged_with_its_ids() -> None:
    codec = protocols.open("teltonika", transport="udp")
    messages = codec.feed(datagram(packet(0x08, [record(), record()]), packet_id=0x0102))
    assert [m.unique_id for m in messages] == [IMEI, IMEI]
    assert [m.reply for m in messages] == [None, bytes.fromhex("0005 0102 01 22 02")]
    assert messages[0].raw["packet_id"] == 0x0102
    assert messages[0].raw["avl_packet_id"] == 0x22


def test_datagram_with_codec_12_is_other_unanswered() -> None:
    codec = TeltonikaCodec(transport="udp")
    body = bytes.fromhex("0c 01 06 00000002") + b"ok" + b"\x01"
    [message] = codec.feed(datagram(body))
    assert message == Other(IMEI, "codec12", None, message.raw)
    assert codec.stats == {"unknown_type": 1}


GOOD = datagram(packet(0x08, [record()]))


@pytest.mark.parametrize(
    ("dgram", "reason"),
    [
        (b"\x00\x05\x01", "short_frame"),
        (GOOD + b"\x00", "short_frame"),  # length field disagrees
        (datagram(packet(0x08, [record()]), imei=b"35745407271397X"), "bad_imei"),
        (GOOD[:6] + b"\x00\xff" + GOOD[8:], "bad_imei"),  # IMEI past the end
        (datagram(packet(0x08, [record()])[:-1] + b"\x02"), "bad_record"),  # N2 != N1
        (datagram(packet(0x08, [record()[:-1]])), "bad_record"),
        (datagram(packet(0x08, [record()] * 40)), "too_long"),
    ],
    ids=["tiny", "length", "imei", "imei-length", "counts", "record", "too-long"],
)
def test_bad_datagram_is_dropped_and_counted(dgram: bytes, reason: str) -> None:
    codec = TeltonikaCodec(transport="udp", max_frame_bytes=1024)
    assert codec.feed(dgram) == []
    assert codec.stats == {reason: 1}
    assert len(codec.feed(GOOD)) == 1  # the next datagram stands on its own


# --- properties -------------------------------------------------------------------------

values_strategy = st.dictionaries(
    st.integers(0, 255),
    st.sampled_from([1, 2, 4, 8]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    max_size=6,
)
records_strategy = st.lists(
    st.builds(
        record,
        st.just(0x08),
        values_strategy,
        time_ms=st.integers(0, 2**64 - 1),
        lat=st.floats(-214, 214),
        lon=st.floats(-214, 214),
        priority=st.integers(0, 255),
        angle=st.integers(0, 0xFFFF),
        satellites=st.integers(0, 255),
        speed=st.integers(0, 0xFFFF),
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None, database=None)
@given(records=records_strategy)
def test_any_well_formed_packet_is_one_frame_and_decodes_safely(records: list[bytes]) -> None:
    frame = tcp(packet(0x08, records))
    codec = TeltonikaCodec()
    assert [f for b in frame for f in codec.frames(bytes([b]))] == [frame]
    messages, codec = after_login(frame)
    assert len(messages) == max(1, len(records))
    assert messages[-1].reply == len(records).to_bytes(4)
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    dgram=st.binary(max_size=600)
    | st.builds(lambda n, b: GOOD[:n] + b, st.integers(0, len(GOOD)), st.binary(max_size=40))
)
def test_any_datagram_decodes_safely(dgram: bytes) -> None:
    codec = TeltonikaCodec(transport="udp")
    messages = codec.feed(dgram)
    assert_plausible(messages)
    assert messages or sum(codec.stats.values()) == 1
