"""A minimal HTTP/1.1 client for the benchmarks' GETs to the server under test."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that GETs and reads exactly the body.

    A track day's answer is about 2 MB, and httpx taking it in (Python parsing
    HTTP on the cores the server runs on) added about 5 ms to the p50 and 15 to
    the p99 on the same data: it timed the client as much as the server
    (bench.rest uses a minimal client for the same reason). This reads the
    status line and headers, then Content-Length bytes with one ``readexactly``."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str, params: dict[str, str | int] | None = None) -> tuple[int, bytes]:
        """The status and body of ``GET path?params``.

        Raises:
            ValueError: the answer has no Content-Length.
        """
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        reader, writer = self._streams
        target = f"{path}?{urlencode(params)}" if params else path
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{self.headers}\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = dict(line.lower().split(": ", 1) for line in head[1:] if line)
        if "content-length" not in fields:
            raise ValueError(f"GET {target}: no Content-Length in {fields}")
        return status, await reader.readexactly(int(fields["content-length"]))

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
