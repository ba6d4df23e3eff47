"""Log lines: one JSON object per line, or text with ``key=value`` extra fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tracker import logs
from tracker.settings import ConfigError, load

UNIT = {"unique_id": "123456789012345", "protocol": "gt06"}


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, logging.StreamHandler[io.StringIO]]]:
    handler = logging.StreamHandler(io.StringIO())
    logger = logging.getLogger("tracker.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def lines(handler: logging.StreamHandler[io.StringIO]) -> list[str]:
    return handler.stream.getvalue().splitlines()


def test_json_line_parses_and_carries_extra_fields(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(logs.JsonFormatter())
    log.warning("gt06 %s: closed, %s", "10.0.0.1:4000", "idle", extra=UNIT)
    [line] = lines(handler)
    record = json.loads(line)
    assert record == {
        "time": record["time"],
        "level": "WARNING",
        "logger": "tracker.test_logs",
        "message": "gt06 10.0.0.1:4000: closed, idle",
        "unique_id": "123456789012345",
        "protocol": "gt06",
    }
    assert record["time"].endswith("+00:00")  # UTC, ISO 8601


def test_json_line_keeps_the_traceback_and_a_null_unit(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(logs.JsonFormatter())
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("connection failed", extra={"unique_id": None, "protocol": "h02"})
    [line] = lines(handler)  # the traceback's newlines are escaped: one line
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert record["unique_id"] is None
    assert record["protocol"] == "h02"
    assert "ValueError: boom" in record["exception"]


def test_text_mode_appends_extra_fields(
    logger: tuple[logging.Logger, logging.StreamHandler[io.StringIO]],
) -> None:
    log, handler = logger
    handler.setFormatter(logs.TextFormatter())
    log.info("refused unknown unit", extra=UNIT)
    log.info("no unit yet", extra={"unique_id": None, "protocol": "gt06"})
    log.info("spaces", extra={"detail": "two words"})
    log.info("plain")
    refused, no_unit, spaces, plain = lines(handler)
    assert refused.endswith(
        " INFO tracker.test_logs: refused unknown unit unique_id=123456789012345 protocol=gt06"
    )
    assert no_unit.endswith(": no unit yet protocol=gt06")  # unknown unit: left out
    assert spaces.endswith(': spaces detail="two words"')
    assert plain.endswith(" INFO tracker.test_logs: plain")


def test_configure_sets_the_root_format_and_level() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("json", "WARNING")
        assert root.level == logging.WARNING
        [handler] = root.handlers
        assert isinstance(handler.formatter, logs.JsonFormatter)
        logs.configure("text", "DEBUG")
        [handler] = root.handlers
        assert isinstance(handler.formatter, logs.TextFormatter)
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_log_and_metrics_settings() -> None:
    settings = load(None, environ={})
    assert (settings.log_format, settings.log_level, settings.metrics_token) == (
        "text",
        "INFO",
        None,
    )
    settings = load(
        None,
        environ={
            "TRACKER_LOG_FORMAT": "JSON",
            "TRACKER_LOG_LEVEL": "debug",
            "TRACKER_METRICS_TOKEN": "scrape-secret",
        },
    )
    assert (settings.log_format, settings.log_level, settings.metrics_token) == (
        "json",
        "DEBUG",
        "scrape-secret",
    )
    with pytest.raises(ConfigError, match=r"^log\.format: expected one of text, json"):
        load(None, environ={"TRACKER_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match=r"^log\.level: "):
        load(None, environ={"TRACKER_LOG_LEVEL": "loud"})
