"""The server side of ``bench.live``: the server in a child process, and the
naive hub it runs for the baseline.

The child answers ``"stats"`` (the ``live.*`` counters, dropped positions, the
hub's backlog, its CPU time) and ``"samples"`` (backlog, coalesced, sent and
uncommitted rows every 0.25 s) on its pipe, and stops on ``"stop"``.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracker.live import Body, Hub, Message, Sink, Subscriber, split
from tracker.settings import ProtocolSettings, Settings

Sample = tuple[float, int, int, int, int, int]  # time, bytes, messages, shed, sent, rows


class NaiveHub(Hub):
    """The baseline: encode per subscriber, send per subscriber and message."""

    def attach(self, subscriber: Subscriber, sink: Sink) -> bool:
        return False  # the route sends each message with websocket.send_text

    def publish(self, vehicle_id: str, key: str, body: Body, *, latest: bool = True) -> None:
        self._seq += 1
        made = body() if callable(body) else body
        self._recent.append(Message(self._seq, vehicle_id, key, latest, dict(made), self._boot))
        self.stats["live.published"] += 1
        for subscriber in self._subscribers:
            if subscriber.vehicle_ids is None or vehicle_id in subscriber.vehicle_ids:
                own = Message(self._seq, vehicle_id, key, latest, dict(made), self._boot)
                assert own.payload  # encoded for this subscriber alone
                subscriber.queue(*split([own]))


def serve(
    database_url: str, data_dir: str, token: str, naive: bool, tick_s: float, conn: Connection
) -> None:
    """Child process: the server (with ``NaiveHub`` when ``naive``)."""
    import tracker.server as wiring
    from tracker.server import Server

    async def main() -> None:
        if naive:
            wiring.Hub = NaiveHub  # type: ignore[attr-defined]  # Server() makes a NaiveHub
        settings = Settings(
            http_port=0,
            database_url=database_url,
            admin_key=token,
            data_dir=Path(data_dir),
            protocols=(ProtocolSettings("gt06", 0, host="127.0.0.1"),),
            batch_max_rows=5000,
            batch_max_delay_ms=5,
        )
        server = Server(settings)
        server.hub.stats = server.stats  # live.* in /metrics (server.py should pass it)
        server.hub.tick_s = tick_s
        await server.start()
        conn.send(server.ports)
        samples: list[Sample] = []

        def stats() -> dict[str, Any]:
            live = {
                k: v
                for k, v in server.stats.items()
                if k.startswith(("live.", "positions_dropped"))
            }
            return {
                "time": time.monotonic(),
                "cpu_s": time.process_time(),
                "live": live,
                "backlog": server.hub.backlog(),
            }

        async def sample() -> None:
            while True:
                backlog = server.hub.backlog()
                shed = server.stats["live.coalesced"] + server.stats["live.dropped"]
                sent, pending = server.stats["live.sent"], server.pipeline.pending_rows
                samples.append(
                    (time.monotonic(), backlog["bytes"], backlog["messages"], shed, sent, pending)
                )
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        commands: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
        while (command := await commands.get()) != "stop":
            conn.send(stats() if command == "stats" else samples)
        loop.remove_reader(conn.fileno())
        sampler.cancel()
        await server.stop()

    asyncio.run(main())
