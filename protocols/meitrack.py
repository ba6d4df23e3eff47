"""Meitrack GPRS protocol (MVT / T1 / T333 / T366 ...), sans-I/O.

Sources: traccar's MeitrackProtocolDecoder and MeitrackFrameDecoder (PROTOCOLS.md section 6),
the Meitrack GPRS protocol documents as quoted there.

Frame::

    $$ <flag> <LEN> , <IMEI> , <CMD> , <body> * <CS> \\r\\n

LEN counts the bytes from the first comma through ``\\r\\n``; CS is the sum of all bytes from
``$$`` through ``*``, mod 256, two hex digits. Text frames (AAA, ...) end at the first
``*CS\\r\\n``, which also copes with a wrong LEN; the binary ones (CCE, CCC, D00 photo data)
only by their LEN. A bad CS drops the frame (``bad_crc``) unless ``accept_bad_crc``.

AAA (event report), comma separated after the command::

    event, lat, lon, YYMMDDhhmmss (UTC), A|V, satellites, GSM, km/h, course, HDOP, altitude m,
    odometer m, runtime s, mcc|mnc|lac|ci, inputs+outputs (2+2 hex), analog values, ...

The analog values are either ``adc1|adc2|adc3|battery|power`` in hex (1/100 V on the T
series; MVT and MT90 units scale otherwise) or ``battery|power|rtc|mcu|gps`` as volts.

CCE (T366 and later): little-endian records of parameters in four groups by value size (1,
2, 4 bytes, then id + length + data); ids 0xFE.. take two bytes. CCC (older binary): fixed
52-byte records. Event codes are those of AAA.

Replies (traccar): CCC ``@@<flag><LEN>,<IMEI>,CCC,<records>*CS\\r\\n``; AAC
``@@<flag><LEN>,<IMEI>,AAC,1*CS\\r\\n``; nothing to AAA, CCE and the rest.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Message, Other, Position

START = b"$$"
HEADER = re.compile(rb"\$\$[\x21-\x7e]([0-9]{1,5}),([0-9A-Za-z]{1,20}),([0-9A-Z]{3}),")
HEADER_MAX = 2 + 1 + 5 + 1 + 20 + 1 + 3 + 1
HEADER_START = re.compile(  # what may still become a HEADER
    rb"\$(?:\$(?:[\x21-\x7e](?:[0-9]{1,5}(?:,(?:[0-9A-Za-z]{1,20}(?:,[0-9A-Z]{0,3})?)?)?)?)?)?"
)
TEXT_END = re.compile(rb"\*[0-9A-Fa-f]{2}\r\n")
BINARY = frozenset({"CCE", "CCC", "D00"})  # framed by LEN only: their data may hold *CS\r\n
KNOWN = frozenset({"AAA", "AFF", "AAC", "CCE", "CCC", "D00", "D03", "D82"})
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)

LAT_LON = re.compile(r"-?[0-9]{1,3}\.[0-9]+")
DIGITS = re.compile(r"[0-9]+")
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
HEX = re.compile(r"[0-9A-Fa-f]+")
VOLTS = re.compile(r"[0-9]+\.[0-9]+")

# Event codes [traccar]: 1 SOS, 17 low battery, 18 low external power, 19 speeding, 20/21
# geofence in/out, 22 external power on, 23 off, 36 towed, 44 jamming, 78 collision; the rest
# (18, 20, 21, 36, 78, harsh driving 90/91/129/130) stay in raw["event"].
EVENT_ATTRIBUTES: dict[int, dict[str, Any]] = {
    1: {"sos": True},
    17: {"low_battery": True},
    19: {"overspeed": True},
    22: {"charging": True},
    23: {"power_cut": True, "charging": False},
    44: {"jamming": True},
}
CCC_RECORD = struct.Struct("<BiiIBBBHHHHIIHHHHHHHHI")  # 52 bytes [traccar decodeBinaryC]


class Dropped(Exception):
    """A frame's data is implausible or short: count ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MeitrackCodec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "meitrack"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 4096,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``now`` is accepted for the common interface: no reply here holds the time."""
        self.stats: Counter[str] = Counter()
        self._accept_bad_crc = accept_bad_crc
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._garbage_run = 0

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
            messages += self._decode(frame)
        return messages

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the frames ``data`` completed, garbage skipped."""
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while (pos := self._skip_garbage(pos)) < len(buf):
                end = frame_end(buf, pos, self._max_frame_bytes)
                if end is None:
                    break
                if end < 0:  # "$$" without a frame behind it
                    pos = self._skip_garbage(pos, skip=1)
                    continue
                frames.append(bytes(buf[pos:end]))
                self._garbage_run = 0
                pos = end
        finally:
            del buf[:pos]
        return frames

    def _skip_garbage(self, pos: int, skip: int = 0) -> int:
        buf = self._buffer
        start = buf.find(START, pos + skip)
        if start < 0:  # keep a last "$": it may begin a start marker
            start = len(buf) - 1 if len(buf) > pos + skip and buf[-1:] == b"$" else len(buf)
            start = max(start, pos)
        if start > pos:
            self.stats["garbage_bytes"] += start - pos
            self._garbage_run += start - pos
            if self._garbage_run > self._max_frame_bytes:
                raise ProtocolError(f"meitrack: no frame start in {self._garbage_run} bytes")
        return start

    def _decode(self, frame: bytes) -> list[Message]:
        header = HEADER.match(frame)
        assert header is not None  # frame_end matched it
        flag, uid, command = chr(frame[2]), header[2].decode(), header[3].decode()
        crc_ok = checksum(frame[:-4]) == int(frame[-4:-2], 16)
        if not crc_ok:
            self.stats["bad_crc"] += 1
            if not self._accept_bad_crc:
                return []
        body = frame[header.end() : -5]
        raw: dict[str, Any] = {"command": command, "flag": flag, "crc_ok": crc_ok}
        if command not in KNOWN:
            self.stats["unknown_type"] += 1
        try:
            if command == "CCE":
                return decode_cce(uid, body, raw, self.stats)
            if command == "CCC":  # acknowledged with the number of records
                records = decode_ccc(uid, body, raw, self.stats)
                reply = command_frame(flag, uid, f"CCC,{len(records)}")
                last = records[-1] if records else Other(uid, command, None, raw)
                return [*records[:-1], replace(last, reply=reply)]
            if command == "AAC":
                return [Other(uid, command, command_frame(flag, uid, "AAC,1"), raw)]
            if command == "D00":  # photo data: file name, packets, packet number, JPEG bytes
                header_fields = body.split(b",", 3)[:3]
                if len(header_fields) < 3:
                    raise Dropped("short_content")
                names = ("file", "packets", "packet")
                raw |= {k: v.decode("latin-1") for k, v in zip(names, header_fields, strict=True)}
                return [Other(uid, command, None, raw)]
            return [decode_text(uid, command, body.decode("latin-1").split(","), raw)]
        except Dropped as drop:
            self.stats[drop.reason] += 1
            return [Other(uid, command, None, raw)]


def frame_end(buf: bytes | bytearray, pos: int, max_frame_bytes: int) -> int | None:
    """End of the frame starting at ``pos``; -1 if no frame starts there; None: need bytes.

    Raises:
        ProtocolError: a text frame without its ``*CS\\r\\n`` within ``max_frame_bytes``.
    """
    header = HEADER.match(buf, pos, pos + HEADER_MAX)
    if header is None:
        head = bytes(buf[pos : pos + HEADER_MAX])
        return None if len(head) < HEADER_MAX and HEADER_START.fullmatch(head) else -1
    declared = header.end(1) - pos + int(header[1])  # up to the first comma, then LEN
    if header[3].decode() in BINARY:
        if not header.end() - pos + 5 <= declared <= max_frame_bytes:
            return -1
        if len(buf) < pos + declared:
            return None
        end = pos + declared
        return end if buf[end - 2 : end] == b"\r\n" and buf[end - 5] == ord("*") else -1
    limit = min(len(buf), pos + max_frame_bytes)
    found = TEXT_END.search(buf, header.end() - 1, limit)
    if found:
        return found.end()
    if len(buf) - pos >= max_frame_bytes:
        raise ProtocolError(f"meitrack: no frame end in {max_frame_bytes} bytes")
    return None


def checksum(data: bytes) -> int:
    """Sum of the bytes, mod 256 [traccar Checksum.sum]."""
    return sum(data) & 0xFF


def command_frame(flag: str, uid: str, content: str) -> bytes:
    """``@@<flag><LEN>,<IMEI>,<content>*CS\\r\\n``, LEN from the first comma through CRLF."""
    length = 1 + len(uid) + 1 + len(content) + 1 + 2 + 2
    head = f"@@{flag}{length},{uid},{content}*".encode()
    return head + f"{checksum(head):02X}\r\n".encode()


def event_attributes(event: int) -> dict[str, Any]:
    return dict(EVENT_ATTRIBUTES.get(event, {}))


def decode_text(uid: str, command: str, fields: list[str], raw: dict[str, Any]) -> Message:
    """AAA / AFF event report (AFF has one more field first); other commands stay raw."""
    at = 1 if len(fields) > 4 and re.fullmatch(r"[0-9]{12}", fields[4]) else 0
    report = fields[at:]
    if len(report) < 13 or not re.fullmatch(r"[0-9]{12}", report[3]):
        return Other(uid, command, None, raw | {"content": ",".join(fields)})
    event, lat, lon, stamp, fix, sats, gsm, speed, course, hdop, altitude, odometer = report[:12]
    if not (DIGITS.fullmatch(event) and LAT_LON.fullmatch(lat) and LAT_LON.fullmatch(lon)):
        raise Dropped("bad_position")
    if not (NUMBER.fullmatch(speed) and NUMBER.fullmatch(course)):
        raise Dropped("bad_position")
    try:
        fix_time = datetime.strptime(stamp, "%y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise Dropped("bad_time") from None
    attributes = event_attributes(int(event))
    if DIGITS.fullmatch(gsm):
        attributes["gsm_signal"] = int(gsm)
    if NUMBER.fullmatch(hdop):
        attributes["hdop"] = float(hdop)
    if DIGITS.fullmatch(odometer):
        attributes["odometer_m"] = float(odometer)
    raw |= {"event": int(event), "runtime": report[12]}
    raw |= read_cell(report[13] if len(report) > 13 else "")
    if len(report) > 14 and re.fullmatch(r"[0-9A-Fa-f]{4}", report[14]):
        raw |= {"input": int(report[14][:2], 16), "output": int(report[14][2:], 16)}
    if len(report) > 15:
        attributes |= read_analog(report[15], raw)
    if len(report) > 16 and report[16]:
        raw["event_data"] = report[16]
    return make_position(
        uid, fix_time, float(lat), float(lon), fix == "A", float(speed), float(course),
        float(altitude) if NUMBER.fullmatch(altitude) else None,
        int(sats) if DIGITS.fullmatch(sats) else None, attributes, raw,
    )  # fmt: skip


def read_cell(text: str) -> dict[str, Any]:
    """``mcc|mnc|lac|ci``, LAC and cell id in hex."""
    parts = text.split("|")
    if len(parts) != 4 or not (DIGITS.fullmatch(parts[0]) and DIGITS.fullmatch(parts[1])):
        return {}
    lac, cid = (int(part, 16) if HEX.fullmatch(part) else None for part in parts[2:])
    return {"mcc": int(parts[0]), "mnc": int(parts[1]), "lac": lac, "cell": cid}


def read_analog(text: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Volts ``battery|power|rtc|mcu|gps``, or hex ``adc1|adc2|adc3|battery|power``.

    The hex values are 1/100 V on the T series; MVT and MT90 units scale them otherwise
    (traccar keys it on the device model). A battery over 5 V cannot be a T series reading
    of its Li-ion cell: then both stay raw only.
    """
    parts = text.split("|")
    raw["analog"] = text
    if len(parts) >= 2 and VOLTS.fullmatch(parts[0]) and VOLTS.fullmatch(parts[1]):
        return {"battery_v": float(parts[0]), "external_power_v": float(parts[1])}
    if len(parts) == 5 and HEX.fullmatch(parts[3]) and int(parts[3], 16) <= 500:
        attributes = {"battery_v": int(parts[3], 16) / 100}
        if HEX.fullmatch(parts[4]):
            attributes["external_power_v"] = int(parts[4], 16) / 100
        return attributes
    return {}


