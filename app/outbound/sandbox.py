"""Wavy on your own machine: a stand-in of its send and status APIs that calls back through
the service's own webhook URLs, as Wavy would, so that the whole flow (send, callback, DLR,
replies, opt-outs) runs with no Wavy account (``wavy-webhooks sandbox``, ``serve --sandbox``).

It takes the credentials the service takes (the same users), and calls back with a webhook
key of the sender's sub-account, which it makes for itself (``keys list`` shows them). Its
mix is realistic: carriers, a few failures with Wavy's codes, no DLR from Oi and Sercomtel,
some callbacks lost on purpose, and replies, a few of them SAIR."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import queries
from app.db.users import authenticate_reader
from app.rules.delivery_stats import CARRIERS_WITHOUT_DLR
from app.rules.scope import Reader
from app.rules.status_codes import DELIVERED_STATUS_NAMES, SENT_STATUS_NAMES

log = logging.getLogger(__name__)

CARRIERS = ("VIVO", "TIM", "CLARO", "OI", "SERCOMTEL")
# Wavy's codes a failed send or delivery gets here: invalid destination, not delivered.
FAILED_SENT_CODE = 202
FAILED_DELIVERED_CODE = 104
REPLIES = ("Obrigado!", "Quando chega?", "ok", "SAIR")


@dataclass(frozen=True, slots=True)
class SandboxMix:
    """How the sandbox behaves: delays (seconds) and shares (0 to 1)."""

    callback_after_s: tuple[float, float] = (0.5, 1.5)
    dlr_after_s: tuple[float, float] = (2.0, 6.0)
    failed: float = 0.03  # of sends: a 202 callback, no DLR
    undelivered: float = 0.03  # of the rest: a 104 DLR
    lost_callbacks: float = 0.02  # callbacks never sent (reconciliation finds them)
    replies: float = 0.1  # of delivered messages: an MO answering them
    opt_out_replies: float = 0.25  # of those replies: SAIR
    carriers: tuple[str, ...] = CARRIERS
    # Waits between its tries of a webhook the service did not take (5xx, 429, no answer);
    # after the last, that status is lost, as with Wavy.
    retry_waits_s: tuple[float, ...] = (1, 2, 4, 8, 16)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"errorCode": 400, "errorMessage": message}, status=400)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The body, a JSON object; else Wavy's 400."""
    try:
        body = await request.json()
    except ValueError:
        return _bad_request("the body is not JSON")
    return body if isinstance(body, dict) else _bad_request("the body is not a JSON object")


