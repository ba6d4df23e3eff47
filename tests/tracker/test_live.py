"""The live hub: every message once per subscriber, coalesced when behind."""

from __future__ import annotations

import asyncio

from tracker.live import Hub


async def test_subscriber_gets_only_its_vehicles() -> None:
    hub = Hub()
    one = hub.subscribe(frozenset({"a"}))
    everything = hub.subscribe(None)
    hub.publish("a", "u1", "a1")
    hub.publish("b", "u2", "b1")
    assert await one.next_batch() == ["a1"]
    assert await everything.next_batch() == ["a1", "b1"]
    assert hub.subscriber_count == 2


async def test_slow_subscriber_gets_newest_per_unit_not_a_backlog() -> None:
    hub = Hub()
    slow = hub.subscribe(None)
    for n in range(10_000):
        hub.publish("a", "unit-1", f"fix-{n}")
        hub.publish("a", "unit-2", f"other-{n}")
    assert await slow.next_batch() == ["fix-9999", "other-9999"]
    assert slow.coalesced == 2 * 9_999


async def test_late_replays_are_kept_in_a_bounded_queue() -> None:
    hub = Hub()
    sub = hub.subscribe(None)
    for n in range(1_000):
        hub.publish("a", "unit-1", f"old-{n}", latest=False)
    hub.publish("a", "unit-1", "newest")
    batch = await sub.next_batch()
    assert batch[-1] == "newest"
    assert len(batch) == 257  # 256 replays kept, the oldest dropped
    assert batch[0] == "old-744"


async def test_unsubscribe_stops_delivery() -> None:
    hub = Hub()
    sub = hub.subscribe(frozenset({"a"}))
    hub.unsubscribe(sub)
    hub.publish("a", "u", "x")
    assert hub.subscriber_count == 0
    waiter = asyncio.create_task(sub.next_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    waiter.cancel()