def make_position(
    uid: str, fix_time: datetime, lat: float, lon: float, valid: bool, speed: float,
    course: float, altitude: float | None, satellites: int | None,
    attributes: dict[str, Any], raw: dict[str, Any],
) -> Position:  # fmt: skip
    if abs(lat) > 90 or abs(lon) > 180 or not 0 <= course <= 360 or speed < 0:
        raise Dropped("bad_position")
    return Position(
        uid, fix_time, lat, lon, valid, speed, course, altitude,
        satellites=satellites, attributes=attributes, raw=raw,
    )  # fmt: skip


class Reader:
    """Little-endian fields of a binary body; Dropped("short_content") past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise Dropped("short_content")
        self.at += size
        return self.data[self.at - size : self.at]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "little")

    def param_id(self) -> int:
        """One byte, or two (big-endian) when the first is 0xFE."""
        return (
            self.uint(1)
            if self.data[self.at : self.at + 1] != b"\xfe"
            else 0xFE00 | self.take(2)[1]
        )


def decode_cce(uid: str, body: bytes, raw: dict[str, Any], stats: Counter[str]) -> list[Message]:
    """Records left in the unit (4), record count (2), then per record: length (2), index
    (2) and the four groups of parameters."""
    reader = Reader(body)
    raw = raw | {"cached": reader.uint(4)}
    count = reader.uint(2)
    messages: list[Message] = []
    for _ in range(count):
        start = reader.at
        length = reader.uint(2)  # of the record after these two bytes; some units pad it
        reader.take(2)  # record index
        values: dict[int, int | bytes] = {}
        for size in (1, 2, 4):
            for _ in range(reader.uint(1)):
                key = reader.param_id()
                values[key] = reader.uint(size)
        for _ in range(reader.uint(1)):
            key = reader.param_id()
            values[key] = reader.take(reader.uint(1))
        reader.at = max(reader.at, start + 2 + length)
        try:
            messages.append(cce_message(uid, values, raw))
        except Dropped as drop:
            stats[drop.reason] += 1
    return messages


def cce_message(uid: str, values: dict[int, int | bytes], raw: dict[str, Any]) -> Message:
    """One CCE record [traccar decodeBinaryE]: 0x01/0x40 event, 0x02/0x03 lat/lon 1e-6,
    0x04 seconds since 2000, 0x05 fix, 0x06 satellites, 0x07 GSM, 0x08 km/h, 0x09 course,
    0x0A HDOP, 0x0B altitude, 0x0C odometer m, 0x14/0x15 outputs/inputs, 0x19 battery and
    0x1A external power (1/100 V), 0xFE69 battery %, 0xFEA8 battery levels."""
    number = {key: value for key, value in values.items() if isinstance(value, int)}
    event = number.get(0x01, number.get(0x40, 0))
    attributes = event_attributes(event)
    raw = raw | {"event": event, "parameters": sorted(values)}
    for key, name in ((0x14, "output"), (0x15, "input"), (0x0D, "runtime"), (0x0A, "hdop")):
        if key in number:
            raw[name] = number[key]
    for key, name, scale in ((0x19, "battery_v", 0.01), (0x1A, "external_power_v", 0.01)):
        if key in number:
            attributes[name] = round(number[key] * scale, 2)
    if 0x07 in number:
        attributes["gsm_signal"] = number[0x07]
    if 0x0C in number:
        attributes["odometer_m"] = float(number[0x0C])
    if 0xFE69 in number:
        attributes["battery_pct"] = number[0xFE69]
    levels = values.get(0xFEA8)
    if isinstance(levels, bytes) and len(levels) >= 2 and levels[0]:
        attributes["battery_pct"] = levels[1]
    if not {0x02, 0x03, 0x04} <= number.keys():
        return Heartbeat(uid, None, attributes, raw) if attributes else Other(uid, "CCE", None, raw)
    return make_position(
        uid, EPOCH_2000 + timedelta(seconds=number[0x04]),
        signed(number[0x02]) / 1e6, signed(number[0x03]) / 1e6, number.get(0x05, 0) > 0,
        float(number.get(0x08, 0)), float(number.get(0x09, 0)),
        float(signed(number[0x0B], 16)) if 0x0B in number else None,
        number.get(0x06), attributes, raw,
    )  # fmt: skip


def signed(value: int, bits: int = 32) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def decode_ccc(uid: str, body: bytes, raw: dict[str, Any], stats: Counter[str]) -> list[Message]:
    """Version (2), record size (2), count (4), then 52-byte records [traccar decodeBinaryC]."""
    positions: list[Message] = []
    for at in range(8, len(body) - CCC_RECORD.size + 1, CCC_RECORD.size):
        (
            event, lat, lon, seconds, fix, sats, gsm, speed, course, hdop, altitude,
            odometer, runtime, mcc, mnc, lac, cid, status, _, battery, power, _,
        ) = CCC_RECORD.unpack_from(body, at)  # fmt: skip
        attributes = event_attributes(event) | {"gsm_signal": gsm, "hdop": hdop / 10}
        attributes |= {"odometer_m": float(odometer), "battery_v": battery / 100}
        record_raw = raw | {"event": event, "runtime": runtime, "status": status, "power": power}
        record_raw |= {"mcc": mcc, "mnc": mnc, "lac": lac, "cell": cid}
        try:
            positions.append(
                make_position(
                    uid, EPOCH_2000 + timedelta(seconds=seconds), lat / 1e6, lon / 1e6,
                    fix == 1, float(speed), float(course), float(altitude), sats, attributes,
                    record_raw,
                )
            )  # fmt: skip
        except Dropped as drop:
            stats[drop.reason] += 1
    return positions
