"""The read API's shapes, in Wavy's field names, and the functions that build them from rows.

The models document the API (OpenAPI); responses are built as plain dicts and serialized with
orjson, which is what keeps a 1000-item answer cheap."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StrictBool

from app.api.params import IsoTime, PlainText, SearchText
from app.payloads import MAX_KEY_CHARS
from app.rules.forwarding import EVENT_TYPES, EventType
from app.rules.optouts import (
    ACCOUNT_WIDE_NAME,
    EVERY_LIST_NAME,
    KeywordAction,
    KeywordSetBy,
    OptoutSource,
)
from app.services.endpoints import EndpointChanges, NewEndpoint


class StatusOut(BaseModel):
    """A message's merged status, as Wavy's query API shows one: the names of its live answers
    (``sentDate``/``sentAt``, ``updatedDate``/``updatedAt``) and of its documentation's table
    (``sentStatusDate``/``sentStatusAt``, the same values), then ours. Fields without a value
    are null (docs/compatibility.md)."""

    id: str = Field(examples=["8f5af680-973e-11e4-ad43-4ee58e9a13a6"])
    correlationId: str | None = Field(examples=["myId"])
    carrierId: int | None = Field(examples=[5])
    carrierName: str | None = Field(examples=["TIM"])
    destination: str | None = Field(examples=["5519900001111"])
    sentStatusCode: int | None = Field(examples=[2])
    sentStatus: str | None = Field(examples=["SENT_SUCCESS"])
    sentDate: str | None = Field(examples=["2015-01-08T16:02:09.252Z"])
    sentAt: int | None = Field(description="epoch milliseconds", examples=[1420732929252])
    sentStatusDate: str | None = Field(description="= sentDate (the documentation's name)")
    sentStatusAt: int | None = Field(description="= sentAt (the documentation's name)")
    deliveredStatusCode: int | None = Field(examples=[4])
    deliveredStatus: str | None = Field(examples=["DELIVERED_SUCCESS"])
    deliveredDate: str | None = Field(examples=["2015-01-08T16:02:34.000Z"])
    deliveredAt: int | None = Field(description="epoch milliseconds", examples=[1420732954000])
    updatedDate: str = Field(description="when its status last changed")
    updatedAt: int = Field(description="the same, in epoch milliseconds")
    campaignId: str | None = Field(examples=["1234"])
    extraInfo: str | None = Field(examples=[None])
    subAccount: str | None = Field(description="ours: whose message it is (its key's)")
    firstSeenAt: str = Field(description="ours: when the service first heard of the message")


class StatusEnvelope(BaseModel):
    """Wavy's answer to a status search or list."""

    total: int = Field(description="the number of statuses in this answer")
    start: str = Field(description="the window the answer covers (docs/compatibility.md)")
    end: str
    smsStatuses: list[StatusOut]


class MtOut(BaseModel):
    id: str | None
    correlationId: str | None
    username: str | None
    email: str | None


class MoOut(BaseModel):
    """A user's reply, with Wavy's MO fields."""

    id: str = Field(examples=["25950050-7362-11e6-be62-001b7843e7d4"])
    subAccount: str | None = Field(examples=["iFoodMarketing"])
    campaignAlias: str | None = Field(examples=["iFoodPromo"])
    carrierId: int | None = Field(examples=[1])
    carrierName: str | None = Field(examples=["VIVO"])
    source: str | None = Field(examples=["5516981562820"])
    shortCode: str | None = Field(examples=["28128"])
    messageText: str | None = Field(examples=["I want pizza"])
    receivedAt: int = Field(description="epoch milliseconds", examples=[1473088405588])
    receivedDate: str = Field(examples=["2016-09-05T12:13:25.588Z"])
    mt: MtOut | None


class EventOut(BaseModel):
    kind: str = Field(examples=["dlr"])
    sentStatusCode: int | None
    deliveredStatusCode: int | None
    receivedAt: str = Field(description="when we received it")
    reconciled: bool = Field(
        description="asked of Wavy's status search because its webhook never came "
        "(docs/reconciliation.md), not posted by Wavy"
    )
    payload: dict[str, Any] = Field(
        description="the raw JSON as Wavy sent it (reconciled: the status search's item)"
    )


class StatusDetail(StatusOut):
    events: list[EventOut] = Field(description="every callback and DLR, oldest first")
    replies: list[MoOut] = Field(description="the MOs that answer this message")


