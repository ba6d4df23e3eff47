"""Teltonika AVL protocol (Codec 8, 8 Extended, 16) over TCP and UDP, sans-I/O.

Sources: the Teltonika wiki "Teltonika Data Sending Protocols" (TW) and "Help with Server
FAQ" (TFAQ); for what units send in the field, traccar's Teltonika frame and protocol
decoders. The shared PROTOCOLS.md, section 4, has the details.

TCP, integers big-endian::

    00 0F | IMEI (15 ASCII digits)                                  -> 01
    00 00 00 00 | LEN (4) | CODEC | N1 | RECORDS | N2 | 00 00 CRC   -> N1 as 4 bytes
    FF                                                              keep-alive, some firmwares

LEN counts CODEC .. N2 and the CRC (CRC-16/IBM) covers the same bytes. The server answers the
IMEI with 01 to accept the unit (00 refuses it; the gateway then sends nothing and closes) and
a packet with the number of records it stored: the unit resends what is not acknowledged
[TFAQ].

UDP, one packet per datagram, no CRC::

    LEN (2) | PACKET ID (2) | 01 | AVL PACKET ID | IMEI LEN (2) | IMEI | CODEC .. N2
    -> 00 05 | PACKET ID | 01 | AVL PACKET ID | N1 (1 byte)

Record: time (8, ms since 1970 UTC) | priority (1: 0 low, 1 high, 2 panic) | lon (4) | lat (4)
(signed, 1e-7 degree) | altitude (2, m) | angle (2) | satellites (1) | speed (2, km/h) | IO.
IO of Codec 8: event IO id (1), total (1), then groups of 1-, 2-, 4- and 8-byte values, each a
count (1) and (id (1), value) pairs. Codec 8E: ids and counts are 2 bytes and an NX group
follows: count (2), then id (2), length (2), value. Codec 16: event IO id (2), generation type
(1), then as Codec 8 with 2-byte ids. Some units add a group of 16-byte values after the 8-byte
one (traccar's "extended" option): it is read when the plain layout does not fit the packet.

Framing trusts LEN, as the unit means it (and traccar does): a header 00 00 00 00 | LEN is a
frame when its bytes arrive with N2 == N1 and 00 00 before the CRC, else garbage skipped byte by
byte. A wrong CRC drops the packet unanswered (the unit resends it) unless ``accept_bad_crc``;
so do records that do not fill the packet exactly.

Codec 12/13/14 packets are command responses and 0x07 is the old GH3000 layout: kept as
``Other``, unanswered. A record is a fix even when its GPS part is implausible (the unit
counts it as sent): it becomes an invalid ``Position`` saying why in ``raw["implausible"]``.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, NamedTuple

from protocols.binary import crc16_ibm
from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Login, Message, Other, Position

KEEPALIVE = 0xFF
IMEI_SIZE = 15
LOGIN_SIZE = 2 + IMEI_SIZE
HEADER_SIZE = 8  # 00 00 00 00 | LEN
CRC_SIZE = 4
MIN_DATA = 3  # CODEC, N1, N2
ACCEPT = b"\x01"  # IMEI accepted [TFAQ]

CODEC_8 = 0x08
CODEC_8_EXTENDED = 0x8E
CODEC_16 = 0x10
# Command responses: type (1), size (4), then what the size counts before the payload:
# nothing (Codec 12), a timestamp (Codec 13) or the IMEI (Codec 14) [TW].
RESPONSE_CODECS = {0x0C: 0, 0x0D: 4, 0x0E: 8}

PANIC = 2  # record priority
# time (ms), priority, lon, lat (1e-7 deg), altitude, angle, satellites, speed [TW]
GPS_ELEMENT = struct.Struct(">QBiihHBH")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Layout(NamedTuple):
    """Sizes of the IO part of a record in one codec."""

    event_size: int  # event IO id
    generation: bool  # a generation type byte follows the event IO id (Codec 16)
    count_size: int  # the total and each group's count
    id_size: int  # each IO id
    groups: tuple[int, ...]  # value sizes of the fixed-size groups, in order
    nx: bool  # a group of variable-length values follows (Codec 8E)


GROUPS = ((1, 2, 4, 8), (1, 2, 4, 8, 16))  # plain; with the 16-byte group of some units


def _layouts(event: int, generation: bool, count: int, ident: int, nx: bool) -> list[Layout]:
    """The plain layout, then the one with a 16-byte group (tried if the first does not fit)."""
    return [Layout(event, generation, count, ident, groups, nx) for groups in GROUPS]


LAYOUTS = {
    CODEC_8: _layouts(1, False, 1, 1, nx=False),
    CODEC_8_EXTENDED: _layouts(2, False, 2, 2, nx=True),
    CODEC_16: _layouts(2, True, 1, 2, nx=False),
}


def _flag(value: int) -> bool | None:
    return bool(value) if value <= 1 else None


def _at_most(limit: int) -> Callable[[int], int | None]:
    return lambda value: value if value <= limit else None


# Well-known IO elements [TW "FMB AVL ID list"; traccar] as attributes; None: implausible for
# that id (other unit families use some ids otherwise). Every IO element stays in raw["io"],
# 246 (towing) and 181 (PDOP) only there.
IO_ATTRIBUTES: dict[int, tuple[str, Callable[[int], Any]]] = {
    239: ("ignition", _flag),
    240: ("motion", _flag),
    66: ("external_power_v", lambda mv: mv / 1000),
    67: ("battery_v", lambda mv: mv / 1000),
    113: ("battery_pct", _at_most(100)),
    21: ("gsm_signal", _at_most(5)),
    16: ("odometer_m", float),  # total odometer
    182: ("hdop", lambda tenths: tenths / 10),
    249: ("jamming", _flag),
    252: ("power_cut", _flag),  # "unplug" on FMB models
}


class Undecodable(Exception):
    """The records do not fill the packet as its codec says: the whole packet is bad."""


class TeltonikaCodec:
    """One per TCP connection or UDP peer. Feed it bytes (UDP: one whole datagram a call)."""

    name = "teltonika"

    def __init__(
        self,
        *,
        transport: Literal["tcp", "udp"] = "tcp",
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 8192,  # TW: an AVL packet is at most 1280 bytes
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """``now`` is accepted for the common codec signature; no Teltonika reply holds a time."""
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', not {transport!r}")
        self.stats: Counter[str] = Counter()
        self._udp = transport == "udp"
        self._accept_bad_crc = accept_bad_crc
        self._max_frame_bytes = max_frame_bytes
        self._now = now or partial(datetime.now, UTC)
        self._buffer = bytearray()
        self._skipped_run = 0  # garbage and keep-alive bytes since the last frame
        self._device_uid: str | None = None  # TCP: known after the IMEI

    @property
    def pending(self) -> bytes:
        """Bytes kept for the next ``feed``: the start of an incomplete frame."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the TCP stream, or one whole UDP datagram; return its messages.

        Raises:
            ProtocolError: TCP only: more than ``max_frame_bytes`` without a frame.
        """
        if self._udp:
            return self._decode_datagram(bytes(data))
        messages: list[Message] = []
        for frame in self.frames(data):
            messages += self._decode_frame(frame)
        return messages

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed`` (TCP): the frames ``data`` completed, keep-alives
        included, garbage skipped."""
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while pos < len(buf):
                size = frame_size(buf, pos, self._max_frame_bytes)
                if size is None:
                    break
                if size == 0:  # not a frame start: skip to a byte that may begin one
                    size = next_start(buf, pos + 1) - pos
                    self.stats["garbage_bytes"] += size
                    self._count_skipped(size)
                elif size == 1:  # a keep-alive is a frame, but it does not end a garbage run
                    frames.append(bytes(buf[pos : pos + 1]))
                    self._count_skipped(1)
                else:
                    frames.append(bytes(buf[pos : pos + size]))
                    self._skipped_run = 0
                pos += size
        finally:
            del buf[:pos]
        return frames

    def _count_skipped(self, size: int) -> None:
        self._skipped_run += size
        if self._skipped_run > self._max_frame_bytes:
            raise ProtocolError(f"teltonika: no frame in {self._skipped_run} bytes")

    def _decode_frame(self, frame: bytes) -> list[Message]:
        if len(frame) == 1:  # keep-alive
            return []
        if frame[1] == IMEI_SIZE:  # an AVL packet begins 00 00
            self._device_uid = frame[2:].decode("ascii")
            return [Login(self._device_uid, reply=ACCEPT)]
        body = frame[HEADER_SIZE:-CRC_SIZE]
        if crc16_ibm(body) != int.from_bytes(frame[-2:]):
            self.stats["bad_crc"] += 1
            if not self._accept_bad_crc:
                return []  # unanswered: the unit sends it again
        return self._decode_packet(self._device_uid, body, tcp_ack, {})

    def _decode_datagram(self, data: bytes) -> list[Message]:
        """A UDP datagram: its header checked, its packet decoded; a bad one is counted."""
        if len(data) > self._max_frame_bytes:
            self.stats["too_long"] += 1
            return []
        if len(data) < 8 or int.from_bytes(data[:2]) != len(data) - 2:
            self.stats["short_frame"] += 1
            return []
        packet_id, avl_packet_id = data[2:4], data[5]
        imei_end = 8 + int.from_bytes(data[6:8])
        imei = data[8:imei_end]
        if not (imei.isdigit() and imei_end <= len(data)):
            self.stats["bad_imei"] += 1
            return []
        ack = partial(udp_ack, packet_id, avl_packet_id)
        raw = {"packet_id": int.from_bytes(packet_id), "avl_packet_id": avl_packet_id}
        return self._decode_packet(imei.decode("ascii"), data[imei_end:], ack, raw)

    def _decode_packet(
        self, uid: str | None, body: bytes, ack: Callable[[int], bytes], raw: dict[str, Any]
    ) -> list[Message]:
        """CODEC | N1 | records | N2: the records as positions, the ack on the last one."""
        if len(body) < MIN_DATA or body[1] != body[-1]:
            self.stats["bad_record"] += 1
            return []
        codec, count = body[0], body[1]
        if codec not in LAYOUTS:
            self.stats["unknown_type"] += 1
            other = raw | {"count": count} | read_response(codec, body[2:-1])
            return [Other(uid, f"codec{codec}", None, other)]
        try:
            positions = read_records(uid, codec, body[2:-1], count, raw)
        except Undecodable:
            self.stats["bad_record"] += 1
            return []  # unanswered: a packet is acknowledged whole or not at all
        for position in positions:
            for reason in position.raw.get("implausible", ()):
                self.stats[reason] += 1
        if not positions:
            return [Heartbeat(uid, ack(0), raw=raw | {"codec": codec})]
        return [*positions[:-1], replace(positions[-1], reply=ack(count))]


