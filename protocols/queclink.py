"""Queclink @Track (GL200 / GL300 / GV300 ... family), sans-I/O.

Sources: traccar's Gl200FrameDecoder and Gl200TextProtocolDecoder (PROTOCOLS.md section 6)
and the @Track Air Interface documents as quoted there and in its test corpus.

Three formats share the port; only the ASCII one is decoded::

    +RESP:GTFRI,<ver>,<imei>,<name>,...,<location group>...,...,<send time>,<count>$
    +BUFF:...       the same report, sent from the unit's buffer later
    +ACK:GTxxx,...  a command answer; +ACK:GTHBD is the heartbeat

Fields are comma separated, the frame ends at ``$`` (``\\0`` on GT300 units). There is no
checksum. Field 1 is the protocol version (model + firmware), field 2 the IMEI (GT300: field 1
is the IMEI), the last two the send time and the count number (4 hex). A location group::

    hdop, speed km/h, azimuth, altitude m, lon, lat, YYYYMMDDhhmmss (UTC), mcc, mnc, lac, cell

A GTFRI may carry several groups (its number field); each becomes a Position. HDOP 0 means
the unit has no fix and repeats its last known one: the Position is not ``valid``.

The HEX format (``+RSP +EVT +INF +HBD +ACK`` ..., length field, CRC-16/CCITT-FALSE over the
bytes after the 4-byte header up to the CRC, ``0D 0A``) and @Track Protocol Pro (``+`` or
``-``, 00, u16 length ..., CRC-8 poly 0x31, ``$``) are framed by their length and their
checksum verified, but their layouts are model and mask dependent: they come out as
``Other`` and count as ``unknown_type``.

Replies: ``+ACK:GTHBD`` must be answered ``+SACK:GTHBD,<ver>,<count>$``. Reports are answered
``+SACK:<count>$`` only when the unit is configured to wait for it (``ack=True``; traccar's
``gl200.ack``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Message, Other, Position

TEXT_HEADERS = (b"+RESP:", b"+BUFF:", b"+ACK:", b"+NACK:")
# HEX headers: where the total length sits and its size [traccar Gl200FrameDecoder].
BINARY_LENGTH = {
    b"+ACK": (6, 1), b"+HBD": (5, 1), b"+ATI": (4, 1),
    b"+INF": (7, 2), b"+BNF": (7, 2), b"+CRD": (6, 2), b"+BRD": (6, 2), b"+LGN": (6, 2),
    b"+RSP": (9, 2), b"+BSP": (9, 2), b"+EVT": (9, 2), b"+BVT": (9, 2), b"+CAN": (9, 2),
    b"+DAT": (9, 2),
}  # fmt: skip
PRO_REPORT = (b"+\x00", b"-\x00")  # real time, buffered; u16 length at 2
PRO_HEARTBEAT = b"+\x10"  # u8 length at 2, always 24 bytes
MARKERS = [*TEXT_HEADERS, *BINARY_LENGTH, *PRO_REPORT, PRO_HEARTBEAT]
TEXT_END = re.compile(rb"[$\x00]")
START = re.compile(rb"[+-]")

IMEI = re.compile(r"[0-9]{15}|[0-9A-Fa-f]{14}")
COUNT = re.compile(r"[0-9A-Fa-f]{4}")
LON = re.compile(r"-?[0-9]{1,3}\.[0-9]{6}")
LAT = re.compile(r"-?[0-9]{1,2}\.[0-9]{6}")
STAMP = re.compile(r"[0-9]{14}")
DIGITS = re.compile(r"[0-9]+")
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
PERCENT = re.compile(r"[0-9]{1,3}")
MAC = re.compile(r"[0-9A-Fa-f]{12}")
# Device status: motion state (1x ignition off, 2x on, 4x by sensor; x1 rest, x2 moving),
# then digital inputs and outputs (2 or 4 hex each).
DEVICE_STATUS = re.compile(r"[124][0-9A-Fa-f]{5}(?:[0-9A-Fa-f]{4})?")

# Report types that are alarms or state changes by themselves.
TYPE_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "GTSOS": {"sos": True},
    "GTPNL": {"sos": True},  # panic button
    "GTBPL": {"low_battery": True},  # backup battery low
    "GTJDR": {"jamming": True},
    "GTSPD": {"overspeed": True},
    "GTMPF": {"power_cut": True, "charging": False},  # main power removed
    "GTEPF": {"power_cut": True, "charging": False},  # external power removed (GV series)
    "GTMPN": {"charging": True},
    "GTEPN": {"charging": True},
    "GTIGN": {"ignition": True},
    "GTIGF": {"ignition": False},
    "GTVGN": {"ignition": True},  # virtual ignition
    "GTVGF": {"ignition": False},
}
HEARTBEAT = "+ACK:GTHBD"
INFORMATION = "GTINF"


class QueclinkCodec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "queclink"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        ack: bool = False,
        max_frame_bytes: int = 4096,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``ack``: answer every report with ``+SACK:<count>$`` (the unit's SACK mode).

        ``accept_bad_crc`` applies to the HEX formats only (the ASCII one has no checksum);
        ``now`` is accepted for the common interface: no reply here holds the time.
        """
        self.stats: Counter[str] = Counter()
        self._accept_bad_crc = accept_bad_crc
        self._ack = ack
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._garbage_run = 0
        self._device_uid: str | None = None  # the last IMEI seen, for the HEX frames

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
        for kind, frame in self.frames(data):
            if kind == "text":
                messages += self._decode_text(frame.decode("latin-1"))
            elif (message := self._decode_binary(kind, frame)) is not None:
                messages.append(message)
        return messages

    def frames(self, data: bytes) -> list[tuple[str, bytes]]:
        """The framing half of ``feed``: (format, frame) pairs, without the ``$``."""
        buf = self._buffer
        buf += data
        frames: list[tuple[str, bytes]] = []
        pos = 0
        try:
            while pos < len(buf):
                kind = start_kind(buf, pos)
                if kind is None:
                    break
                found = frame_end(buf, pos, kind, self._max_frame_bytes) if kind else -1
                if found is None:
                    break
                if isinstance(found, int):  # not a frame start after all: skip to the next one
                    pos = self._skip_garbage(pos)
                    continue
                end, next_pos = found
                frames.append((kind, bytes(buf[pos:end])))
                self._garbage_run = 0
                pos = next_pos
        finally:
            del buf[:pos]
        return frames

    def _skip_garbage(self, pos: int) -> int:
        found = START.search(self._buffer, pos + 1)
        start = found.start() if found else len(self._buffer)
        self.stats["garbage_bytes"] += start - pos
        self._garbage_run += start - pos
        if self._garbage_run > self._max_frame_bytes:
            raise ProtocolError(f"queclink: no frame start in {self._garbage_run} bytes")
        return start

    def _decode_binary(self, kind: str, frame: bytes) -> Message | None:
        if kind == "pro":
            crc_ok = crc8(frame[:-2]) == frame[-2]
        else:
            crc_ok = crc16_ccitt(frame[4:-4]) == int.from_bytes(frame[-4:-2])
        if not crc_ok:
            self.stats["bad_crc"] += 1
            if not self._accept_bad_crc:
                return None
        self.stats["unknown_type"] += 1
        header = frame[:4].decode("latin-1") if kind == "binary" else f"pro:{frame[0]:02x}"
        raw = {"type": header, "format": kind, "length": len(frame), "crc_ok": crc_ok}
        return Other(self._device_uid, header, None, raw)

    def _decode_text(self, text: str) -> list[Message]:
        fields = text.split(",")
        header = fields[0]
        gt300 = len(fields) > 1 and re.fullmatch(r"[0-9]{15}", fields[1]) is not None
        uid = fields[1] if gt300 else fields[2] if len(fields) > 2 else ""
        if len(fields) < 4 or not IMEI.fullmatch(uid):
            self.stats["bad_id"] += 1
            return []
        self._device_uid = uid
        count_at = len(fields) - 1
        if gt300 and not COUNT.fullmatch(fields[-1]):  # GT300: ...,<count>,<version>
            count_at -= 1
        count = fields[count_at] if COUNT.fullmatch(fields[count_at]) else None
        raw: dict[str, Any] = {"type": header, "version": None if gt300 else fields[1]}
        raw |= {"send_time": fields[count_at - 1], "count": count}
        if header == HEARTBEAT:
            reply = None if count is None else f"+SACK:GTHBD,{fields[1]},{count}$".encode()
            return [Heartbeat(uid, reply, {}, raw)]
        report = header.partition(":")[2]
        is_report = header.startswith(("+RESP:", "+BUFF:"))
        reply = f"+SACK:{count}$".encode() if self._ack and is_report and count else None
        raw["fields"] = fields
        if not is_report:
            return [Other(uid, header, reply, raw)]
        if report == INFORMATION:
            attributes = {} if gt300 else decode_information(fields)
            return [Heartbeat(uid, reply, attributes, raw)]
        positions, tail_at = self._locations(uid, fields, count_at - 1)
        attributes = dict(TYPE_ATTRIBUTES.get(report, {}))
        attributes |= decode_report_state(report, fields)
        if tail_at is not None:
            attributes |= decode_tail(fields[tail_at : count_at - 1])
        if not positions:
            if attributes:
                return [Heartbeat(uid, reply, attributes, raw)]
            return [Other(uid, header, reply, raw)]
        last = positions[-1]  # the report's own values go with its last fix, as the reply
        raw = last.raw | {k: v for k, v in raw.items() if k not in last.raw}
        positions[-1] = replace(last, attributes=last.attributes | attributes, raw=raw, reply=reply)
        return list(positions)  # as list[Message]

    def _locations(
        self, uid: str, fields: list[str], end: int
    ) -> tuple[list[Position], int | None]:
        """Positions from the location groups before ``end``, and where the fields after the
        last group's cell begin (None without any group)."""
        positions: list[Position] = []
        tail_at = None
        for at in range(8, end):
            if not (STAMP.fullmatch(fields[at]) and LAT.fullmatch(fields[at - 1])):
                continue
            if not LON.fullmatch(fields[at - 2]):
                continue
            cell, tail_at = read_cell(fields, at + 1, end)
            try:
                position = read_location(uid, fields[at - 6 : at + 1])
            except ValueError as error:
                self.stats[str(error)] += 1
                continue
            raw = {"type": fields[0], "group": len(positions), "gps_accuracy": fields[at - 6]}
            raw |= cell
            positions.append(replace(position, raw=raw))
        return positions, tail_at


