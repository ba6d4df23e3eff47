"""Start-up loading in bulk gives what one-at-a-time loading gives: silence
deadlines, the latest-state cache and per-unit thresholds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from tracker.cache import LatestState
from tracker.rules import RuleEngine, RuleSettings
from tracker.rules.silence import Deadlines
from tracker.store import StoredPosition, Unit, Vehicle

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def drain(deadlines: Deadlines) -> list[tuple[str, datetime]]:
    return deadlines.pop_due(T0 + timedelta(days=365))


def test_restoring_deadlines_is_setting_each() -> None:
    rng = random.Random(6)
    for before in (0, 50):  # at start-up, and over deadlines set already
        bulk, one_by_one = Deadlines(), Deadlines()
        for deadlines in (bulk, one_by_one):
            for n in range(before):
                deadlines.set(f"u{n}", T0 + timedelta(seconds=n * 7 % 300))
        restored = [(f"u{rng.randrange(200)}", T0 + timedelta(seconds=rng.randrange(600)))]
        restored += [(f"u{n}", T0 + timedelta(seconds=rng.randrange(600))) for n in range(100)]
        bulk.restore(restored)
        for unique_id, deadline in restored:
            one_by_one.set(unique_id, deadline)
        assert len(bulk) == len(one_by_one)
        for moment in range(0, 700, 50):
            now = T0 + timedelta(seconds=moment)
            assert bulk.pop_due(now) == one_by_one.pop_due(now)
        assert drain(bulk) == drain(one_by_one) == []


def test_restored_deadline_fires_once_then_waits_for_a_new_one() -> None:
    deadlines = Deadlines()
    deadlines.restore([("a", T0), ("b", T0 + timedelta(hours=1))])
    assert deadlines.pop_due(T0) == [("a", T0)]
    assert deadlines.pop_due(T0 + timedelta(minutes=1)) == []
    deadlines.set("b", T0 + timedelta(hours=2))  # it spoke again
    assert deadlines.pop_due(T0 + timedelta(hours=1)) == []
    assert deadlines.pop_due(T0 + timedelta(hours=2)) == [("b", T0 + timedelta(hours=2))]


def test_cache_load_is_update_of_each_row() -> None:
    rng = random.Random(7)
    rows = [
        StoredPosition(
            f"u{rng.randrange(20)}",
            "v",
            "gt06",
            T0 + timedelta(seconds=rng.randrange(100)),
            T0 + timedelta(seconds=rng.randrange(100)),
            1.0,
            float(n),
        )
        for n in range(300)
    ]
    loaded, updated = LatestState(), LatestState()
    loaded.load(rows)
    for row in rows:
        updated.update(row)
    for n in range(20):
        unique_id = f"u{n}"
        assert loaded.unit(unique_id) == updated.unit(unique_id)
        assert loaded.last_seen(unique_id) == updated.last_seen(unique_id)


def test_restore_gives_each_unit_its_own_threshold() -> None:
    units = (
        Unit("wired", "plain"),
        Unit("battery", "plain", "battery"),
        Unit("own", "plain", "wired", silent_after_s=120),
        Unit("strict", "strict"),
        Unit("never-seen", "plain"),
    )
    vehicles = {
        "plain": Vehicle("plain", units=units[:3] + units[4:]),
        "strict": Vehicle("strict", units=units[3:4], rules={"silent_wired_s": 600}),
    }
    engine = RuleEngine(
        RuleSettings(silent_wired_s=1800, silent_battery_s=93_600),
        unit={u.unique_id: u for u in units}.get,
        vehicle=vehicles.get,
        latest=lambda unique_id: None,
    )
    seen = {u.unique_id: T0 for u in units if u.unique_id != "never-seen"}
    engine.restore([], seen, units, [], T0)
    deadline = engine.deadlines.deadline
    assert deadline("wired") == T0 + timedelta(seconds=1800)
    assert deadline("battery") == T0 + timedelta(seconds=93_600)
    assert deadline("own") == T0 + timedelta(seconds=120)
    assert deadline("strict") == T0 + timedelta(seconds=600)
    assert deadline("never-seen") is None
    # the same as report() gives once running
    engine.report("strict", T0)
    assert deadline("strict") == T0 + timedelta(seconds=600)
