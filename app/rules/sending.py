"""The rules of sending through the service, with no I/O: what a send request to Wavy's API
must hold (as Wavy refuses it), what each MT becomes, and which opt-out list refuses a
destination with which of Wavy's own status codes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from app.errors import BadSend
from app.rules.optouts import ACCOUNT_WIDE, NotAPhoneNumber, to_e164
from app.rules.plain_text import is_printable

# Wavy's documented bounds.
MAX_MESSAGE_CHARS = 1280
MAX_CORRELATION_ID_CHARS = 64
MAX_BULK_MESSAGES = 1000

# What became of an MT: handed to Wavy, refused here for an opt-out as Wavy would have (204
# for the sender's sub-account's list, 203 for the account-wide one), or unknown (Wavy did not
# answer in time: it may have sent it, so it is never sent again by us).
MtOutcome = Literal["sent", "refused_optout", "refused_blacklisted", "unknown"]
MT_OUTCOMES: tuple[MtOutcome, ...] = get_args(MtOutcome)

# Wavy's own codes and names for a destination refused at sending (docs/sending.md).
OPTOUT_STATUS = (204, "DESTINATION_BLOCKED_BY_OPTOUT")
BLACKLISTED_STATUS = (203, "BLACKLISTED")


@dataclass(frozen=True, slots=True)
class Mt:
    """One message of a send, as the client wrote it (``fields``, passed on unchanged) and as
    we read it: its destination in E.164 digits and its text after defaultValues."""

    fields: dict[str, Any]
    destination: str  # E.164 digits, no +
    text: str
    correlation_id: str | None


def read_mt(fields: Any, region: str, default_text: Any = None, position: str = "") -> Mt:
    """A message of a send, checked as Wavy checks it (BadSend otherwise)."""
    where = f"messages[{position}]: " if position else ""
    if not isinstance(fields, dict):
        raise BadSend(f"{where}a message is a JSON object")
    raw = fields.get("destination")
    if raw is None or raw == "":
        raise BadSend(f"{where}destination is required")
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise BadSend(f"{where}destination must be a phone number")
    try:
        e164 = to_e164(str(raw), region)
    except NotAPhoneNumber:
        raise BadSend(f"{where}destination {str(raw)[:64]!r} is not a phone number") from None
    text = fields.get("messageText")
    if text is None:
        text = default_text
    if not isinstance(text, str) or not text.strip():
        raise BadSend(f"{where}messageText is required (or defaultValues.messageText)")
    if len(text) > MAX_MESSAGE_CHARS:
        raise BadSend(f"{where}messageText is longer than {MAX_MESSAGE_CHARS} characters")
    correlation_id = fields.get("correlationId")
    if correlation_id is not None:
        if not isinstance(correlation_id, str | int) or isinstance(correlation_id, bool):
            raise BadSend(f"{where}correlationId must be a string")
        correlation_id = str(correlation_id)
        if len(correlation_id) > MAX_CORRELATION_ID_CHARS:
            raise BadSend(
                f"{where}correlationId is longer than {MAX_CORRELATION_ID_CHARS} characters"
            )
    return Mt(fields, e164.lstrip("+"), text, correlation_id)


def read_bulk(body: Any, region: str) -> list[Mt]:
    """A bulk send's messages, in the client's order."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise BadSend('a bulk send is {"messages": [...], "defaultValues": {...}}')
    messages = body["messages"]
    if not messages:
        raise BadSend("messages is empty")
    if len(messages) > MAX_BULK_MESSAGES:
        raise BadSend(f"more than {MAX_BULK_MESSAGES} messages")
    defaults = body.get("defaultValues")
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise BadSend("defaultValues must be an object")
    return [
        read_mt(fields, region, defaults.get("messageText"), str(index))
        for index, fields in enumerate(messages)
    ]


def owners_named(body: Mapping[str, Any]) -> list[object]:
    """Every sub-account a bulk names below its root (in a message, or its defaultValues):
    each must be the sender's, or a user could send for another sub-account's under their
    own lists."""
    messages = body.get("messages")
    inner = [*(messages if isinstance(messages, list) else []), body.get("defaultValues") or {}]
    return [part["subAccount"] for part in inner if isinstance(part, dict) and "subAccount" in part]


# How deep a send's JSON may nest: Wavy's bodies are a few levels (``params`` is a map), and
# what is passed on must be written again as JSON.
MAX_DEPTH = 32


def check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadSend(f"the body nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for item in value.values():
            check_depth(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_depth(item, depth + 1)


def as_sent(mt: Mt) -> dict[str, Any]:
    """The message as it goes to Wavy: the client's fields, with the destination that was
    checked against the opt-out lists (E.164 digits: what is sent is what was checked) and the
    correlationId as text (as Wavy's callbacks carry it)."""
    sent = {**mt.fields, "destination": mt.destination}
    if mt.correlation_id is not None:
        sent["correlationId"] = mt.correlation_id
    return sent


MAX_SUB_ACCOUNT_CHARS = 255


def named_sub_account(named: object) -> str | None:
    """The sub-account a send names (an admin's), checked: it becomes the MT's owner."""
    if named is None or named == "":
        return None
    if not isinstance(named, str) or len(named) > MAX_SUB_ACCOUNT_CHARS or not is_printable(named):
        raise BadSend(f"subAccount must be a name of at most {MAX_SUB_ACCOUNT_CHARS} characters")
    return named


def refusal_for(sub_account_list: bool, account_wide_list: bool) -> tuple[int, str] | None:
    """Wavy's status for a destination on the lists that apply to the sender: the company's
    blacklist (account-wide) first, as it applies to every sub-account, then the sender's
    sub-account's opt-outs."""
    if account_wide_list:
        return BLACKLISTED_STATUS
    if sub_account_list:
        return OPTOUT_STATUS
    return None


def lists_for(sub_account: str | None) -> list[str]:
    """The opt-out lists that apply to a send: its sub-account's and the account-wide one."""
    return [ACCOUNT_WIDE] if not sub_account else [sub_account, ACCOUNT_WIDE]
