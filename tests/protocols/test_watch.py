"""Watch ("3G") codec: the shared vectors, then hand-made frames for what they do not show.

Vectors: ``vectors/watch.jsonl`` and ``watch.frames.jsonl`` beside /work/shared/PROTOCOLS.md
(set TRACKER_VECTORS to another directory), real packets from traccar's
WatchProtocolDecoderTest (traccar/traccar 9e5c458ad0bf, Apache-2.0) with independently
checked expectations; each is named by its line there (``L20``). The protocol has no
checksum: no vector needs ``accept_bad_crc``.

Where we deliberately differ from traccar, the tables below say so: ALARMS_NOT_NORMALISED
(traccar's "general" and "fallDown" have no name in our vocabulary) and HEALTH_VALUES
(blood oxygen and temperature are kept raw). L45 is six voice frames in one packet.
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
from protocols.watch import HEADER, WatchCodec, reply_frame, unescape
from tests.protocols.streams import assert_plausible, chunked, feed_all
from tests.protocols.vectors import line, load

WATCH = {line(v): v for v in load("watch.jsonl")}
FRAMES = load("watch.frames.jsonl")

VOICE = "L45"  # six JXTK voice frames back to back
LENGTH_WRONG = {
    "L55", "L58", "L64", "L79", "L91", "L100", "L103", "L119", "L122", "L125", "L140", "L144",
    "L147", "L150",
}  # fmt: skip
TRACCAR_ALARMS = {"sos": "sos", "removing": "removed", "lowBattery": "low_battery"}
# Traccar alarms without a name here: "general" is any AL without a status bit (the raw type
# says AL); "fallDown" is status bit 21 or 22 (kept in raw["status"]).
ALARMS_NOT_NORMALISED = {"general": None, "fallDown": 21}
# Health reports (blood oxygen, temperature): traccar attributes, kept raw in raw["values"].
HEALTH_VALUES = frozenset({"bloodOxygen", "temp1"})
POSITION = (  # after L48: fix, km/h, course, altitude, satellites, GSM %, battery %, steps,
    # tumbles, status, no cells, no WiFi
    "UD2,220322,055105,A,22.761162,N,114.360192,E,3.5,90,47,14,100,64,0,0,00000000,0,0"
)


def vectors(*, where: Callable[[dict[str, Any]], bool] = lambda v: True) -> pytest.MarkDecorator:
    chosen = [v for v in WATCH.values() if where(v)]
    return pytest.mark.parametrize("vector", chosen, ids=[line(v) for v in chosen])


def wire(vector: dict[str, Any]) -> bytes:
    if vector["encoding"] == "hex":
        return bytes.fromhex(vector["data"])
    return str(vector["data"]).encode()


def decode(data: bytes, **options: Any) -> tuple[list[Message], WatchCodec]:
    codec = WatchCodec(**options)
    return codec.feed(data), codec


def build(content: bytes | str, uid: str = "1234567890", index: str | None = None) -> bytes:
    data = content.encode() if isinstance(content, str) else content
    at = b"" if index is None else index.encode() + b"*"
    return b"[3G*" + uid.encode() + b"*" + at + f"{len(data):04X}*".encode() + data + b"]"


UD = build(POSITION).decode()


# --- the vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("case", FRAMES, ids=[f"case{n}" for n in range(len(FRAMES))])
@pytest.mark.parametrize("bytewise", [False, True], ids=["chunks", "bytewise"])
def test_stream_splits_as_expected(case: dict[str, Any], bytewise: bool) -> None:
    chunks = [bytes.fromhex(c) for c in case["chunks"]]
    if bytewise:
        chunks = [bytes([b]) for b in b"".join(chunks)]
    codec = WatchCodec()
    frames = [f.hex() for chunk in chunks for f in codec.frames(chunk)]
    assert frames == case["expect"]["frames"]
    assert codec.pending.hex() == case["expect"]["remaining"]


@vectors(where=lambda v: line(v) != VOICE)
def test_vector_is_one_frame(vector: dict[str, Any]) -> None:
    codec = WatchCodec()
    assert [f for b in wire(vector) for f in codec.frames(bytes([b]))] == [wire(vector)]
    assert codec.pending == b""


def test_length_field_is_not_trusted_for_framing() -> None:
    """14 vectors carry an LLLL that does not count their content; all frame alike."""

    def length_ok(vector: dict[str, Any]) -> bool:
        header = HEADER.match(wire(vector))
        assert header is not None
        return int(header[4], 16) == len(wire(vector)) - header.end() - 1

    wrong = {line(v) for v in WATCH.values() if line(v) != VOICE and not length_ok(v)}
    assert wrong == LENGTH_WRONG


def test_voice_frames_are_answered_and_kept_out_of_raw() -> None:
    data = wire(WATCH[VOICE])
    codec = WatchCodec()
    frames = codec.frames(data)
    assert len(frames) == 6
    assert b"".join(frames) == data
    for frame in frames:  # here LLLL counts the escaped content
        header = HEADER.match(frame)
        assert header is not None
        assert int(header[4], 16) == len(frame) - header.end() - 1
    messages, codec = decode(data)
    assert [m.raw["index"] for m in messages] == ["0034", "0035", "0036", "0037", "0038", "0039"]
    for message in messages:
        assert isinstance(message, Other)
        assert message.kind == "JXTK"
        assert message.reply == reply_frame(
            "ZJ", "789468050042692", message.raw["index"], "JXTKR,1"
        )
        assert set(message.raw) == {"type", "maker", "index", "data_bytes"}
    assert not codec.stats


@vectors(where=lambda v: line(v) != VOICE)
def test_vector_device_id_and_type(vector: dict[str, Any]) -> None:
    messages, codec = decode(wire(vector))
    assert [(m.unique_id, m.raw["type"]) for m in messages] == [
        (vector["expect"]["device_id"], vector["expect"]["type"])
    ]
    assert not codec.stats


@vectors(where=lambda v: "time" in v["expect"])
def test_vector_fix(vector: dict[str, Any]) -> None:
    [position], _ = decode(wire(vector))
    expect = vector["expect"]
    assert isinstance(position, Position)
    assert position.fix_time == datetime.fromisoformat(expect["time"])
    assert round(position.lat, 6) == expect["lat"]
    assert round(position.lon, 6) == expect["lon"]
    assert position.speed_kmh == expect["speed_kmh"]
    assert position.course_deg == expect["course"]
    assert position.valid is expect["valid"]
    assert set(position.attributes) <= ATTRIBUTES


@vectors(where=lambda v: "ack_text" in v["expect"] or "traccar_response" in v)
def test_vector_reply(vector: dict[str, Any]) -> None:
    messages, _ = decode(wire(vector))
    ack = vector["expect"].get("ack_text")
    expected = ack or (vector.get("traccar_response") or [None])[0]
    assert [m.reply for m in messages] == [None if expected is None else expected.encode()]


def raised(message: Message) -> set[str]:
    attributes = getattr(message, "attributes", {})
    return {name for name in ALARMS if attributes.get(name)}


@vectors(where=lambda v: v["expect"].get("alarm") in TRACCAR_ALARMS)
def test_vector_alarm(vector: dict[str, Any]) -> None:
    [position], _ = decode(wire(vector))
    assert raised(position) == {TRACCAR_ALARMS[vector["expect"]["alarm"]]}


@vectors(where=lambda v: v["expect"].get("alarm") in ALARMS_NOT_NORMALISED)
def test_alarms_we_do_not_name(vector: dict[str, Any]) -> None:
    [position], _ = decode(wire(vector))
    assert raised(position) == set()
    assert position.raw["type"].startswith("AL")
    bit = ALARMS_NOT_NORMALISED[vector["expect"]["alarm"]]
    status = int(position.raw["status"], 16)
    assert status >> bit & 1 if bit is not None else status == 0


@vectors(where=lambda v: "traccar_attribute" in v["expect"])
def test_health_values_are_kept_raw(vector: dict[str, Any]) -> None:
    [other], _ = decode(wire(vector))
    assert isinstance(other, Other)
    [(key, value)] = vector["expect"]["traccar_attribute"].items()
    assert key in HEALTH_VALUES
    assert float(other.raw["values"][-1]) == value


# --- hand-made frames ---------------------------------------------------------------------


def test_position_is_decoded() -> None:
    [position], codec = decode(UD.encode())
    assert position == Position(
        "1234567890",
        datetime(2022, 3, 22, 5, 51, 5, tzinfo=UTC),
        22.761162,
        114.360192,
        valid=True,
        speed_kmh=3.5,
        course_deg=90.0,
        altitude_m=47.0,
        satellites=14,
        attributes={"gsm_signal": 100, "battery_pct": 64},
        raw={"type": "UD2", "maker": "3G", "status": "00000000", "steps": "0", "wifi": []},
    )
    assert not codec.stats


@pytest.mark.parametrize(
    ("status", "attributes"),
    [
        ("00010000", {"sos": True}),
        ("00020000", {"low_battery": True}),
        ("00000001", {"low_battery": True}),
        ("00004000", {"power_cut": True}),
        ("00100000", {"removed": True}),
        ("00000010", {"motion": True}),
        ("00200000", {}),  # fall
        ("000C0006", {}),  # fences
        ("00110010", {"sos": True, "removed": True, "motion": True}),
    ],
)
def test_status_bits(status: str, attributes: dict[str, Any]) -> None:
    [position], _ = decode(build(POSITION.replace("UD2", "AL").replace("00000000", status)))
    assert isinstance(position, Position)
    states = {k: v for k, v in position.attributes.items() if k in ALARMS | {"motion"}}
    assert states == attributes
    assert position.reply == b"[3G*1234567890*0002*AL]"


@pytest.mark.parametrize(
    ("content", "reply"),
    [
        ("LK", "LK"),
        ("LK,0,10,100", "LK"),
        ("INIT,13800000000,1,0", "INIT,1"),
        ("TKQ", "TKQ"),
        ("TKQ2", "TKQ2"),
        ("UD_LTE,", None),
        ("heart,71", None),
        ("CONFIG,TY:g,UL:60", None),
    ],
)
def test_replies_echo_the_index_form(content: str, reply: str | None) -> None:
    for index in (None, "00A5"):
        [message], _ = decode(build(content, index=index))
        expected = None if reply is None else reply_frame("3G", "1234567890", index, reply)
        assert message.reply == expected
        assert message.unique_id == "1234567890"


def test_unknown_type_is_counted() -> None:
    [other], codec = decode(build("CONFIG,TY:g"))
    assert isinstance(other, Other)
    assert other.raw["values"] == ["TY:g"]
    assert codec.stats == {"unknown_type": 1}


def test_escaped_content_is_restored() -> None:
    assert unescape(b"}01}02}03}04}05}06") == b"}[],*}06"
    [other], _ = decode(build(b"TK,#!AMR}03}02}04}05}01\x00\xff"))
    assert isinstance(other, Other)
    assert other.raw == {"type": "TK", "maker": "3G", "data_bytes": 12}


def test_wifi_names_with_brackets_stay_in_their_frame() -> None:
    named = build(POSITION.removesuffix(",0") + ",1,[home] net,34:31:c4:c8:a9:22,-67")
    codec = WatchCodec()
    assert [f for b in named + UD.encode() for f in codec.frames(bytes([b]))] == [
        named,
        UD.encode(),
    ]
    [position], _ = decode(named)
    assert isinstance(position, Position)
    assert position.raw["wifi"] == [["34:31:c4:c8:a9:22", "-67"]]


def test_unterminated_frame_is_cut_at_the_next_header() -> None:
    stream = UD.encode()[:-1] + UD.encode()
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = WatchCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position]
        assert codec.stats == {"garbage_bytes": len(UD) - 1}


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("220322", "300222", "bad_time"),
        ("22.761162,N", "92.761162,N", "bad_position"),
        ("114.360192", "190.360192", "bad_position"),
        (",90,", ",400,", "bad_position"),
        (",00000000,0,0", "", "short_content"),
    ],
    ids=["day", "lat", "lon", "course", "short"],
)
def test_implausible_fix_is_dropped_and_counted(old: str, new: str, reason: str) -> None:
    content = POSITION.replace(old, new).replace("UD2", "AL")
    messages, codec = decode(build(content))
    assert [type(m) for m in messages] == [Other]
    assert messages[0].reply == b"[3G*1234567890*0002*AL]"  # an alarm is answered anyway
    assert codec.stats == {reason: 1}


def test_hemisphere_letters_and_signs() -> None:
    # the sign is kept as sent, S and W make it negative (L106, L109)
    for lat, ns, lon, ew, expected in [
        ("22.5", "S", "114.1", "W", (-22.5, -114.1)),
        ("-22.5", "N", "-114.1", "E", (-22.5, -114.1)),
        ("-22.5", "S", "-114.1", "W", (-22.5, -114.1)),
        (" 22.5", "", "114.1", "", (22.5, 114.1)),
    ]:
        content = POSITION.replace("22.761162,N,114.360192,E", f"{lat},{ns},{lon},{ew}")
        [position], _ = decode(build(content))
        assert isinstance(position, Position)
        assert (position.lat, position.lon) == expected


def test_garbage_before_and_between_frames_is_skipped() -> None:
    stream = b"\x00[[]x[3G*1" + UD.encode() + b"]\r\n" + build("LK")
    for chunks in ([stream], [bytes([b]) for b in stream]):
        codec = WatchCodec()
        messages = [m for chunk in chunks for m in codec.feed(chunk)]
        assert [type(m) for m in messages] == [Position, Heartbeat]
        assert codec.stats == {"garbage_bytes": 13}


def test_endless_garbage_closes_the_connection() -> None:
    codec = WatchCodec(max_frame_bytes=1024)
    codec.feed(bytes(1024))  # not yet over the limit
    with pytest.raises(ProtocolError):
        codec.feed(b"\x01")


def test_frame_without_end_closes_the_connection() -> None:
    codec = WatchCodec(max_frame_bytes=1024)
    start = b"[3G*1234567890*0400*TK,"
    codec.feed(start + b"\x00" * (1023 - len(start)))  # within the limit: waiting
    with pytest.raises(ProtocolError):
        codec.feed(b"\x00")


def test_one_byte_at_a_time_decodes_like_all_at_once() -> None:
    stream = b"".join(wire(v) for v in WATCH.values())
    whole = WatchCodec()
    bytewise = WatchCodec()
    assert [m for b in stream for m in bytewise.feed(bytes([b]))] == whole.feed(stream)
    assert bytewise.stats == whole.stats
    assert whole.pending == bytewise.pending == b""


# --- properties -------------------------------------------------------------------------


FIELD = st.one_of(
    st.sampled_from(["", "0", "A", "V", "N", "S", "E", "W", "00010000", "-1", " 9.5"]),
    st.from_regex(r"-?[0-9]{1,3}\.[0-9]{1,7}", fullmatch=True),
    st.from_regex(r"[0-9]{6}", fullmatch=True),
    st.text(alphabet="0123456789abcdef:.-", max_size=17),
)


@settings(max_examples=300, deadline=None, database=None)
@given(kind=st.sampled_from(["UD", "UD2", "AL", "WT", "LK", "heart"]), fields=st.lists(FIELD))
def test_any_report_decodes_safely(kind: str, fields: list[str]) -> None:
    built = build(",".join([kind, *fields]), index="0001")
    codec = WatchCodec()
    assert [f for b in built for f in codec.frames(bytes([b]))] == [built]
    messages, _ = decode(built)
    assert len(messages) == 1
    assert_plausible(messages)


@settings(max_examples=300, deadline=None, database=None)
@given(
    pieces=st.lists(
        st.one_of(
            st.sampled_from([wire(v) for v in WATCH.values()] or [UD.encode()]),
            st.binary(max_size=40),
            st.sampled_from([b"[", b"]", b"}", b"[3G*1*", b"[SG*12*0002*", b"*", b","]),
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
        return WatchCodec(max_frame_bytes=2048)

    whole = feed_all(codec, [stream])
    assert feed_all(codec, chunked(stream, cuts)) == whole
    assert_plausible(whole[0])
