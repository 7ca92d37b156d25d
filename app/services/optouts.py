"""The opt-out lists for the HTTP API and the CLI alike: which lists a caller reads and writes,
checking numbers, changing and importing them, the keywords, and the answers' shapes.

A caller reads the lists that apply to it: its sub-account's and the account-wide one (an
admin without ``subAccount`` reads every list, and checks against the account-wide one). It
writes one list: its sub-account's; an admin the one it names, or the account-wide one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import optouts as queries
from app.db.optouts import Row
from app.errors import NoSuchKeyword, UnreadableNumber, UnusableKeyword
from app.rules.answers import iso, optout_entry, optout_history_item
from app.rules.optouts import (
    ACCOUNT_WIDE,
    DEFAULT_OPT_IN,
    DEFAULT_OPT_OUT,
    EVERY_LIST_NAME,
    BadKeyword,
    KeywordAction,
    NotAPhoneNumber,
    OptoutChange,
    e164_or_none,
    every_day,
    keyword_of,
    list_name,
    to_e164,
)
from app.rules.scope import Scope

# A manual change's history names who made it; the CLI is the operator.
CLI_ACTOR = "cli"
IMPORT_BATCH_ROWS = 5000


def read_lists(scope: Scope) -> list[str] | None:
    """The lists a caller reads (None: every list)."""
    return None if scope.everything else queries.lists_of(scope.sub_account)


def check_lists(scope: Scope) -> list[str] | None:
    """The lists a number is checked against: a sender's sub-account's and the account-wide
    one. An admin who names no sub-account is checked against every list, each list that
    holds the number named: "not opted out" must never hide a sub-account's list."""
    return None if scope.everything else queries.lists_of(scope.sub_account)


def checked_list_names(scope: Scope) -> list[str]:
    lists = check_lists(scope)
    return [EVERY_LIST_NAME] if lists is None else [list_name(name or None) for name in lists]


def written_list(scope: Scope) -> str:
    return scope.sub_account or ACCOUNT_WIDE


def e164_of(number: str, region: str) -> str:
    try:
        return to_e164(number, region)
    except NotAPhoneNumber:
        raise UnreadableNumber(number) from None


async def check(
    engine: AsyncEngine, region: str, scope: Scope, numbers: Sequence[str]
) -> dict[str, Any]:
    """Each number as given, read and looked up, in the order given, with the lists that were
    consulted."""
    read = [e164_or_none(number, region) for number in numbers]
    wanted = sorted({e164 for e164 in read if e164 is not None})
    async with engine.connect() as conn:
        found = await queries.opted_out_entries(conn, check_lists(scope), wanted)
    results: list[dict[str, Any]] = []
    for number, e164 in zip(numbers, read, strict=True):
        entries = found.get(e164, []) if e164 is not None else []
        if not entries:
            results.append(
                {
                    "number": number,
                    "e164": e164,
                    "optedOut": None if e164 is None else False,
                    "optedOutOf": [],
                    "since": None,
                    "keyword": None,
                    "source": None,
                    "subAccount": None,
                    "error": "not_a_phone_number" if e164 is None else None,
                }
            )
            continue
        first = entries[0]
        results.append(
            {
                "number": number,
                "e164": e164,
                "optedOut": True,
                "optedOutOf": [list_name(entry["sub_account"] or None) for entry in entries],
                "since": iso(first["since"]),
                "keyword": first["keyword"],
                "source": first["source"],
                "subAccount": first["sub_account"] or None,
                "error": None,
            }
        )
    return {"listsChecked": checked_list_names(scope), "results": results}


async def detail(engine: AsyncEngine, region: str, scope: Scope, number: str) -> dict[str, Any]:
    e164 = e164_of(number, region)
    lists = read_lists(scope)
    async with engine.connect() as conn:
        entries = await queries.entries_of(conn, lists, e164)
        history = await queries.history_of(conn, lists, e164)
        opted_out = await queries.opted_out_entries(conn, check_lists(scope), [e164])
    return {
        "number": e164,
        "optedOut": e164 in opted_out,
        "lists": [optout_entry(entry) for entry in entries],
        "history": [optout_history_item(item) for item in history],
    }


async def change(
    engine: AsyncEngine,
    region: str,
    scope: Scope,
    number: str,
    *,
    opted_out: bool,
    actor: str,
    reason: str | None,
) -> dict[str, Any]:
    """Put a number on the caller's list, or take it off (it opted back in), now; the answer
    is where it then stands for the caller."""
    e164 = e164_of(number, region)
    entry = OptoutChange(
        sub_account=written_list(scope),
        e164=e164,
        opted_out=opted_out,
        at=datetime.now(UTC),
        source="manual",
        actor=actor,
        reason=reason,
    )
    async with engine.begin() as conn:
        await queries.apply_changes(conn, [entry])
    return await detail(engine, region, scope, e164)


