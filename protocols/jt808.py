"""JT/T 808 (2011, 2013 and 2019 headers), sans-I/O.

Sources: the JT/T 808 profile of a vendor, "JT/T808 Protocol for G10LS" (G10LS), and traccar's
Jt808 decoders for what units send in the field; PROTOCOLS.md, section 2, has the details.

Frame layout, integers big-endian::

    7E | MSG ID (2) | ATTR (2) | [VERSION (1)] | PHONE, BCD (6 or 10) | SERIAL (2)
       | [TOTAL (2) | INDEX (2)] | BODY | XOR (1) | 7E

ATTR: bits 0-9 body length, 10-12 encryption, 13 sub-package (TOTAL and INDEX follow), 14 the
2019 header (VERSION and a 10-byte PHONE). XOR covers MSG ID .. BODY. Between the flags, 7E is
sent as 7D 02 and 7D as 7D 01 [G10LS 1.4.2]. Some units put an ASCII sentence ``(...)`` on the
same connection (traccar); a time request among them is answered with the UTC time. Not
supported: traccar's alternative framing E7 ... E7 (E6/3E escapes, a 7-byte PHONE).

Every message carries the unit's id: PHONE's digits without leading zeros (the same id from the
12- and 20-digit forms; "0" if all zeros), or traccar's IMEI reading of non-decimal PHONEs.

Replies have the same header shape: the platform's own serial (a counter per connection, from
0), the unit's PHONE, and VERSION when the unit sent one. Registration 0x0100 is answered by
0x8100 (its serial, result 0, an authentication code: the terminal id, as traccar does); the
terminal's own general reply 0x0001 by nothing; everything else by the general reply 0x8001
(serial, message id, result 0), one for a whole batch, one per sub-package.

Location 0x0200 [G10LS 2.12]::

    ALARM (4) | STATUS (4) | LAT (4) | LON (4) 1e-6 deg | ALTITUDE (2) m | SPEED (2) 0.1 km/h
    | COURSE (2) | TIME BCD YYMMDDhhmmss, GMT+8 | items: ID (1) LEN (1) VALUE
"""

from __future__ import annotations

import re
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any, NamedTuple

from protocols.binary import NOT_BCD, bcd_digits, bcd_values, xor_checksum
from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Login, Message, Other, Position

FLAG = 0x7E
FLAG_BYTE = bytes([FLAG])
ID_ATTR = struct.Struct(">HH")  # MSG ID, ATTR
# A location's basic block, as above; ALTITUDE is signed in traccar, a WORD in G10LS.
LOCATION_BLOCK = struct.Struct(">I I I I h H H 6s")
GENERAL_REPLY_BODY = struct.Struct(">H H B")  # the message's serial and id, result
BAD_ESCAPE = re.compile(rb"\x7d(?![\x01\x02])")
TEXT_START = ord("(")
TEXT_END = ord(")")
TEXT_BODY = re.compile(rb"[\x20-\x27\x2a-\x7d]*")  # printable, no parentheses, no 7E
MAX_TEXT_BYTES = 256
# Flags, the longest header (2019 with sub-package), a 1023-byte body and XOR, all escaped.
MAX_FRAME_BYTES = 2 + 2 * (17 + 4 + 1023 + 1)
MAX_PARTS_BYTES = 64 * 1024  # sub-package bodies kept, all messages together
MAX_ASSEMBLIES = 8

TERMINAL_REPLY = 0x0001
HEARTBEAT = 0x0002
LOGOUT = 0x0003
REGISTER = 0x0100
AUTHENTICATE = 0x0102
LOCATION = 0x0200
LOCATION_QUERY_REPLY = 0x0201  # the reply's serial, then a location
LOCATION_BATCH = 0x0704
GENERAL_REPLY = 0x8001
REGISTER_REPLY = 0x8100
# E-lock messages (traccar): a 1-byte serial; answered by 0x4401 when ATTR bit 15 asks for it.
LOCK_REPORT, LOCK_REPORT_BLIND = 0x5501, 0x5502
LOCK_REPLY = 0x4401

GMT8_OFFSET = timedelta(hours=8)  # "GMT+8 time" [G10LS Table 16]

# Alarm flags [G10LS Table 18]: bits 0, 1, 7, 8 are the standard's; 15-17 are that vendor's
# default (traccar reads 15 as vibration and 16-17 as tampering).
ALARM_BITS = {
    0: "sos", 1: "overspeed", 7: "low_battery", 8: "power_cut",
    15: "low_battery", 16: "vibration", 17: "removed",
}  # fmt: skip
STATUS_ACC, STATUS_FIX, STATUS_SOUTH, STATUS_WEST = 0, 1, 2, 3
ITEM_KEYS = tuple(f"0x{item:02x}" for item in range(256))  # how unread items are kept


