"""Webhook signing and the retry schedule (the sending is in tests/e2e/test_webhooks.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from tracker.store import Delivery
from tracker.webhooks import RetryPolicy, new_secret, secret_key, sign

# The Standard Webhooks specification's test vector (the reference libraries
# at github.com/standard-webhooks/standard-webhooks test against it).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_standard_webhooks_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_generated_secrets_are_24_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 24
    assert new_secret() != secret


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "standard base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64 bytes, not 23"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes, not 65"),
    ],
)
def test_bad_secrets_say_what_is_wrong(secret: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        secret_key(secret)


def test_backoff_doubles_from_10_s_to_an_hour_with_jitter() -> None:
    policy = RetryPolicy()
    for attempts, nominal_s in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (500, 3600)]:
        for _ in range(20):
            delay_s = policy.delay(attempts).total_seconds()
            assert nominal_s * 0.8 <= delay_s <= nominal_s * 1.2


def test_retries_last_at_least_24_hours() -> None:
    policy = RetryPolicy()
    created = datetime(2026, 11, 29, tzinfo=UTC)
    now, attempts = created, 0
    while True:  # a receiver that always fails, tried the moment each retry is due
        attempts += 1
        delivery = Delivery(1, "wh_1", 1, "pending", attempts - 1, now, created)
        if policy.gives_up(delivery, now):
            break
        now += policy.delay(attempts)
    assert now - created > timedelta(hours=25)
    assert 30 <= attempts <= 40  # 10 s, 20 s, ... 2560 s, then about hourly


def test_policy_rejects_a_schedule_that_never_backs_off() -> None:
    with pytest.raises(ValueError, match="base_s"):
        RetryPolicy(base_s=0)
