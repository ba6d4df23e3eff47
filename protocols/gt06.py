"""GT06 / Concox binary protocol, sans-I/O.

Sources: Concox "JM-VL03 Communication Protocol" V1.1.2 (VL03) and, for the variants seen in
the field, traccar's Gt06 decoder; the shared PROTOCOLS.md, section 1, has the details.

Frame layout, integers big-endian::

    78 78 | LEN (1) | TYPE | CONTENT | SERIAL (2) | CRC (2) | 0D 0A    LEN = 1 + len(CONTENT) + 4
    79 79 | LEN (2) | TYPE | CONTENT | SERIAL (2) | CRC (2) | 0D 0A    extended (0x94, 0x70, ...)

CRC-ITU (CRC-16/X-25) covers LEN .. SERIAL. Replies are ``78 78 05 TYPE SERIAL CRC 0D 0A``
echoing the type and serial. Some units send a wrong LEN; those frames end on 0D 0A
instead (``frame_end``).

GPS block, first in the content of the location and alarm types::

    YY MM DD hh mm ss (UTC) | satellites (low nibble) | lat (4) | lon (4) | km/h (1) | course (2)

lat and lon are unsigned 1/1,800,000 degree; the course word holds the course (bits 0-9),
north (10), west (11), fix valid (12) and, when bit 14 is set, ACC (15).

Terminal status (0x13, and after the cell of 0x16/0x19/0x26/0x27/0xA4/0xA5): info byte
(bit 1 ACC, bit 2 charging, bits 5-3 alarm, bit 7 fuel cut), voltage level 0-6, GSM 0-4,
alarm code, language.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from protocols.binary import bcd_digits, crc16_x25
from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Login, Message, Other, Position

START = b"\x78\x78"
START_EXTENDED = b"\x79\x79"
STOP = b"\r\n"
SERIAL_CRC = struct.Struct(">HH")
# The GPS block: time (6), satellites, lat (4), lon (4), speed, course and flags (2).
GPS_BLOCK = struct.Struct(">6B B I I B H")

LOGIN = 0x01
GPS = 0x10
GPS_LBS_6 = 0x11  # cell with a 2-byte MNC and a 4-byte cell id
LOCATION = 0x12  # GPS + cell, GT06
STATUS = 0x13  # heartbeat
ALARM = 0x16  # GPS + cell + status + alarm
LBS_STATUS = 0x19  # cell + status + alarm, no GPS
GPS_LBS_EXTEND = 0x1E
LOCATION_UTC = 0x22  # GPS + cell + ACC
ALARM_UTC = 0x26
ALARM_FENCE = 0x27  # ALARM_UTC + geofence number
ADDRESS_REQUEST = 0x2A
LOCATION_MODULES = 0x37
WIFI = 0x69  # LEN counts the access points; the frame has no serial or CRC
TIME_REQUEST = 0x8A
ADDRESS_REPLY = 0x97
LOCATION_4G = 0xA0  # 4G cell: LAC 4 bytes, cell id 8 bytes
ALARM_4G = 0xA4
LBS_ALARM_4G = 0xA5

# Not answered with the generic ack: no answer expected (information, command results,
# X1 records) or answered otherwise (address, time, WiFi). Matches traccar.
NOT_ACKED = frozenset(
    {ADDRESS_REQUEST, 0x34, 0x35, WIFI, 0x80, 0x81, 0x82, TIME_REQUEST, 0x94, 0xF3}
)
# Extended frames that traccar acknowledges, and whether its ack is extended too.
EXTENDED_ACKED = {0x70: False, 0xF1: False, 0xF2: False, 0x32: True, 0x33: True}
NO_ADDRESS = b"NA&&NA&&0##"  # traccar's "no address known" answer to an address request

# Terminal info bits 5-3 [VL03 §2; 111 per traccar].
STATUS_ALARMS = {
    0b001: "vibration", 0b010: "power_cut", 0b011: "low_battery", 0b100: "sos", 0b111: "removed"
}  # fmt: skip
# Alarm codes [VL03 §5]: 09 tow/theft, 0F low-voltage protection, 13 tamper, 18 cover removed,
# 19 low internal battery, 32 unplugged. Traccar also has 0C and 25 as tampering; VL03 says
# 0C is "powered on", so neither is mapped.
ALARM_CODES = {
    0x01: "sos", 0x02: "power_cut", 0x03: "vibration", 0x09: "vibration", 0x06: "overspeed",
    0x0E: "low_battery", 0x0F: "low_battery", 0x19: "low_battery",
    0x13: "removed", 0x18: "removed", 0x32: "removed",
}  # fmt: skip


class Frame(NamedTuple):
    data: bytes  # the whole frame, start to stop
    kind: int
    content: bytes
    serial: int
    extended: bool
    crc_ok: bool


class Fix(NamedTuple):
    time: datetime
    lat: float
    lon: float
    valid: bool
    speed_kmh: float
    course_deg: float
    satellites: int
    ignition: bool | None


class Dropped(Exception):
    """A frame's data is implausible: count ``reason``; ``fallback`` still answers the unit."""

    def __init__(self, reason: str, fallback: Message | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback


class Gt06Codec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "gt06"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 1024,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``now`` (default: the UTC clock) is read only to answer a time request (0x8A)."""
        self.stats: Counter[str] = Counter()
        self._accept_bad_crc = accept_bad_crc
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._garbage_run = 0  # bytes skipped since the last frame
        self._device_uid: str | None = None  # known after the login

    @property
    def pending(self) -> bytes:
        """Bytes kept for the next ``feed``: the start of an incomplete frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the stream; return the messages it completed.

        Raises:
            ProtocolError: no frame start or no frame end within ``max_frame_bytes``.
        """
        messages = []
        for frame in self.frames(data):
            if (message := self._decode(frame)) is not None:
                messages.append(message)
        return messages

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the frames ``data`` completed, garbage skipped."""
        # Nothing pending (the usual case): frame ``data`` itself; buffer only its unfinished tail.
        buf: bytes | bytearray = data
        if self._buffer or not isinstance(data, bytes):
            buf = self._buffer
            buf += data
        frames = []
        pos = 0
        try:
            while pos < len(buf):
                pos = self._skip_garbage(buf, pos)
                end = frame_end(buf, pos, self._max_frame_bytes)
                if end is None:
                    break
                frames.append(bytes(buf[pos:end]))
                self._garbage_run = 0
                pos = end
        finally:
            if buf is self._buffer:
                del buf[:pos]
            else:
                self._buffer += buf[pos:]
        return frames

    def _skip_garbage(self, buf: bytes | bytearray, pos: int) -> int:
        if buf.startswith((START, START_EXTENDED), pos):  # the usual: a frame follows a frame
            return pos
        starts = [i for i in (buf.find(START, pos), buf.find(START_EXTENDED, pos)) if i >= 0]
        if starts:
            start = min(starts)
        else:  # keep a last 78 or 79: it may begin a start marker
            start = len(buf) - 1 if len(buf) > pos and buf[-1] in (0x78, 0x79) else len(buf)
        if start > pos:
            self.stats["garbage_bytes"] += start - pos
            self._garbage_run += start - pos
            if self._garbage_run > self._max_frame_bytes:
                raise ProtocolError(f"gt06: no frame start in {self._garbage_run} bytes")
        return start

    def _decode(self, data: bytes) -> Message | None:
        frame = split_frame(data)
        if frame is None:
            self.stats["short_frame"] += 1
            return None
        if not frame.crc_ok and not (frame.kind == WIFI and not frame.extended):
            self.stats["bad_crc"] += 1
            if not self._accept_bad_crc:
                return None
        reply = reply_to(frame, self._now)
        kind = TYPE_TEXT[frame.kind]
        decoder = None if frame.extended else DECODERS.get(frame.kind)
        if decoder is None:  # extended types and the rest: model specific, kept raw
            raw = raw_fields(frame) | {"content": frame.content.hex()}
            return Other(self._device_uid, kind, reply, raw)
        try:
            message = decoder(self._device_uid, frame, reply)
        except Dropped as drop:
            self.stats[drop.reason] += 1
            return drop.fallback or Other(self._device_uid, kind, reply, raw_fields(frame))
        if isinstance(message, Login):
            self._device_uid = message.unique_id
        return message


def frame_end(buf: bytes | bytearray, start: int, max_frame_bytes: int) -> int | None:
    """Where the frame beginning at ``start`` ends, or None until more bytes arrive.

    A frame ends where its LEN says, on 0D 0A. When it does not (a wrong LEN), it ends, as in
    traccar, at a 0D 0A: early, at one ending 1-3 bytes before the declared end where a valid
    frame has its serial and CRC (unless the CRC says it is that valid frame), or else at the
    first one. Each choice depends only on the bytes up to the end it picks, so a stream
    splits the same however it is chunked.

    Raises:
        ProtocolError: no end within ``max_frame_bytes``.
    """
    if len(buf) - start < 5:
        return None
    if buf[start] == 0x79:
        declared = 6 + int.from_bytes(buf[start + 2 : start + 4])
    else:
        declared = 5 + buf[start + 2]
    if declared <= max_frame_bytes:
        declared_end = start + declared
        for end in range(max(start + 4, declared_end - 3), min(declared_end, len(buf) + 1)):
            if buf[end - 2 : end] == STOP and not _crc_could_end_at(buf, start, declared_end, end):
                return end
        if len(buf) < declared_end:
            return None
        if buf[declared_end - 2 : declared_end] == STOP:
            return declared_end
    limit = start + max_frame_bytes
    stop = buf.find(STOP, start + 2, limit)
    if stop >= 0:
        return stop + 2
    if len(buf) >= limit:
        raise ProtocolError(f"gt06: no frame end in {max_frame_bytes} bytes")
    return None


def _crc_could_end_at(buf: bytes | bytearray, start: int, declared_end: int, end: int) -> bool:
    """Whether a 0D 0A ending at ``end`` can be serial/CRC bytes of the frame LEN declares."""
    if end == declared_end - 1:
        return False  # its 0A would stand where the frame's stop has 0D
    crc = crc16_x25(buf[start + 2 : declared_end - 4])
    return crc == 0x0D0A if end == declared_end - 2 else crc >> 8 == 0x0A


def split_frame(data: bytes) -> Frame | None:
    """Type, content, serial and CRC check of a frame; None if too short to hold them."""
    header = 4 if data[0] == 0x79 else 3
    if len(data) < header + 7:  # TYPE, SERIAL, CRC, 0D 0A
        return None
    serial, crc = SERIAL_CRC.unpack_from(data, len(data) - 6)
    crc_ok = crc16_x25(data[2:-4]) == crc
    return Frame(data, data[header], data[header + 1 : -6], serial, header == 4, crc_ok)


def ack(kind: int, serial: int, content: bytes = b"", *, extended: bool = False) -> bytes:
    """A reply frame: ``78 78 LEN TYPE CONTENT SERIAL CRC 0D 0A`` (79 79 and 2-byte LEN)."""
    length = len(content) + 5
    size = length.to_bytes(2) if extended else bytes([length])
    body = size + bytes([kind]) + content + serial.to_bytes(2)
    return (START_EXTENDED if extended else START) + body + crc16_x25(body).to_bytes(2) + STOP


def reply_to(frame: Frame, now: Callable[[], datetime]) -> bytes | None:
    """What the unit expects back for ``frame``, or None."""
    kind, serial = frame.kind, frame.serial
    if frame.extended:
        return ack(kind, serial, extended=EXTENDED_ACKED[kind]) if kind in EXTENDED_ACKED else None
    if kind == TIME_REQUEST:  # [VL03 §8]: UTC time, the request's serial
        t = now().astimezone(UTC)
        clock = bytes([t.year % 100, t.month, t.day, t.hour, t.minute, t.second])
        return ack(TIME_REQUEST, serial, clock)
    if kind == ADDRESS_REQUEST:  # [VL03 §6] English address reply: length, flag, text
        content = bytes([len(NO_ADDRESS)]) + bytes(4) + NO_ADDRESS
        return ack(ADDRESS_REPLY, serial, content, extended=True)
    if kind == WIFI and len(frame.data) >= 12:  # traccar: echo the (BCD) time
        return START + bytes([0, WIFI]) + frame.data[4:10] + STOP
    return None if kind in NOT_ACKED else ack(kind, serial)


TYPE_TEXT = tuple(f"0x{kind:02x}" for kind in range(256))  # made once, not per frame


def raw_fields(frame: Frame) -> dict[str, Any]:
    return {"type": TYPE_TEXT[frame.kind], "serial": frame.serial}


def read_fix(content: bytes) -> Fix:
    """The GPS block at the start of ``content``. Raises Dropped if implausible."""
    if len(content) < 18:
        raise Dropped("short_content")
    year, month, day, hour, minute, second, satellites, lat_raw, lon_raw, speed, flags = (
        GPS_BLOCK.unpack_from(content)
    )
    if year > 99:
        raise Dropped("bad_time")
    try:
        fix_time = datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise Dropped("bad_time") from None
    lat = lat_raw / 1_800_000
    lon = lon_raw / 1_800_000
    course = flags & 0x03FF
    if not flags & 0x0400:
        lat = -lat
    if flags & 0x0800:
        lon = -lon
    if abs(lat) > 90 or abs(lon) > 180 or course > 360:
        raise Dropped("bad_position")
    ignition = bool(flags & 0x8000) if flags & 0x4000 else None
    valid = bool(flags & 0x1000)
    return Fix(fix_time, lat, lon, valid, float(speed), float(course), satellites & 0x0F, ignition)


def make_position(
    uid: str | None, fix: Fix, reply: bytes | None, attributes: dict[str, Any], raw: dict[str, Any]
) -> Position:
    merged = {} if fix.ignition is None else {"ignition": fix.ignition}
    merged |= attributes  # the ACC byte and terminal info, where present, say more
    # by position, in Position's field order: keywords cost about 0.3 us a fix more
    return Position(
        uid, fix.time, fix.lat, fix.lon, fix.valid, fix.speed_kmh, fix.course_deg,
        None, None, fix.satellites, merged, raw, reply,
    )  # fmt: skip


def read_cell(content: bytes, pos: int, *, wide: bool = False) -> tuple[dict[str, Any], int]:
    """MCC (bit 15: 2-byte MNC), MNC, LAC, cell id at ``pos``; and where they end.

    2G: LAC 2 bytes, cell id 3; 4G (``wide``): LAC 4, cell id 8 [VL03 §10-12].
    """
    if len(content) < pos + 2:
        return {}, pos + 8
    mcc = int.from_bytes(content[pos : pos + 2])
    mnc_size = 2 if mcc & 0x8000 else 1
    lac_size, cell_size = (4, 8) if wide else (2, 3)
    lac_at = pos + 2 + mnc_size
    end = lac_at + lac_size + cell_size
    if len(content) < end:
        return {}, end
    return {
        "mcc": mcc & 0x7FFF,
        "mnc": int.from_bytes(content[pos + 2 : lac_at]),
        "lac": int.from_bytes(content[lac_at : lac_at + lac_size]),
        "cell": int.from_bytes(content[lac_at + lac_size : end]),
    }, end


def read_status(block: bytes, kind: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Info byte, voltage level, GSM, alarm code[, language]: attributes and raw values."""
    info, voltage, gsm, code = block[:4]
    raw: dict[str, Any] = {"status": info, "fuel_cut": bool(info & 0x80)}
    if len(block) > 4:
        raw["language"] = block[4]
        if kind in (ALARM_FENCE, ALARM_4G):  # traccar: the language's high nibble extends the code
            code |= (block[4] >> 4) << 8
    raw["alarm_code"] = code
    attributes: dict[str, Any] = {"ignition": bool(info & 0x02), "charging": bool(info & 0x04)}
    if voltage <= 6:
        attributes["battery_pct"] = voltage * 100 // 6
    elif voltage <= 100:  # some units send a percentage (traccar)
        attributes["battery_pct"] = voltage
    attributes["gsm_signal"] = gsm
    for alarm in (STATUS_ALARMS.get((info >> 3) & 0x07), ALARM_CODES.get(code)):
        if alarm is not None:
            attributes[alarm] = True
    return attributes, raw


def decode_login(uid: str | None, frame: Frame, reply: bytes | None) -> Message:
    """Terminal id (8 bytes BCD, a 0 then the IMEI), type code (2), time zone (2) [VL03 §1]."""
    content = frame.content
    if len(content) < 8:
        raise Dropped("short_content")
    raw = raw_fields(frame)
    if len(content) >= 12:  # bits 15-4: zone * 100 (0x320 = 8:00), bit 3: west
        bits = int.from_bytes(content[10:12])
        hours, minutes = divmod(bits >> 4, 100)
        raw["tz_offset_s"] = (-1 if bits & 0x08 else 1) * (hours * 3600 + minutes * 60)
    return Login(bcd_digits(content[:8])[1:], reply=reply, raw=raw)


def decode_heartbeat(uid: str | None, frame: Frame, reply: bytes | None) -> Message:
    """0x13: terminal status [VL03 §2]; 0x19 / 0xA5: a cell, then status (an alarm, no fix).

    Other lengths are model specific layouts, kept raw.
    """
    cell: dict[str, Any] = {}
    end = 0
    if frame.kind != STATUS:
        cell, end = read_cell(frame.content, 0, wide=frame.kind == LBS_ALARM_4G)
    attributes: dict[str, Any] = {}
    raw = raw_fields(frame) | cell
    if 4 <= len(frame.content) - end <= 6:
        attributes, status = read_status(frame.content[end : end + 5], frame.kind)
        raw |= status
    return Heartbeat(uid, reply, attributes, raw)


def decode_location(uid: str | None, frame: Frame, reply: bytes | None) -> Message:
    """0x10 / 0x11 / 0x12 / 0x1E: the GPS block, then cell and model specific data."""
    fix = read_fix(frame.content)
    raw = raw_fields(frame)
    if frame.kind == LOCATION:
        raw |= read_cell(frame.content, 18)[0]
    return make_position(uid, fix, reply, {}, raw)


def decode_location_acc(uid: str | None, frame: Frame, reply: bytes | None) -> Message:
    """0x22 / 0x37 / 0xA0: GPS, cell, ACC, upload mode, re-upload flag[, mileage] [VL03 §3]."""
    content = frame.content
    fix = read_fix(content)
    cell, end = read_cell(content, 18, wide=frame.kind == LOCATION_4G)
    raw = raw_fields(frame) | cell
    attributes: dict[str, Any] = {}
    rest = len(content) - end  # 0x37: then modules
    if rest in (3, 7) or (frame.kind == LOCATION_MODULES and rest >= 3):
        attributes["ignition"] = content[end] > 0
        raw |= {"upload_mode": content[end + 1], "reupload": content[end + 2] > 0}
        if rest == 7:
            raw["mileage"] = int.from_bytes(content[end + 3 : end + 7])
    return make_position(uid, fix, reply, attributes, raw)


def decode_alarm(uid: str | None, frame: Frame, reply: bytes | None) -> Message:
    """0x16 / 0x26 / 0x27 / 0xA4: GPS, cell with a length byte, terminal status [VL03 §5]."""
    content = frame.content
    attributes: dict[str, Any] = {}
    raw = raw_fields(frame)
    if len(content) >= 20:
        status_at = alarm_status_offset(content, frame.kind)
        cell, end = read_cell(content, 19, wide=frame.kind == ALARM_4G)
        if end == status_at:  # else a model specific cell, not decoded
            raw |= cell
        if len(content) >= status_at + 5:
            attributes, status = read_status(content[status_at : status_at + 5], frame.kind)
            raw |= status
    try:
        fix = read_fix(content)
    except Dropped as drop:  # keep the alarm even without its fix
        drop.fallback = Heartbeat(uid, reply, attributes, raw)
        raise
    return make_position(uid, fix, reply, attributes, raw)


def alarm_status_offset(content: bytes, kind: int) -> int:
    """Where the terminal status follows the cell of an alarm frame.

    The cell's length byte is read as traccar does, as units differ on whether it counts
    itself and a 2-byte MNC: 8 bytes (9 with a 2-byte MNC), plus ``length - 9`` when longer.
    """
    length = content[18]
    if length == 0:  # traccar: a zero length may be followed by 45 zero bytes
        zeroed = len(content) >= 18 + 1 + 45 + 5 and not any(content[28:64])
        return 19 + 45 if zeroed else 19
    cell = (9 if content[19] & 0x80 else 8) + max(0, length - 9)
    if kind == ALARM and length == 9 and len(content) == 33:
        cell = 9  # SeeWorld units (LEN 0x26): a 4-byte cell id (traccar)
    return 19 + cell


Decoder = Callable[[str | None, Frame, bytes | None], Message]

DECODERS: dict[int, Decoder] = {
    LOGIN: decode_login,
    **dict.fromkeys((STATUS, LBS_STATUS, LBS_ALARM_4G), decode_heartbeat),
    **dict.fromkeys((GPS, GPS_LBS_6, LOCATION, GPS_LBS_EXTEND), decode_location),
    **dict.fromkeys((LOCATION_UTC, LOCATION_MODULES, LOCATION_4G), decode_location_acc),
    **dict.fromkeys((ALARM, ALARM_UTC, ALARM_FENCE, ALARM_4G), decode_alarm),
}
