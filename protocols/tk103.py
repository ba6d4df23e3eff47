"""TK103 (Xexun-style ASCII), sans-I/O.

Sources: PROTOCOLS.md section 6, read from traccar's Tk103 decoders and their tests (no vendor
document); where traccar's regex misreads a frame, the layout the frame itself shows.

Frames are ASCII from ``(`` to ``)``; a ``)`` inside a ``$...$`` free text (command results)
does not end a frame. Two layouts, the unit's id in every frame::

    (<id: 12 chars><command: 4>[data]YYMMDD A|V ddmm.mmmmN|S dddmm.mmmmE|W <km/h: 5> hhmmss
        <course: 6> <charge><ignition><io><io><io><fuel: 3 hex> L<odometer m, hex> ...)
    (<id>,<command>,DDMMYY,A|V,ddmm.mmmmN|S,dddmm.mmmmE|W,<km/h>,hhmmss,<course>,...)

e.g. ``(088047365460BR00151024A2555.3531S02855.3329E004.7055148276.1701000000L00009AA3)``.
Some units send a shorter (11) or longer (IMEI) id before the command. Times are UTC.

Commands: ``BP00`` handshake, answered ``(<id>AP01HSO)``; ``BP05`` login (with a fix, or
cells), answered ``(<id>AP05)``; ``BO01`` + digit alarm; ``BQ81,ALARM,<n>`` alarm; ``BR0x``
fixes; ``ZCxx`` / ``DW3x`` / ``DW5x`` events (alarms, ignition); ``ZC20`` battery; ``ZC03``
command result; ``BZ00`` / ``DW5x`` cells and WiFi; ``BV00`` VIN. Traccar answers nothing
else, and nothing in the comma layout (its reply takes the id from a fixed position).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Login, Message, Other, Position

START, STOP, FREE_TEXT = 0x28, 0x29, 0x24  # "(", ")", "$"

HANDSHAKE, LOGIN = "BP00", "BP05"

# BO01 + digit and BQ81,ALARM,<n> [T:Tk103ProtocolDecoder.decodeAlarm/decodeType]
ALARM_DIGITS = {
    1: "accident", 2: "sos", 3: "vibration", 4: "low_speed", 5: "overspeed", 6: "geofence_exit"
}  # fmt: skip
BQ81_ALARMS = {
    0: "low_battery", 1: "overspeed", 2: "idle", 3: "acceleration", 4: "braking", 5: "temperature"
}  # fmt: skip
# Event commands: ZCxx in one model series, DW3x and DW5x (with cells) in others.
EVENTS = {
    **dict.fromkeys(("ZC11", "DW31", "DW51"), "movement"),
    **dict.fromkeys(("ZC12", "DW32", "DW52"), "low_battery"),
    **dict.fromkeys(("ZC13", "DW33", "DW53"), "power_cut"),
    **dict.fromkeys(("ZC17", "DW37", "DW57"), "removing"),
    **dict.fromkeys(("ZC25", "DW3E", "DW5E"), "sos"),
    **dict.fromkeys(("ZC26", "DW3F", "DW5F"), "tampering"),
    **dict.fromkeys(("ZC27", "DW40", "DW60"), "low_power"),
}
IGNITION_EVENTS = {
    **dict.fromkeys(("ZC15", "DW35", "DW55", "ZC29", "DW42", "DW62"), True),
    **dict.fromkeys(("ZC16", "DW36", "DW56"), False),
}
# The alarms above that have a normalised attribute; the others stay in raw["alarm"].
NORMALISED_ALARMS = {
    "sos": "sos", "vibration": "vibration", "overspeed": "overspeed", "low_battery": "low_battery",
    "power_cut": "power_cut", "removing": "removed", "tampering": "removed",
}  # fmt: skip
BATTERY_LEVELS = {6: 100, 5: 80, 4: 50, 3: 20, 2: 10}  # ZC20 level -> % (traccar)
NOT_AVAILABLE = 65535  # ZC20: no voltage measured
OBD = frozenset({"BS50", "BS51"})  # OBD data blocks: kept as text

_SPECIAL = re.compile(rb"[$()\x00-\x08\x0b\x0c\x0e-\x1f]")  # what framing looks at
_COMMA = re.compile(r"([0-9A-Za-z]+),([A-Z]{2}[0-9A-F]{2}),?(.*)", re.DOTALL)
_CLASSIC = re.compile(r"([0-9A-Za-z]{12})(B[A-Z][0-9]{2})(.*)", re.DOTALL)
_CLASSIC_OTHER_ID = re.compile(r"([0-9A-Za-z]{1,20}?)(B[A-Z][0-9]{2})(.*)", re.DOTALL)
_FIX = re.compile(
    r"(?P<data>[0-9]*|,[^()]*?,)"  # BP05: the IMEI; BO01: the alarm digit; ",ALARM,1,164,"
    r"(?P<date>[0-9]{6}),?(?P<valid>[AV]),?"
    r" *(?P<lat>[0-9]*[0-9]{2}\.[0-9]+)(?P<north>[NS]),?"
    r" *(?P<lon>[0-9]*[0-9]{2}\.[0-9]+)(?P<east>[EW]),?"
    r"(?P<speed>[ 0-9.]{1,5})(?:[0-9]*,)?"
    r"(?P<time>[0-9]{6}),?"
    r"(?:(?:(?P<course>[ 0-9.]{6})|(?P<course2>[0-9]{2})),?"
    r"(?P<io>[01][01][0-9A-F]{6})L(?P<odometer>[0-9A-F]+)"
    r"|(?P<course3>[0-9]+\.[0-9]+))?"
    r"(?P<rest>.*)",
    re.DOTALL,
)
_DIGIT = re.compile(r"[0-9]")
_BQ81_ALARM = re.compile(r",ALARM,([0-9]),")
_TEMPERATURE = re.compile(r"[+-][0-9]{3}\.[0-9]$")
_BATTERY = re.compile(r"([0-9]{6}),([0-9]{6}),([0-9]+),([0-9]+),([0-9]+),([0-9]+).*", re.DOTALL)


class Header(NamedTuple):
    uid: str
    kind: str  # the command
    data: str  # what follows the command
    comma: bool  # the comma layout


class Dropped(Exception):
    """A frame's data is unusable: count ``reason``; ``fallback`` still answers the unit."""

    def __init__(self, reason: str, fallback: Message) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback


