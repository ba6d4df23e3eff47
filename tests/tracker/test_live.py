"""The live hub: every message once per subscriber, coalesced when behind,
replayable from a cursor within its window."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tracker.live import Hub


def bodies(messages: list[str]) -> list[Any]:
    return [orjson.loads(m)["n"] for m in messages]


async def test_subscriber_gets_only_its_vehicles() -> None:
    hub = Hub()
    one = hub.subscribe(frozenset({"a"}))
    everything = hub.subscribe(None)
    hub.publish("a", "u1", {"n": "a1"})
    hub.publish("b", "u2", {"n": "b1"})
    assert bodies(await one.next_batch()) == ["a1"]
    assert bodies(await everything.next_batch()) == ["a1", "b1"]
    assert hub.subscriber_count == 2


async def test_slow_subscriber_gets_newest_per_unit_not_a_backlog() -> None:
    hub = Hub()
    slow = hub.subscribe(None)
    for n in range(10_000):
        hub.publish("a", "unit-1", {"n": f"fix-{n}"})
        hub.publish("a", "unit-2", {"n": f"other-{n}"})
    assert bodies(await slow.next_batch()) == ["fix-9999", "other-9999"]
    assert slow.coalesced == 2 * 9_999


async def test_late_replays_are_kept_in_a_bounded_queue() -> None:
    hub = Hub()
    sub = hub.subscribe(None)
    for n in range(1_000):
        hub.publish("a", "unit-1", {"n": f"old-{n}"}, latest=False)
    hub.publish("a", "unit-1", {"n": "newest"})
    batch = bodies(await sub.next_batch())
    assert batch[-1] == "newest"
    assert len(batch) == 257  # 256 replays kept, the oldest dropped
    assert batch[0] == "old-744"


async def test_unsubscribe_stops_delivery() -> None:
    hub = Hub()
    sub = hub.subscribe(frozenset({"a"}))
    hub.unsubscribe(sub)
    hub.publish("a", "u", {"n": "x"})
    assert hub.subscriber_count == 0
    waiter = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    waiter.cancel()


def test_a_reconnecting_client_gets_what_it_missed() -> None:
    hub = Hub(window=5)
    hub.publish("a", "u", {"n": 1})
    seen = hub.cursor
    for n in range(2, 5):
        hub.publish("a" if n % 2 else "b", "u", {"n": n})
    assert bodies(hub.missed(seen, None) or []) == [2, 3, 4]
    assert bodies(hub.missed(seen, frozenset({"a"})) or []) == [3]
    assert hub.missed(hub.cursor, None) == []
    for n in range(5, 12):
        hub.publish("a", "u", {"n": n})
    assert hub.missed(seen, None) is None  # fell out of the window: snapshot instead
    assert hub.missed("other-boot-1", None) is None  # a cursor from before a restart
    assert hub.missed("garbage", None) is None
