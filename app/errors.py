"""The service's errors, one family: what went wrong, in the domain's words. None carries an
HTTP status; app.api.errors maps each to its answer, in one place. Driver exceptions never
leave app.db: they become one of these there."""

from __future__ import annotations

from typing import Any, Literal

# Why a webhook body is refused: each is also the error's code in the answer and the reason
# kept with the rejected body.
RefusalReason = Literal[
    "empty_body",
    "malformed_json",
    "too_deeply_nested",
    "validation_failed",
    "too_many_items",
    "body_too_large",
    "body_timeout",
    "database_refused",
    "foreign_message",
    "foreign_sub_account",
]
# Why nothing was stored for now (the metrics' label).
UnavailableReason = Literal["database", "keys_unavailable", "overloaded", "timeout", "write_failed"]


class DomainError(Exception):
    """The base of the family."""


class CannotConnect(Exception):
    """PostgreSQL could not be worked with: away past the time given at start, away during an
    operator's command, or refusing the connection (a wrong password, no such database)."""


class Refused(DomainError):
    """Input that can never be stored as sent: the sender must change it. ``details`` name the
    fields (and items) at fault."""

    def __init__(
        self, reason: RefusalReason, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason
        self.message = message
        self.details = details


class Unavailable(DomainError):
    """Nothing was stored, for now: worth a retry."""

    reason: UnavailableReason = "database"


class WriterOverloaded(Unavailable):
    """The write queue is full."""

    reason: UnavailableReason = "overloaded"


class WriteFailed(Unavailable):
    """The records could not be committed."""

    reason: UnavailableReason = "write_failed"


class WriteTimedOut(WriteFailed):
    """Not committed within the writer's timeout; it may still be, later."""

    reason: UnavailableReason = "timeout"


class WriteRefused(DomainError):
    """PostgreSQL refused this request's own data, alone in its batch (a data exception, an
    integrity violation, a program limit): retrying it can only fail again."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class LoginsThrottled(DomainError):
    """This client failed too many logins lately; it may try again after ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"too many failed logins; retry in {wait_s:.0f} s")
        self.wait_s = wait_s


class UnknownTimeZone(DomainError):
    """A time zone Python knows and the database does not (an older tz database)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the database knows no time zone {name!r}")
        self.name = name


class EndpointNotFound(DomainError):
    """No forwarding endpoint has this id."""


class ForeignEndpoint(DomainError):
    """The sub-account a new endpoint is asked for is not the caller's (an existing endpoint
    outside the caller's reach is EndpointNotFound, as if it did not exist)."""


class EndpointUrlRefused(DomainError):
    """A URL no delivery may go to (the message says why)."""


class UnreadableNumber(DomainError):
    """Text that is no phone number (the opt-out lists' numbers are E.164)."""

    def __init__(self, number: str) -> None:
        super().__init__(f"{number!r} is not a phone number")


class UnusableKeyword(DomainError):
    """An opt-out keyword no reply could ever match (the message says why)."""


class BadSend(DomainError):
    """A send Wavy would refuse with a 400; the message says why (Wavy's errorMessage)."""


class NoSuchKeyword(DomainError):
    """The list sets no such keyword (a default cannot be removed, only set to none)."""
