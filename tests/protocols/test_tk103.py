"""TK103 codec: the shared vectors, then hand-made frames for what the vectors do not show.

Vectors: ``vectors/tk103.jsonl`` and ``tk103.frames.jsonl`` beside /work/shared/PROTOCOLS.md
(set TRACKER_VECTORS to another directory), real packets from traccar's decoder tests
(traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently checked expectations. Each
vector is named by its line in Tk103ProtocolDecoderTest.java (``L120``).

TK103 has no checksum: ``accept_bad_crc`` changes nothing and no vector needs it.

Where we deliberately differ from traccar or a vector, the tables below say so: DEVICE_IDS
and TIMES (frames traccar's regex misreads), COMMANDS (the vectors' ``cmd`` is traccar's
``sentence[13:17]``, not the command, in the comma layout), NOT_DECODED, and the splitting
cases where traccar keeps leading garbage in its buffer (GARBAGE_KEPT_BY_TRACCAR).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import Codec
from protocols.errors import ProtocolError
from protocols.messages import ALARMS, ATTRIBUTES, Heartbeat, Login, Message, Other, Position
from protocols.tk103 import Tk103Codec
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

TK103 = {line(v): v for v in load("tk103.jsonl")}
FRAMES = load("tk103.frames.jsonl")

# Ids traccar reads as the first 12 characters of the frame, "(" included, or up to a comma.
DEVICE_IDS = {
    "L93": "01602009983",  # an 11-character id before "BR00"
    "L139": "01029131573",
    "L68": "357593060760397",  # an IMEI before "BP02"; traccar keeps "BP02" in the id
}
# L68 has the classic layout (no comma after the id), whose dates are YYMMDD: 2017-03-04.
# Traccar reads its comma alternative, hence DDMMYY: 2004-03-17.
TIMES = {"L68": "2017-03-04T09:44:55Z"}
COMMANDS = {
    "L53": "DW5B", "L68": "BP02", "L102": "ZC20", "L114": "ZC20", "L117": "ZC20",
    "L212": "ZC20", "L215": "DW51", "L218": "DW5B", "L221": "DW50", "L224": "DW50",
    "L227": "ZC03", "L230": "ZC03",
}  # fmt: skip
NOT_DECODED = {"L17": "BS50 OBD data (traccar: batteryTemp2) is kept as text"}
# What we make of the vectors traccar turns into positions without a fix of their own.
OTHER_KINDS: dict[str, list[type]] = {
    "L24": [Login],  # BP05 with cells: the login, no fix
    **{key: [Heartbeat] for key in ("L102", "L114", "L117", "L212")},  # ZC20 battery
    "L105": [Other],  # date 000007: dropped (bad_time)
    "L108": [Heartbeat],  # BO01 SOS dated 06-18-30: the alarm without its fix (bad_time)
}  # fmt: skip
# Traccar keeps garbage before a "(" until a frame completes; we skip and count it at once.
GARBAGE_KEPT_BY_TRACCAR = {"L32", "L40"}
TRACCAR_ALARMS = {"overspeed": "overspeed", "sos": "sos"}


def data(vector: dict[str, Any]) -> bytes:
    return str(vector["data"]).encode()


def vectors(where: Any = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in TK103.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def decode(frame: bytes, **options: Any) -> tuple[list[Message], Tk103Codec]:
    codec = Tk103Codec(**options)
    return codec.feed(frame), codec


def classic(kind: str, data: str, uid: str = "013666666666") -> bytes:
    return f"({uid}{kind}{data})".encode()


FIX = "110925A1234.5678N01234.5678W012.3025948118.7201000000L000024DE"


def comma(kind: str, uid: str = "013632651491") -> bytes:
    return f"({uid},{kind},040613,A,2234.0297N,11405.9101E,000.0,040137,178.48)".encode()


# --- the vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [
        c.encode() if case["encoding"] == "text" else bytes.fromhex(c) for c in case["chunks"]
    ]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = Tk103Codec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    remaining = bytes.fromhex(case["expect"]["remaining"])
    if line(case) in GARBAGE_KEPT_BY_TRACCAR:
        start = remaining.find(b"(")
        remaining = b"" if start < 0 else remaining[start:]
    assert codec.pending == remaining


@vectors()
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = Tk103Codec()
    assert codec.frames(data(vector)) == [data(vector)]
    assert codec.pending == b""


@vectors()
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector))
    ack = vector["expect"]["ack_text"]
    # on the last message of the frame: the login's fix is stored before it is answered
    assert [m.reply for m in messages] == [None] * (len(messages) - 1) + [
        None if ack is None else ack.encode()
    ]


def kinds(vector: dict[str, Any]) -> list[type]:
    if line(vector) in OTHER_KINDS:
        return OTHER_KINDS[line(vector)]
    if vector["kind"] == "position":
        return [Login, Position] if vector["expect"]["cmd"] == "BP05" else [Position]
    return [Heartbeat] if vector["kind"] == "login" else [Other]  # "login": BP00 handshakes


@vectors()
def test_vector_messages(vector: dict[str, Any]) -> None:
    messages, codec = decode(data(vector))
    assert [type(m) for m in messages] == kinds(vector)
    uid = DEVICE_IDS.get(line(vector), vector["expect"].get("device_id"))
    assert all(m.unique_id == uid for m in messages) or uid is None
    assert all(m.unique_id for m in messages)
    command = COMMANDS.get(line(vector), vector["expect"]["cmd"])
    assert all(m.raw["type"] == command for m in messages)
    unknown = command == "BQ86"  # traccar: null
    assert codec.stats == ({"unknown_type": 1} if unknown else {}) | (
        {"bad_time": 1} if line(vector) in ("L105", "L108") else {}
    )


@vectors(where=lambda v: "time" in v["expect"])
def test_vector_fix(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector))
    position, expect = messages[-1], vector["expect"]
    assert isinstance(position, Position)
    assert position.fix_time == datetime.fromisoformat(TIMES.get(line(vector), expect["time"]))
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.speed_kmh == expect["speed_kmh"]
    assert position.course_deg == expect["course"]
    assert position.valid is expect["valid"]
    if "ignition" in expect:
        assert position.attributes["ignition"] is expect["ignition"]
    assert set(position.attributes) <= ATTRIBUTES


@vectors(where=lambda v: "traccar_attribute" in v["expect"] and line(v) not in NOT_DECODED)
def test_vector_attribute(vector: dict[str, Any]) -> None:
    messages, _ = decode(data(vector))
    message = messages[-1]
    for key, value in vector["expect"]["traccar_attribute"].items():
        if key == "alarm":
            assert isinstance(message, Position)
            assert {a for a in ALARMS if message.attributes.get(a)} == {TRACCAR_ALARMS[value]}
        else:  # vin, fuel
            assert message.raw[key] == value


@vectors(where=lambda v: line(v) in NOT_DECODED)
def test_obd_data_is_kept_as_text(vector: dict[str, Any]) -> None:
    [other], _ = decode(data(vector))
    assert isinstance(other, Other)
    assert other.raw["text"] == data(vector)[17:-1].decode()


# --- hand-made frames ---------------------------------------------------------------------


def test_login_with_a_fix_is_answered_after_the_fix() -> None:
    messages, _ = decode(classic("BP05", "000013666666666" + FIX))
    login, position = messages
    assert login == Login("013666666666", raw={"type": "BP05"})
    assert position == Position(
        "013666666666",
        datetime(2011, 9, 25, 2, 59, 48, tzinfo=UTC),
        12 + 34.5678 / 60,
        -(12 + 34.5678 / 60),
        valid=True,
        speed_kmh=12.3,
        course_deg=118.72,
        attributes={"ignition": True, "odometer_m": 0x24DE},
        raw={"type": "BP05", "data": "000013666666666", "charge": 0, "io": "000", "fuel": 0},
        reply=b"(013666666666AP05)",
    )


def test_handshake_is_a_heartbeat_and_answered() -> None:
    [heartbeat], _ = decode(b"(087073005534BP00HSO)")
    assert heartbeat == Heartbeat(
        "087073005534", b"(087073005534AP01HSO)", {}, {"type": "BP00", "data": "HSO"}
    )


def test_comma_layout_is_not_answered() -> None:
    messages, _ = decode(comma("BP05"))
    assert [type(m) for m in messages] == [Login, Position]
    assert [m.reply for m in messages] == [None, None]


@pytest.mark.parametrize(
    ("digit", "alarm", "raw"),
    [
        (1, None, "accident"),
        (2, "sos", "sos"),
        (3, "vibration", "vibration"),
        (4, None, "low_speed"),
        (5, "overspeed", "overspeed"),
        (6, None, "geofence_exit"),
    ],
)
def test_bo01_alarm_digit(digit: int, alarm: str | None, raw: str) -> None:
    [position], _ = decode(classic("BO01", f"{digit}{FIX}"))
    assert isinstance(position, Position)
    assert {a for a in ALARMS if position.attributes.get(a)} == ({alarm} if alarm else set())
    assert position.raw["alarm"] == raw
    assert position.reply is None


@pytest.mark.parametrize(
    ("kind", "attributes", "raw"),
    [
        ("ZC13", {"power_cut": True}, "power_cut"),
        ("DW33", {"power_cut": True}, "power_cut"),
        ("ZC17", {"removed": True}, "removing"),
        ("ZC25", {"sos": True}, "sos"),
        ("ZC26", {"removed": True}, "tampering"),
        ("ZC12", {"low_battery": True}, "low_battery"),
        ("ZC11", {}, "movement"),
        ("ZC15", {"ignition": True}, None),
        ("ZC16", {"ignition": False}, None),
        ("ZC07", {}, None),
    ],
)
def test_event_commands(kind: str, attributes: dict[str, Any], raw: str | None) -> None:
    [position], _ = decode(comma(kind))
    assert isinstance(position, Position)
    assert position.attributes == attributes
    assert position.raw.get("alarm") == raw


def test_event_with_cells_but_no_fix_is_a_heartbeat() -> None:
    frame = b"(013632651491,DW53,460,0,0,6,0,040613,040137)"
    [heartbeat], _ = decode(frame)
    assert heartbeat == Heartbeat(
        "013632651491",
        None,
        {"power_cut": True},
        {"type": "DW53", "text": "460,0,0,6,0,040613,040137", "alarm": "power_cut"},
    )


def test_battery_report() -> None:
    [heartbeat], _ = decode(
        data(TK103["L102"])
    )  # (013632651491,ZC20,180716,144222,6,392,65535,255)
    assert heartbeat == Heartbeat(
        "013632651491",
        None,
        {"battery_pct": 100, "battery_v": 3.92},
        {"type": "ZC20", "level": 6, "installed": 255},
    )


def test_command_result_keeps_its_text() -> None:
    [other], _ = decode(data(TK103["L230"]))
    assert isinstance(other, Other)
    assert other.raw["result"].startswith("1 .Sensor sensitivity: 1\r\n")
    assert other.raw["result"].endswith("Power: 95%")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (
            classic("BR00", "110925A9134.5678N01234.5678W012.3025948118.7201000000L0"),
            "bad_position",
        ),
        (
            classic("BR00", "110925A1234.5678N01264.5678W012.3025948118.7201000000L0"),
            "bad_position",
        ),
        (
            classic("BR00", "110925A1234.5678N01234.5678W012.3025948418.7201000000L0"),
            "bad_position",
        ),
        (classic("BR00", "110231A1234.5678N01234.5678W012.3025948118.7201000000L0"), "bad_time"),
        (classic("BR00", "110925A1234.5678N01234.5678W012.3025968118.7201000000L0"), "bad_time"),
    ],
    ids=["lat", "minutes", "course", "date", "second"],
)
def test_implausible_fix_is_dropped_and_counted(frame: bytes, reason: str) -> None:
    messages, codec = decode(frame)
    assert [type(m) for m in messages] == [Other]
    assert codec.stats == {reason: 1}


def test_unknown_command_is_counted() -> None:
    messages, codec = decode(classic("BX42", "whatever"))
    assert messages == [Other("013666666666", "BX42", None, {"type": "BX42", "text": "whatever"})]
    assert codec.stats == {"unknown_type": 1}


def test_accept_bad_crc_changes_nothing() -> None:
    stream = b"".join(data(v) for v in TK103.values())
    assert Tk103Codec(accept_bad_crc=True).feed(stream) == Tk103Codec().feed(stream)


def test_free_text_may_hold_parentheses() -> None:
    frame = b"(864555555555555,ZC03,191117,234207,$set to 240 minute(s)) (ok)$)"
    codec = Tk103Codec()
    assert [f for b in frame for f in codec.frames(bytes([b]))] == [frame]


def test_garbage_before_and_between_frames_is_skipped() -> None:
    # ")" alone, "(" that a new "(" follows, "(" with a control byte: no frames
    stream = b"\x00)ab(x" + comma("ZC07") + b"\r\n(\x01" + classic("BO01", "2" + FIX)
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = Tk103Codec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Position]
        assert codec.stats == {"garbage_bytes": 8}  # CR/LF between frames is not garbage


def test_endless_garbage_closes_the_connection() -> None:
    codec = Tk103Codec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


@pytest.mark.parametrize("start", [b"(0136", b"(0136,ZC03,$"], ids=["frame", "free-text"])
def test_frame_without_end_closes_the_connection(start: bytes) -> None:
    codec = Tk103Codec(max_frame_bytes=1024)
    codec.feed((start + b")" * start.endswith(b"$")).ljust(1023, b"1"))  # within the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"1")


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(data(v) for v in TK103.values())
    whole = Tk103Codec()
    bytewise = Tk103Codec()
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


# --- properties -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(
    kind=st.sampled_from(["BR00", "BP05", "BO01", "BQ81", "BP00", "BZ00", "BV00"]),
    body=st.text(st.sampled_from("0123456789.,ABLNSEWV $"), max_size=80),
)
def test_any_classic_frame_decodes_safely(kind: str, body: str) -> None:
    frame = classic(kind, body)
    codec = Tk103Codec()
    if body.count("$") % 2 == 0:
        assert codec.frames(frame) == [frame]
    assert_plausible(Tk103Codec().feed(frame))


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([data(v) for v in TK103.values()] or [comma("ZC07")]),
            st.binary(max_size=40),
            st.sampled_from([b"(", b")", b"$", b",", b"\r\n"]),
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
        return Tk103Codec(max_frame_bytes=512)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
