"""CSV for people's spreadsheets: rows written as RFC 4180 text, with every cell that a
spreadsheet would run as a formula made inert, in the separator and encoding mark that the
reader's spreadsheet opens without an import dialog."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# OWASP's list for CSV injection: Excel and LibreOffice evaluate a cell starting with these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A signed number is no formula, and a phone number written +5511... must stay as it was.
_SIGNED_NUMBER = re.compile(r"[+-]\d+(\.\d+)?")


def spreadsheet_safe(value: object) -> object:
    """A text that would run as a formula gets a leading apostrophe: the spreadsheet shows the
    text instead of evaluating it (a correlationId or extraInfo comes from whoever sent the
    SMS, and a formula in it could reach other cells or the network)."""
    if isinstance(value, bool):
        return "true" if value else "false"  # as the JSON answers say it, not Python's True
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_STARTS)
        and not _SIGNED_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


Delimiter = Literal["comma", "semicolon", "tab"]
DELIMITERS: dict[Delimiter, str] = {"comma": ",", "semicolon": ";", "tab": "\t"}
# Excel reads a CSV file as the system's legacy code page unless it starts with this mark, so
# "Não" in a reply would show as "NÃ£o"; programs reading UTF-8 mostly skip it, not all do.
UTF8_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class SpreadsheetFormat:
    """How a download is written for its reader. Excel opens a double-clicked CSV with the
    list separator of its locale: a comma in English, a semicolon where the decimal mark is a
    comma (Brazil's Portuguese, Spanish), and then needs the UTF-8 mark too."""

    delimiter: Delimiter = "comma"
    byte_order_mark: bool = False

    @property
    def separator(self) -> str:
        return DELIMITERS[self.delimiter]


def csv_text(rows: Iterable[Sequence[object]], separator: str = ",") -> str:
    """The rows as CSV lines (CRLF-terminated, quoted where needed; None is an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=separator, lineterminator="\r\n")
    writer.writerows([spreadsheet_safe(value) for value in row] for row in rows)
    return buffer.getvalue()
