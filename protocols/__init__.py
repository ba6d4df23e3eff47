"""Device protocol codecs, sans-I/O: bytes in, messages and replies out.

A codec holds the state of one connection (a partial frame, the unit's
identity once it logged in) and is driven by the gateway::

    codec = protocols.open("gt06")
    for msg in codec.feed(data):     # any chunk, split anywhere
        ...                          # Login | Heartbeat | Position | Other
        msg.reply                    # bytes to send once handled, or None

``feed`` raises only ``ProtocolError`` (close the connection). Frames that are
dropped (bad checksum, impossible field, unknown type) are counted in
``codec.stats`` by reason. Nothing here touches sockets, clocks or databases.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Protocol

from protocols.errors import ProtocolError
from protocols.messages import ATTRIBUTES, Heartbeat, Login, Message, Other, Position

__all__ = [
    "ATTRIBUTES",
    "CODECS",
    "UDP",
    "Codec",
    "Heartbeat",
    "Login",
    "Message",
    "Other",
    "Position",
    "ProtocolError",
    "open",
]


class Codec(Protocol):
    """One per TCP connection or UDP peer."""

    name: str
    stats: Counter[str]
    """Frames dropped or skipped, by reason (``bad_crc``, ``unknown_type``, ...)."""

    def feed(self, data: bytes) -> list[Message]:
        """Take any chunk of the byte stream; return the messages it completed.

        Raises:
            ProtocolError: the stream cannot be framed; close the connection.
        """
        ...


# name -> "module:Class". One line per protocol; nothing is discovered.
_CODEC_PATHS = {
    "gt06": "protocols.gt06:Gt06Codec",
    "watch": "protocols.watch:WatchCodec",
    "meitrack": "protocols.meitrack:MeitrackCodec",
    "tk103": "protocols.tk103:Tk103Codec",
    "queclink": "protocols.queclink:QueclinkCodec",
    "h02": "protocols.h02:H02Codec",
    "jt808": "protocols.jt808:Jt808Codec",
    "teltonika": "protocols.teltonika:TeltonikaCodec",
}

# Protocols whose units also speak UDP: their codec takes ``transport="udp"``
# and is fed one whole datagram at a time.
UDP = frozenset({"teltonika"})


def _registry() -> dict[str, type[Codec]]:
    codecs: dict[str, type[Codec]] = {}
    for name, path in _CODEC_PATHS.items():
        module, _, cls = path.partition(":")
        codecs[name] = getattr(importlib.import_module(module), cls)
    return codecs


CODECS: dict[str, type[Codec]] = _registry()


def open(name: str, **options: object) -> Codec:
    """A fresh codec for one connection (or UDP peer) of protocol ``name``.

    Every codec takes ``accept_bad_crc: bool = False`` (ignored where the
    protocol has no checksum) and ``now``, a clock for replies that carry the
    server time; codecs in ``UDP`` also take ``transport="tcp" | "udp"``.
    """
    try:
        cls = CODECS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(sorted(CODECS))}") from None
    return cls(**options)