def start_kind(buf: bytes | bytearray, pos: int) -> Literal["text", "binary", "pro", ""] | None:
    """The format of a frame starting at ``pos``; "" if none starts there; None: need bytes."""
    head = bytes(buf[pos : pos + 6])
    if any(head.startswith(marker) for marker in TEXT_HEADERS):
        return "text"
    if any(len(head) < len(m) and m.startswith(head) for m in MARKERS):
        return None  # "+AC" may become "+ACK:" (text) or "+ACK\x01" (HEX)
    if head[:4] in BINARY_LENGTH:
        return "binary"
    if head[:2] in (*PRO_REPORT, PRO_HEARTBEAT):
        return "pro"
    return ""


def frame_end(
    buf: bytes | bytearray, pos: int, kind: str, max_frame_bytes: int
) -> tuple[int, int] | int | None:
    """(end of the frame, where the next one starts); -1: not a frame; None: need bytes.

    Text ends at ``$`` or ``\\0`` (not part of the frame), or where a new frame's header
    begins: traccar's test frames come without ``$`` and units may drop it. HEX frames end
    where their length says, on 0D 0A (Protocol Pro on ``$``).

    Raises:
        ProtocolError: a text frame without end within ``max_frame_bytes``.
    """
    if kind == "text":
        limit = min(len(buf), pos + max_frame_bytes + 1)
        delimiter = TEXT_END.search(buf, pos + 1, limit)
        stop = delimiter.start() if delimiter else limit
        plus = buf.find(b"+", pos + 1, stop)
        while plus >= 0:
            following = start_kind(buf, plus)
            if following is None:
                return None
            if following:
                return plus, plus
            plus = buf.find(b"+", plus + 1, stop)
        if delimiter:
            return delimiter.start(), delimiter.start() + 1
        if len(buf) - pos > max_frame_bytes:
            raise ProtocolError(f"queclink: no frame end in {max_frame_bytes} bytes")
        return None
    if kind == "pro":  # heartbeat: 24 bytes, u8 length; report: u16 length, 23 bytes or more
        at, size, shortest, tail = (2, 1, 24, b"$") if buf[pos + 1] == 0x10 else (2, 2, 23, b"$")
        longest = 24 if size == 1 else max_frame_bytes
    else:  # ..., count (2), CRC (2), 0D 0A
        at, size = BINARY_LENGTH[bytes(buf[pos : pos + 4])]
        shortest, longest, tail = at + size + 6, max_frame_bytes, b"\r\n"
    if len(buf) < pos + at + size:
        return None
    length = int.from_bytes(buf[pos + at : pos + at + size])
    if not shortest <= length <= longest:
        return -1
    if len(buf) < pos + length:
        return None
    end = pos + length
    return (end, end) if buf[end - len(tail) : end] == tail else -1