class Frame(NamedTuple):
    msg_id: int
    attr: int
    version: int | None  # the 2019 header's protocol version
    phone: bytes  # as sent: 6 or 10 BCD bytes, mirrored in replies
    serial: int
    packet: tuple[int, int] | None  # (total, index) of a sub-package
    body: bytes
    crc_ok: bool


class Dropped(Exception):
    """A location is implausible: count the reason, ``args[0]``."""


class Jt808Codec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "jt808"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``now`` (default: the UTC clock) is read only to answer an ASCII time request."""
        self.stats: Counter[str] = Counter()
        self._accept_bad_crc = accept_bad_crc
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._garbage_run = 0  # bytes skipped since the last frame
        self._serial = 0  # the platform's message serial [G10LS Table 2: from 0]
        self._parts: OrderedDict[tuple[bytes, int, int, int], dict[int, bytes]] = OrderedDict()

    @property
    def pending(self) -> bytes:
        """Bytes kept for the next ``feed``: the start of an incomplete frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the stream; return the messages it completed.

        Raises:
            ProtocolError: no frame start or no frame end within ``max_frame_bytes``.
        """
        messages: list[Message] = []
        for frame in self.frames(data):
            if frame[0] == TEXT_START:
                messages.append(self._decode_text(frame.decode("ascii")))
            else:
                messages += self._decode(frame)
        return messages

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the wire frames ``data`` completed, garbage skipped."""
        # Nothing pending (the usual case): frame ``data`` itself; buffer only its unfinished tail.
        buf: bytes | bytearray = data
        if self._buffer or not isinstance(data, bytes):
            buf = self._buffer
            buf += data
        frames = []
        pos = 0
        try:
            while (pos := self._skip_garbage(buf, pos)) < len(buf):
                end = self._frame_end(buf, pos)
                if end is None:
                    break
                if end == pos + 1:  # not a frame start: 7E 7E, or "(" before no sentence
                    self._count_garbage(1)
                    pos = end
                    continue
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
        if pos == len(buf) or buf[pos] in (FLAG, TEXT_START):  # the usual: no garbage
            return pos
        starts = [i for i in (buf.find(FLAG, pos), buf.find(TEXT_START, pos)) if i >= 0]
        start = min(starts) if starts else len(buf)
        if start > pos:
            self._count_garbage(start - pos)
        return start

    def _count_garbage(self, size: int) -> None:
        self.stats["garbage_bytes"] += size
        self._garbage_run += size
        if self._garbage_run > self._max_frame_bytes:
            raise ProtocolError(f"jt808: no frame in {self._garbage_run} bytes")

    def _frame_end(self, buf: bytes | bytearray, start: int) -> int | None:
        """Where the frame at ``start`` ends; ``start + 1`` if it is none; None: need more.

        A frame runs from a 7E to the next one. Two flags in a row are an end and a start (a
        stream picked up mid-frame), so the first is skipped. A ``(`` starts a sentence only if
        printable bytes and ``)`` follow.
        """
        if buf[start] == TEXT_START:
            limit = min(len(buf), start + MAX_TEXT_BYTES)
            match = TEXT_BODY.match(buf, start + 1, limit)
            end = match.end() if match else start + 1
            if end < limit:
                return end + 1 if buf[end] == TEXT_END else start + 1
            return None if limit < start + MAX_TEXT_BYTES else start + 1
        stop = buf.find(FLAG, start + 1, start + self._max_frame_bytes)
        if stop >= 0:
            return start + 1 if stop == start + 1 else stop + 1
        if len(buf) >= start + self._max_frame_bytes:
            raise ProtocolError(f"jt808: no frame end in {self._max_frame_bytes} bytes")
        return None

    def _next_serial(self) -> int:
        serial = self._serial
        self._serial = (serial + 1) & 0xFFFF
        return serial

    def _decode(self, data: bytes) -> list[Message]:
        payload = unescape(data[1:-1])
        if payload is None:
            self.stats["bad_escape"] += 1
            return []
        frame = split_frame(payload)
        if frame is None:
            self.stats["short_frame"] += 1
            return []
        if not frame.crc_ok:
            self.stats["bad_crc"] += 1
            if not self._accept_bad_crc:
                return []
        uid = unique_id(frame.phone)
        if frame.msg_id in (LOCK_REPORT, LOCK_REPORT_BLIND):  # vendor header, no decoder
            self.stats["unknown_type"] += 1
            reply = lock_reply(frame) if frame.attr & 0x8000 else None
            return [Other(uid, kind(frame), reply, raw_fields(frame))]
        if frame.attr & 0x1C00:  # RSA: nothing to read; no reply, so the unit keeps the data
            self.stats["encrypted"] += 1
            return []
        if frame.packet is not None:
            assembled = self._reassemble(frame)
            if assembled is None:
                reply = general_reply(frame, self._next_serial())
                raw = raw_fields(frame) | {"packets": frame.packet[0], "packet": frame.packet[1]}
                return [Other(uid, kind(frame), reply, raw)]
            frame = assembled
        reply = self._reply_to(frame)
        decoder = DECODERS.get(frame.msg_id)
        if decoder is None:
            self.stats["unknown_type"] += 1
            return [Other(uid, kind(frame), reply, raw_fields(frame))]
        messages, dropped = decoder(uid, frame, reply)
        if dropped:
            self.stats.update(dropped)
        return messages

    def _reply_to(self, frame: Frame) -> bytes | None:
        if frame.msg_id == TERMINAL_REPLY:  # a reply to us: nothing to answer
            return None
        if frame.msg_id == REGISTER:
            return register_reply(frame, self._next_serial())
        return general_reply(frame, self._next_serial())

    def _reassemble(self, part: Frame) -> Frame | None:
        """The whole message once ``part`` completes it, else None (the part is kept).

        Only messages with a decoder are kept (multimedia, say, is acknowledged and dropped);
        parts are keyed by phone, message id, first serial and total. Over ``MAX_ASSEMBLIES``
        messages or ``MAX_PARTS_BYTES`` bytes, the oldest incomplete message is dropped.
        """
        total, index = part.packet or (1, 1)
        if not 1 <= index <= total:
            self.stats["bad_packet"] += 1
            return None
        if part.msg_id not in DECODERS:
            return part if total == 1 else None
        key = (part.phone, part.msg_id, (part.serial - index + 1) & 0xFFFF, total)
        parts = self._parts.setdefault(key, {})
        parts[index] = part.body
        if len(parts) == total:
            del self._parts[key]
            body = b"".join(parts[i] for i in range(1, total + 1))
            return part._replace(body=body, packet=None)
        kept = sum(len(body) for parts in self._parts.values() for body in parts.values())
        while len(self._parts) > MAX_ASSEMBLIES or kept > MAX_PARTS_BYTES:
            kept -= sum(map(len, self._parts.popitem(last=False)[1].values()))
            self.stats["packets_dropped"] += 1
        return None

    def _decode_text(self, sentence: str) -> Message:
        """``(<id>,...)``: a time request ``BASE,2`` gets ``TIME`` as UTC time (traccar)."""
        first = sentence[1:].split(",", 1)[0]
        uid = (first.lstrip("0") or "0") if first.isdigit() else None
        if "BASE,2" in sentence and "TIME" in sentence:
            clock = self._now().astimezone(UTC).strftime("%Y%m%d%H%M%S")
            reply = sentence.replace("TIME", clock).encode("ascii")
            return Other(uid, "time_request", reply, {"text": sentence})
        return Other(uid, "text", None, {"text": sentence})


