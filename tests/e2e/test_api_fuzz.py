"""The REST API fuzzed against its own OpenAPI schema: no input gets a 500.

A real server runs in a thread with its own event loop (schemathesis calls it
with blocking requests); the schema comes from its live ``/openapi.json``.
Every operation gets ``MAX_EXAMPLES`` generated requests with the admin key,
valid and invalid ones: no answer may be a 5xx, and answers the schema
documents must match it. The whole run takes about 10 s; ``BUDGET_S`` bounds
it (failing examples are not shrunk, which could take minutes). Examples are
random on each run; a failure prints a curl command that reproduces it.
``FUZZ_EXAMPLES=300 FUZZ_BUDGET_S=900`` runs a longer hunt.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.result import Ok

from tracker.server import Server
from tracker.settings import ProtocolSettings, Settings

from .conftest import ADMIN_KEY

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "55"))
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# uvicorn answers a request line or headers larger than this with 400 and closes
# the connection while the client still sends: the client sees a reset, not a 500.
TRANSPORT_LIMIT_BYTES = 64 * 1024

# Bodies of documented responses must match their schema too.
CHECKS = [not_a_server_error, response_schema_conformance]

T = TypeVar("T")
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


class ThreadedServer:
    """A ``Server`` on its own event loop in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Server | None = None

    def start(self) -> Server:
        self._thread.start()
        self._server = self._run(self._start())
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._run(self._server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> Server:
        server = Server(self._settings)
        await server.start()
        return server

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)


@pytest.fixture
def base_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    settings = Settings(
        http_host="127.0.0.1",
        http_port=0,
        database_url=database_url,
        data_dir=tmp_path / "var",
        admin_key=ADMIN_KEY,
        batch_max_delay_ms=2.0,
        protocols=(ProtocolSettings("osmand", 0, host="127.0.0.1"),),
    )
    runner = ThreadedServer(settings)
    server = runner.start()
    try:
        yield f"http://127.0.0.1:{server.ports['http']}"
    finally:
        runner.stop()


def test_no_input_gets_a_server_error(base_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations: list[Operation] = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), result.err()  # a part of the schema it cannot read
        operations.append(result.ok())
    assert len(operations) >= 30, [o.label for o in operations]
    deadline = time.monotonic() + BUDGET_S
    failures: list[str] = []
    for n, operation in enumerate(operations):
        if time.monotonic() > deadline:
            left = ", ".join(o.label for o in operations[n:])
            failures.append(f"fuzz budget of {BUDGET_S:.0f} s spent before: {left}")
            break
        try:
            fuzz(operation)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises a group
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def fuzz(operation: Operation) -> None:
    """``MAX_EXAMPLES`` requests for one operation, valid and invalid ones."""
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # shrinking could take minutes
    )
    def call(case: schemathesis.Case[Operation]) -> None:
        try:
            response = case.call(headers=AUTH, timeout=10)
        except OSError:  # requests' ConnectionError
            if request_size(case) > TRANSPORT_LIMIT_BYTES:
                return
            raise
        case.validate_response(response, checks=CHECKS, headers=AUTH)

    call()


def request_size(case: schemathesis.Case[Operation]) -> int:
    """About how many bytes the request line and headers take."""
    kwargs = case.as_transport_kwargs(headers=AUTH)
    query = urlencode(kwargs.get("params") or {}, doseq=True)
    headers = sum(len(str(k)) + len(str(v)) for k, v in kwargs["headers"].items())
    return len(kwargs["url"]) + len(query) + headers
