"""What counts as text a person typed: no control character but tab and line breaks, no
unpaired surrogate. No person types them, PostgreSQL stores neither NUL nor a surrogate, and a
log line or a CSV cell would carry the rest into whatever reads it."""

from __future__ import annotations

import re

# As the API documents it (a JSON Schema pattern); unpaired surrogates are refused apart.
PRINTABLE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def is_printable(text: str) -> bool:
    return _UNPRINTABLE.search(text) is None
