"""Watch / "3G" protocol of child and elderly watches (SG*, 3G*, CS*, ZJ* ...), sans-I/O.

Sources: traccar's WatchProtocolDecoder and WatchFrameDecoder (PROTOCOLS.md section 6).

Frame, ASCII but for voice and image data::

    [<MF>*<id>*<LLLL>*<content>]             MF: maker code, id: the unit, LLLL: hex length
    [<MF>*<id>*<index>*<LLLL>*<content>]     with a 4-hex message index (ZJ units)

Content escaping, undone after framing: ``}01`` ``}`` , ``}02`` ``[`` , ``}03`` ``]`` ,
``}04`` ``,`` , ``}05`` ``*``. A frame ends where its brackets balance (WiFi names may hold
``[...]``) or where the next frame's header begins. LLLL is not used to frame: it disagrees
with the content in 14 of the 49 sample packets (units count it differently), and waiting
for a length that overstates the frame would leave a heartbeat unanswered.

Content: ``<type>[,<values>]``. ``UD``, ``UD2``, ``UD3``, ``UD_LTE``, ``UD_WCDMA``, ``WT``
(positions) and ``AL...`` (alarms)::

    DDMMYY, hhmmss (UTC), A|V, lat, N|S, lon, E|W, km/h, course, altitude m, satellites,
    GSM %, battery %, steps, tumbles, status (hex), cells: n, TA, mcc, mnc, n x (lac, ci,
    rssi), WiFi: n, n x (name, mac, rssi), ...

Status bits [traccar]: 0 and 17 low battery, 1/18 leaving and 2/19 entering a fence, 4
moving, 14 power cut, 16 SOS, 20 watch removed, 21/22 fall.

Replies [traccar]: ``LK`` -> ``[MF*id*0002*LK]``, ``AL...`` -> ``[MF*id*0002*AL]``, ``INIT``
-> ``INIT,1``, ``TKQ``/``TKQ2`` echoed, voice chunks ``JXTK`` -> ``JXTKR,1``; with the
request's index when it had one. ``UD`` and the rest: none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from protocols.errors import ProtocolError
from protocols.messages import Heartbeat, Message, Other, Position

# Enough of a header to tell a frame start: "[MF*id*hhhh*".
START = re.compile(rb"\[[0-9A-Za-z]{2}\*[0-9A-Za-z]{1,20}\*[0-9A-Fa-f]{4}\*")
START_PREFIX = re.compile(  # what may still become a START
    rb"\[(?:[0-9A-Za-z](?:[0-9A-Za-z](?:\*(?:[0-9A-Za-z]{1,20}(?:\*[0-9A-Fa-f]{0,4})?)?)?)?)?"
)
START_MAX = 1 + 2 + 1 + 20 + 1 + 4 + 1
HEADER = re.compile(
    rb"\[([0-9A-Za-z]{2})\*([0-9A-Za-z]{1,20})\*(?:([0-9A-Fa-f]{4})\*)?([0-9A-Fa-f]{4})\*"
)
ESCAPES = {b"}01": b"}", b"}02": b"[", b"}03": b"]", b"}04": b",", b"}05": b"*"}
ESCAPED = re.compile(rb"\}0[1-5]")

POSITION_TYPES = ("UD", "AL", "WT")  # by prefix: UD2, UD_LTE, AL_LTE, ALCUSTOMER1 ...
HEALTH = frozenset({"pulse", "heart", "blood", "bphrt", "temp", "btemp2", "oxygen"})
BINARY = frozenset({"TK", "JXTK", "img"})  # voice and image data: kept out of raw
ECHOED = {"LK": "LK", "INIT": "INIT,1", "TKQ": "TKQ", "TKQ2": "TKQ2", "JXTK": "JXTKR,1"}
KNOWN = frozenset({*ECHOED, *BINARY, "rcapture"})  # besides positions and HEALTH

DATE_TIME = re.compile(r"[0-9]{6}")
COORDINATE = re.compile(r" *-?[0-9]+(?:\.[0-9]+)?")
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
DIGITS = re.compile(r"[0-9]+")
HEX = re.compile(r"[0-9A-Fa-f]+")
MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
STATUS_ALARMS = {0: "low_battery", 17: "low_battery", 14: "power_cut", 16: "sos", 20: "removed"}


class Dropped(Exception):
    """A position's fields are missing or implausible: count ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WatchCodec:
    """One per connection. Feed it bytes; get messages, each with its reply, back."""

    name = "watch"

    def __init__(
        self,
        *,
        accept_bad_crc: bool = False,
        max_frame_bytes: int = 32768,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        """The protocol has no checksum (``accept_bad_crc`` is ignored) and no reply holds
        the time (``now`` is unused); ``max_frame_bytes`` leaves room for voice chunks."""
        self.stats: Counter[str] = Counter()
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
        return [message for frame in self.frames(data) for message in self._decode(frame)]

    def frames(self, data: bytes) -> list[bytes]:
        """The framing half of ``feed``: the frames ``data`` completed, as sent (escaped)."""
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        try:
            while (pos := self._skip_garbage(pos)) < len(buf):
                if not starts_frame(buf, pos):  # None: maybe a header, wait for more
                    break
                found = frame_end(buf, pos, self._max_frame_bytes)
                if found is None:
                    break
                end, complete = found
                if complete:
                    frames.append(bytes(buf[pos:end]))
                    self._garbage_run = 0
                    pos = end
                else:  # a frame without its "]", cut short by the next header
                    pos = self._skip_garbage(pos, until=end)
        finally:
            del buf[:pos]
        return frames

    def _skip_garbage(self, pos: int, until: int | None = None) -> int:
        """Skip to what may start a frame (or to ``until``), counting the bytes skipped."""
        buf = self._buffer
        if until is None:
            until = pos
            while until < len(buf) and starts_frame(buf, until) is False:
                found = buf.find(b"[", until + 1)
                until = found if found >= 0 else len(buf)
        if until > pos:
            self.stats["garbage_bytes"] += until - pos
            self._garbage_run += until - pos
            if self._garbage_run > self._max_frame_bytes:
                raise ProtocolError(f"watch: no frame start in {self._garbage_run} bytes")
        return until

    def _decode(self, frame: bytes) -> list[Message]:
        header = HEADER.match(frame)
        if header is None:  # the start matched, the rest of the header did not
            self.stats["short_frame"] += 1
            return []
        maker, uid = header[1].decode(), header[2].decode()
        index = header[3].decode() if header[3] else None
        content = unescape(frame[header.end() : -1])
        kind, _, rest = content.partition(b",")
        kind_text = kind.decode("latin-1")
        raw: dict[str, Any] = {"type": kind_text, "maker": maker}
        if index is not None:
            raw["index"] = index
        reply_to = "AL" if kind_text.startswith("AL") else ECHOED.get(kind_text)
        reply = None if reply_to is None else reply_frame(maker, uid, index, reply_to)
        if kind_text in BINARY:
            return [Other(uid, kind_text, reply, raw | {"data_bytes": len(rest)})]
        values = rest.decode("utf-8", errors="replace").split(",") if rest else []
        if kind_text.startswith(POSITION_TYPES):
            try:
                return [decode_position(uid, values, raw, reply)]
            except Dropped as drop:
                self.stats[drop.reason] += 1
                return [Other(uid, kind_text, reply, raw)]
        if kind_text == "LK":
            return [decode_link(uid, values, raw, reply)]
        if kind_text.lower() not in HEALTH and kind_text not in KNOWN:
            self.stats["unknown_type"] += 1
        return [Other(uid, kind_text, reply, raw | {"values": values})]


def starts_frame(buf: bytes | bytearray, pos: int) -> bool | None:
    """Whether a frame header starts at ``pos``; None: cannot tell before more bytes."""
    if START.match(buf, pos):
        return True
    head = bytes(buf[pos : pos + START_MAX])
    return None if len(head) < START_MAX and START_PREFIX.fullmatch(head) else False


def frame_end(buf: bytes | bytearray, pos: int, max_frame_bytes: int) -> tuple[int, bool] | None:
    """(end, complete) of the frame starting at ``pos``: complete where its brackets balance,
    incomplete where the next header starts first; None: need more bytes.

    Raises:
        ProtocolError: no end within ``max_frame_bytes``.
    """
    limit = min(len(buf), pos + max_frame_bytes)
    depth, at = 1, pos + 1
    while True:
        opening, closing = buf.find(b"[", at, limit), buf.find(b"]", at, limit)
        if closing >= 0 and (opening < 0 or closing < opening):
            depth -= 1
            if depth == 0:
                return closing + 1, True
            at = closing + 1
        elif opening >= 0:
            is_start = starts_frame(buf, opening)
            if is_start is None:
                return None
            if is_start:
                return opening, False
            depth, at = depth + 1, opening + 1
        elif len(buf) - pos >= max_frame_bytes:
            raise ProtocolError(f"watch: no frame end in {max_frame_bytes} bytes")
        else:
            return None


def unescape(content: bytes) -> bytes:
    return ESCAPED.sub(lambda found: ESCAPES[found[0]], content)


def reply_frame(maker: str, uid: str, index: str | None, content: str) -> bytes:
    """``[MF*id*LLLL*content]`` (index form: ``[MF*id*index*LLLL*content]``), LLLL in hex."""
    at = "" if index is None else f"{index}*"
    return f"[{maker}*{uid}*{at}{len(content):04x}*{content}]".encode()


def decode_link(uid: str, values: list[str], raw: dict[str, Any], reply: bytes | None) -> Message:
    """LK heartbeat, optionally ``steps,tumbles,battery %``."""
    attributes: dict[str, Any] = {}
    if len(values) >= 3 and DIGITS.fullmatch(values[2]) and int(values[2]) <= 100:
        attributes["battery_pct"] = int(values[2])
        raw["steps"] = values[0]
    return Heartbeat(uid, reply, attributes, raw)


def decode_position(
    uid: str, values: list[str], raw: dict[str, Any], reply: bytes | None
) -> Position:
    """The UD / AL / WT layout. Raises Dropped when a fix field is unusable."""
    if len(values) < 16:
        raise Dropped("short_content")
    date, time, fix, lat_text, north_south, lon_text, east_west = values[:7]
    speed, course, altitude, sats, gsm, battery, steps, _, status_text = values[7:16]
    if not (DATE_TIME.fullmatch(date) and DATE_TIME.fullmatch(time)):
        raise Dropped("bad_time")
    try:
        fix_time = datetime.strptime(date + time, "%d%m%y%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise Dropped("bad_time") from None
    if not (COORDINATE.fullmatch(lat_text) and COORDINATE.fullmatch(lon_text)):
        raise Dropped("bad_position")
    lat, lon = float(lat_text), float(lon_text)
    lat, lon = -abs(lat) if north_south == "S" else lat, -abs(lon) if east_west == "W" else lon
    speed_kmh, course_deg = (float(v) if NUMBER.fullmatch(v) else 0.0 for v in (speed, course))
    if abs(lat) > 90 or abs(lon) > 180 or not 0 <= course_deg <= 360 or speed_kmh < 0:
        raise Dropped("bad_position")
    attributes: dict[str, Any] = {}
    if DIGITS.fullmatch(gsm):
        attributes["gsm_signal"] = int(gsm)
    if DIGITS.fullmatch(battery) and int(battery) <= 100:
        attributes["battery_pct"] = int(battery)
    status = int(status_text, 16) if HEX.fullmatch(status_text) else 0
    for bit, name in STATUS_ALARMS.items():
        if status >> bit & 1:
            attributes[name] = True
    if status >> 4 & 1:
        attributes["motion"] = True
    raw |= {"status": status_text, "steps": steps} | read_network(values[16:])
    return Position(
        uid, fix_time, lat, lon, fix == "A", speed_kmh, course_deg,
        float(altitude) if NUMBER.fullmatch(altitude) else None,
        satellites=int(sats) if DIGITS.fullmatch(sats) else None,
        attributes=attributes, raw=raw, reply=reply,
    )  # fmt: skip


def read_network(values: list[str]) -> dict[str, Any]:
    """Cells ``n, TA, mcc, mnc, n x (lac, ci, rssi)``, then WiFi ``n, n x (name, mac, rssi)``.

    Kept raw as ``mcc``, ``mnc``, ``cells`` [[lac, ci, rssi]] and ``wifi`` [[mac, rssi]]
    (names left out); empty when the layout does not hold.
    """
    if not values or not DIGITS.fullmatch(values[0]):
        return {}
    count, at, network = int(values[0]), 1, dict[str, Any]()
    if count:
        if len(values) < 4 + 3 * count or not all(map(DIGITS.fullmatch, values[2:4])):
            return {}
        network = {"mcc": int(values[2]), "mnc": int(values[3]), "cells": []}
        at = 4
        for _ in range(count):
            lac, cid, rssi = values[at : at + 3]
            network["cells"].append([lac, cid, rssi])
            at += 3
    if at < len(values) and DIGITS.fullmatch(values[at]):
        count, at = int(values[at]), at + 1
        access_points = [values[at + 3 * k + 1 : at + 3 * k + 3] for k in range(count)]
        network["wifi"] = [ap for ap in access_points if len(ap) == 2 and MAC.fullmatch(ap[0])]
    return network
