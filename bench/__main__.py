"""``python -m bench [NAME ...]``: every benchmark (or those named), then one summary table.

Each benchmark prints its own detailed table as it goes; the summary at the
end has one row per figure with its target, the naive baseline measured in
the same run, and the ratio. Bounded: each runs for seconds, not minutes (the
README says which flags give the full-size runs). A benchmark whose
correctness check fails (an acknowledged position not stored, a wrong answer)
is reported and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from datetime import UTC, datetime

from bench.report import Figure, print_table

BENCHMARKS = ("codecs", "rules", "ingest", "live", "rest", "track", "coldstart", "connections")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    figures: list[Figure] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        try:
            figures += module.run([])
        except (Exception, SystemExit) as exc:  # a failed check: say so, run the others
            print(f"\nbench.{name} FAILED: {type(exc).__name__}: {exc}")
            failed.append(name)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print_table(
        f"summary, {datetime.now(UTC):%Y-%m-%d}, {machine}, "
        f"{time.monotonic() - started:.0f} s in all",
        figures,
    )
    if failed:
        print(f"\nFAILED: {', '.join(failed)} (their ERROR lines are above)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