def unescape(data: bytes) -> bytes | None:
    """7D 02 -> 7E, then 7D 01 -> 7D; None if another byte follows a 7D."""
    if 0x7D not in data:  # the usual: nothing escaped
        return data
    if BAD_ESCAPE.search(data):
        return None
    return data.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d")


def escape(data: bytes) -> bytes:
    return data.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02")


def split_frame(payload: bytes) -> Frame | None:
    """The header fields, body and XOR check of an unescaped frame; None if too short.

    The body is what lies between header and XOR: some units declare a wrong length
    (traccar reads it the same way).
    """
    if len(payload) < 5:
        return None
    msg_id, attr = ID_ATTR.unpack_from(payload)
    version = payload[4] if attr & 0x4000 else None
    at = 4 if version is None else 5
    phone_size = 6 if version is None else 10
    lock = msg_id in (LOCK_REPORT, LOCK_REPORT_BLIND)  # vendor: a 1-byte serial, no packets
    serial_size = 1 if lock else 2
    packet_size = 4 if attr & 0x2000 and not lock else 0
    body_at = at + phone_size + serial_size + packet_size
    if len(payload) < body_at + 1:
        return None
    phone = payload[at : at + phone_size]
    serial = int.from_bytes(payload[at + phone_size : at + phone_size + serial_size])
    packet = None
    if packet_size:
        total = int.from_bytes(payload[body_at - 4 : body_at - 2])
        packet = (total, int.from_bytes(payload[body_at - 2 : body_at]))
    crc_ok = xor_checksum(payload) == 0  # the XOR byte cancels the XOR of the bytes it covers
    return Frame(msg_id, attr, version, phone, serial, packet, payload[body_at:-1], crc_ok)


