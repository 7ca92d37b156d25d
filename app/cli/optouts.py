"""wavy-webhooks optouts: check, add, remove, list and import numbers, and set keywords (the
same service as /v1/optouts, with an operator's authority over every list)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli.common import resolve_database_url, run_with_engine
from app.cli.root import optouts_cli
from app.errors import NoSuchKeyword, UnreadableNumber, UnusableKeyword
from app.rules.optouts import KEYWORD_ACTIONS, KeywordAction, list_name
from app.rules.scope import Scope
from app.services import optouts as service
from app.settings import Settings

SubAccount = Annotated[
    str | None,
    typer.Option("--sub-account", help="This sub-account's list (default: the account-wide one)"),
]
Reason = Annotated[str | None, typer.Option(help="Kept in the number's history")]
Numbers = Annotated[list[str], typer.Argument(help="Numbers, written any way")]


def _scope(sub_account: str | None) -> Scope:
    return Scope(sub_account=sub_account or None)


def _run(work: Any) -> Any:
    """``work(engine, settings)`` with one-line errors for what an operator can get wrong."""
    settings = Settings()

    async def call(engine: AsyncEngine) -> Any:
        return await work(engine, settings)

    try:
        return run_with_engine(settings, resolve_database_url(settings), call)
    except (UnreadableNumber, UnusableKeyword) as error:
        typer.echo(f"refused: {error}", err=True)
        raise typer.Exit(2) from None
    except NoSuchKeyword as error:
        typer.echo(f"this list sets no keyword {error}", err=True)
        raise typer.Exit(1) from None


@optouts_cli.command("check")
def optouts_check(numbers: Numbers, sub_account: SubAccount = None) -> None:
    """Whether each number is opted out for a sender of the sub-account; without
    --sub-account, whether any list holds it, and which."""

    async def check(engine: AsyncEngine, settings: Settings) -> dict[str, Any]:
        return await service.check(engine, settings.default_region, _scope(sub_account), numbers)

    answer = _run(check)
    typer.echo(f"lists checked: {', '.join(answer['listsChecked'])}")
    unreadable = False
    for result in answer["results"]:
        if result["optedOut"] is None:
            unreadable = True
            typer.echo(f"{result['number']}\tnot a phone number")
        elif result["optedOut"]:
            typer.echo(
                f"{result['e164']}\topted out since {result['since']} "
                f"({result['source']}: {result['keyword'] or '-'}; "
                f"on {', '.join(result['optedOutOf'])})"
            )
        else:
            typer.echo(f"{result['e164']}\tnot opted out")
    if unreadable:
        raise typer.Exit(2)


def _change(
    numbers: list[str], sub_account: str | None, *, opted_out: bool, reason: str | None
) -> None:
    async def change(engine: AsyncEngine, settings: Settings) -> list[dict[str, Any]]:
        return [
            await service.change(
                engine,
                settings.default_region,
                _scope(sub_account),
                number,
                opted_out=opted_out,
                actor=service.CLI_ACTOR,
                reason=reason,
            )
            for number in numbers
        ]

    for answer in _run(change):
        state = "opted out" if answer["optedOut"] else "not opted out"
        typer.echo(f"{answer['number']}\t{state} (list {list_name(sub_account)} changed)")


@optouts_cli.command("add")
def optouts_add(numbers: Numbers, sub_account: SubAccount = None, reason: Reason = None) -> None:
    """Opt numbers out by hand (a person who asked by phone, say)."""
    _change(numbers, sub_account, opted_out=True, reason=reason)


@optouts_cli.command("remove")
def optouts_remove(numbers: Numbers, sub_account: SubAccount = None, reason: Reason = None) -> None:
    """Take numbers off a list by hand: they opted back in. The history keeps both."""
    _change(numbers, sub_account, opted_out=False, reason=reason)


@optouts_cli.command("list")
def optouts_list(
    sub_account: Annotated[
        str | None,
        typer.Option("--sub-account", help="This sub-account's list and the account-wide one"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
) -> None:
    """The numbers opted out, newest first (every list unless --sub-account)."""

    async def listing(engine: AsyncEngine, _: Settings) -> list[dict[str, Any]]:
        return await service.listing(engine, _scope(sub_account), None, limit)

    typer.echo("number\tlist\tsince (UTC)\tsource\tkeyword\treason")
    for row in _run(listing):
        typer.echo(
            f"{row['e164']}\t{list_name(row['sub_account'] or None)}\t"
            f"{row['since']:%Y-%m-%dT%H:%M:%SZ}\t{row['source']}\t{row['keyword'] or '-'}\t"
            f"{row['reason'] or '-'}"
        )


def _numbers_in(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, number, reason) of each line of a CSV: the number first, an optional reason
    second; a header line whose first cell holds no digit is skipped."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        for line, cells in enumerate(csv.reader(file), 1):
            if not cells or not cells[0].strip():
                continue
            number = cells[0].strip()
            if line == 1 and not any(char.isdigit() for char in number):
                continue
            reason = cells[1].strip() if len(cells) > 1 and cells[1].strip() else None
            yield line, number, reason


@optouts_cli.command("import")
def optouts_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A CSV file")],
    sub_account: SubAccount = None,
) -> None:
    """Put a customer's existing list on a list: one number per line, first column, an
    optional reason in the second. Lines that hold no phone number are listed, and the
    command exits 2 after importing the rest."""

    async def load(engine: AsyncEngine, settings: Settings) -> service.Imported:
        return await service.import_numbers(
            engine,
            settings.default_region,
            _scope(sub_account),
            _numbers_in(file),
            actor=f"{service.CLI_ACTOR} import {file.name}",
        )

    imported = _run(load)
    for line, text in imported.unreadable:
        typer.echo(f"line {line}: not a phone number: {text!r}", err=True)
    typer.echo(
        f"{imported.added} number(s) put on list {list_name(sub_account)}; "
        f"{imported.already} already on it; {imported.repeated} line(s) repeating a number; "
        f"{len(imported.unreadable)} line(s) not a phone number"
    )
    if imported.unreadable:
        raise typer.Exit(2)


@optouts_cli.command("keywords")
def optouts_keywords(
    keyword: Annotated[str | None, typer.Argument(help="A keyword to set")] = None,
    action: Annotated[
        str | None,
        typer.Argument(help=f"What it does: {', '.join(KEYWORD_ACTIONS)}, or unset"),
    ] = None,
    sub_account: SubAccount = None,
) -> None:
    """The keywords in force for a list; with KEYWORD ACTION, set one first (out: opts out,
    in: opts back in, none: not a keyword here, unset: back to the account's or default)."""
    if keyword is not None and action not in (*KEYWORD_ACTIONS, "unset"):
        typer.echo(f"give an action: {', '.join(KEYWORD_ACTIONS)} or unset", err=True)
        raise typer.Exit(2)

    async def keywords(engine: AsyncEngine, _: Settings) -> list[dict[str, Any]]:
        scope = _scope(sub_account)
        if keyword is None:
            return await service.keywords(engine, scope)
        if action == "unset":
            return await service.unset_keyword(engine, scope, keyword)
        chosen = cast(KeywordAction, action)  # one of KEYWORD_ACTIONS: checked above
        return await service.set_keyword(engine, scope, keyword, chosen, service.CLI_ACTOR)

    for item in _run(keywords):
        origin = f" ({item['origin']})" if item["origin"] else ""
        typer.echo(f"{item['keyword']}\t{item['action']}\t{item['setBy']}{origin}")