def read_cell(fields: list[str], at: int, end: int) -> tuple[dict[str, Any], int]:
    """MCC, MNC, LAC, cell id after a fix (GT501: after a WiFi list); and the index after."""
    if at + 1 < end and MAC.fullmatch(fields[at + 1]) and DIGITS.fullmatch(fields[at]):
        at += 1 + 5 * int(fields[at])  # n x (mac, rssi, 3 reserved)
    cell = fields[at : at + 4]
    if len(cell) == 4 and DIGITS.fullmatch(cell[0]) and DIGITS.fullmatch(cell[1]):
        lac, cid = cell[2], cell[3]
        if re.fullmatch(r"[0-9A-Fa-f]{1,8}", lac) and re.fullmatch(r"[0-9A-Fa-f]{1,8}", cid):
            return {
                "mcc": int(cell[0]),
                "mnc": int(cell[1]),
                "lac": int(lac, 16),
                "cell": int(cid, 16),
            }, at + 4
    return {}, min(at + 4, end)


def read_location(uid: str, group: list[str]) -> Position:
    """hdop, speed, azimuth, altitude, lon, lat, time. Raises ValueError(reason)."""
    hdop_text, speed_text, course_text, altitude_text, lon_text, lat_text, stamp = group
    try:
        fix_time = datetime(
            int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]),
            int(stamp[8:10]), int(stamp[10:12]), int(stamp[12:14]), tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        raise ValueError("bad_time") from None
    hdop, speed, course, altitude = (
        float(text) if NUMBER.fullmatch(text) else None
        for text in (hdop_text, speed_text, course_text, altitude_text)
    )
    lat, lon = float(lat_text), float(lon_text)
    if abs(lat) > 90 or abs(lon) > 180 or not 0 <= (course or 0) <= 360 or (speed or 0) < 0:
        raise ValueError("bad_position")
    attributes = {"hdop": hdop} if hdop else {}
    return Position(
        uid, fix_time, lat, lon, hdop is None or hdop > 0, speed or 0.0, course or 0.0,
        altitude, attributes=attributes,
    )  # fmt: skip


