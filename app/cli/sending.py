"""wavy-webhooks send and sandbox: one message through a running service's send API, as a
Wavy client would send it; and a stand-in of Wavy on this machine (app.outbound.sandbox)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from typing import Annotated

import typer

from app.cli.root import cli
from app.outbound.sandbox import CARRIERS, SandboxMix
from app.settings import Settings


@cli.command()
def send(
    destination: Annotated[str, typer.Argument(help="The phone number, e.g. 5519900001111")],
    text: Annotated[str, typer.Argument(help="The message's text")],
    user: Annotated[
        str, typer.Option("--user", envvar="WAVY_SEND_USER", help="Your UserName (as at Wavy)")
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token", envvar="WAVY_SEND_TOKEN", help="Your AuthenticationToken (as at Wavy)"
        ),
    ],
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", help="Your own id for the message")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The service's base URL (default: WAVY_PUBLIC_URL, else this host)"),
    ] = None,
) -> None:
    """Send one SMS through the running service and print its answer (Wavy's)."""
    base = (url or Settings().webhook_base_url()).rstrip("/")
    body = {"destination": destination, "messageText": text}
    if correlation_id:
        body["correlationId"] = correlation_id
    request = urllib.request.Request(  # noqa: S310 - the operator's own service URL
        f"{base}/v1/send-sms",
        data=json.dumps(body).encode(),
        headers={
            "UserName": user,
            "AuthenticationToken": token,
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            typer.echo(answer.read().decode())
    except urllib.error.HTTPError as error:
        typer.echo(f"HTTP {error.code}: {error.read().decode(errors='replace')}", err=True)
        raise typer.Exit(1) from None
    except urllib.error.URLError as error:
        typer.echo(f"cannot reach the service at {base}: {error.reason}", err=True)
        raise typer.Exit(1) from None


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    first, second = float(low), float(high or low)
    if not 0 <= first <= second:
        raise typer.BadParameter(f"{text!r} is not LOW,HIGH seconds")
    return first, second


def _share(value: float) -> float:
    if not 0 <= value <= 1:
        raise typer.BadParameter("a share is from 0 to 1")
    return value


@cli.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port of the stand-in of Wavy's API")] = 8099,
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    webhook_url: Annotated[
        str | None,
        typer.Option(help="The service's base URL it calls back (default: as serve prints)"),
    ] = None,
    callback_after: Annotated[
        str, typer.Option(help="Seconds LOW,HIGH from a send to its callback")
    ] = "0.5,1.5",
    dlr_after: Annotated[
        str, typer.Option(help="Seconds LOW,HIGH from a callback to its DLR")
    ] = "2,6",
    failed: Annotated[
        float, typer.Option(help="Share of sends that fail (a 202 callback, no DLR)")
    ] = 0.03,
    undelivered: Annotated[
        float, typer.Option(help="Share of the rest not delivered (a 104 DLR)")
    ] = 0.03,
    lost_callbacks: Annotated[
        float,
        typer.Option(help="Share of callbacks never sent (reconciliation recovers them)"),
    ] = 0.02,
    replies: Annotated[
        float, typer.Option(help="Share of delivered messages that get a reply")
    ] = 0.1,
    opt_out_replies: Annotated[
        float, typer.Option(help="Share of those replies that are SAIR (an opt-out)")
    ] = 0.25,
    carriers: Annotated[
        str, typer.Option(help="Carriers drawn from (OI and SERCOMTEL send no DLR)")
    ] = ",".join(CARRIERS),
    retry_waits: Annotated[
        str,
        typer.Option(help="Seconds between its tries of a webhook the service did not take"),
    ] = "1,2,4,8,16",
    seed: Annotated[int | None, typer.Option(help="The same seed, the same mix")] = None,
) -> None:
    """Run Wavy on this machine: a stand-in of its send and status API that calls back through
    the service's webhooks, with no Wavy account. Point the service at it with
    WAVY_API_URL (serve --sandbox does both). Its status search takes the service's users, as
    the send API does."""
    from app.cli.common import resolve_database_url

    mix = SandboxMix(
        callback_after_s=_pair(callback_after),
        dlr_after_s=_pair(dlr_after),
        failed=_share(failed),
        undelivered=_share(undelivered),
        lost_callbacks=_share(lost_callbacks),
        replies=_share(replies),
        opt_out_replies=_share(opt_out_replies),
        carriers=tuple(name.strip() for name in carriers.split(",") if name.strip()),
        retry_waits_s=tuple(float(wait) for wait in retry_waits.split(",") if wait.strip()),
    )
    settings = Settings()
    database_url = resolve_database_url(settings)
    base = (webhook_url or settings.webhook_base_url()).rstrip("/")
    asyncio.run(_run_sandbox(settings, database_url, base, host, port, mix, seed))


async def _run_sandbox(
    settings: Settings,
    database_url: str,
    webhook_base: str,
    host: str,
    port: int,
    mix: SandboxMix,
    seed: int | None,
) -> None:
    from app.db.engine import create_engine
    from app.outbound.sandbox import Sandbox

    engine = create_engine(settings, database_url, for_requests=False)
    stand_in = Sandbox(engine, webhook_base, mix=mix, seed=seed)
    bound = await stand_in.start(host, port)
    typer.echo(f"Sandbox: Wavy's send and status API at http://{host}:{bound}")
    typer.echo(f"  it calls back through {webhook_base}/v1/webhooks/... as Wavy would")
    typer.echo(
        f"  try: curl -s -X POST {webhook_base}/v1/send-sms -H 'UserName: admin' "
        "-H 'AuthenticationToken: TOKEN' -H 'Content-Type: application/json' "
        """-d '{"destination": "5519900001111", "messageText": "Oi!"}'"""
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await stand_in.stop()
        await engine.dispose()