def _texts(value: Any) -> set[str]:
    """A search's list of ids: its strings (a lone string is one id, not its characters)."""
    if isinstance(value, str):
        return {value}
    if not isinstance(value, list):
        return set()
    return {item for item in value if isinstance(item, str)}


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Sandbox:
    def __init__(
        self,
        engine: AsyncEngine,
        webhook_base: str,
        *,
        mix: SandboxMix | None = None,
        seed: int | None = None,
    ) -> None:
        self._engine = engine
        self._webhook_base = webhook_base.rstrip("/")
        self._mix = mix or SandboxMix()
        self._random = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        self._keys: dict[str | None, str] = {}
        self._statuses: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, str | None] = {}  # each message's sub-account
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post("/v1/send-sms", self._send_one)
        self.app.router.add_post("/v1/send-bulk-sms", self._send_bulk)
        self.app.router.add_post("/v1/sms/status/search", self._search)

    # --- running --------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: any free port); the port it serves on."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp keeps the listening sockets there
        assert server is not None
        bound: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return bound

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # --- Wavy's API -----------------------------------------------------------------------

    async def _reader(self, request: web.Request) -> Reader | None:
        """The service's user these credentials are (the sandbox takes what the service takes)."""
        login = request.headers.get("UserName", "")
        token = request.headers.get("AuthenticationToken", "")
        async with self._engine.connect() as conn:
            return await authenticate_reader(conn, login, token)

    async def _sender(
        self, request: web.Request, body: dict[str, Any]
    ) -> str | web.Response | None:
        """The sender's sub-account, as the service's users say (the credentials it took)."""
        reader = await self._reader(request)
        if reader is None:
            return web.json_response(
                {"errorCode": 401, "errorMessage": "Authentication Error"}, status=401
            )
        if reader.role.value == "admin":
            named = body.get("subAccount")
            return named if isinstance(named, str) and named else None
        return reader.sub_account

    async def _send_one(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        sender = await self._sender(request, body)
        if isinstance(sender, web.Response):
            return sender
        message_id = self._accept(body, sender)
        return web.json_response({"id": message_id, "correlationId": body.get("correlationId")})

    async def _send_bulk(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body.get("messages"), list) or not all(
            isinstance(message, dict) for message in body["messages"]
        ):
            return _bad_request("messages must be a list of objects")
        sender = await self._sender(request, body)
        if isinstance(sender, web.Response):
            return sender
        defaults = body.get("defaultValues")
        default_text = defaults.get("messageText") if isinstance(defaults, dict) else None
        items = [
            {
                "id": self._accept({"messageText": default_text, **message}, sender),
                "correlationId": message.get("correlationId"),
            }
            for message in body.get("messages", [])
        ]
        return web.json_response({"id": str(uuid.uuid4()), "messages": items})

    async def _search(self, request: web.Request) -> web.Response:
        """Wavy's status search, for what the sandbox sent: an admin's credentials see every
        sub-account's (as the reconciliation's WAVY_API_USERNAME does), a user's their own."""
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        reader = await self._reader(request)
        if reader is None:
            return web.json_response(
                {"errorCode": 401, "errorMessage": "Authentication Error"}, status=401
            )
        ids, correlation_ids = _texts(body.get("ids")), _texts(body.get("correlationIds"))
        found = [
            status
            for status in self._statuses.values()
            if (status["id"] in ids or status.get("correlationId") in correlation_ids)
            and (reader.role.value == "admin" or self._owners[status["id"]] == reader.sub_account)
        ]
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return web.json_response(
            {"total": len(found), "start": now, "end": now, "smsStatuses": found}
        )

    # --- what happens to a message ------------------------------------------------------------

    def _accept(self, message: dict[str, Any], sub_account: str | None) -> str:
        message_id = str(uuid.uuid4())
        status = {
            "id": message_id,
            "correlationId": message.get("correlationId"),
            "destination": str(message.get("destination", "")).lstrip("+"),
            "carrierName": self._random.choice(self._mix.carriers),
            "carrierId": 0,
        }
        self._statuses[message_id] = status
        self._owners[message_id] = sub_account
        task = asyncio.create_task(self._life(status, sub_account))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return message_id

    async def _life(self, status: dict[str, Any], sub_account: str | None) -> None:
        mix, chance = self._mix, self._random.random
        await asyncio.sleep(self._random.uniform(*mix.callback_after_s))
        code = FAILED_SENT_CODE if chance() < mix.failed else 2
        now = datetime.now(UTC)
        status.update(sentStatusCode=code, sentStatus=SENT_STATUS_NAMES.get(code), sentAt=_ms(now))
        if chance() >= mix.lost_callbacks:
            await self._post("callback", dict(status), sub_account)
        if code != 2 or status["carrierName"] in CARRIERS_WITHOUT_DLR:
            return
        await asyncio.sleep(self._random.uniform(*mix.dlr_after_s))
        delivered = FAILED_DELIVERED_CODE if chance() < mix.undelivered else 4
        status.update(
            deliveredStatusCode=delivered,
            deliveredStatus=DELIVERED_STATUS_NAMES.get(delivered),
            deliveredAt=_ms(datetime.now(UTC)),
        )
        await self._post("dlr", dict(status), sub_account)
        if delivered == 4 and chance() < mix.replies:
            await asyncio.sleep(self._random.uniform(*mix.callback_after_s))
            text = "SAIR" if chance() < mix.opt_out_replies else self._random.choice(REPLIES[:-1])
            reply = {
                "id": str(uuid.uuid4()),
                "source": status["destination"],
                "messageText": text,
                "receivedAt": _ms(datetime.now(UTC)),
                "carrierName": status["carrierName"],
                "mt": {"id": status["id"], "correlationId": status.get("correlationId")},
                **({"subAccount": sub_account} if sub_account else {}),
            }
            await self._post("mo", reply, sub_account)

    async def _key(self, sub_account: str | None) -> str:
        """A webhook key of the sub-account, made for the sandbox once."""
        key = self._keys.get(sub_account)
        if key is None:
            async with self._engine.begin() as conn:
                _, key = await queries.add_webhook_key(conn, sub_account=sub_account)
            self._keys[sub_account] = key
        return key

    async def _post(self, kind: str, body: dict[str, Any], sub_account: str | None) -> None:
        """As Wavy would: to the webhook URL, retried while the service answers 5xx or 429."""
        assert self._session is not None
        url = f"{self._webhook_base}/v1/webhooks/{kind}"
        key = await self._key(sub_account)
        for wait_s in self._mix.retry_waits_s:
            try:
                async with self._session.post(url, params={"key": key}, json=body) as answer:
                    if answer.status < 500 and answer.status != 429:
                        return
            except aiohttp.ClientError as error:
                log.info("sandbox: %s not delivered (%s); retrying", kind, error)
            await asyncio.sleep(wait_s)
        log.warning("sandbox: gave up a %s for %s", kind, body.get("id"))
