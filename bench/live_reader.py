"""A cheap live subscriber: a websocket handshake by hand, then frames counted, not parsed.

A websocket library client costs tens of microseconds per message, more than
the server spends publishing it; this one reads frame headers only (server
frames are never masked), answers pings so the server keeps it, and counts
the text messages. It subscribes to every vehicle.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

SUBSCRIBE_ALL = b'{"subscribe": "*"}'


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (clients must mask; the server closes otherwise)."""
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x80 | opcode])
    if size < 126:
        header += bytes([0x80 | size])
    elif size < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class LiveReader(asyncio.Protocol):
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.messages = 0  # text frames received after the handshake
        self._buffer = bytearray()
        self._upgraded = False
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        await loop.create_connection(lambda: self, "127.0.0.1", self.port)
        await asyncio.wait_for(self._ready, 10)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /api/v1/live?token={self.token} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"live websocket refused: {bytes(buf[:200])!r}")
            del buf[: end + 4]
            self._upgraded = True
            assert self._transport is not None
            self._transport.write(client_frame(0x1, SUBSCRIBE_ALL))
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            opcode, size = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = struct.unpack_from(">H", buf, pos + 2)[0], 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = struct.unpack_from(">Q", buf, pos + 2)[0], 10
            if end - pos < head + size:
                break
            if opcode == 0x1:
                self.messages += 1
            elif opcode == 0x9 and self._transport is not None:  # ping: pong
                self._transport.write(client_frame(0xA, bytes(buf[pos + head : pos + head + size])))
            pos += head + size
        del buf[:pos]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
