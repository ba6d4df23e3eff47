"""asyncio helpers the server's long-running tasks share."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel these tasks and wait until each has ended.

    On Python 3.11 a cancellation that meets a timeout or a wake-up at the same
    moment can be swallowed by ``wait_for`` (gh-86296), and the task runs on;
    one such writer once held the pipeline's stop() forever. So a task still
    running is cancelled again, every 0.1 s, until it ends."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error was logged where it happened
