"""How long data is kept: ages as operators write them (``90d``, ``12h``, ``2w``)."""

from __future__ import annotations

import re
from datetime import timedelta

_AGE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class BadAge(ValueError):
    pass


def parse_age(text: str) -> timedelta:
    """``90d`` -> 90 days. Zero is refused: "purge everything" is never what a typo meant."""
    match = _AGE.fullmatch(text.lower())
    if match is None:
        raise BadAge(f"{text!r} is not an age like 90d, 12h, 2w, 30m or 45s")
    age = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if age <= timedelta(0):
        raise BadAge("the age must be more than zero")
    return age
