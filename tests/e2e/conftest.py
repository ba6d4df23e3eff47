"""A real server on free ports, on SQLite and on a real PostGIS."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from protocols import CODECS, UDP
from tracker.server import Server
from tracker.settings import ProtocolSettings, Settings

ADMIN_KEY = "e2e-admin-key"
ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["sqlite", pytest.param("postgis", marks=pytest.mark.postgis)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tracker.db"
    url: str = request.getfixturevalue("postgis_url")
    return url


@pytest.fixture
async def make_server(database_url: str, tmp_path: Any) -> AsyncIterator[ServerFactory]:
    """Start servers on port 0 for every protocol; stop them all afterwards."""
    started: list[Server] = []

    async def start(clock: Callable[[], datetime] | None = None, **overrides: Any) -> Server:
        settings = Settings(
            http_host="127.0.0.1",
            http_port=0,
            database_url=database_url,
            data_dir=tmp_path / "var",
            admin_key=ADMIN_KEY,
            batch_max_delay_ms=2.0,
            protocols=tuple(
                ProtocolSettings(name, 0, host="127.0.0.1", udp=name in UDP)
                for name in [*CODECS, "osmand"]
            ),
        )
        settings = dataclasses.replace(settings, **overrides)
        server = Server(settings, clock=clock) if clock else Server(settings)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.ports['http']}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    ) as client:
        yield client