def frame_size(buf: bytes | bytearray, pos: int, max_frame_bytes: int) -> int | None:
    """Size of the frame starting at ``pos``; 0 if none starts there; None until more bytes
    arrive. Decided on the bytes from ``pos`` alone, so a stream splits the same however it is
    chunked. An AVL frame must fit ``max_frame_bytes`` and have N2 == N1 and 00 00 before its
    CRC; one that does not is taken for garbage, so the stream resynchronises byte by byte."""
    if buf[pos] == KEEPALIVE:
        return 1
    if buf[pos] != 0:
        return 0
    if len(buf) - pos < 2:
        return None
    if buf[pos + 1] == IMEI_SIZE:
        digits = bytes(buf[pos + 2 : pos + LOGIN_SIZE])
        if digits and not digits.isdigit():
            return 0
        return LOGIN_SIZE if len(digits) == IMEI_SIZE else None
    header = buf[pos : pos + HEADER_SIZE]
    if any(header[:4]):
        return 0
    if len(header) < HEADER_SIZE:
        return None
    length = int.from_bytes(header[4:])
    size = HEADER_SIZE + length + CRC_SIZE
    if length < MIN_DATA or size > max_frame_bytes:
        return 0
    if len(buf) - pos < size:
        return None
    end = pos + HEADER_SIZE + length  # the CRC field
    if buf[pos + HEADER_SIZE + 1] != buf[end - 1] or any(buf[end : end + 2]):
        return 0
    return size


