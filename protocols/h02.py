"""H02 (Sinotrack and its many clones), text and binary in one stream, sans-I/O.

Sources: PROTOCOLS.md section 3: an H02 document excerpt (H02D), the traccar forum on the
status word (H02F), and traccar's H02 decoders for the variants seen in the field.

Text frames, ASCII from ``*`` to ``#`` (CR/LF after ``#`` skipped). The maker code varies
(HQ, TH, hq); the unit's id is in every frame, so every message carries it::

    *HQ,<id>,V1,hhmmss,A|V,DDMM.MMMM,N|S,DDDMM.MMMM,E|W,<knots>,<course>,DDMMYY,<status>[,...]#

Coordinates also come as ``-DD-MM.MMMM`` and ``DDMMmmmm`` (no point); the validity may be a
number (a coding scheme; traccar: valid) or empty (not valid); some units put a battery field
before the date, V19 puts phone and SIM fields before the status. Other types: ``V0``/``HTBT``
heartbeat, ``NBR`` (cells, no fix), ``LINK``, ``V3``, ``VP1``, ``V4`` (the unit's answer to a
command), ``SMS``.

Binary records, BCD, no checksum, of a fixed size::

    $ | id (5) | hh mm ss DD MM YY | lat DDMMmmmm (4) | battery (1) | lon DDDMMmmmm + flags (5)
      | knots (3 digits) course (3 digits) (3) | status (4) | 3 bytes                  = 32 bytes

Some models append 13 bytes (a cell): 45 bytes; some send the IMEI as an 8-byte id: 42.
Flags: bit 1 valid, bit 2 north, bit 3 east. ``X`` starts a 32-byte record of other models.
Whether records are 32 or 45 bytes long shows where the first one is followed directly by the
next frame: that record is handed on once the next frame begins, later ones at once.

Speeds are knots, converted to km/h here. Times are UTC [H02D]. The status word is active-low
[H02F]: bit 0 vibration, bit 1 or 18 SOS, bit 2 overspeed, bit 19 power cut; bit 10 is ignition,
set = on (traccar and the vectors; its "ACC off" flag is active-low too). Traccar reports only
the first alarm of the word; we report every one that is set.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Message, Other, Position

TEXT, ALT_BINARY = 0x2A, 0x58  # "*" and "X"; "$" begins the usual records
SHORT_RECORD, IMEI_RECORD, LONG_RECORD = 32, 42, 45
FOLLOWERS = b"*$X\r\n"  # what may follow a record directly: the next frame
KMH_PER_KNOT = 1.852

IGNITION_BIT = 10
STATUS_ALARMS = ((0, "vibration"), (1, "sos"), (18, "sos"), (2, "overspeed"), (19, "power_cut"))

_MARKER = re.compile(rb"[*$X]")
_TEXT_END = re.compile(rb"[#\x00-\x08\x0b\x0c\x0e-\x1f]")  # "#", or a byte no text frame holds
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?")
_HEX8 = re.compile(r"[0-9A-Fa-f]{8}")
_COORDINATE = (  # degrees, minutes[, 1/10000 minutes]
    re.compile(r"-([0-9]+)-([0-9]+\.[0-9]+)"),
    re.compile(r"([0-9]*)([0-9]{2}\.[0-9]+)"),  # "38.6508": no degrees
    re.compile(r"([0-9]+)([0-9]{2})([0-9]{4})"),
)
_STATUS = r"[0-9]{6},([0-9A-Fa-f]{8})(?:,.*)?"  # DDMMYY, status[, ...]
STATUS_REPORTS = {  # the text after the type
    # hhmmss, mcc, mnc, delay, count, (lac, cell, rssi) per cell
    "NBR": r"[0-9]{6},([0-9]+),([0-9]+),[0-9]+,[0-9]+,((?:[0-9]+,[0-9]+,-?[0-9]+,)+)",
    # hhmmss, rssi, satellites, battery %, steps, turnovers
    "LINK": r"[0-9]{6},([0-9]+),([0-9]+),([0-9]+),([0-9]+),([0-9]+),",
    # hhmmss, mcc + mnc, count, cells, battery (hex), reboots, X
    "V3": r"[0-9]{6},([0-9]{3})([0-9]+),[0-9]+,(.*),([0-9A-Fa-f]{4}),[0-9]+,X,",
}
_STATUS_REPORTS = {k: re.compile(v + _STATUS, re.DOTALL) for k, v in STATUS_REPORTS.items()}


class Sentence(NamedTuple):
    maker: str
    uid: str
    kind: str
    fields: list[str]  # after the type
    body: str  # the text after the type


class Fix(NamedTuple):
    time: datetime
    lat: float
    lon: float
    valid: bool
    speed_kmh: float
    course_deg: float


class Dropped(Exception):
    """A frame's data is unusable: count ``reason``; ``fallback`` still answers the unit."""

    def __init__(self, reason: str, fallback: Message | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback


class H02Codec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "h02"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 2048,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``accept_bad_crc`` is ignored (H02 has no checksum); ``now`` (default: the UTC
        clock) is read only for the V1 and NBR confirmations, which carry the server time."""
        self.stats: Counter[str] = Counter()
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._garbage_run = 0  # bytes skipped since the last frame
        self._short_records = False  # a 32-byte record was followed directly by a frame

    @property
    def pending(self) -> bytes:
        """Bytes kept for the next ``feed``: the start of an incomplete frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the stream; return the messages it completed.

        Raises:
            ProtocolError: no frame start, or a text frame without end, in ``max_frame_bytes``.
        """
        messages = []
        for frame in self.frames(data):
            if (message := self._decode(frame)) is not None:
                messages.append(message)
        return messages

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the frames ``data`` completed, garbage skipped."""
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while (pos := self._skip_garbage(pos)) < len(buf):
                end = self._frame_end(pos)
                if end is None:
                    break
                if end == pos:  # a marker byte that begins no frame
                    self._skipped(pos, pos + 1)
                    pos += 1
                    continue
                frames.append(bytes(buf[pos:end]))
                self._garbage_run = 0
                pos = end
        finally:
            del buf[:pos]
        return frames

    def _skip_garbage(self, pos: int) -> int:
        found = _MARKER.search(self._buffer, pos)
        start = len(self._buffer) if found is None else found.start()
        self._skipped(pos, start)
        return start

    def _skipped(self, start: int, end: int) -> None:
        newlines = self._buffer.count(b"\r", start, end) + self._buffer.count(b"\n", start, end)
        if end - start > newlines:  # CR/LF between frames is not garbage
            self.stats["garbage_bytes"] += end - start - newlines
        self._garbage_run += end - start
        if self._garbage_run > self._max_frame_bytes:
            raise ProtocolError(f"h02: no frame in {self._garbage_run} bytes")

    def _frame_end(self, pos: int) -> int | None:
        """Where the frame at ``pos`` ends; ``pos`` if it is no frame; None until more bytes.

        Every choice depends only on bytes of the stream, never on how it was chunked.
        """
        buf = self._buffer
        if buf[pos] == TEXT:
            found = _TEXT_END.search(buf, pos + 1, pos + self._max_frame_bytes)
            if found is not None:
                return found.end() if buf[found.start()] == ord("#") else pos
            if len(buf) - pos >= self._max_frame_bytes:
                raise ProtocolError(f"h02: no frame end in {self._max_frame_bytes} bytes")
            return None
        if len(buf) - pos < 16:
            return None
        if not _is_bcd(buf[pos + 1 : pos + 6]):  # the id: not a record
            return pos
        size = self._record_size(pos)
        if size is None or len(buf) - pos < size:
            return None
        return pos + size

    def _record_size(self, pos: int) -> int | None:
        """32, 42 (an 8-byte id: its time comes 3 bytes later) or 45 bytes.

        The first record tells 32 from 45 by the byte after its 32nd: the start of the next
        frame, or not. Once a unit sent a 32-byte record, its records end at 32 bytes.
        """
        buf = self._buffer
        if buf[pos] == ALT_BINARY:
            return SHORT_RECORD
        if not _clock_ok(buf[pos + 6 : pos + 12]) and _clock_ok(buf[pos + 9 : pos + 15]):
            return IMEI_RECORD
        if self._short_records:
            return SHORT_RECORD
        if len(buf) - pos <= SHORT_RECORD:
            return None
        if buf[pos + SHORT_RECORD] in FOLLOWERS:
            self._short_records = True
            return SHORT_RECORD
        return LONG_RECORD

    def _decode(self, frame: bytes) -> Message | None:
        try:
            if frame[0] == TEXT:
                return self._decode_text(frame)
            if frame[0] == ALT_BINARY:  # traccar ignores these too
                self.stats["unknown_type"] += 1
                return Other(frame[1:6].hex(), "X", None, {"type": "X", "data": frame.hex()})
            return decode_record(frame)
        except Dropped as drop:
            self.stats[drop.reason] += 1
            return drop.fallback

    def _decode_text(self, frame: bytes) -> Message:
        text = frame[1:-1].decode("utf-8", "replace")
        maker, _, text = text.partition(",")
        uid, _, text = text.partition(",")
        uid = uid.strip()
        if not uid:  # no id: nothing to file it under, nothing to answer
            raise Dropped("no_unique_id")
        kind, _, body = text.partition(",")
        sentence = Sentence(maker, uid, kind, body.split(","), body)
        decoder = DECODERS.get(kind) or (decode_location if kind.startswith("V") else None)
        if decoder is None:
            self.stats["unknown_type"] += 1
            return Other(uid, kind, None, {"type": kind, "text": body})
        return decoder(sentence, self._now)


def _is_bcd(data: bytes | bytearray) -> bool:
    return all(b >> 4 <= 9 and b & 0x0F <= 9 for b in data)


def _clock_ok(data: bytes | bytearray) -> bool:
    """Whether 6 bytes read as BCD hh mm ss DD MM YY."""
    if not _is_bcd(data):
        return False
    hh, mm, ss, day, month, _ = (int(f"{b:02x}") for b in data)
    return hh < 24 and mm < 60 and ss < 60 and 1 <= day <= 31 and 1 <= month <= 12


def confirmation(uid: str, kind: str, now: Callable[[], datetime]) -> bytes:
    """``*HQ,<id>,V4,<type>,<yyyyMMddHHmmss UTC>#``: traccar's answer to V1 and NBR."""
    return f"*HQ,{uid},V4,{kind},{now().astimezone(UTC):%Y%m%d%H%M%S}#".encode()


def read_time(clock: str, date: str) -> datetime:
    """``hhmmss`` and ``DDMMYY``. Raises Dropped if not a time."""
    if not (len(clock) == len(date) == 6 and _DIGITS.fullmatch(clock + date)):
        raise Dropped("bad_time")
    try:
        return datetime(
            2000 + int(date[4:]), int(date[2:4]), int(date[:2]),
            int(clock[:2]), int(clock[2:4]), int(clock[4:]), tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        raise Dropped("bad_time") from None


def read_coordinate(value: str, hemisphere: str, signs: str, limit: int) -> float:
    """Degrees from one of the three layouts and ``N|S`` or ``E|W``. Raises Dropped."""
    if hemisphere not in signs:
        raise Dropped("bad_position")
    for layout in _COORDINATE:
        if (match := layout.fullmatch(value)) is not None:
            degrees, minutes, *fraction = match.groups()
            arc = float(minutes) + (int(fraction[0]) / 10_000 if fraction else 0)
            result = int(degrees or 0) + arc / 60
            if arc >= 60 or result > limit:
                break
            return -result if hemisphere == signs[1] else result
    raise Dropped("bad_position")


def read_fix(fields: list[str]) -> tuple[Fix, list[str]]:
    """hhmmss, validity, lat, N|S, lon, E|W, knots, course, [battery,] DDMMYY; and the rest.

    Raises Dropped: ``bad_position`` if the position cannot be read, ``bad_time`` if the
    position can be read but not its time.
    """
    if len(fields) < 9:
        raise Dropped("bad_position")
    clock, validity, lat, north, lon, east, speed, course = fields[:8]
    latitude = read_coordinate(lat, north, "NS", 90)
    longitude = read_coordinate(lon, east, "EW", 180)
    speed, course = speed.strip(), course.strip() or "0"
    if not (_NUMBER.fullmatch(speed) and _NUMBER.fullmatch(course)) or float(course) > 360:
        raise Dropped("bad_position")
    at = 9 if len(fields) > 9 and len(fields[8]) != 6 and len(fields[9]) == 6 else 8
    valid = validity == "A" or bool(_DIGITS.fullmatch(validity))  # a number: coding scheme
    fix_time = read_time(clock, fields[at])
    fix = Fix(
        fix_time, latitude, longitude, valid, round(float(speed) * KMH_PER_KNOT, 3), float(course)
    )
    return fix, fields[at + 1 :]


def read_status(status: int) -> dict[str, Any]:
    """Ignition and the alarms of the status word (active-low)."""
    attributes: dict[str, Any] = {"ignition": bool(status >> IGNITION_BIT & 1)}
    for bit, alarm in STATUS_ALARMS:
        if not status >> bit & 1:
            attributes[alarm] = True
    return attributes


def battery_pct(value: int) -> int | None:
    """Traccar's reading of the battery byte: levels 1-6, or a percentage up to 100."""
    if 1 <= value <= 3:
        return (value - 1) * 10
    if 4 <= value <= 6:
        return (value - 1) * 20
    return value if 7 <= value <= 100 else None


def decode_location(s: Sentence, now: Callable[[], datetime]) -> Message:
    """V1 and the other ``V`` types. V1 is answered once its position can be read."""
    reply = confirmation(s.uid, "V1", now) if s.kind == "V1" else None
    raw: dict[str, Any] = {"type": s.kind}
    try:
        return make_position(s.uid, s.fields, raw, reply)
    except Dropped as drop:
        drop.fallback = Other(s.uid, s.kind, reply if drop.reason == "bad_time" else None, raw)
        raise


def decode_confirmation(s: Sentence, now: Callable[[], datetime]) -> Message:
    """V4, the unit's answer to a command: ``V4,<command>[,...],hhmmss,<fix>`` [H02D], the
    fix laid out as in V1 from its time to its status. Kept as text if it has no such fix."""
    fix, result = s.fields[-10:], ",".join(s.fields[:-10])
    if len(s.fields) > 10 and _HEX8.fullmatch(fix[-1]):
        with contextlib.suppress(Dropped):
            return make_position(s.uid, fix, {"type": s.kind, "result": result})
    return decode_info(s, now)


def make_position(
    uid: str, fields: list[str], raw: dict[str, Any], reply: bytes | None = None
) -> Position:
    """The fix, then the status word and whatever follows. Raises Dropped."""
    fix, rest = read_fix(fields)
    attributes: dict[str, Any] = {}
    # the status follows the date; V19 puts a blank, a phone number and the SIM id first
    status = next((field for field in rest[:4] if _HEX8.fullmatch(field)), None)
    if status is not None:
        raw["status"] = int(status, 16)
        attributes = read_status(raw["status"])
        rest = rest[rest.index(status) + 1 :]
    if rest:
        raw["extra"] = ",".join(rest)
    return Position(
        uid, fix.time, fix.lat, fix.lon, fix.valid, fix.speed_kmh, fix.course_deg,
        attributes=attributes, raw=raw, reply=reply,
    )  # fmt: skip


def decode_heartbeat(s: Sentence, now: Callable[[], datetime]) -> Message:
    """V0 / HTBT[,battery %]: echoed up to the type, as traccar does."""
    attributes = {}
    if _DIGITS.fullmatch(s.fields[0]) and int(s.fields[0]) <= 100:
        attributes["battery_pct"] = int(s.fields[0])
    return Heartbeat(s.uid, f"*{s.maker},{s.uid},{s.kind}#".encode(), attributes, {"type": s.kind})


def decode_status_report(s: Sentence, now: Callable[[], datetime]) -> Message:
    """NBR (cells), LINK (signal, battery), V3 (cells, battery): no fix, a status word."""
    match = _STATUS_REPORTS[s.kind].fullmatch(s.body)
    if match is None:
        raise Dropped("bad_format", Other(s.uid, s.kind, None, {"type": s.kind, "text": s.body}))
    *values, status = match.groups()
    raw: dict[str, Any] = {"type": s.kind, "status": int(status, 16)}
    attributes = read_status(raw["status"])
    if s.kind == "LINK":  # rssi, satellites, battery %, steps, turnovers
        rssi, satellites, battery, steps, turnovers = (int(v) for v in values)
        attributes["gsm_signal"] = rssi
        if battery <= 100:
            attributes["battery_pct"] = battery
        raw |= {"satellites": satellites, "steps": steps, "turnovers": turnovers}
        return Heartbeat(s.uid, None, attributes, raw)
    mcc, mnc, cells = int(values[0]), int(values[1]), values[2].strip(",").split(",")
    if s.kind == "V3":  # lac, cell, ?, rssi per cell; a 16-bit battery value
        raw["battery"] = int(values[3], 16)
        raw["cells"] = [cells[i : i + 4] for i in range(0, len(cells), 4)]
    else:  # lac, cell, rssi
        raw["cells"] = [[int(v) for v in cells[i : i + 3]] for i in range(0, len(cells), 3)]
    raw |= {"mcc": mcc, "mnc": mnc}
    reply = confirmation(s.uid, "NBR", now) if s.kind == "NBR" else None
    return Heartbeat(s.uid, reply, attributes, raw)


def decode_info(s: Sentence, now: Callable[[], datetime]) -> Message:
    """SMS (a text), VP1 and V4 without a fix, kept as text.

    VP1 fixes carry a date without a time of day: not a position.
    """
    return Other(s.uid, s.kind, None, {"type": s.kind, "text": s.body})


def decode_record(frame: bytes) -> Message:
    """A binary record: 32 or 45 bytes with a 5-byte id, 42 with an 8-byte one."""
    at = 9 if len(frame) == IMEI_RECORD else 6
    uid = frame[1:at].hex()[:15]
    digits = frame[at : at + 19].hex()
    spans = ((0, 6), (6, 12), (12, 20), (22, 32), (32, 38))  # battery at 20:22
    clock, date, lat, lon, motion = (digits[start:end] for start, end in spans)
    flags = int(lon[9], 16)
    raw: dict[str, Any] = {"type": "binary", "battery": frame[at + 10]}
    raw["status"] = int.from_bytes(frame[at + 19 : at + 23])
    if len(frame) > at + 23:
        raw["extra"] = frame[at + 23 :].hex()
    latitude = read_coordinate(f"{lat[:4]}.{lat[4:]}", "NS"[not flags & 4], "NS", 90)
    longitude = read_coordinate(f"{lon[:5]}.{lon[5:9]}", "EW"[not flags & 8], "EW", 180)
    fix_time = read_time(clock, date)
    if not _DIGITS.fullmatch(motion) or int(motion[3:]) > 360:
        raise Dropped("bad_position")
    attributes = read_status(raw["status"])
    if (battery := battery_pct(raw["battery"])) is not None:
        attributes["battery_pct"] = battery
    return Position(
        uid, fix_time, latitude, longitude, bool(flags & 2),
        round(int(motion[:3]) * KMH_PER_KNOT, 3), float(motion[3:]),
        attributes=attributes, raw=raw,
    )  # fmt: skip


Decoder = Callable[[Sentence, Callable[[], datetime]], Message]

DECODERS: dict[str, Decoder] = {
    **dict.fromkeys(("V0", "HTBT"), decode_heartbeat),
    **dict.fromkeys(("NBR", "LINK", "V3"), decode_status_report),
    **dict.fromkeys(("VP1", "SMS"), decode_info),
    "V4": decode_confirmation,
}