@dataclass(frozen=True, slots=True)
class Imported:
    added: int  # numbers put on the list
    already: int  # numbers the list held opted out already
    repeated: int  # lines whose number an earlier line gave
    unreadable: list[tuple[int, str]]  # (line, text) of what is no phone number


async def import_numbers(
    engine: AsyncEngine,
    region: str,
    scope: Scope,
    lines: Iterable[tuple[int, str, str | None]],
    *,
    actor: str,
) -> Imported:
    """A customer's existing list, (line, number, reason) by line, put on the caller's list
    in batches; what is no phone number is reported, not guessed at."""
    now = datetime.now(UTC)
    unreadable: list[tuple[int, str]] = []
    seen: set[str] = set()
    repeated = added = 0
    batch: list[OptoutChange] = []

    async def flush() -> None:
        nonlocal added
        if batch:
            async with engine.begin() as conn:
                added += (await queries.apply_changes(conn, batch)).changed
            batch.clear()

    for line, number, reason in lines:
        try:
            e164 = to_e164(number, region)
        except NotAPhoneNumber:
            unreadable.append((line, number))
            continue
        if e164 in seen:
            repeated += 1
            continue
        seen.add(e164)
        batch.append(
            OptoutChange(
                sub_account=written_list(scope),
                e164=e164,
                opted_out=True,
                at=now,
                source="manual",
                actor=actor,
                reason=reason,
            )
        )
        if len(batch) >= IMPORT_BATCH_ROWS:
            await flush()
    await flush()
    return Imported(added, len(seen) - added, repeated, unreadable)


async def listing(
    engine: AsyncEngine, scope: Scope, before: queries.ListCursor | None, limit: int
) -> list[Row]:
    async with engine.connect() as conn:
        return await queries.list_opted_out(conn, read_lists(scope), before, limit)


def export_pages(engine: AsyncEngine, scope: Scope, page_rows: int) -> AsyncIterator[list[Row]]:
    """The whole listing the caller reads, page by page (the first may be empty)."""
    return queries.opted_out_pages(engine, read_lists(scope), page_rows)


# ---------------------------------------------------------------------------- keywords


def _origin_of(keyword: str) -> str | None:
    return DEFAULT_OPT_OUT.get(keyword) or DEFAULT_OPT_IN.get(keyword)


async def keywords(engine: AsyncEngine, scope: Scope) -> list[dict[str, Any]]:
    """The keywords in force for the caller's list, and who set each."""
    async with engine.connect() as conn:
        book = await queries.keyword_book(conn)
    return [
        {
            "keyword": keyword,
            "action": action,
            "setBy": set_by,
            "origin": _origin_of(keyword) if set_by == "default" else None,
        }
        for keyword, (action, set_by) in book.in_force(written_list(scope)).items()
    ]


def _keyword(text: str) -> str:
    try:
        return keyword_of(text)
    except BadKeyword as error:
        raise UnusableKeyword(str(error)) from None


async def set_keyword(
    engine: AsyncEngine, scope: Scope, text: str, action: KeywordAction, by: str
) -> list[dict[str, Any]]:
    async with engine.begin() as conn:
        await queries.set_keyword(conn, written_list(scope), _keyword(text), action, by)
    return await keywords(engine, scope)


async def unset_keyword(engine: AsyncEngine, scope: Scope, text: str) -> list[dict[str, Any]]:
    """The list's own setting removed: the keyword acts as the account (or default) says."""
    keyword = _keyword(text)
    async with engine.begin() as conn:
        if not await queries.unset_keyword(conn, written_list(scope), keyword):
            raise NoSuchKeyword(keyword)
    return await keywords(engine, scope)


# ---------------------------------------------------------------------------- figures


async def days(
    engine: AsyncEngine, scope: Scope, start: datetime, end: datetime, time_zone: str
) -> list[dict[str, Any]]:
    """Every day (in ``time_zone``) from ``start``'s to ``end``'s, up to ``end``."""
    zone = ZoneInfo(time_zone)
    first, last = start.astimezone(zone).date(), end.astimezone(zone).date()
    first_moment = datetime.combine(first, time(0), tzinfo=zone)
    async with engine.connect() as conn:
        size_before, changes = await queries.daily_figures(
            conn, read_lists(scope), first_moment, end, time_zone
        )
    return [
        {
            "day": figure.day.isoformat(),
            "optedOut": figure.opted_out,
            "optedIn": figure.opted_in,
            "size": figure.size,
        }
        for figure in every_day(size_before, changes, first, last)
    ]
