"""CSV downloads of the read API: a header row, then the rows as the database layer reads
them, page by page, so that a download of the whole store streams instead of gathering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from starlette.responses import StreamingResponse

from app.db.reads import Row
from app.rules.spreadsheet_csv import csv_text

# Rows per page read: each page is one query on a connection checked out for it.
EXPORT_PAGE_ROWS = 5000


def csv_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer as OpenAPI documents it."""
    return {200: {"content": {"text/csv": {}}, "description": f"{what} as CSV, UTF-8"}}


async def csv_download(
    pages: AsyncIterator[list[Row]],
    columns: Sequence[str],
    cells: Callable[[Row], Sequence[object]],
    name: str,
) -> StreamingResponse:
    """The whole download as one streamed answer, named ``name-<UTC time>.csv``. The first page
    is read before answering: a failure then is an error answer, not a 200 that stops short
    (a failure later cuts the download, which the client sees as incomplete)."""
    first = await anext(pages)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _lines(first, pages, columns, cells),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-{stamp}.csv"'},
    )


async def _lines(
    first: list[Row],
    rest: AsyncIterator[list[Row]],
    columns: Sequence[str],
    cells: Callable[[Row], Sequence[object]],
) -> AsyncIterator[str]:
    yield csv_text([columns])
    yield csv_text([cells(row) for row in first])
    async for rows in rest:
        yield csv_text([cells(row) for row in rows])