class StatusSearch(BaseModel):
    """Either list, or both (clients of Wavy send ``ids`` alone)."""

    ids: list[Annotated[SearchText, Field(max_length=MAX_KEY_CHARS)]] = Field(
        default_factory=list, max_length=1000
    )
    correlationIds: list[Annotated[SearchText, Field(max_length=MAX_KEY_CHARS)]] = Field(
        default_factory=list, max_length=1000
    )

    model_config = {
        "json_schema_extra": {"examples": [{"ids": ["8f5af680-973e"], "correlationIds": ["myId"]}]}
    }


class MoEnvelope(BaseModel):
    """Wavy's MO list shape; ``next`` (ours) pages a search beyond its limit."""

    total: int
    start: str
    end: str
    messages: list[MoOut]
    next: str | None = Field(default=None, description="cursor for the next page, if any")


class StatusChanges(BaseModel):
    items: list[StatusOut]
    next: str = Field(description="pass as `after` to continue; stays put when nothing is new")


class MoChanges(BaseModel):
    items: list[MoOut]
    next: str


class StatusPage(BaseModel):
    items: list[StatusOut]
    next: str | None = Field(description="cursor for the next (older) page, if any")


class OverdueOut(BaseModel):
    id: str | None = Field(description="Wavy's id; null for a send that timed out, not yet found")
    correlationId: str | None
    destination: str = Field(examples=["5519900001111"])
    subAccount: str | None
    sentAt: str = Field(description="when it was sent through the service")
    kind: Literal["callback", "dlr"] = Field(description="the status that has not come")
    waitingSince: str = Field(description="since when that status is awaited")
    checks: int = Field(description="times Wavy's status search was asked and did not know")
    lastCheckedAt: str | None
    givenUp: bool = Field(description="older than WAVY_RECONCILE_WINDOW: Wavy is asked no more")


class OverduePage(BaseModel):
    total: int = Field(description="every overdue message of this kind in the scope")
    kind: Literal["callback", "dlr"]
    subAccount: str | None = Field(description="the scope used: null = every sub-account")
    items: list[OverdueOut]
    next: str | None = Field(description="cursor for the next page, if any")


class ReconciliationByKind(BaseModel):
    callback: int
    dlr: int


class ReconciliationSummary(BaseModel):
    enabled: bool = Field(description="Wavy is asked (WAVY_API_USERNAME and WAVY_API_TOKEN set)")
    subAccount: str | None = Field(description="the scope used: null = every sub-account")
    timeZone: str = Field(description="the zone of 'today' in recoveredToday")
    overdue: ReconciliationByKind = Field(description="overdue now, still asked about")
    givenUp: ReconciliationByKind = Field(description="overdue past the window, asked no more")
    recoveredToday: int = Field(description="statuses learnt from Wavy since midnight")
    callbackAfterSeconds: float
    dlrAfterSeconds: float
    window: str
    noDlrCarriers: list[str]
    maxRequestsPerSecond: float
    nextAskAt: str | None = Field(default=None, description="admins: the shared pace")
    backoffSeconds: float | None = Field(default=None, description="admins: after 429/5xx")
    lookedUntil: dict[str, str | None] | None = Field(
        default=None, description="admins: up to which sending time each age was looked at"
    )


class LatencyBucket(BaseModel):
    le: int | None = Field(
        description="upper bound in seconds (exclusive); null: the open last bucket"
    )
    count: int


class TimeToDeliver(BaseModel):
    count: int = Field(description="messages delivered (DLR 4) with both times known")
    p50: float | None = Field(description="seconds, interpolated inside its histogram bucket")
    p90: float | None
    p99: float | None
    histogram: list[LatencyBucket] | None = Field(
        default=None, description="in the totals only: messages per time-to-deliver bucket"
    )


class WaitingForDlr(BaseModel):
    carrierSendsDlr: int = Field(description="carrier-accepted (2), no DLR yet")
    carrierWithoutDlr: int = Field(
        description="same, on carriers that never send DLRs (Oi, Sercomtel)"
    )


