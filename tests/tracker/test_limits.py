"""Connection limits without a network: caps, deadlines, login bytes, frame rate, log floods."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from tracker.limits import Connections, Guard, Refusals, Refused
from tracker.settings import ConfigError, GatewaySettings, ProtocolSettings, load

GT06 = ProtocolSettings("gt06", 0, idle_timeout_s=600.0, login_timeout_s=30.0)


def test_connections_are_capped_per_address_and_in_all() -> None:
    connections = Connections(GatewaySettings(max_connections=3, max_connections_per_ip=2))
    assert connections.admit("10.0.0.1") is None
    assert connections.admit("10.0.0.1") is None
    assert connections.admit("10.0.0.1") == "per_ip_limit"
    assert connections.admit("10.0.0.2") is None
    assert connections.admit("10.0.0.3") == "total_limit"
    connections.release("10.0.0.1")
    assert connections.admit("10.0.0.3") is None
    assert connections.open == 3


def test_a_stranger_has_until_the_login_deadline_then_the_idle_timeout_applies() -> None:
    guard = Guard(GT06, GatewaySettings(), now=100.0)
    assert guard.deadline(identified=False, now=100.0) == (130.0, "login_timeout")
    # trickling bytes does not move the login deadline
    assert guard.deadline(identified=False, now=129.0) == (130.0, "login_timeout")
    assert guard.deadline(identified=True, now=129.0) == (729.0, "idle")
    shy = Guard(ProtocolSettings("gt06", 0, idle_timeout_s=5.0), GatewaySettings(), now=100.0)
    assert shy.deadline(identified=False, now=100.0) == (105.0, "idle")


def test_bytes_before_a_login_are_capped_and_never_read_past_the_cap() -> None:
    guard = Guard(GT06, GatewaySettings(max_bytes_before_login=100), now=0.0)
    assert guard.read_size(identified=False, most=65536) == 100
    guard.received(60, identified=False)
    assert guard.read_size(identified=False, most=65536) == 40
    with pytest.raises(Refused) as refused:
        guard.received(40, identified=False)
    assert refused.value.reason == "unauthenticated_bytes"
    assert guard.read_size(identified=True, most=65536) == 65536


def test_strangers_are_read_in_small_bites() -> None:
    guard = Guard(GT06, GatewaySettings(), now=0.0)
    assert guard.read_size(identified=False, most=65536) == Guard.STRANGER_READ
    assert guard.read_size(identified=False, most=100) == 100


def test_known_units_may_send_any_amount() -> None:
    guard = Guard(GT06, GatewaySettings(max_bytes_before_login=100), now=0.0)
    for _ in range(10):
        guard.received(1000, identified=True)


def test_frames_over_the_rate_pause_reading_until_back_within_it() -> None:
    guard = Guard(GT06, GatewaySettings(max_frames_per_s=100), now=0.0)
    assert guard.frames(100, now=0.0) == (0, 0.0)  # a burst of one second's worth
    over, pause_s = guard.frames(50, now=0.0)
    assert over == 50
    assert pause_s == pytest.approx(0.5)
    assert guard.frames(10, now=0.6) == (0, 0.0)  # 10 frames' worth refilled since the pause
    assert guard.frames(100, now=100.0) == (0, 0.0)  # a quiet spell refills the burst only


def test_refusals_are_counted_each_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats: Counter[str] = Counter()
    now = [0.0]
    refusals = Refusals(stats, "gt06", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="tracker.gateway"):
        for _ in range(1000):
            refusals.count("per_ip_limit", "10.0.0.1:4000")
        now[0] = Refusals.LOG_EVERY_S
        refusals.count("per_ip_limit", "10.0.0.1:4001")
        refusals.count("idle", "10.0.0.2:4000")
    assert stats["connections_rejected.gt06.per_ip_limit"] == 1001
    assert stats["connections_rejected.gt06.idle"] == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "gt06 10.0.0.1:4000: closed, per_ip_limit"),
        ("WARNING", "gt06 10.0.0.1:4001: closed, per_ip_limit (999 more not logged)"),
        ("INFO", "gt06 10.0.0.2:4000: closed, idle"),
    ]


def test_limits_are_settings_keys(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text(
        "[gateway]\nmax_connections_per_ip = 5\n[protocols.gt06]\nidle_timeout_s = 90\n"
    )
    settings = load(path, environ={"TRACKER_PROTOCOLS_GT06_LOGIN_TIMEOUT_S": "7.5"})
    assert settings.gateway == GatewaySettings(max_connections_per_ip=5)
    gt06, h02 = settings.protocol("gt06"), settings.protocol("h02")
    assert gt06 is not None
    assert (gt06.idle_timeout_s, gt06.login_timeout_s) == (90.0, 7.5)
    assert h02 is not None
    assert (h02.idle_timeout_s, h02.login_timeout_s) == (600.0, 30.0)
    defaults = load(None, environ={}).gateway
    assert defaults == GatewaySettings(100_000, 100, 4096, 200)


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("TRACKER_GATEWAY_MAX_CONNECTIONS", "gateway.max_connections"),
        ("TRACKER_PROTOCOLS_GT06_IDLE_TIMEOUT_S", "protocols.gt06.idle_timeout_s"),
    ],
)
def test_limits_must_be_positive(variable: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load(None, environ={variable: "0"})
