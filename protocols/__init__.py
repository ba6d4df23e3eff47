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

from collections import Counter
from typing import Protocol

from protocols.errors import ProtocolError
from protocols.messages import ATTRIBUTES, Heartbeat, Login, Message, Other, Position

__all__ = [
    "ATTRIBUTES",
    "CODECS",
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


def _registry() -> dict[str, type[Codec]]:
    from protocols.gt06 import Gt06Codec

    return {"gt06": Gt06Codec}


CODECS: dict[str, type[Codec]] = _registry()


def open(name: str, **options: object) -> Codec:
    """A fresh codec for one connection of protocol ``name``."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(sorted(CODECS))}") from None
    return cls(**options)