class Tk103Codec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "tk103"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 2048,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """TK103 has no checksum and no reply with the time: ``accept_bad_crc`` and ``now``
        are accepted for the common interface and ignored."""
        self.stats: Counter[str] = Counter()
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._garbage_run = 0  # bytes skipped since the last frame

    @property
    def pending(self) -> bytes:
        """Bytes kept for the next ``feed``: the start of an incomplete frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the stream; return the messages it completed.

        Raises:
            ProtocolError: no frame start, or no frame end, within ``max_frame_bytes``.
        """
        return [message for frame in self.frames(data) for message in self._decode(frame)]

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the frames ``data`` completed, garbage skipped."""
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while (pos := self._skip_garbage(pos)) < len(buf):
                found = frame_end(buf, pos, self._max_frame_bytes)
                if found is None:
                    break
                end, complete = found
                if not complete:  # a "(" that begins no frame
                    self._skipped(pos, end)
                    pos = end
                    continue
                frames.append(bytes(buf[pos:end]))
                self._garbage_run = 0
                pos = end
        finally:
            del buf[:pos]
        return frames

    def _skip_garbage(self, pos: int) -> int:
        start = self._buffer.find(b"(", pos)
        start = len(self._buffer) if start < 0 else start
        self._skipped(pos, start)
        return start

    def _skipped(self, start: int, end: int) -> None:
        newlines = self._buffer.count(b"\r", start, end) + self._buffer.count(b"\n", start, end)
        if end - start > newlines:  # CR/LF between frames is not garbage
            self.stats["garbage_bytes"] += end - start - newlines
        self._garbage_run += end - start
        if self._garbage_run > self._max_frame_bytes:
            raise ProtocolError(f"tk103: no frame in {self._garbage_run} bytes")

    def _decode(self, frame: bytes) -> list[Message]:
        header = split_frame(frame)
        if header is None:
            self.stats["bad_header"] += 1  # no id and command we can read
            return []
        decoder = DECODERS.get(header.kind, decode_location)
        try:
            messages = decoder(header)
        except Dropped as drop:
            self.stats[drop.reason] += 1
            messages = [drop.fallback]
        if (reply := reply_to(header)) is not None:  # on the last: all of them are handled
            messages[-1] = replace(messages[-1], reply=reply)
        return messages


def frame_end(buf: bytearray, start: int, max_frame_bytes: int) -> tuple[int, bool] | None:
    """Where the frame beginning at ``start`` ends, None until more bytes arrive.

    ``(end, True)``: a frame ends before ``end``. ``(end, False)``: the bytes before ``end``
    are no frame: a control byte (frames are text), or a ``(`` outside a free text before the
    ``)`` (a new frame begins there). The choice depends only on the bytes up to ``end``.

    Raises:
        ProtocolError: no end within ``max_frame_bytes``.
    """
    free_text = False
    for found in _SPECIAL.finditer(buf, start + 1, start + max_frame_bytes):
        byte, at = buf[found.start()], found.start()
        if byte == FREE_TEXT:
            free_text = not free_text
        elif byte not in (START, STOP):
            return at + 1, False
        elif not free_text:
            return (at + 1, True) if byte == STOP else (at, False)
    if len(buf) - start >= max_frame_bytes:
        raise ProtocolError(f"tk103: no frame end in {max_frame_bytes} bytes")
    return None


def split_frame(frame: bytes) -> Header | None:
    """The id, the command and its data, in either layout; None if neither fits."""
    text = frame[1:-1].decode("utf-8", "replace")
    if (match := _COMMA.fullmatch(text)) is not None:
        uid, kind, data = match.groups()
        return Header(uid, kind, data, comma=True)
    if (match := _CLASSIC.fullmatch(text) or _CLASSIC_OTHER_ID.fullmatch(text)) is not None:
        uid, kind, data = match.groups()
        return Header(uid, kind, data, comma=False)
    return None


def reply_to(header: Header) -> bytes | None:
    """BP00 -> ``(<id>AP01HSO)``, BP05 -> ``(<id>AP05)``; the comma layout gets none."""
    if header.comma:
        return None
    if header.kind == HANDSHAKE:
        return f"({header.uid}AP01HSO)".encode()
    if header.kind == LOGIN:
        return f"({header.uid}AP05)".encode()
    return None


def event(header: Header, data: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The alarm or ignition a command (and its data) reports: attributes and raw values."""
    alarm = EVENTS.get(header.kind)
    if header.kind == "BO01" and (digit := _DIGIT.match(data)):
        alarm = ALARM_DIGITS.get(int(digit.group()))
    elif header.kind == "BQ81" and (digit := _BQ81_ALARM.match(data)):
        alarm = BQ81_ALARMS.get(int(digit.group(1)))
    attributes: dict[str, Any] = {}
    if header.kind in IGNITION_EVENTS:
        attributes["ignition"] = IGNITION_EVENTS[header.kind]
    if alarm is None:
        return attributes, {}
    if alarm in NORMALISED_ALARMS:
        attributes[NORMALISED_ALARMS[alarm]] = True
    return attributes, {"alarm": alarm}


