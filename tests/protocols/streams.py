"""Helpers shared by the codec tests: cut a stream anywhere, feed it, check
what comes out is plausible."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta

from protocols import ATTRIBUTES, Codec, Heartbeat, Message, Position, ProtocolError


def chunked(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``stream`` cut into pieces of the given sizes, the rest as the last piece."""
    chunks, at = [], 0
    for size in cuts:
        chunks.append(stream[at : at + size])
        at += size
    chunks.append(stream[at:])
    return chunks


def feed_all(make_codec: Callable[[], Codec], parts: Sequence[bytes]) -> tuple[list[Message], bool]:
    """Every message a fresh codec gives for ``parts``, and whether it gave up
    (ProtocolError: nothing it gave counts then)."""
    codec = make_codec()
    out: list[Message] = []
    try:
        for part in parts:
            out += codec.feed(part)
    except ProtocolError:
        return [], True
    return out, False


def assert_plausible(messages: Sequence[Message]) -> None:
    """Positions in range, in UTC; attributes only from the shared vocabulary;
    ``raw`` JSON-friendly (it is stored as JSON)."""
    for message in messages:
        if isinstance(message, Position):
            assert -90 <= message.lat <= 90
            assert -180 <= message.lon <= 180
            assert 0 <= message.course_deg <= 360
            assert message.speed_kmh >= 0
            assert message.fix_time.utcoffset() == timedelta(0)
        if isinstance(message, Position | Heartbeat):
            assert set(message.attributes) <= ATTRIBUTES
        json.dumps(message.raw)
