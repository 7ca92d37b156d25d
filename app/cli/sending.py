"""wavy-webhooks send: one message through a running service's send API, as a Wavy client
would send it (recorded, and refused there when opted out)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated

import typer

from app.cli.root import cli
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
