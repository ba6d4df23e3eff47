"""Webhook deliveries: an outbox in the store, sent over HTTP, signed, retried.

``Store.insert_events`` queues one pending delivery per matching webhook in the
transaction that stores the event, so no delivery is lost to a restart. The
``WebhookSender`` takes due deliveries from the store (woken when events are
stored, and every second for retries), POSTs each, signed by the Standard
Webhooks scheme (https://www.standardwebhooks.com), and records the outcome:

- 2xx: delivered.
- 410 Gone: failed at once (the receiver unsubscribed).
- anything else (another status, a network error, a timeout): retried after
  ``RetryPolicy.delay`` (10 s, 20 s, 40 s, ... capped at 1 h, ±20 % jitter);
  failed once the delivery is more than 25 h old, so retries last at least 24 h.

While a receiver is failing, its other due deliveries are postponed to the
failed one's retry time instead of being sent (a probe or two per backoff
step, not a storm), so a dead or hanging receiver holds neither the send slots nor the
queue of the others. Delivery is at least once: ``webhook-id`` (the event id)
is the same on every attempt, for the receiver to deduplicate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import orjson

import tracker
from tracker import views
from tracker.aio import cancel_all
from tracker.store import Delivery, Event, Store, Webhook
from tracker.store.base import DeliveryStatus

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # generated; Standard Webhooks accepts 24 to 64
POLL_S = 1.0
TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 8
PER_WEBHOOK = 2  # in flight to one receiver: a hanging one holds at most this many slots
BATCH = 200
ERROR_BODY_CHARS = 200


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key in a ``whsec_<base64>`` secret.

    Raises:
        ValueError: not ``whsec_`` and base64 of 24 to 64 bytes.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("must start with 'whsec_'")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise ValueError("must be 'whsec_' followed by standard base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"must encode 24 to 64 bytes, not {len(key)}")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and base64 of
    HMAC-SHA256(key, ``{id}.{timestamp}.{body}``)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(event: Event) -> bytes:
    """The POST body: the same for every attempt."""
    body = {
        "type": event.type,
        "timestamp": views.iso(event.detected_at),
        "data": views.event(event),
    }
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 10.0
    max_s: float = 3600.0
    give_up_after: timedelta = timedelta(hours=25)
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (self.base_s > 0 and self.max_s >= self.base_s and 0 <= self.jitter < 1):
            raise ValueError("need 0 < base_s <= max_s and 0 <= jitter < 1")

    def delay(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt (1, 2, ...)."""
        nominal = min(self.base_s * 2.0 ** min(max(attempts, 1) - 1, 60), self.max_s)
        return timedelta(seconds=nominal * random.uniform(1 - self.jitter, 1 + self.jitter))

    def gives_up(self, delivery: Delivery, now: datetime) -> bool:
        """Queued (due at once, so first tried) more than ``give_up_after`` ago."""
        return now - delivery.created_at > self.give_up_after


@dataclass(frozen=True, slots=True)
class _Failing:
    """A receiver that failed its last attempt: wait until ``until``."""

    until: datetime
    error: str


