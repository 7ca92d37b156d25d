"""CSV for people's spreadsheets: rows written as RFC 4180 text, with every cell that a
spreadsheet would run as a formula made inert."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

# OWASP's list for CSV injection: Excel and LibreOffice evaluate a cell starting with these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A signed number is no formula, and a phone number written +5511... must stay as it was.
_SIGNED_NUMBER = re.compile(r"[+-]\d+(\.\d+)?")


def spreadsheet_safe(value: object) -> object:
    """A text that would run as a formula gets a leading apostrophe: the spreadsheet shows the
    text instead of evaluating it (a correlationId or extraInfo comes from whoever sent the
    SMS, and a formula in it could reach other cells or the network)."""
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not _SIGNED_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[object]]) -> str:
    """The rows as CSV lines (CRLF-terminated, quoted where needed; None is an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([spreadsheet_safe(value) for value in row] for row in rows)
    return buffer.getvalue()