def next_start(buf: bytes | bytearray, pos: int) -> int:
    """The first byte at or after ``pos`` that may begin a frame (00 or FF), or the end."""
    found = [i for i in (buf.find(0, pos), buf.find(KEEPALIVE, pos)) if i >= 0]
    return min(found, default=len(buf))


def tcp_ack(count: int) -> bytes:
    """The number of records accepted, 4 bytes big-endian [TFAQ]."""
    return count.to_bytes(4)


def udp_ack(packet_id: bytes, avl_packet_id: int, count: int) -> bytes:
    """``00 05 | packet id | 01 | AVL packet id | count`` [TW, UDP example 0005CAFE01DD02]."""
    return b"\x00\x05" + packet_id + b"\x01" + bytes([avl_packet_id, count])


class Reader:
    """Reads a record field by field; past the end of the packet, the packet is bad."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise Undecodable
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size))

    def sint(self, size: int) -> int:
        return int.from_bytes(self.take(size), signed=True)


def read_records(
    uid: str | None, codec: int, data: bytes, count: int, raw: dict[str, Any]
) -> list[Position]:
    """The ``count`` records that ``data`` (N1 .. N2 exclusive) holds, in the first layout of
    the codec they fill exactly.

    Raises:
        Undecodable: no layout fits.
    """
    for layout in LAYOUTS[codec]:
        reader = Reader(data)
        try:
            positions = [read_record(uid, codec, layout, reader, raw) for _ in range(count)]
        except Undecodable:
            continue
        if reader.pos == len(data):
            return positions
    raise Undecodable


def read_record(
    uid: str | None, codec: int, layout: Layout, reader: Reader, raw: dict[str, Any]
) -> Position:
    """One AVL record: GPS element, then IO element."""
    time_ms, priority, lon_e7, lat_e7, altitude, angle, satellites, speed = GPS_ELEMENT.unpack(
        reader.take(GPS_ELEMENT.size)
    )
    raw = raw | {"codec": codec, "priority": priority, "event_io": reader.uint(layout.event_size)}
    if layout.generation:
        raw["generation_type"] = reader.uint(1)
    reader.uint(layout.count_size)  # total IO count: units differ on what it counts
    io: dict[int, int | str] = {}
    for size in layout.groups:
        for _ in range(reader.uint(layout.count_size)):
            key = reader.uint(layout.id_size)
            io[key] = reader.uint(size) if size <= 8 else reader.take(size).hex()
    if layout.nx:
        for _ in range(reader.uint(2)):
            key = reader.uint(2)
            io[key] = reader.take(reader.uint(2)).hex()
    raw["io"] = io

    attributes = normalise(io)
    if priority == PANIC:
        attributes["sos"] = True

    implausible = []
    lat, lon = lat_e7 / 10_000_000, lon_e7 / 10_000_000
    if abs(lat) > 90 or abs(lon) > 180 or angle > 360:
        implausible.append("bad_position")
        raw |= {"lat_e7": lat_e7, "lon_e7": lon_e7, "angle": angle}
        lat, lon, angle = 0.0, 0.0, 0
    try:
        fix_time = EPOCH + timedelta(milliseconds=time_ms)
    except OverflowError:  # beyond year 9999
        implausible.append("bad_time")
        raw["time_ms"] = time_ms
        fix_time = EPOCH
    if implausible:
        raw["implausible"] = implausible
    # by position, in Position's field order: keywords cost about 0.3 us a fix more
    return Position(
        uid, fix_time, lat, lon, satellites > 0 and not implausible, float(speed), float(angle),
        float(altitude), None, satellites, attributes, raw,
    )  # fmt: skip


def normalise(io: dict[int, int | str]) -> dict[str, Any]:
    """The attributes that well-known IO elements give (``IO_ATTRIBUTES``)."""
    attributes = {}
    for key, value in io.items():
        if key in IO_ATTRIBUTES and isinstance(value, int):
            name, convert = IO_ATTRIBUTES[key]
            if (converted := convert(value)) is not None:
                attributes[name] = converted
    return attributes


def read_response(codec: int, data: bytes) -> dict[str, Any]:
    """The first response of a Codec 12/13/14 packet: its type and text (hex if binary)."""
    raw: dict[str, Any] = {"codec": codec}
    before = RESPONSE_CODECS.get(codec)
    if before is None or len(data) < 5:
        return raw | {"data": data.hex()}
    size = int.from_bytes(data[1:5])
    payload = data[5 + before : 5 + size]
    printable = all(32 <= b < 127 or b in b"\t\r\n" for b in payload)
    text = payload.decode("ascii").strip() if printable else payload.hex()
    return raw | {"type": data[0], "response": text}
