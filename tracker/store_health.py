"""Whether the store takes writes: what the last write or ping found.

The group-commit writers report each write (``up``, ``down``); an idle writer
``probe``s now and then, so that ``/readyz`` and ``/metrics`` follow the
store between batches too. An outage is logged and counted once, when it
begins, and its end is logged with how long it lasted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from tracker.store import Store

log = logging.getLogger("tracker.ingest")  # logged as the pipeline: log filters name it

PING_TIMEOUT_S = 5.0


class StoreHealth:
    def __init__(
        self, store: Store, stats: Counter[str], held: Callable[[], int], probe_every_s: float
    ) -> None:
        """``held``: how many positions wait for the store, for the log lines."""
        self._store = store
        self.stats = stats
        self._held = held
        self.probe_every_s = probe_every_s
        self.healthy = True  # the last write or ping worked
        self.error: str | None = None  # why not, while not
        self._down_since = 0.0
        self._last_ok = 0.0  # loop time of the last write or ping that worked

    async def ping(self) -> Exception | None:
        """None if the store answers, else why not."""
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self._store.ping()
        except Exception as exc:
            return exc
        return None

    async def probe(self) -> None:
        """Idle: find out whether the store is still there (or back)."""
        loop = asyncio.get_running_loop()
        if self.healthy and loop.time() - self._last_ok < self.probe_every_s:
            return
        error = await self.ping()
        if error is None:
            self.up()
        else:
            self.down(error)

    def down(self, error: Exception) -> None:
        self.error = describe(error)
        if self.healthy:
            self.healthy = False
            self._down_since = asyncio.get_running_loop().time()
            self.stats["store_outages"] += 1
            log.error(
                "store unavailable (%s): holding %d positions unacknowledged, retrying",
                self.error,
                self._held(),
            )

    def up(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_ok = loop.time()
        if not self.healthy:
            self.healthy = True
            self.error = None
            log.warning(
                "store available again after %.1f s; writing %d held positions",
                loop.time() - self._down_since,
                self._held(),
            )


def describe(error: BaseException) -> str:
    """``Type: message``, and the error it was raised while handling, if any."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    first = error.__context__
    if first is not None and error.__cause__ is None and not error.__suppress_context__:
        # raised while cleaning up after another (a rollback on a dead connection)
        text += f" (after {describe(first)})"
    return text
