"""Wavy's documented status codes and names (docs/payloads.md, "Status codes")."""

from __future__ import annotations

SENT_STATUS_NAMES: dict[int, str] = {
    2: "SENT_SUCCESS",
    101: "EXPIRED",
    102: "CARRIER_COMMUNICATION_ERROR",
    103: "REJECTED_BY_CARRIER",
    201: "NO_CREDIT",
    202: "INVALID_DESTINATION_NUMBER",
    203: "BLACKLISTED",
    204: "DESTINATION_BLOCKED_BY_OPTOUT",
    205: "DESTINATION_MESSAGE_LIMIT_REACHED",
    207: "INVALID_MESSAGE_TEXT",
    301: "INTERNAL_ERROR",
}

DELIVERED_STATUS_NAMES: dict[int, str] = {
    4: "DELIVERED_SUCCESS",
    104: "NOT_DELIVERED",
}


def status_name(code: int | None, name: str | None, names: dict[int, str]) -> str | None:
    """The name as sent; when it is missing, the documented name of a known code. Unknown codes
    without a name stay nameless rather than get an invented one."""
    if name is not None or code is None:
        return name
    return names.get(code)