class WebhookSender:
    """Sends the store's due deliveries (see the module docstring).

    ``policy``, ``poll_s`` and ``timeout_s`` are plain attributes: tests set
    short delays on a running server instead of waiting minutes.
    """

    def __init__(
        self,
        store: Store,
        stats: Counter[str],
        *,
        clock: Callable[[], datetime],
        policy: RetryPolicy | None = None,
        timeout_s: float = TIMEOUT_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        per_webhook: int = PER_WEBHOOK,
    ) -> None:
        self._store = store
        self.stats = stats
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.poll_s = POLL_S
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.per_webhook = per_webhook
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._retry_at: float | None = None  # loop time of the soonest retry before a poll
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._busy: Counter[str] = Counter()  # webhook id -> deliveries in flight
        self._failing: dict[str, _Failing] = {}
        # ids that left _in_flight while a due_deliveries query ran: it may
        # have read them before their update, so they are not sent again
        self._settled: set[int] | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.timeout_s,
            follow_redirects=False,
            headers={"user-agent": f"collateral-tracker/{tracker.__version__}"},
        )
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        """Cancel the loop and attempts in flight (those stay pending: resent later)."""
        await cancel_all([*self._in_flight.values(), *([self._task] if self._task else [])])
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look for due deliveries now (events were stored)."""
        self._wakeup.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = self.poll_s
            if self._retry_at is not None:
                timeout = max(0.0, min(timeout, self._retry_at - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            if self._retry_at is not None and self._retry_at <= loop.time():
                self._retry_at = None
            try:
                await self._dispatch()
            except Exception as exc:
                log.error("webhook deliveries not read, retrying: %s", exc)
                await asyncio.sleep(self.poll_s)

    async def _dispatch(self) -> None:
        free = self.max_in_flight - len(self._in_flight)
        if free <= 0:
            return  # a finishing attempt wakes the loop
        now = self.clock()
        settled: set[int] = set()
        self._settled = settled
        try:
            due = await self._store.due_deliveries(now, limit=len(self._in_flight) + BATCH)
        finally:
            self._settled = None
        for delivery, webhook, event in due:
            if delivery.id in self._in_flight or delivery.id in settled:
                continue
            failing = self._failing.get(webhook.id)
            if failing is not None and failing.until <= now:
                del self._failing[webhook.id]  # its retry is due: try again
                failing = None
            if failing is not None:
                await self._postpone(delivery, failing, now)
            elif free > 0 and self._busy[webhook.id] < self.per_webhook:
                free -= 1
                self._busy[webhook.id] += 1
                self._in_flight[delivery.id] = asyncio.create_task(
                    self._attempt(delivery, webhook, event), name=f"webhook-{delivery.id}"
                )

    async def _attempt(self, delivery: Delivery, webhook: Webhook, event: Event) -> None:
        try:
            try:
                status_code, error = await self._post(webhook, event)
            except Exception as exc:  # our bug, or a stored URL httpx cannot use
                log.exception("webhook %s: delivery %d not sent", webhook.id, delivery.id)
                status_code, error = None, f"{type(exc).__name__}: {exc}"[:ERROR_BODY_CHARS]
            await self._record(delivery, webhook, status_code, error)
        except Exception as exc:
            log.error("webhook delivery %d not recorded, it stays due: %s", delivery.id, exc)
        finally:
            del self._in_flight[delivery.id]
            self._busy[webhook.id] -= 1
            if self._busy[webhook.id] <= 0:
                del self._busy[webhook.id]
            if self._settled is not None:
                self._settled.add(delivery.id)
            self._wakeup.set()

    async def _post(self, webhook: Webhook, event: Event) -> tuple[int | None, str | None]:
        """One attempt: (status code or None, error or None when 2xx)."""
        assert self._client is not None, "start() first"
        body = payload(event)
        timestamp = int(self.clock().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(webhook.secret, event.id, timestamp, body),
        }
        try:
            async with (
                asyncio.timeout(self.timeout_s),
                self._client.stream("POST", webhook.url, content=body, headers=headers) as response,
            ):
                if response.is_success:
                    return response.status_code, None
                if response.is_redirect:
                    where = response.headers.get("location", "")
                    detail = f"redirects are not followed (location: {where})"
                else:
                    head = b""
                    async for chunk in response.aiter_bytes():
                        head += chunk
                        if len(head) >= 4 * ERROR_BODY_CHARS:
                            break
                    detail = " ".join(head.decode(errors="replace").split())
                detail = detail[:ERROR_BODY_CHARS]
                return response.status_code, f"HTTP {response.status_code}: {detail}".rstrip(": ")
        except TimeoutError:
            return None, f"no response within {self.timeout_s:g} s"
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
            return None, (f"{kind}: {exc}" if str(exc) else kind)[:ERROR_BODY_CHARS]

    async def _record(
        self, delivery: Delivery, webhook: Webhook, status_code: int | None, error: str | None
    ) -> None:
        now = self.clock()
        attempts = delivery.attempts + 1
        status: DeliveryStatus
        if error is None:
            status, next_attempt_at = "delivered", now
            self._failing.pop(webhook.id, None)
            self.stats["webhook_deliveries.delivered"] += 1
        else:
            self.stats["webhook_attempts_failed"] += 1
            next_attempt_at = now + self.policy.delay(attempts)
            if status_code == 410 or self.policy.gives_up(delivery, now):
                status = "failed"
                self.stats["webhook_deliveries.failed"] += 1
                log.warning(
                    "webhook %s: gave up on delivery %d: %s", webhook.id, delivery.id, error
                )
            else:
                status = "pending"
                self._failing[webhook.id] = _Failing(next_attempt_at, error)
                self._retry_soon((next_attempt_at - now).total_seconds())
        await self._store.update_delivery(
            delivery.id,
            status=status,
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=error if error is not None else delivery.last_error,
            last_status_code=status_code,
            delivered_at=now if error is None else None,
        )

    async def _postpone(self, delivery: Delivery, failing: _Failing, now: datetime) -> None:
        """Not sent: its receiver is failing. Due again when the receiver's retry is."""
        gave_up = self.policy.gives_up(delivery, now)
        last_error = delivery.last_error
        if gave_up:
            self.stats["webhook_deliveries.failed"] += 1
            last_error = f"gave up: the receiver kept failing ({failing.error})"
        elif last_error is None:
            last_error = f"not sent yet: the receiver is failing ({failing.error})"
        await self._store.update_delivery(
            delivery.id,
            status="failed" if gave_up else "pending",
            attempts=delivery.attempts,
            next_attempt_at=failing.until,
            last_error=last_error[: 2 * ERROR_BODY_CHARS],
            last_status_code=delivery.last_status_code,
            delivered_at=None,
        )

    def _retry_soon(self, delay_s: float) -> None:
        """Wake for a retry due before the next poll (short delays, in tests)."""
        if delay_s < self.poll_s:
            at = asyncio.get_running_loop().time() + delay_s
            self._retry_at = at if self._retry_at is None else min(self._retry_at, at)
