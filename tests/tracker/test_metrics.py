"""Stats keys to Prometheus families: the table, and the catch-all for new keys;
the event loop's lag."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tracker.metrics import OTHER, LoopLag, counters, family_of


@pytest.mark.parametrize(
    ("key", "name", "labels"),
    [
        ("positions_in", "tracker_positions_in", ()),
        ("positions_dropped.duplicate", "tracker_positions_dropped", ("duplicate",)),
        ("positions.gt06", "tracker_positions_decoded", ("gt06",)),
        ("connections.h02", "tracker_connections_accepted", ("h02",)),
        (
            "connections_rejected.gt06.per_ip_limit",
            "tracker_connections_rejected",
            ("gt06", "per_ip_limit"),
        ),
        ("frames_dropped.jt808.bad_crc", "tracker_frames_dropped", ("jt808", "bad_crc")),
        ("events.sos", "tracker_events", ("sos",)),
        ("webhook_deliveries.failed", "tracker_webhook_deliveries", ("failed",)),
        ("retention.positions_deleted", "tracker_retention_positions_deleted", ()),
        ("rule_evaluations", "tracker_rule_evaluations", ()),
    ],
)
def test_known_keys_become_labelled_families(key: str, name: str, labels: tuple[str, ...]) -> None:
    found = family_of(key)
    assert found is not None
    family, values = found
    assert (family.name, values) == (name, labels)


def test_unknown_keys_and_wrong_shapes_go_to_the_catch_all() -> None:
    assert family_of("brand_new") == (OTHER, ("brand_new",))
    assert family_of("positions_in.extra") == (OTHER, ("positions_in.extra",))
    assert family_of("connections_rejected.gt06") == (OTHER, ("connections_rejected.gt06",))
    assert family_of("events") is None  # the sum of events.<type>


def test_counters_render_as_valid_exposition() -> None:
    stats = Counter(
        {"positions_dropped.duplicate": 2, "positions_dropped.future_time": 1, "odd key": 4}
    )

    class Stats(Collector):
        def collect(self) -> Iterable[Metric]:
            return counters(stats)

    registry = CollectorRegistry()
    registry.register(Stats())
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    dropped = families["tracker_positions_dropped"]
    assert dropped.type == "counter"
    assert {s.labels["reason"]: s.value for s in dropped.samples if s.name.endswith("_total")} == {
        "duplicate": 2,
        "future_time": 1,
    }
    [other] = [s for s in families["tracker_counter"].samples if s.name.endswith("_total")]
    assert (other.labels, other.value) == ({"name": "odd key"}, 4)


async def test_loop_lag_times_a_blocked_loop_and_stops() -> None:
    lags: list[float] = []
    watch = LoopLag(lags.append, every_s=0.02)
    watch.start()
    await asyncio.sleep(0.1)  # an idle loop runs the timer on time
    assert lags
    assert min(lags) < 0.01
    seen = len(lags)
    time.sleep(0.2)  # noqa: ASYNC251  # a busy loop: the timer due meanwhile runs late
    await asyncio.sleep(0.01)
    assert len(lags) > seen
    assert 0.15 < lags[seen] < 0.5
    watch.stop()
    stopped = len(lags)
    await asyncio.sleep(0.1)
    assert len(lags) == stopped
