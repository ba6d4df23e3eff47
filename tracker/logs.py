"""Log lines as text or as one JSON object per line (``log.format``).

Fields passed as ``extra`` (``unique_id``, ``protocol``, ...) are kept: as
keys of the JSON object, or appended as ``key=value`` to a text line. Never
pass API keys or share tokens as ``extra`` or in a message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# what every LogRecord has: anything else on a record came from ``extra``
_BLANK = logging.LogRecord("", 0, "", 0, "", (), None)
_STANDARD = frozenset([*_BLANK.__dict__, "message", "asctime", "taskName"])


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extra fields,
    and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` followed by `` key=value`` for each extra field that is set."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = [f"{k}={_text(v)}" for k, v in extra_fields(record).items() if v is not None]
        return " ".join([line, *pairs])


def _text(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Send the root logger's records to stderr in ``log_format``; replaces
    what ``logging.basicConfig`` set up before."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