def device_id(phone: bytes) -> str:
    """The terminal id: the PHONE digits, or where they are not decimal, as traccar reads
    them: the first 6 bytes as a number with a Luhn check digit (an IMEI)."""
    digits = bcd_digits(phone)
    if digits.isdigit():
        return digits
    number = int.from_bytes(phone[:6])
    return f"{number}{luhn_digit(number)}"


@lru_cache(maxsize=1024)  # a connection sends the same PHONE in every frame
def unique_id(phone: bytes) -> str:
    """The terminal id without its leading zeros: one id for the 12- and 20-digit forms."""
    return device_id(phone).lstrip("0") or "0"


def luhn_digit(number: int) -> int:
    total = 0
    for i, char in enumerate(reversed(str(number))):
        digit = int(char) * (2 if i % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return (10 - total % 10) % 10


def kind(frame: Frame) -> str:
    return f"0x{frame.msg_id:04x}"


def raw_fields(frame: Frame) -> dict[str, Any]:
    raw: dict[str, Any] = {"type": kind(frame), "serial": frame.serial}
    if frame.version is not None:
        raw["version"] = frame.version
    return raw


def build(msg_id: int, to: Frame, serial: int, body: bytes) -> bytes:
    """A platform message to the unit of ``to``, in its header version, escaped and framed."""
    attr = len(body) | (0x4000 if to.version is not None else 0)
    version = b"" if to.version is None else bytes([to.version])
    payload = b"".join((ID_ATTR.pack(msg_id, attr), version, to.phone, serial.to_bytes(2), body))
    return FLAG_BYTE + escape(payload + bytes([xor_checksum(payload)])) + FLAG_BYTE


def general_reply(to: Frame, serial: int) -> bytes:
    """0x8001: the message's serial and id, result 0 (success) [G10LS 2.2]."""
    return build(GENERAL_REPLY, to, serial, GENERAL_REPLY_BODY.pack(to.serial, to.msg_id, 0))


def register_reply(to: Frame, serial: int) -> bytes:
    """0x8100: the registration's serial, result 0, authentication code [G10LS 2.5]."""
    body = to.serial.to_bytes(2) + b"\x00" + device_id(to.phone).encode("ascii")
    return build(REGISTER_REPLY, to, serial, body)


def lock_reply(to: Frame) -> bytes:
    """Traccar's answer to E-lock reports: a 1-byte serial (always 1), message id, result 0."""
    payload = LOCK_REPLY.to_bytes(2) + b"\x00\x03" + to.phone + b"\x01"
    payload += to.msg_id.to_bytes(2) + b"\x00"
    return FLAG_BYTE + escape(payload + bytes([xor_checksum(payload)])) + FLAG_BYTE


def read_time(data: bytes) -> datetime:
    """BCD YYMMDDhhmmss in GMT+8, as UTC."""
    fields = bcd_values(data)
    if NOT_BCD in fields:
        raise Dropped("bad_time")
    year, month, day, hour, minute, second = fields
    try:  # read as UTC, then moved back by GMT+8's 8 hours: cheaper than astimezone
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC) - GMT8_OFFSET
    except ValueError:
        raise Dropped("bad_time") from None


def read_location(uid: str, body: bytes, raw: dict[str, Any], reply: bytes | None) -> Position:
    """A 0x0200 body: the 28-byte basic block, then the additional items."""
    if len(body) < 28:
        raise Dropped("short_content")
    alarm, status, lat_e6, lon_e6, altitude, speed, course, time = LOCATION_BLOCK.unpack_from(body)
    fix_time = read_time(time)
    lat = -lat_e6 / 1e6 if status >> STATUS_SOUTH & 1 else lat_e6 / 1e6
    lon = -lon_e6 / 1e6 if status >> STATUS_WEST & 1 else lon_e6 / 1e6
    if abs(lat) > 90 or abs(lon) > 180 or course > 360:
        raise Dropped("bad_position")
    attributes: dict[str, Any] = {"ignition": bool(status >> STATUS_ACC & 1)}
    if alarm:
        for bit, name in ALARM_BITS.items():
            if alarm >> bit & 1:
                attributes[name] = True
    items, satellites = read_items(body[28:], attributes)
    raw = {**raw, "alarm": alarm, "status": status}
    if items:
        raw["items"] = items
    # by position, in Position's field order: keywords cost about 0.3 us a fix more
    return Position(
        uid, fix_time, lat, lon, bool(status >> STATUS_FIX & 1), speed / 10, float(course),
        float(altitude), None, satellites, attributes, raw, reply,
    )  # fmt: skip


