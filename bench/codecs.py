"""Codec benchmark: frames decoded per second per protocol, one process, one core.

    python -m bench.codecs [--seconds 1.0]

Each protocol's vector corpus (``../shared/vectors/<name>.jsonl``, the TCP
packets back to back) is replayed in a loop through a fresh codec, two ways:
the corpus fed as one chunk per frame (how a unit's reads usually arrive), and
fed one byte at a time, the worst split a stream can have (the baseline: it
shows what buffering costs). A frame counts once whether it became a message
or was dropped and counted (bad checksum, implausible fix).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import protocols
from bench.report import Figure, print_table

VECTORS = Path(
    os.environ.get("TRACKER_VECTORS") or Path(__file__).resolve().parents[2] / "shared" / "vectors"
)
TARGETS = {"gt06": 100_000, "jt808": 100_000, "teltonika": 100_000}


def corpus(name: str) -> list[bytes]:
    """The protocol's TCP packets, in file order."""
    path = VECTORS / f"{name}.jsonl"
    packets = []
    for line in path.read_text().splitlines():
        vector = json.loads(line)
        if vector.get("transport", "tcp") != "tcp" or "data" not in vector:
            continue
        data = vector["data"]
        packets.append(bytes.fromhex(data) if vector["encoding"] == "hex" else data.encode())
    return packets


def frames_in(name: str, chunks: list[bytes]) -> int:
    codec = protocols.open(name, accept_bad_crc=True)
    count = 0
    for chunk in chunks:
        count += len(codec.feed(chunk))
    return count + sum(codec.stats.values())


def rate(run: Callable[[], int], seconds: float) -> float:
    """Frames per second of ``run`` (which returns how many frames it decoded)."""
    frames = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        frames += run()
    return frames / elapsed


def run(argv: list[str]) -> list[Figure]:
    """Print the per-protocol table; return the three the targets name, each against
    its own byte-at-a-time feed (the worst split a stream can have)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per protocol and way")
    args = parser.parse_args(argv)

    print(f"\ncodec benchmark: vector corpus replayed, {args.seconds:g} s per figure, one core\n")
    header = (
        f"{'protocol':<10} {'frames':>7} {'frames/s (frame reads)':>23} "
        f"{'frames/s (1-byte reads)':>24} {'ratio':>6} {'target':>9}"
    )
    print(header)
    print("-" * len(header))
    figures = []
    for name in sorted(protocols.CODECS):
        packets = corpus(name)
        if not packets:
            continue
        stream = b"".join(packets)
        one_byte = [stream[i : i + 1] for i in range(len(stream))]
        whole = rate(functools.partial(frames_in, name, packets), args.seconds)
        slow = rate(functools.partial(frames_in, name, one_byte), args.seconds)
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if whole >= target else "MISSED")
        print(
            f"{name:<10} {frames_in(name, packets):>7} {whole:>23,.0f} {slow:>24,.0f} "
            f"{whole / slow:>5.1f}x {f'{target:,}' if target else '-':>9} {verdict}"
        )
        if target is not None:
            figures.append(Figure(f"{name} frames decoded/s, one core", whole, "/s", target, slow))
    return figures


def main(argv: list[str] | None = None) -> int:
    figures = run(sys.argv[1:] if argv is None else argv)
    print_table("codecs (naive: the same stream fed one byte at a time)", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