def read_coordinate(value: str, hemisphere: str, limit: int) -> float:
    """``[d]ddmm.mmmm`` and N|S or E|W as degrees. Raises ValueError if out of range."""
    point = value.index(".")
    degrees, minutes = int(value[: point - 2] or 0), float(value[point - 2 :])
    result = degrees + minutes / 60
    if minutes >= 60 or result > limit:
        raise ValueError(value)
    return -result if hemisphere in "SW" else result


def read_time(date: str, clock: str, *, day_first: bool) -> datetime:
    """YYMMDD (DDMMYY in the comma layout) and hhmmss. Raises ValueError if not a time."""
    yy, mm, dd = (date[4:], date[2:4], date[:2]) if day_first else (date[:2], date[2:4], date[4:])
    hh, mi, ss = int(clock[:2]), int(clock[2:4]), int(clock[4:])
    return datetime(2000 + int(yy), int(mm), int(dd), hh, mi, ss, tzinfo=UTC)


def decode_location(header: Header) -> list[Message]:
    """A fix, with the event its command reports; BP05 is also the unit's login."""
    uid, kind = header.uid, header.kind
    login: list[Message] = [Login(uid, raw={"type": kind})] if kind == LOGIN else []
    match = _FIX.fullmatch(header.data)
    if match is None:  # a login without a fix (cells), or a message we cannot read
        if login:
            return login
        raise Dropped("unknown_type", Other(uid, kind, raw={"type": kind, "text": header.data}))
    fix = match.groupdict()
    attributes, raw = event(header, fix["data"])
    raw = {"type": kind} | raw
    if fix["data"]:
        raw["data"] = fix["data"]
    fallback = login or [
        Heartbeat(uid, None, attributes, raw) if attributes else Other(uid, kind, raw=raw)
    ]
    try:
        lat = read_coordinate(fix["lat"], fix["north"], 90)
        lon = read_coordinate(fix["lon"], fix["east"], 180)
        speed = float(fix["speed"])
        course = float(fix["course"] or fix["course2"] or fix["course3"] or 0)
        if course > 360:
            raise ValueError(course)
    except ValueError:
        raise Dropped("bad_position", fallback[0]) from None
    try:
        fix_time = read_time(fix["date"], fix["time"], day_first=header.comma)
    except ValueError:
        raise Dropped("bad_time", fallback[0]) from None
    if fix["io"]:  # charge, ignition, 3 io nibbles, fuel (hex); then the odometer
        io = fix["io"]
        attributes = {"ignition": io[1] == "1"} | attributes
        attributes["odometer_m"] = float(int(fix["odometer"], 16))
        raw |= {"charge": int(io[0]), "io": io[2:5], "fuel": int(io[5:], 16)}
    rest = fix["rest"]
    if (temperature := _TEMPERATURE.search(rest)) is not None:
        raw["temperature"] = float(temperature.group())
        rest = rest[: temperature.start()]
    if rest:
        raw["extra"] = rest
    position = Position(
        uid, fix_time, lat, lon, fix["valid"] == "A", speed, course,
        attributes=attributes, raw=raw,
    )  # fmt: skip
    return [*login, position]


