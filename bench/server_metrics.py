"""The server's own histograms over one run: ``GET /metrics`` before and after.

Where a run's latency goes, as the server saw it: how late its event loop ran
(``tracker_event_loop_lag_seconds``: the server short of CPU) and how long the
store took to commit a batch (``tracker_batch_commit_seconds``). A quantile of
the difference between two scrapes is interpolated within its bucket, as
Prometheus's ``histogram_quantile`` does, so it is as coarse as the buckets.
"""

from __future__ import annotations

import asyncio
import math

from prometheus_client.parser import text_string_to_metric_families

from bench.http_client import HttpConnection

Scrape = dict[str, list[tuple[float, float]]]  # histogram -> (upper bound, cumulative count)
HISTOGRAMS = ("tracker_event_loop_lag_seconds", "tracker_batch_commit_seconds")
SCRAPE_TIMEOUT_S = 30.0


async def scrape(port: int) -> Scrape:
    """The server's histograms (unlabelled ones) by name."""
    client = HttpConnection(port)
    try:
        status, body = await asyncio.wait_for(client.get("/metrics"), SCRAPE_TIMEOUT_S)
    finally:
        client.close()
    if status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {status}")
    found: Scrape = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name in HISTOGRAMS:
            found[family.name] = [
                (float(s.labels["le"]), s.value)
                for s in family.samples
                if s.name.endswith("_bucket")
            ]
    return found


def quantile_ms(before: Scrape, after: Scrape, name: str, q: float) -> float:
    """The ``q`` quantile (0-1) of what ``name`` observed between the scrapes, in ms."""
    start = dict(before.get(name, []))
    buckets = [(bound, count - start.get(bound, 0.0)) for bound, count in after.get(name, [])]
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000  # beyond the last bound: say the last bound
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, count
    return math.nan


def describe(before: Scrape, after: Scrape) -> str:
    """One line: the loop's lag and the store's commit time, p50 and p99."""

    def pair(name: str) -> str:
        p50, p99 = (quantile_ms(before, after, name, q) for q in (0.5, 0.99))
        return f"p50 ~{p50:.1f} ms, p99 ~{p99:.1f} ms"

    return (
        f"event loop late {pair('tracker_event_loop_lag_seconds')}; "
        f"batch commit {pair('tracker_batch_commit_seconds')} (the server's histograms)"
    )
