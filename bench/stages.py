"""Where the server's time goes: a py-spy profile summed by stage of a position's path.

    python -m bench.stages PROFILE.txt

``PROFILE.txt`` is py-spy's raw output (``py-spy record -f raw``, one folded
stack and its sample count per line), as ``bench.ingest --profile`` writes it.
Each sample is put in the stage of the innermost frame that names one, so a
rule that calls shapely counts as rules, and a sample in no stage counts as
the event loop and sockets (selecting, reading, writing).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# (stage, substrings of a frame that put a sample in it), outermost first
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("session: bind unit, count, hand over", ("Session.handle", "Session.feed")),
    ("decode (codecs, replies)", ("Codec.feed",)),
    ("filter and build the row", ("Pipeline.accept",)),
    ("group commit", ("Pipeline.commit", "Pipeline._write_loop")),
    ("store: COPY to PostGIS", ("PostgisStore.insert_positions",)),
    ("latest-state cache", ("LatestState.",)),
    ("live: encode and publish", ("Hub.", "views.", "live_position", "api_live")),
    ("rules and events", ("Events.committed", "Events._saw", "RuleEngine.")),
    ("REST and websocket (uvicorn)", ("uvicorn", "starlette", "websockets")),
)
IDLE = ("EpollSelector.select", "select (selectors.py")
LOOP = "event loop, sockets, timers"


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    found = LOOP
    for frame in frames:
        for stage, markers in STAGES:
            if any(m in frame for m in markers):
                found = stage
    if found == LOOP and any(m in frames[-1] for m in IDLE):
        return "idle (waiting in select)"
    return found


def summarise(path: Path) -> list[tuple[str, float]]:
    """(stage, share of the samples), largest first."""
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    return [(stage, count / total) for stage, count in counts.most_common()]


def print_summary(path: Path, us_per_position: float | None = None) -> None:
    rows = summarise(path)
    print(f"\nwhere the server's time goes ({path}, py-spy samples by stage)\n")
    extra = "  us/position" if us_per_position else ""
    print(f"{'stage':<40} {'share':>6}{extra}")
    print("-" * (47 + len(extra)))
    for stage, share in rows:
        cost = f"  {share * us_per_position:>11.1f}" if us_per_position else ""
        print(f"{stage:<40} {share:>6.1%}{cost}")


if __name__ == "__main__":
    print_summary(Path(sys.argv[1]))