def decode_handshake(header: Header) -> list[Message]:
    """BP00: the unit is alive (and waits for AP01)."""
    return [Heartbeat(header.uid, raw={"type": header.kind, "data": header.data})]


def decode_battery(header: Header) -> list[Message]:
    """ZC20: date, time, battery level (2-6), battery (10 mV), power (100 mV), installed."""
    raw: dict[str, Any] = {"type": header.kind}
    match = _BATTERY.fullmatch(header.data)
    if match is None:
        raise Dropped("bad_format", Other(header.uid, header.kind, raw=raw | {"text": header.data}))
    level, battery, power, installed = (int(v) for v in match.groups()[2:])
    attributes: dict[str, Any] = {}
    if level in BATTERY_LEVELS:
        attributes["battery_pct"] = BATTERY_LEVELS[level]
    if battery != NOT_AVAILABLE:
        attributes["battery_v"] = battery / 100
    if power != NOT_AVAILABLE:
        attributes["external_power_v"] = power / 10
    raw |= {"level": level, "installed": installed}
    return [Heartbeat(header.uid, None, attributes, raw)]


def decode_info(header: Header) -> list[Message]:
    """Cells and WiFi (BZ00, DW5x), VIN (BV00), command results (ZC03), OBD data: text.

    A DW5x event (an alarm, ignition) with cells but no fix is a heartbeat.
    """
    raw = {"type": header.kind, "text": header.data}
    if header.kind == "BV00":
        raw["vin"] = header.data[:17]
    elif header.kind == "ZC03" and "$" in header.data:
        raw["result"] = header.data.split("$")[1]
    attributes, alarm = event(header, "")
    if attributes:
        return [Heartbeat(header.uid, None, attributes, raw | alarm)]
    return [Other(header.uid, header.kind, None, raw | alarm)]


Decoder = Callable[[Header], list[Message]]

DECODERS: dict[str, Decoder] = {
    HANDSHAKE: decode_handshake,
    "ZC20": decode_battery,
    **dict.fromkeys(("BZ00", "BV00", "ZC03", *OBD), decode_info),
    **{f"DW5{digit:X}": decode_info for digit in range(16)},
}
