"""Types for what the read routes take from query strings, paths and search bodies: text that
PostgreSQL can compare, and times written the way the API documents them (ISO-8601)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field

from app.payloads import REPLACEMENT_CHARACTER, as_utc
from app.rules.plain_text import PRINTABLE_PATTERN, is_printable


def _nul_as_stored(value: str) -> str:
    """PostgreSQL text cannot hold U+0000, and ingestion stores it as U+FFFD: a search for a
    value with a NUL then finds what was stored for it (instead of failing)."""
    return value.replace("\x00", REPLACEMENT_CHARACTER)


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _iso_8601_only(value: Any) -> Any:
    """pydantic would read "0.5" or a JSON 0 as a Unix time; the API promises ISO-8601 and its
    schema says so, so a number is refused rather than guessed at."""
    if not isinstance(value, str | datetime) or (
        isinstance(value, str) and _NUMBER.fullmatch(value)
    ):
        raise ValueError("expected an ISO-8601 date-time such as 2026-01-31T12:00:00Z")
    return value


def _printable(value: str) -> str:
    if not is_printable(value):
        raise ValueError("must not hold control characters (NUL included)")
    return value


SearchText = Annotated[str, AfterValidator(_nul_as_stored)]
# Text a caller writes into the service's own records (a reason, a keyword): app.rules.plain_text
# (unpaired surrogates cannot reach it: app.api.routing refuses them in the JSON).
PlainText = Annotated[
    str, AfterValidator(_printable), Field(json_schema_extra={"pattern": PRINTABLE_PATTERN})
]
# In UTC once validated, like the payloads' dates: the routes compare and echo one form, and
# a time that UTC takes past year 9999 is a 422, not a value the driver cannot send.
IsoTime = Annotated[datetime, BeforeValidator(_iso_8601_only), AfterValidator(as_utc)]


def _known_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a file unreadable as one
        raise ValueError("expected an IANA time zone such as America/Sao_Paulo or UTC") from None
    return name


# A zone the tz database names (America/Sao_Paulo), for figures per local day.
TimeZoneName = Annotated[str, AfterValidator(_known_time_zone)]
