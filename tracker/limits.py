"""Limits on units' TCP connections: how many, how quiet, how chatty before a login.

Bookkeeping only, no sockets and no clock of its own (times are passed in), so it
is tested without a network. The gateway asks; a ``Refused`` reason ends up in
the shared ``stats`` as ``connections_rejected.<protocol>.<reason>``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping

from tracker.settings import GatewaySettings, ProtocolSettings

log = logging.getLogger("tracker.gateway")  # where connections were logged before

# connections_rejected.<protocol>.<reason>
REASONS = (
    "idle",  # silent for idle_timeout_s
    "login_timeout",  # no known unit within login_timeout_s of connecting
    "per_ip_limit",  # gateway.max_connections_per_ip open from that address already
    "total_limit",  # gateway.max_connections open already
    "unauthenticated_bytes",  # gateway.max_bytes_before_login without a known unit
    "protocol_error",  # the codec cannot frame the stream
    "store_unavailable",  # positions were not stored; the unit sends them again
)
QUIET_REASONS = frozenset({"idle", "login_timeout"})  # everyday: coverage lost, unit reset


class Refused(Exception):
    """Close this connection, counted under ``reason`` (one of ``REASONS``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Connections:
    """The TCP connections open across every listener, per remote address and in all."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.open = 0
        self._per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> str | None:
        """Take a place for a connection from ``ip``: None, or the reason it is refused.
        An admitted connection gives its place back with ``release``."""
        if self.open >= self.settings.max_connections:
            return "total_limit"
        if self._per_ip[ip] >= self.settings.max_connections_per_ip:
            return "per_ip_limit"
        self.open += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.open -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


class Guard:
    """The limits of one connection that opened at ``now``; times are monotonic seconds."""

    WINDOW_S = 1.0  # frame-rate bursts: up to one second's worth of frames at once
    # Before a login, bytes are read and decoded in small bites (decoding 4 KiB of small
    # frames takes milliseconds), and the gateway yields between them: a stranger's
    # bytes wait their turn behind known units.
    STRANGER_READ = 512

    def __init__(self, protocol: ProtocolSettings, gateway: GatewaySettings, now: float) -> None:
        self._idle_s = protocol.idle_timeout_s
        self._login_by = now + protocol.login_timeout_s
        self._max_unidentified = gateway.max_bytes_before_login
        self._unidentified = 0  # bytes read while no known unit had spoken
        # token bucket over frames
        self._rate = float(gateway.max_frames_per_s)
        self._burst = self._rate * self.WINDOW_S
        self._tokens = self._burst
        self._filled_at = now

    def read_size(self, identified: bool, most: int) -> int:
        """How much to read next: before a login, a small bite, and no more than the cap
        lets through, so a codec never sees more than ``max_bytes_before_login`` from a
        stranger."""
        if identified:
            return most
        left = self._max_unidentified - self._unidentified
        return max(1, min(most, self.STRANGER_READ, left))

    def deadline(self, identified: bool, now: float) -> tuple[float, str]:
        """When to stop waiting for the next bytes, and the reason to give then."""
        idle_at = now + self._idle_s
        if not identified and self._login_by < idle_at:
            return self._login_by, "login_timeout"
        return idle_at, "idle"

    def received(self, size: int, identified: bool) -> None:
        """Count ``size`` bytes just handled.

        Raises:
            Refused: ``max_bytes_before_login`` bytes and still no known unit.
        """
        if identified:
            return
        self._unidentified += size
        if self._unidentified >= self._max_unidentified:
            raise Refused("unauthenticated_bytes", f"{self._unidentified} bytes, no known unit")

    def frames(self, count: int, now: float) -> tuple[int, float]:
        """Spend ``count`` frames; return how many were over the rate, and for how many
        seconds to stop reading so that the connection comes back within it."""
        elapsed = now - self._filled_at
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._filled_at = now
        self._tokens -= count
        if self._tokens >= 0:
            return 0, 0.0
        over = min(count, math.ceil(-self._tokens))
        return over, -self._tokens / self._rate


class Refusals:
    """Counts closed connections of one protocol by reason, and logs them without
    letting a flood flood the log: per reason, one line per ``LOG_EVERY_S``."""

    LOG_EVERY_S = 10.0

    def __init__(
        self, stats: Counter[str], protocol: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stats = stats
        self.protocol = protocol
        self._clock = clock
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last logged, not logged)

    def count(
        self, reason: str, peer: str, detail: str = "", extra: Mapping[str, object] | None = None
    ) -> None:
        self.stats[f"connections_rejected.{self.protocol}.{reason}"] += 1
        now = self._clock()
        last, unlogged = self._logged.get(reason, (-math.inf, 0))
        if now - last < self.LOG_EVERY_S:
            self._logged[reason] = (last, unlogged + 1)
            return
        self._logged[reason] = (now, 0)
        level = logging.INFO if reason in QUIET_REASONS else logging.WARNING
        more = f" ({unlogged} more not logged)" if unlogged else ""
        detail = f": {detail}" if detail else ""
        extra = extra or {"unique_id": None, "protocol": self.protocol}
        log.log(
            level, "%s %s: closed, %s%s%s", self.protocol, peer, reason, detail, more, extra=extra
        )
