"""Logging: text for a terminal, JSON (one object per line) for a log pipeline, and the request
id stamped on every line written while a request is handled.

What must never reach a log: webhook keys (they travel in the query string, which is why the
access line carries the route, not the URL), read-API tokens (headers, never logged) and
message texts (payloads are never logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

# The request being handled, for every log line written meanwhile ("-" outside requests).
current_request_id: ContextVar[str] = ContextVar("current_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        return True


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(request_id)s"


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the service, uvicorn's own loggers included (uvicorn
    applies it in every worker process). uvicorn's access log is replaced by ours."""
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"format": _TEXT_FORMAT}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "app": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


# While something keeps failing, how often the log says so again.
STILL_FAILING_EVERY_S = 60.0


class FailureLog:
    """The log of one thing that can fail over and over (the writer's batches, a background
    loop): a warning when it starts failing, a reminder every ``remind_every_s`` while it
    keeps failing, and a line when it works again. A database outage otherwise writes a line
    per batch and per loop turn, in every worker, and buries the line that says when it began.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        remind_every_s: float = STILL_FAILING_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._remind_every_s = remind_every_s
        self._clock = clock
        self._failing_since: float | None = None
        self._failures = 0
        self._logged_at = 0.0

    def failed(self, error: BaseException | str) -> None:
        # Some exceptions say nothing (a bare TimeoutError): their class name then does.
        error = str(error) or type(error).__name__
        now = self._clock()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = self._logged_at = now
            self._logger.warning("%s failed: %s", self._what, error)
        elif now - self._logged_at >= self._remind_every_s:
            self._logger.warning(
                "%s still failing (%d times in %.0f s): %s",
                self._what,
                self._failures,
                now - self._failing_since,
                error,
            )
            self._logged_at = now

    def succeeded(self) -> None:
        if self._failing_since is None:
            return
        # A warning too, so that a log filtered to warnings shows where the outage ended.
        self._logger.warning(
            "%s works again after %.0f s (%d failures)",
            self._what,
            self._clock() - self._failing_since,
            self._failures,
        )
        self._failing_since = None
        self._failures = 0
