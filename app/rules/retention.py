"""How long data is kept: ages as operators write them (``90d``, ``12h``, ``2w``)."""

from __future__ import annotations

import re
from datetime import timedelta

_AGE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# The longest age: past it a date computed from now leaves the calendar, and no operator
# means to keep anything longer (unset keeps it for ever).
MAX_AGE = timedelta(days=3650)


class BadAge(ValueError):
    pass


def parse_age(text: str) -> timedelta:
    """``90d`` -> 90 days. Zero is refused: "purge everything" is never what a typo meant."""
    match = _AGE.fullmatch(text.lower())
    if match is None:
        raise BadAge(f"{text!r} is not an age like 90d, 12h, 2w, 30m or 45s")
    amount = int(match[1])
    if amount > MAX_AGE.total_seconds():
        raise BadAge(f"{text!r} is longer than {MAX_AGE.days}d")
    age = timedelta(**{_UNITS[match[2]]: amount})
    if age <= timedelta(0):
        raise BadAge("the age must be more than zero")
    if age > MAX_AGE:
        raise BadAge(f"{text!r} is longer than {MAX_AGE.days}d")
    return age
