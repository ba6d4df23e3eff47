"""Hostile clients for tests/e2e/test_hostile.py, run in a process of their own so
that the server's event loop pays only for its side of the flood, as it would
against a real attacker.

    python -m tests.e2e.flood PORT [MAX_SECONDS]

Floods the GT06 port on 127.0.0.1 from 127.0.0.2 (random garbage; well-formed
frames from no known unit) and 127.0.0.3 (a slow loris: one byte per 100 ms),
each connection again as soon as the server closes it. Prints ``ready`` once
every kind has connected, and on end of input (or after MAX_SECONDS, default 10)
stops and prints the connection attempts per kind as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

from tracker.simulate import gt06_heartbeat

GARBAGE = os.urandom(16384)
STRANGER = b"".join(gt06_heartbeat(serial) for serial in range(400))  # no login first
SLOW_LORIS_STEP_S = 0.1


async def hostile(
    port: int, kind: str, source: str, attempts: dict[str, int], connected: asyncio.Event
) -> None:
    while True:
        attempts[kind] += 1
        with contextlib.suppress(ConnectionError):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
            connected.set()
            try:
                if kind == "slow_loris":
                    for _ in range(10_000):
                        writer.write(b"\x00")
                        await writer.drain()
                        await asyncio.sleep(SLOW_LORIS_STEP_S)
                else:
                    writer.write(GARBAGE if kind == "garbage" else STRANGER)
                while await reader.read(65536):
                    pass
            finally:
                writer.close()


async def main(port: int, max_seconds: float) -> None:
    attempts = {"garbage": 0, "frames": 0, "slow_loris": 0}
    kinds = [("garbage", "127.0.0.2")] * 3 + [("frames", "127.0.0.2"), ("slow_loris", "127.0.0.3")]
    connected = [asyncio.Event() for _ in kinds]
    tasks = [
        asyncio.create_task(hostile(port, kind, source, attempts, event))
        for (kind, source), event in zip(kinds, connected, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), 5)
    print("ready", flush=True)
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin.read(), max_seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(attempts), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 10.0))