class StatsFigures(BaseModel):
    messages: int = Field(description="messages first seen in the window")
    sentStatusCodes: dict[str, int] = Field(description='code -> messages; "none": no callback yet')
    deliveredStatusCodes: dict[str, int] = Field(description='code -> messages; "none": no DLR yet')
    deliveryRate: float | None = Field(
        description="delivered (DLR 4) / carrier-accepted (callback 2)"
    )
    timeToDeliver: TimeToDeliver
    waitingForDlr: WaitingForDlr
    mosReceived: int = Field(description="MOs received in the window (by their own time)")
    replies: int = Field(description="MOs answering these messages")
    repliedMessages: int = Field(description="messages with at least one reply")
    replyRate: float | None = Field(description="repliedMessages / messages")
    optOuts: int = Field(description="replies that opted out (SAIR, STOP...)")
    optOutRate: float | None = Field(description="optOuts / messages")


class StatsGroup(StatsFigures):
    key: str | None = Field(
        description="the hour (ISO), day (YYYY-MM-DD), carrier name, campaign id or sub-account; "
        '"" where the data names none (a reply without carrierName, a message of no campaign); '
        "null, by campaign only: opt-outs replied to no known message"
    )
    carrierSendsDlr: bool | None = Field(
        default=None, description="groupBy=carrier only: false for carriers that never send DLRs"
    )


class StatsAnswer(BaseModel):
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    groupBy: str
    tz: str = Field(description="the zone of the days and hour labels")
    groups: list[StatsGroup]
    totals: StatsFigures


def _each_once(names: list[EventType]) -> list[EventType]:
    """A type named twice is received once (the forwarder reads each feed once per round)."""
    return list(dict.fromkeys(names))


EventTypes = Annotated[list[EventType], AfterValidator(_each_once)]


# The rules app.rules.forwarding.check_url_shape applies, as the API documents them.
URL_RULES = (
    "http:// or https://, at most 2048 characters, no space or control character (percent-"
    "encode them), no credentials, a port from 1 to 65535, a host of labels of 1 to 63 "
    "characters; its addresses must be public unless WAVY_FORWARD_ALLOW_PRIVATE is set "
    "(422 invalid_url)"
)
URL_PATTERN = r"^[hH][tT][tT][pP][sS]?://[^\x00-\x20\x7f-\x9f]+$"


class EndpointIn(BaseModel):
    """A downstream endpoint to push replies and status changes to."""

    url: str = Field(
        max_length=2048,
        description=URL_RULES,
        json_schema_extra={"pattern": URL_PATTERN},
        examples=["https://crm.example.com/hooks/wavy"],
    )
    subAccount: PlainText | None = Field(
        default=None,
        max_length=255,
        description="whose data it receives; the caller's own by default (admins: none = all)",
    )
    events: EventTypes = Field(
        default_factory=lambda: list(EVENT_TYPES), min_length=1, description="default: all"
    )

    model_config = {"extra": "forbid"}

    def as_new(self) -> NewEndpoint:
        return NewEndpoint(url=self.url, sub_account=self.subAccount, events=self.events)


class EndpointPatch(BaseModel):
    url: str | None = Field(
        default=None,
        max_length=2048,
        description=URL_RULES,
        json_schema_extra={"pattern": URL_PATTERN},
    )
    events: EventTypes | None = Field(default=None, min_length=1)
    disabled: StrictBool | None = None

    model_config = {"extra": "forbid"}

    def as_changes(self) -> EndpointChanges:
        return EndpointChanges(url=self.url, events=self.events, disabled=self.disabled)


class EndpointOut(BaseModel):
    id: int
    url: str
    subAccount: str | None = Field(description="none: every sub-account's data")
    events: list[EventType]
    disabled: bool
    disabledAt: str | None
    disabledReason: str | None = Field(description="manual, or failing (no success for too long)")
    createdAt: str
    createdBy: str
    lastAttemptAt: str | None
    lastSuccessAt: str | None
    failingSince: str | None = Field(
        description="its first failed attempt; cleared by a success that leaves no failed "
        "delivery waiting for a retry"
    )
    backlog: int = Field(description="deliveries still to be sent")
    retrying: int = Field(description="of the backlog, deliveries that failed and wait to retry")
    nextAttemptAt: str | None = Field(description="when the next of those is retried")
    failed: int = Field(description="deliveries given up on after the last retry (replayable)")
    replaying: bool


class EndpointCreated(EndpointOut):
    secret: str = Field(description="the signing secret (whsec_...), shown only now")


class SecretRotated(BaseModel):
    secret: str = Field(description="the new signing secret, shown only now")
    previousSecretValidUntil: str = Field(description="the old one also signs until then")


class ReplayIn(BaseModel):
    since: IsoTime = Field(description="send again every delivery made since then (ISO-8601)")

    model_config = {"extra": "forbid"}


class ReplayQueued(BaseModel):
    queued: int = Field(description="deliveries to be sent again")


class AttemptOut(BaseModel):
    id: int
    webhookId: str
    eventType: str | None
    attemptedAt: str
    statusCode: int | None = Field(description="the endpoint's HTTP status, if it answered")
    error: str | None = Field(description="why there was no answer (timeout, refused, ...)")
    latencyMs: int
    response: str | None = Field(description="the answer's first KiB")


class AttemptPage(BaseModel):
    items: list[AttemptOut]
    next: str | None = Field(description="cursor for the next (older) page, if any")


MAX_CHECKED_NUMBERS = 1000


class OptoutCheckIn(BaseModel):
    numbers: list[Annotated[str, Field(max_length=64)]] = Field(
        max_length=MAX_CHECKED_NUMBERS,
        description="phone numbers as you hold them: 5511987654321, +55 11 98765-4321, "
        "(11) 98765-4321 (read with WAVY_DEFAULT_REGION)",
    )

    model_config = {"extra": "forbid"}


class OptoutCheckResult(BaseModel):
    number: str = Field(description="as given")
    e164: str | None = Field(description="the number in E.164; null when it is none")
    optedOut: bool | None = Field(
        description="null when the number could not be read (see error): never a silent false"
    )
    optedOutOf: list[str] = Field(
        description="every list consulted that holds it opted out: a sub-account, or "
        f"{ACCOUNT_WIDE_NAME}"
    )
    since: str | None
    keyword: str | None
    source: OptoutSource | None
    subAccount: str | None = Field(description="the list that holds it; null: account-wide")
    error: str | None = Field(default=None, description="not_a_phone_number")


class OptoutCheckAnswer(BaseModel):
    listsChecked: list[str] = Field(
        description=f"the lists consulted: the sender's sub-account and {ACCOUNT_WIDE_NAME}, "
        f"or {EVERY_LIST_NAME} for an admin who named no sub-account"
    )
    results: list[OptoutCheckResult] = Field(description="in the order given")


class OptoutEntry(BaseModel):
    number: str = Field(description="E.164")
    subAccount: str | None = Field(description="null: the account-wide list")
    optedOut: bool
    since: str
    source: OptoutSource
    keyword: str | None
    reason: str | None


class OptoutPage(BaseModel):
    items: list[OptoutEntry]
    next: str | None = Field(description="cursor for the next (older) page, if any")


class OptoutChanges(BaseModel):
    items: list[OptoutEntry] = Field(description="numbers whose state changed, oldest first")
    next: str


class OptoutHistoryItem(BaseModel):
    subAccount: str | None
    optedOut: bool
    at: str = Field(description="the change's own time: the reply's receivedAt, ...")
    source: OptoutSource
    keyword: str | None
    moId: str | None
    messageId: str | None
    actor: str | None
    reason: str | None
    recordedAt: str


class OptoutDetail(BaseModel):
    number: str = Field(description="E.164")
    optedOut: bool = Field(description="for the caller's lists (their sub-account's, or ...)")
    lists: list[OptoutEntry]
    history: list[OptoutHistoryItem] = Field(description="oldest first")


class OptoutChangeIn(BaseModel):
    reason: PlainText | None = Field(default=None, max_length=500)

    model_config = {"extra": "forbid"}


class KeywordOut(BaseModel):
    keyword: str
    action: KeywordAction = Field(description="out: opts out; in: opts back in")
    setBy: KeywordSetBy
    origin: str | None = Field(description="where a default comes from")


class KeywordIn(BaseModel):
    action: KeywordAction = Field(description="none: not a keyword for this list")

    model_config = {"extra": "forbid"}


class OptoutDay(BaseModel):
    day: str
    optedOut: int = Field(description="numbers that opted out that day")
    optedIn: int = Field(description="numbers that opted back in")
    size: int = Field(description="numbers opted out at the day's end")


class OptoutDays(BaseModel):
    days: list[OptoutDay]
