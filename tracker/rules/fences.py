"""Geofence enter/exit with hysteresis: no flapping on GPS jitter.

A fix near a fence's edge (within the margin: the configured one or the fix's
own accuracy, whichever is larger) says nothing. A fix clearly on the other
side of the edge starts a candidate; the candidate is confirmed after
``dwell_fixes`` consecutive fixes on that side, or once it has held for
``dwell_s``. A fix clearly back on the confirmed side drops the candidate.
Pure: the engine feeds it observations in fix-time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class Seen(Enum):
    INSIDE = "inside"
    OUTSIDE = "outside"
    UNSURE = "unsure"


@dataclass(slots=True)
class FenceState:
    confirmed: Seen | None = None  # None: not known yet
    candidate: Seen | None = None
    since: datetime | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class Transition:
    before: Seen | None  # None: the first confirmed side
    after: Seen


def observe(
    state: FenceState, seen: Seen, fix_time: datetime, *, dwell_fixes: int, dwell_s: float
) -> Transition | None:
    """Take one observation; return the confirmed change it completes, if any."""
    if seen is Seen.UNSURE:
        return None
    if seen is state.confirmed:
        state.candidate, state.since, state.count = None, None, 0
        return None
    if seen is not state.candidate or state.since is None:
        state.candidate, state.since, state.count = seen, fix_time, 0
    state.count += 1
    held_s = (fix_time - state.since).total_seconds()
    if state.count >= dwell_fixes or (state.count > 1 and held_s >= dwell_s):
        before = state.confirmed
        state.confirmed, state.candidate, state.since, state.count = seen, None, None, 0
        return Transition(before, seen)
    return None
