"""CSV downloads of the read API: a header row, then the rows as the database layer reads
them, page by page, so that a download of the whole store streams instead of gathering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Query
from starlette.responses import StreamingResponse

from app.db.reads import Row
from app.rules.spreadsheet_csv import UTF8_BOM, Delimiter, SpreadsheetFormat, csv_text

# Rows per page read: each page is one query on a connection checked out for it.
EXPORT_PAGE_ROWS = 5000


def csv_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer as OpenAPI documents it."""
    return {200: {"content": {"text/csv": {}}, "description": f"{what} as CSV, UTF-8"}}


async def spreadsheet_format(
    delimiter: Annotated[
        Delimiter,
        Query(description="`semicolon` for a spreadsheet whose decimal mark is a comma"),
    ] = "comma",
    bom: Annotated[
        bool, Query(description="start with the UTF-8 byte order mark, which Excel needs")
    ] = False,
) -> SpreadsheetFormat:
    """How the caller's spreadsheet reads a CSV file (the dashboard asks as its locale does)."""
    return SpreadsheetFormat(delimiter=delimiter, byte_order_mark=bom)


SpreadsheetFormatDep = Annotated[SpreadsheetFormat, Depends(spreadsheet_format)]


async def csv_download(
    pages: AsyncIterator[list[Row]],
    columns: Sequence[str],
    cells: Callable[[Row], Sequence[object]],
    name: str,
    written_as: SpreadsheetFormat,
) -> StreamingResponse:
    """The whole download as one streamed answer, named ``name-<UTC time>.csv``. The first page
    is read before answering: a failure then is an error answer, not a 200 that stops short
    (a failure later cuts the download, which the client sees as incomplete)."""
    first = await anext(pages)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _lines(first, pages, columns, cells, written_as),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-{stamp}.csv"'},
    )


async def _lines(
    first: list[Row],
    rest: AsyncIterator[list[Row]],
    columns: Sequence[str],
    cells: Callable[[Row], Sequence[object]],
    written_as: SpreadsheetFormat,
) -> AsyncIterator[str]:
    separator = written_as.separator
    yield (UTF8_BOM if written_as.byte_order_mark else "") + csv_text([columns], separator)
    yield csv_text([cells(row) for row in first], separator)
    async for rows in rest:
        yield csv_text([cells(row) for row in rows], separator)
