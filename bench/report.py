"""One table shape for every benchmark: figure, measured, target, naive, ratio.

Each benchmark module returns ``Figure`` rows from its run and prints them with
``print_table``; ``python -m bench`` collects them all into one summary table.
A figure "meets" its target when ``measured`` is on the right side of it
(``higher_is_better`` says which side). The naive baseline is measured in the
same run, so the ratio survives a noisy machine even when the absolute figure
does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


class WrongAnswers(Exception):
    """A correctness check failed: the table was printed, the run does not count."""


@dataclass(frozen=True)
class Figure:
    what: str  # "positions/s stored and acked, GT06+JT808+Teltonika mix"
    measured: float
    unit: str  # "/s", "ms", "MB", "s"
    target: float | None = None
    naive: float | None = None  # the same figure for the naive baseline, same run
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        """How many times better than naive (>1 is better, whichever the direction)."""
        if self.naive is None or self.naive <= 0 or self.measured <= 0:
            return None
        return self.measured / self.naive if self.higher_is_better else self.naive / self.measured

    @property
    def meets(self) -> bool | None:
        if self.target is None or math.isnan(self.measured):
            return None
        if self.higher_is_better:
            return self.measured >= self.target
        return self.measured <= self.target


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def print_table(title: str, figures: Iterable[Figure]) -> None:
    rows = [
        (
            f.what,
            fmt(f.measured, f.unit),
            ("" if f.target is None else (">= " if f.higher_is_better else "<= "))
            + fmt(f.target, f.unit).replace("-", ""),
            fmt(f.naive, f.unit),
            "-" if f.ratio is None else f"{f.ratio:,.1f}x",
            {True: "yes", False: "NO", None: ""}[f.meets],
        )
        for f in figures
    ]
    header = ("what", "measured", "target", "naive", "ratio", "met")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}\n")

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    line = join(header)
    print(line)
    print("-" * len(line))
    for r in rows:
        print(join(r))
