"""Structured logging: one logfmt line per event on stdout, with stable keys.

``log.info("upstream_closed", cp="CP7", code=1006)`` prints
``ts=2026-11-25T17:10:51.123Z level=info logger=value event=upstream_closed cp=CP7 code=1006``.
Keys that name secrets are masked here as a last line of defence; callers must not pass them.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_SECRET_KEYS = ("password", "passwd", "secret", "token", "authorization", "key_pem", "idtag")


def _quote(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' ="\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        parts.append(f"event={_quote(record.getMessage())}")
        for k, v in getattr(record, "kv", {}).items():
            if any(s in k.lower() for s in _SECRET_KEYS):
                v = "***"
            parts.append(f"{k}={_quote(v)}")
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"exc={_quote(repr(record.exc_info[1]))}")
        return " ".join(parts)


class EventLogger:
    """A thin wrapper giving ``log.info(event, **fields)``."""

    def __init__(self, name: str):
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra={"kv": fields}, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc=True)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)


def setup(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # websockets logs every handshake failure with a traceback at ERROR; we log our own events.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
