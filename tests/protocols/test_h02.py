"""H02 codec: the shared vectors, then hand-made frames for what the vectors do not show.

Vectors: ``vectors/h02.jsonl`` and ``h02.frames.jsonl`` beside /work/shared/PROTOCOLS.md
(set TRACKER_VECTORS to another directory), real packets from traccar's decoder tests
(traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently checked expectations. Each
vector is named by its line in H02ProtocolDecoderTest.java (``L24``).

H02 has no checksum: ``accept_bad_crc`` changes nothing and no vector needs it.

Where we deliberately differ from traccar or a vector, the tables below say so:
NOT_POSITIONS (fixes we do not store), RECORD_SIZES (binary records we end elsewhere) and
FIRST_RECORD_WAITS (splitting cases whose only frame is a lone 32-byte binary record).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import Codec
from protocols.errors import ProtocolError
from protocols.h02 import H02Codec
from protocols.messages import ALARMS, ATTRIBUTES, Heartbeat, Message, Other, Position
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

H02 = {line(v): v for v in load("h02.jsonl")}
FRAMES = load("h02.frames.jsonl")

CLOCK = datetime(2026, 11, 29, 5, 4, 5, tzinfo=UTC)  # when traccar ran its tests (L52, L118)
NEXT = b"$"  # the start of a next record: a first binary record ends only when it is seen

# Fixes traccar decodes that we do not store.
NOT_POSITIONS = {
    "L58": "no unit id: nothing to file the fix under; dropped and counted (no_unique_id)",
    "L67": "VP1 carries a date without a time of day: traccar stores midnight",
    "L73": "VP1 carries a date without a time of day: traccar stores midnight",
    "L160": "no time or date: traccar stores the server time; dropped (bad_time), still answered",
}
# Traccar's test hands its decoder a whole buffer; in a stream a record ends at 45 bytes and
# what follows up to the next frame is skipped as garbage.
RECORD_SIZES = {"L103": 45, "L272": 45}
# The first binary record on a connection ends at 32 bytes only if a frame follows it (45
# otherwise): alone, it waits for the next byte. Cases from H02FrameDecoderTest.
FIRST_RECORD_WAITS = {"L19", "L31"}
TRACCAR_ALARMS = {
    "sos": "sos", "powerCut": "power_cut", "vibration": "vibration", "overspeed": "overspeed"
}  # fmt: skip
# "other" vectors that carry a status word: heartbeats with its attributes.
STATUS_REPORTS = {"NBR", "LINK", "V3"}


def data(vector: dict[str, Any]) -> bytes:
    value: str = vector["data"]
    return value.encode() if vector["encoding"] == "text" else bytes.fromhex(value)


def vectors(where: Any = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in H02.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def decode(frame: bytes, **options: Any) -> tuple[list[Message], H02Codec]:
    """Feed ``frame`` (and, after a binary record, the start of the next) to a fresh codec."""
    codec = H02Codec(now=lambda: CLOCK, **options)
    messages = codec.feed(frame + (NEXT if frame[:1] == b"$" else b""))
    return messages, codec


def text(body: str) -> bytes:
    return f"*HQ,4210209006,{body}#".encode()


def location(status: str = "FFFFFBFF", *, knots: str = "10.00", lat: str = "2608.9437") -> bytes:
    return text(f"V1,201812,A,{lat},N,08016.2521,W,{knots},090,150317,{status}")


def v1(clock: str, north: str, course: str, date: str) -> bytes:
    return text(f"V1,{clock},A,2608.9437,{north},08016.2521,W,0.00,{course},{date},FFFFFBFF")


def record(
    uid: str = "4106011660", *, flags: str = "e", extra: bytes = b"", status: int = 0xFFFFFBFF
) -> bytes:
    """A binary record: 12:45:43 13/11/16, 50 35.3130 N, 004 31.8210 E, 14 knots, course 28."""
    digits = uid + "124543131116" + "50353130" + "06" + "004318210" + flags + "014028"
    return b"$" + bytes.fromhex(digits) + status.to_bytes(4, "big") + b"\xff\x00\x24" + extra


# --- the vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = H02Codec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    if line(case) in FIRST_RECORD_WAITS:
        assert frames == []
        assert codec.pending.hex() == case["expect"]["frames"][0]
        frames = [f.hex() for f in codec.frames(NEXT)]
        assert codec.pending == NEXT
    else:
        assert codec.pending.hex() == case["expect"]["remaining"]
    assert frames == case["expect"]["frames"]


@vectors()
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = H02Codec()
    frames = codec.frames(data(vector) + NEXT)
    if vector["encoding"] == "text":  # L205 ends in CR/LF: skipped, not garbage
        assert frames == [data(vector).rstrip(b"\r\n")]
        assert not codec.stats
    else:
        size = RECORD_SIZES.get(line(vector), len(data(vector)))
        assert frames == [data(vector)[:size]]
        assert codec.stats["garbage_bytes"] == len(data(vector)) - size
    assert codec.pending == NEXT


@vectors()
def test_vector_gives_one_message_with_its_unit(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    if line(vector) == "L58":  # "*HQ,,V1,...": no id
        assert messages == []
        assert codec.stats == {"no_unique_id": 1}
        return
    assert [m.unique_id for m in messages] == [vector["expect"]["device_id"]]
    if "cmd" in vector["expect"]:
        assert messages[0].raw["type"] == vector["expect"]["cmd"]


def expected_reply(vector: dict[str, Any]) -> bytes | None:
    expect = vector["expect"]
    if "ack_template" in expect:
        template = str(expect["ack_template"])
        return template.replace("{yyyyMMddHHmmss UTC now}", f"{CLOCK:%Y%m%d%H%M%S}").encode()
    if "traccar_response" in vector:
        return str(vector["traccar_response"][0]).encode()
    ack = expect["ack_text"]
    return None if ack is None else str(ack).encode()


@vectors()
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector))
    assert [m.reply for m in messages] == ([expected_reply(vector)] if messages else [])


def kind_of(vector: dict[str, Any]) -> type:
    if line(vector) in NOT_POSITIONS:
        return Other
    if vector["kind"] in ("position", "alarm") or "traccar_decoded" in vector:
        return Position
    if vector["kind"] == "heartbeat" or vector["expect"].get("cmd") in STATUS_REPORTS:
        return Heartbeat
    return Other


@vectors(where=lambda v: line(v) != "L58")
def test_vector_kind(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector))
    assert [type(m) for m in messages] == [kind_of(vector)]


@vectors(where=lambda v: line(v) in NOT_POSITIONS and line(v) != "L58")
def test_fixes_we_do_not_store(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    assert [type(m) for m in messages] == [Other]
    assert codec.stats["bad_time"] == (1 if line(vector) == "L160" else 0)


def fix_of(vector: dict[str, Any]) -> Position:
    messages, codec = decode(data(vector))
    assert [type(m) for m in messages] == [Position]
    assert not codec.stats["bad_time"]
    assert isinstance(messages[0], Position)
    return messages[0]


@vectors(where=lambda v: "time" in v["expect"] and line(v) not in NOT_POSITIONS)
def test_vector_fix(vector: dict[str, Any]) -> None:
    position, expect = fix_of(vector), vector["expect"]
    assert position.fix_time == datetime.fromisoformat(expect["time"])
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.speed_kmh == expect["speed_kmh"]  # knots * 1.852, to 3 decimals
    assert position.speed_kmh == round(expect["speed_knots"] * 1.852, 3)
    assert position.course_deg == expect["course"]
    if "valid" in expect:
        assert position.valid is expect["valid"]
    else:  # L55, L61: validity "0", a coding scheme; traccar: valid
        assert position.valid is True
    assert position.unique_id == expect["device_id"]


@vectors(
    where=lambda v: (
        "time" not in v["expect"] and "traccar_decoded" in v and line(v) not in NOT_POSITIONS
    )
)
def test_vector_fix_as_traccar_decodes_it(vector: dict[str, Any]) -> None:
    # L52 (a battery field before the date) and the V4 confirmations (L208-L229)
    position, decoded = fix_of(vector), vector["traccar_decoded"]
    assert position.fix_time == datetime.fromisoformat(decoded["fixTime"])
    assert round(position.lat, 6) == round(decoded["lat"], 6)
    assert round(position.lon, 6) == round(decoded["lon"], 6)
    assert position.speed_kmh == round(decoded["speedKn"] * 1.852, 3)
    assert position.course_deg == decoded["course"]
    assert position.valid is decoded["valid"]


STATUS_KEYS = ("ignition", "status_hex", "alarm", "battery_level", "traccar_attribute")


@vectors(where=lambda v: any(k in v["expect"] for k in STATUS_KEYS) and line(v) != "L58")
def test_vector_status(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    [message], _ = decode(data(vector))
    attributes = message.attributes if isinstance(message, Position | Heartbeat) else {}
    assert set(attributes) <= ATTRIBUTES
    if "ignition" in expect:
        assert attributes["ignition"] is expect["ignition"]
    if "status_hex" in expect:
        assert message.raw["status"] == int(expect["status_hex"], 16)
    if "alarm" in expect:
        wanted = {TRACCAR_ALARMS[expect["alarm"]]} if expect["alarm"] else set()
        assert {name for name in ALARMS if attributes.get(name)} == wanted
    if "battery_level" in expect:
        assert attributes["battery_pct"] == expect["battery_level"]
    for key, value in expect.get("traccar_attribute", {}).items():
        assert message.raw[{"status": "status", "result": "text"}[key]] == value


@vectors(where=lambda v: v["expect"].get("cmd") == "NBR")
def test_cell_reports_are_answered_with_the_server_time(vector: dict[str, Any]) -> None:
    [message], _ = decode(data(vector))
    assert isinstance(message, Heartbeat)
    assert message.raw["cells"]
    assert all(len(cell) == 3 for cell in message.raw["cells"])
    assert message.reply == f"*HQ,{vector['expect']['device_id']},V4,NBR,20261129050405#".encode()


# --- hand-made frames ---------------------------------------------------------------------


def test_location_is_decoded_and_confirmed() -> None:
    now = datetime(2026, 3, 1, 6, 5, 6, tzinfo=timezone(timedelta(hours=2)))  # UTC on the wire
    [position] = H02Codec(now=lambda: now).feed(location(knots="10.00"))
    assert position == Position(
        "4210209006",
        datetime(2017, 3, 15, 20, 18, 12, tzinfo=UTC),
        26 + 8.9437 / 60,
        -(80 + 16.2521 / 60),
        valid=True,
        speed_kmh=18.52,
        course_deg=90,
        attributes={"ignition": False},
        raw={"type": "V1", "status": 0xFFFFFBFF},
        reply=b"*HQ,4210209006,V4,V1,20260301040506#",
    )


def test_heartbeat_is_echoed_with_the_maker_code() -> None:
    [heartbeat] = H02Codec().feed(b"*TH,2020916012,V0#\r\n")
    assert heartbeat == Heartbeat("2020916012", b"*TH,2020916012,V0#", {}, {"type": "V0"})


def test_frame_without_unit_id_is_dropped_and_counted() -> None:
    codec = H02Codec(now=lambda: CLOCK)
    assert codec.feed(b"*HQ,,HTBT#" + data(H02["L58"])) == []
    assert codec.stats == {"no_unique_id": 2}


def test_accept_bad_crc_changes_nothing() -> None:
    stream = b"".join(data(v) for v in H02.values())
    plain = H02Codec(now=lambda: CLOCK).feed(stream)
    assert H02Codec(accept_bad_crc=True, now=lambda: CLOCK).feed(stream) == plain


@pytest.mark.parametrize(
    ("status", "alarms"),
    [
        (0xFFFFFFFE, {"vibration"}),
        (0xFFFFFFFD, {"sos"}),
        (0xFFFBFFFF, {"sos"}),
        (0xFFFFFFFB, {"overspeed"}),
        (0xFFF7FFFF, {"power_cut"}),
        (0xFFF7FFFE, {"vibration", "power_cut"}),  # traccar: only the first (vibration)
        (0xFFFFFFFF, set()),
        (1 << 0 | 1 << 1 | 1 << 2 | 1 << 18 | 1 << 19, set()),  # other bits are no alarms
    ],
)
def test_status_word_is_active_low(status: int, alarms: set[str]) -> None:
    [position] = H02Codec().feed(location(f"{status:08X}"))
    assert isinstance(position, Position)
    assert {name for name in ALARMS if position.attributes.get(name)} == alarms
    assert position.raw["status"] == status


@pytest.mark.parametrize(("status", "ignition"), [("FFFFFFFF", True), ("FFFFFBFF", False)])
def test_ignition_is_bit_10_set(status: str, ignition: bool) -> None:
    [position] = H02Codec().feed(location(status))
    assert isinstance(position, Position)
    assert position.attributes["ignition"] is ignition


@pytest.mark.parametrize(
    ("frame", "reason", "answered"),
    [
        (location(lat="9108.9437"), "bad_position", False),  # 91 degrees
        (location(lat="2668.9437"), "bad_position", False),  # 68 minutes
        (v1("201812", "X", "090", "150317"), "bad_position", False),
        (v1("201812", "N", "400", "150317"), "bad_position", False),
        (v1("201812", "N", "090", "300217"), "bad_time", True),
        (v1("251812", "N", "090", "150317"), "bad_time", True),
    ],
    ids=["lat", "minutes", "hemisphere", "course", "date", "hour"],
)
def test_implausible_fix_is_dropped_and_counted(frame: bytes, reason: str, answered: bool) -> None:
    messages, codec = decode(frame)
    assert [type(m) for m in messages] == [Other]
    assert (messages[0].reply is not None) is answered  # V1 is answered once it can be read
    assert codec.stats == {reason: 1}


def test_binary_record_is_decoded() -> None:
    [position], codec = decode(record())
    assert position == Position(
        "4106011660",
        datetime(2016, 11, 13, 12, 45, 43, tzinfo=UTC),
        50 + 35.3130 / 60,
        4 + 31.8210 / 60,
        valid=True,
        speed_kmh=25.928,
        course_deg=28,
        attributes={"ignition": False, "battery_pct": 100},
        raw={"type": "binary", "battery": 6, "status": 0xFFFFFBFF, "extra": "ff0024"},
    )
    assert not codec.stats


@pytest.mark.parametrize(
    ("flags", "lat", "lon", "valid"), [("0", -1, -1, False), ("c", 1, 1, False), ("6", 1, -1, True)]
)
def test_binary_flags(flags: str, lat: int, lon: int, valid: bool) -> None:
    [position], _ = decode(record(flags=flags))
    assert isinstance(position, Position)
    assert (position.lat > 0, position.lon > 0, position.valid) == (lat > 0, lon > 0, valid)


def test_first_binary_record_tells_the_record_size() -> None:
    short, long = record(), record(extra=bytes.fromhex("0600000000 01cc 00 262b 0f17 0a"))
    codec = H02Codec()
    assert codec.frames(short) == []  # 32 or 45 bytes? the next byte tells
    assert codec.frames(short[:16]) == [short]  # a record follows: records are 32 bytes long
    assert codec.frames(short[16:]) == [short]  # no need to wait any more
    codec = H02Codec()
    assert codec.frames(long[:33]) == []
    assert codec.frames(long[33:] + short) == [long]  # 45 bytes, and the 32-byte one waits
    assert codec.frames(b"*") == [short]


def test_binary_record_with_an_imei() -> None:
    [position], _ = decode(data(H02["L49"]))
    assert position.unique_id == "352483084193293"  # 8 bytes, the last digit a filler
    assert H02Codec().frames(data(H02["L49"])) == [data(H02["L49"])]  # no need to wait


def test_x_records_are_counted_as_unknown() -> None:
    frame = bytes.fromhex("5800009814991024031101175540227006012321670c000095fffffbffff0033")
    codec = H02Codec()
    [other] = codec.feed(frame)
    assert other == Other("0000981499", "X", None, {"type": "X", "data": frame.hex()})
    assert codec.stats == {"unknown_type": 1}


def test_unknown_type_is_counted() -> None:
    codec = H02Codec()
    [other] = codec.feed(text("BASE,152609,0,0,0,0,211014,FFFFFFFF"))
    raw = {"type": "BASE", "text": "152609,0,0,0,0,211014,FFFFFFFF"}
    assert other == Other("4210209006", "BASE", None, raw)
    assert codec.stats == {"unknown_type": 1}


def test_garbage_before_and_between_frames_is_skipped() -> None:
    # "$" without a BCD id, "*" followed by binary bytes, "X" in text: no frames
    stream = b"\x00\x01$zz Xtra*\x01" + location() + b"\r\n" + b"junk" + record() + location()
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = H02Codec(now=lambda: CLOCK)
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Position, Position]
        assert codec.stats == {"garbage_bytes": 16}  # CR/LF between frames is not garbage


def test_endless_garbage_closes_the_connection() -> None:
    codec = H02Codec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


def test_text_frame_without_end_closes_the_connection() -> None:
    codec = H02Codec(max_frame_bytes=1024)
    codec.feed(b"*HQ," + b"1" * 1019)  # still within the limit: waiting
    with pytest.raises(ProtocolError):
        codec.feed(b"1")


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(data(v) for v in H02.values())
    whole = H02Codec(now=lambda: CLOCK)
    bytewise = H02Codec(now=lambda: CLOCK)
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending


# --- properties -------------------------------------------------------------------------


KINDS = ["V1", "V0", "HTBT", "NBR", "LINK", "V3", "V4", "VP1"]
FIELD = st.text(st.sampled_from("0123456789.-ABNSEWVFf "), max_size=12)


@settings(max_examples=300, deadline=None, database=None)
@given(kind=st.sampled_from([*KINDS, "V19"]), fields=st.lists(FIELD, max_size=16))
def test_any_text_frame_decodes_safely(kind: str, fields: list[str]) -> None:
    frame = text(",".join([kind, *fields]))
    codec = H02Codec(now=lambda: CLOCK)
    assert codec.frames(frame) == [frame]
    assert_plausible(H02Codec(now=lambda: CLOCK).feed(frame))


@settings(max_examples=300, deadline=None, database=None)
@given(body=st.binary(min_size=31, max_size=31))
def test_any_binary_record_decodes_safely(body: bytes) -> None:
    messages, _ = decode(b"$" + bytes.fromhex("4106011660") + body[5:])
    assert len(messages) <= 1
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([data(v) for v in H02.values()] or [location()]),
            st.binary(max_size=40),
            st.sampled_from([b"*", b"$", b"X", b"#", b"\r\n", record()]),
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
        return H02Codec(max_frame_bytes=512, now=lambda: CLOCK)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