def read_items(data: bytes, attributes: dict[str, Any]) -> tuple[dict[str, str], int | None]:
    """Additional items [G10LS Table 20] into ``attributes``; the others as hex, by id.

    0x01 mileage 0.1 km, 0x30 CSQ, 0x31 satellites (standard); 0x56 battery level 0-10 and
    0x61 main power 0.01 V (vendor, G10LS). The others (vendor items 0xE1-0xFF, nested 0xEB,
    ...) are kept as hex, a repeated id's values joined by commas.
    """
    kept: dict[str, str] = {}
    satellites = None
    pos, end = 0, len(data)
    while pos + 2 <= end:
        item, size = data[pos], data[pos + 1]
        start, pos = pos + 2, pos + 2 + size
        if pos > end:  # cut short: keep what is there
            kept["truncated"] = data[start - 2 :].hex()
            break
        value = data[start:pos]
        if item == 0x01 and size == 4:
            attributes["odometer_m"] = int.from_bytes(value) * 100.0
        elif item == 0x30 and size == 1:
            attributes["gsm_signal"] = value[0]
        elif item == 0x31 and size == 1:
            satellites = value[0]
        elif item == 0x56 and size == 2 and value[0] <= 10:
            attributes["battery_pct"] = value[0] * 10
        elif item == 0x61 and size == 2:
            attributes["external_power_v"] = int.from_bytes(value) / 100
        else:
            key = ITEM_KEYS[item]
            kept[key] = f"{kept[key]},{value.hex()}" if key in kept else value.hex()
    return kept, satellites


Decoded = tuple[list[Message], list[str]]  # the messages; why any data was dropped


def decode_login(uid: str, frame: Frame, reply: bytes | None) -> Decoded:
    """Registration 0x0100 (the vehicle's details, by version: not read) and authentication
    0x0102 (the code: any is accepted, and not kept, as it is a secret)."""
    return [Login(uid, reply, raw_fields(frame))], []


def decode_heartbeat(uid: str, frame: Frame, reply: bytes | None) -> Decoded:
    return [Heartbeat(uid, reply, raw=raw_fields(frame))], []


def decode_other(uid: str, frame: Frame, reply: bytes | None) -> Decoded:
    """Known, nothing to read: logout 0x0003, the terminal's general reply 0x0001."""
    return [Other(uid, kind(frame), reply, raw_fields(frame))], []


def decode_location(uid: str, frame: Frame, reply: bytes | None) -> Decoded:
    """0x0200, and 0x0201 (a location query's reply: its serial, then the location)."""
    body = frame.body[2:] if frame.msg_id == LOCATION_QUERY_REPLY else frame.body
    try:
        position = read_location(uid, body, raw_fields(frame), reply)
    except Dropped as drop:
        return [Other(uid, kind(frame), reply, raw_fields(frame))], [drop.args[0]]
    return [position], []


def decode_batch(uid: str, frame: Frame, reply: bytes | None) -> Decoded:
    """0x0704: count (2), type (1: re-sent from the blind area), then (length (2), 0x0200 body)*
    [G10LS 2.16]. One reply, on the last position: it means the whole batch is stored."""
    body, dropped = frame.body, list[str]()
    positions: list[Message] = []
    raw = raw_fields(frame) | {"batch_type": body[2] if len(body) > 2 else None}
    pos = 3
    while pos + 2 <= len(body):
        size = int.from_bytes(body[pos : pos + 2])
        item = body[pos + 2 : pos + 2 + size]
        pos += 2 + size
        try:
            positions.append(read_location(uid, item, raw, None))
        except Dropped as drop:
            dropped.append(drop.args[0])
    if not positions:
        return [Other(uid, kind(frame), reply, raw)], dropped
    positions[-1] = replace(positions[-1], reply=reply)
    return positions, dropped


Decoder = Callable[[str, Frame, bytes | None], Decoded]

DECODERS: dict[int, Decoder] = {
    TERMINAL_REPLY: decode_other,
    HEARTBEAT: decode_heartbeat,
    LOGOUT: decode_other,
    REGISTER: decode_login,
    AUTHENTICATE: decode_login,
    LOCATION: decode_location,
    LOCATION_QUERY_REPLY: decode_location,
    LOCATION_BATCH: decode_batch,
}