def decode_motion(state: str) -> dict[str, Any]:
    """The motion state byte: 1x ignition off, 2x on (4x: by motion sensor); x1 rest, x2 moving."""
    attributes: dict[str, Any] = {}
    if state[:1] in ("1", "2"):
        attributes["ignition"] = state[0] == "2"
    if state[1:2] in ("1", "2"):
        attributes["motion"] = state[1] == "2"
    return attributes


def decode_report_state(report: str, fields: list[str]) -> dict[str, Any]:
    """Type specific values before the location: GTSTT's state, GTBPL's battery voltage."""
    value = fields[4] if len(fields) > 4 else ""
    if report == "GTSTT" and re.fullmatch(r"[0-9A-Fa-f]{2}", value):
        return decode_motion(value)
    if report == "GTBPL" and re.fullmatch(r"[0-9]+\.[0-9]+", value):
        return {"battery_v": float(value)}
    return {}


def decode_tail(tail: list[str]) -> dict[str, Any]:
    """Backup battery % and device status after the last location group.

    Three layouts: GV series ``odometer, hour meter, adc..., battery %, device status, ...``;
    GL500M ``x, x, , battery %, mode, ...``; GL series ``..., battery %`` (2-4 fields).
    """
    attributes: dict[str, Any] = {}
    for k, value in enumerate(tail):
        if DEVICE_STATUS.fullmatch(value):
            attributes |= decode_motion(value)
            battery = tail[k - 1] if k else ""
            break
    else:
        if len(tail) >= 5 and tail[2] == "" and tail[4] in ("0", "1") and DIGITS.fullmatch(tail[1]):
            battery = tail[3]
        else:
            battery = tail[-1] if 2 <= len(tail) <= 4 else ""
    if PERCENT.fullmatch(battery) and int(battery) <= 100:
        attributes["battery_pct"] = int(battery)
    return attributes


def decode_information(fields: list[str]) -> dict[str, Any]:
    """GTINF: [VIN,] name, state, ICCID, CSQ rssi, ber, external power flag, external power
    mV (GL series: odometer), backup battery, battery V, charging."""
    base = 4 if len(fields) > 3 and len(fields[3]) == 17 else 3
    values = fields[base : base + 10] + [""] * 10
    _, _, _, rssi, _, _, external, _, battery, charging = values[:10]
    attributes: dict[str, Any] = {}
    if DIGITS.fullmatch(rssi) and int(rssi) <= 31:
        attributes["gsm_signal"] = int(rssi)
    if DIGITS.fullmatch(external):
        attributes["external_power_v"] = int(external) / 1000
    if re.fullmatch(r"[0-9]+\.[0-9]+", battery):
        attributes["battery_v"] = float(battery)
    if charging in ("0", "1"):
        attributes["charging"] = charging == "1"
    return attributes


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected; "123456789" -> 0x29B1."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def crc8(data: bytes) -> int:
    """CRC-8 of @Track Protocol Pro: poly 0x31, init 0xFF, not reflected, no xor out."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc
