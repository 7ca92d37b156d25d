"""What Wavy sends: pydantic models of the callback, DLR and MO payloads, with every documented
variant (see docs/payloads.md), plus the helpers that turn raw input into something they
can validate (NUL characters, the MO's query-string form) and their errors into our answer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
)

# Epoch milliseconds from 1970 to the end of year 9999: anything else is not a time.
MAX_EPOCH_MS = 253_402_300_799_999
MAX_INT32 = 2**31 - 1
# Every text field has a limit (docs/payloads.md lists them). Indexed text must stay under
# btree's ~2.7 kB row limit at 4 bytes a character: the stats rollup's key holds a
# sub-account, a campaign (each a key) and a carrier name (a name) at once.
MAX_KEY_CHARS = 255
MAX_NAME_CHARS = 100
MAX_TEXT_CHARS = 4096
REPLACEMENT_CHARACTER = "\ufffd"


def drop_blank_fields(item: Any) -> Any:
    """Wavy leaves optional fields out, sends ``null`` or sends ``""``: all three mean absent.
    Dropping them once per item, before validation, keeps every field on pydantic-core's native
    (fast) path instead of calling a Python validator per field."""
    if type(item) is not dict:
        return item
    # The blank test is written out, not a helper: this runs for every field of every item.
    for value in item.values():
        if value is None or type(value) is dict or (type(value) is str and not value.strip()):
            break
    else:
        return item  # the usual item: nothing blank, nothing nested (half the cost)
    return {
        key: drop_blank_fields(value) if type(value) is dict else value
        for key, value in item.items()
        if not (value is None or (type(value) is str and not value.strip()))
    }


def as_utc(value: Any) -> Any:
    """A validator: a datetime in UTC, one without offset read as UTC (Wavy's dates are, and
    so are the API's); refused if UTC takes it past the calendar."""
    if not isinstance(value, datetime):
        return value
    if value.tzinfo is None:
        # Wavy documents its dates as UTC; a missing offset means UTC, not server-local time.
        return value.replace(tzinfo=UTC)
    if not value.utcoffset():
        return value  # already UTC (the usual case): nothing to convert
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date is out of range once converted to UTC") from None


OptText = Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | None
OptName = Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None
OptKey = Annotated[str, Field(max_length=MAX_KEY_CHARS)] | None
# Numbers are strict: Wavy documents them as JSON integers, and a lax int would take true as
# 1 (a boolean status code stored as a code). The MO's query-string form turns its digits into
# integers first (mo_from_query).
OptCode = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)] | None
OptId = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] | None
OptEpochMs = Annotated[StrictInt, Field(ge=0, le=MAX_EPOCH_MS)] | None


def date_text(value: Any) -> Any:
    """A validator: dates come as ISO-8601 text (or datetimes from code). A bare number would
    be read as Unix seconds, where Wavy's numeric times are milliseconds in other fields."""
    if isinstance(value, int | float):
        raise ValueError("a date is ISO-8601 text; epoch milliseconds go in the *At field")
    return value


OptDate = Annotated[datetime, BeforeValidator(date_text), AfterValidator(as_utc)] | None
MessageId = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS)]
# Documented both as "64" and 1234: kept as text (see ``campaign_text``) without loss.
Campaign = StrictInt | Annotated[str, Field(max_length=MAX_KEY_CHARS)] | None


# Below 2**33 seconds (year 2242) epoch_ms / 1000 is within half a microsecond of the exact
# time, so fromtimestamp's rounding lands on it; past that a float misses by a microsecond or
# two, and the exact (slower) integer sum is taken.
_FLOAT_EXACT_BELOW_MS = 2**33 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _pick_time(epoch_ms: int | None, iso: datetime | None) -> datetime | None:
    """Epoch milliseconds win over the ISO string: they are exact, the string may be rounded."""
    if epoch_ms is not None:
        if epoch_ms < _FLOAT_EXACT_BELOW_MS:
            # tz by position: by keyword the call costs half as much again (twice per DLR).
            return datetime.fromtimestamp(epoch_ms / 1000, UTC)
        return _EPOCH + timedelta(milliseconds=epoch_ms)
    return iso


class _WavyModel(BaseModel):
    # Unknown fields are never refused; they are kept in the raw payload stored with each event,
    # so the models need not carry them.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Callback(_WavyModel):
    """First status: did the carrier take the message."""

    id: MessageId
    correlation_id: OptKey = Field(default=None, alias="correlationId")
    carrier_id: OptId = Field(default=None, alias="carrierId")
    carrier_name: OptName = Field(default=None, alias="carrierName")
    destination: OptKey = None
    sent_status_code: OptCode = Field(default=None, alias="sentStatusCode")
    sent_status: OptName = Field(default=None, alias="sentStatus")
    sent_at_ms: OptEpochMs = Field(
        default=None, validation_alias=AliasChoices("sentAt", "sentStatusAt")
    )
    sent_date: OptDate = Field(
        default=None, validation_alias=AliasChoices("sentDate", "sentStatusDate")
    )
    campaign_id: Campaign = Field(default=None, alias="campaignId")
    extra_info: OptText = Field(default=None, alias="extraInfo")

    @property
    def sent_time(self) -> datetime | None:
        return _pick_time(self.sent_at_ms, self.sent_date)


class Dlr(Callback):
    """Second status: did the message reach the phone. Carries the callback's fields too."""

    delivered_status_code: OptCode = Field(default=None, alias="deliveredStatusCode")
    delivered_status: OptName = Field(default=None, alias="deliveredStatus")
    delivered_at_ms: OptEpochMs = Field(default=None, alias="deliveredAt")
    delivered_date: OptDate = Field(default=None, alias="deliveredDate")

    @property
    def delivered_time(self) -> datetime | None:
        return _pick_time(self.delivered_at_ms, self.delivered_date)


class MtLink(_WavyModel):
    """The MT a reply answers."""

    id: OptKey = None
    correlation_id: OptKey = Field(default=None, alias="correlationId")
    username: OptKey = None
    email: OptKey = None


class Mo(_WavyModel):
    """A user's reply."""

    id: MessageId
    sub_account: OptKey = Field(default=None, alias="subAccount")
    campaign_alias: OptKey = Field(default=None, alias="campaignAlias")
    carrier_id: OptId = Field(default=None, alias="carrierId")
    carrier_name: OptName = Field(default=None, alias="carrierName")
    source: OptKey = None
    short_code: OptName = Field(default=None, alias="shortCode")
    message_text: OptText = Field(default=None, alias="messageText")
    received_at_ms: OptEpochMs = Field(default=None, alias="receivedAt")
    received_date: OptDate = Field(default=None, alias="receivedDate")
    mt: MtLink | None = None

    @property
    def received_time(self) -> datetime | None:
        return _pick_time(self.received_at_ms, self.received_date)


# What Wavy calls us with: the names of the three webhooks, of their events and rejected bodies.
EventKind = Literal["callback", "dlr", "mo"]

EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


def as_event_kind(name: str) -> EventKind:
    """A kind read back as text (a rejected body's endpoint, a test's parameter)."""
    if name not in EVENT_KINDS:
        raise ValueError(f"no such kind of event: {name!r}")
    return name


LIST_ADAPTERS: dict[EventKind, TypeAdapter[list[Any]]] = {
    "callback": TypeAdapter(list[Callback]),
    "dlr": TypeAdapter(list[Dlr]),
    "mo": TypeAdapter(list[Mo]),
}


def validate_items(kind: EventKind, items: list[Any]) -> list[Any]:
    """Validate every item of a body; raises ValidationError whose locations start with the
    item's index."""
    return LIST_ADAPTERS[kind].validate_python([drop_blank_fields(item) for item in items])


def campaign_text(campaign: int | str | None) -> str | None:
    return str(campaign) if type(campaign) is int else campaign  # type: ignore[return-value]


def describe_validation_errors(error: ValidationError, *, was_array: bool) -> list[dict[str, Any]]:
    """One entry per problem, naming the field and, for arrays, the item's index."""
    described: list[dict[str, Any]] = []
    for problem in error.errors(include_url=False, include_context=False, include_input=False):
        loc = list(problem["loc"])
        index = loc.pop(0) if loc and isinstance(loc[0], int) else None
        # Union members and validators add location noise that says nothing to a sender.
        field = ".".join(str(part) for part in loc if not str(part).startswith("function-"))
        entry: dict[str, Any] = {"field": field or None, "message": problem["msg"]}
        if was_array:
            entry["index"] = index
        entry["type"] = problem["type"]
        described.append(entry)
    return described


def has_nul_escape(body: bytes) -> bool:
    """A raw NUL byte is invalid JSON, so only the escaped form can reach a parsed string."""
    return b"\\u0000" in body


def replace_nul_characters(value: Any) -> Any:
    """PostgreSQL cannot store U+0000 in text or jsonb. We replace it with U+FFFD (the Unicode
    replacement character) everywhere, keys included, so the message is stored rather than lost
    and the spot where the NUL was stays visible."""
    if isinstance(value, str):
        return value.replace("\x00", REPLACEMENT_CHARACTER)
    if isinstance(value, list):
        return [replace_nul_characters(item) for item in value]
    if isinstance(value, dict):
        return {
            replace_nul_characters(key): replace_nul_characters(item) for key, item in value.items()
        }
    return value


MT_QUERY_NAMES = {
    "mt.id": "id",
    "mt.correlationId": "correlationId",
    "mt.username": "username",
    "mt.email": "email",
    "mtId": "id",
    "mtCorrelationId": "correlationId",
    "mtUsername": "username",
    "mtEmail": "email",
}


# The MO's integer fields: in a query string they arrive as text.
MO_INTEGER_FIELDS = frozenset({"carrierId", "receivedAt"})


def _query_integer(value: str) -> int | str:
    """Digits as the integer they spell; anything else is left for validation to refuse."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 19 else value


def mo_from_query(params: Mapping[str, str], *, ignore: frozenset[str]) -> dict[str, Any]:
    """The MO's GET form: flat names as in the JSON, the MT link as ``mt.id`` (or ``mtId``)."""
    mo: dict[str, Any] = {}
    mt: dict[str, Any] = {}
    for name, value in params.items():
        if name in ignore:
            continue
        if name in MT_QUERY_NAMES:
            mt[MT_QUERY_NAMES[name]] = value
        elif name in MO_INTEGER_FIELDS:
            mo[name] = _query_integer(value)
        else:
            mo[name] = value
    if mt:
        mo["mt"] = mt
    return mo
