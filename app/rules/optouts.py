"""The rules of the opt-out list, with no I/O: which replies are opt-outs or opt-ins, the
default keywords and where each comes from, phone numbers as E.164, which Wavy status codes
put a number on the list, and the change each of these makes.

Who decides: for one number in one list, the change with the latest time wins (an MO's
``receivedAt``, a callback's status time, a manual change's moment), whatever order they
arrived in. Lists are per sub-account; the account-wide list (no sub-account) applies to every
sub-account, and is what Wavy's company blacklist feeds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal, get_args

import phonenumbers

from app.rules.records import EventRecord

KeywordAction = Literal["out", "in", "none"]  # "none": not a keyword here (masks a default)
KEYWORD_ACTIONS: tuple[KeywordAction, ...] = get_args(KeywordAction)
OptoutSource = Literal["mo", "manual", "wavy"]
OPTOUT_SOURCES: tuple[OptoutSource, ...] = get_args(OptoutSource)
# Who set a keyword in force for a list: nobody (a default), the account, the sub-account.
KeywordSetBy = Literal["default", "account", "subAccount"]

# The account-wide list's key in the database (lists are keyed by sub-account, and a key
# column cannot be NULL); the API shows it as no sub-account.
ACCOUNT_WIDE = ""
# How answers, the CLI and the dashboard name the account-wide list, and every list at once
# (what an admin's check without a sub-account consults).
ACCOUNT_WIDE_NAME = "(account-wide)"
EVERY_LIST_NAME = "(every list)"


def list_name(sub_account: str | None) -> str:
    """A list as people read it: its sub-account, or ``(account-wide)``."""
    return sub_account or ACCOUNT_WIDE_NAME


# The defaults, by where each comes from (docs/optouts.md repeats this table for users).
DEFAULT_OPT_OUT: Mapping[str, str] = {
    # Portuguese: what Brazilian senders print ("responda SAIR") and people answer.
    "SAIR": "Portuguese",
    "PARAR": "Portuguese",
    "PARE": "Portuguese",
    "CANCELAR": "Portuguese, Spanish",
    # Spanish: Latin American senders' customary words; ALTO is what US Spanish-language
    # short codes must honour.
    "SALIR": "Spanish",
    "BAJA": "Spanish",
    "ALTO": "Spanish (US short codes)",
    # English: Twilio's default opt-out keywords, which carriers' codes of conduct follow.
    "STOP": "English (every carrier)",
    "STOPALL": "English (Twilio)",
    "UNSUBSCRIBE": "English (Twilio)",
    "CANCEL": "English (Twilio)",
    "END": "English (Twilio)",
    "QUIT": "English (Twilio)",
    "REVOKE": "English (Twilio)",
    "OPTOUT": "English (Twilio)",
}
# Opting back in. Not YES or SIM: in these languages they answer questions.
DEFAULT_OPT_IN: Mapping[str, str] = {
    "VOLTAR": "Portuguese",
    "START": "English (Twilio)",
    "UNSTOP": "English (Twilio)",
}
DEFAULT_KEYWORDS: Mapping[str, KeywordAction] = {
    **{word: "out" for word in DEFAULT_OPT_OUT},
    **{word: "in" for word in DEFAULT_OPT_IN},
}

# A reply longer than this is never a keyword: checked before any normalising work, so a long
# reply costs one len().
MAX_REPLY_CHARS = 64
MAX_KEYWORD_CHARS = 32

# Wavy's sent status codes that say the destination is on a list (the status code table).
BLACKLISTED = 203  # on the company's blacklist: the account-wide list
OPTED_OUT_AT_WAVY = 204  # opted out of the message's sub-account
WAVY_LIST_CODES = frozenset({BLACKLISTED, OPTED_OUT_AT_WAVY})

_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_SPACES = re.compile(r"\s+")


def normalize_keyword(text: str) -> str:
    """What people type, as compared: accents, case, surrounding spaces and punctuation gone,
    inner spaces as one (``"  Sáir! "`` is ``SAIR``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    letters = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _SPACES.sub(" ", _EDGES.sub("", letters)).upper()


def reply_keyword(text: str | None) -> str | None:
    """The reply as a keyword candidate, or None when it cannot be one (too long, empty)."""
    if not text or len(text) > MAX_REPLY_CHARS:
        return None
    return normalize_keyword(text) or None


class BadKeyword(ValueError):
    """A keyword that would never match a reply."""


def keyword_of(text: str) -> str:
    """A keyword as stored: normalised like replies, and one that a reply can match."""
    keyword = normalize_keyword(text)
    if not keyword:
        raise BadKeyword("a keyword needs at least one letter or digit")
    if len(keyword) > MAX_KEYWORD_CHARS:
        raise BadKeyword(f"a keyword has at most {MAX_KEYWORD_CHARS} characters")
    return keyword


@dataclass(frozen=True, slots=True)
class KeywordRule:
    """One stored keyword: account-wide (``ACCOUNT_WIDE``) or one sub-account's."""

    sub_account: str
    keyword: str
    action: KeywordAction


class KeywordBook:
    """The keywords in force: the defaults, overridden by the account-wide rules, overridden by
    a sub-account's own."""

    def __init__(self, rules: Iterable[KeywordRule] = ()) -> None:
        self._set: dict[str, dict[str, KeywordAction]] = {}  # by list
        for rule in rules:
            self._set.setdefault(rule.sub_account, {})[rule.keyword] = rule.action
        self._account = {**DEFAULT_KEYWORDS, **self._set.get(ACCOUNT_WIDE, {})}

    def action(self, sub_account: str, keyword: str) -> KeywordAction:
        own = self._set.get(sub_account)
        if own is not None and keyword in own:
            return own[keyword]
        return self._account.get(keyword, "none")

    def in_force(self, sub_account: str) -> dict[str, tuple[KeywordAction, KeywordSetBy]]:
        """Every keyword that acts for this list (``ACCOUNT_WIDE``: the account's), and who
        set it."""
        layers: list[tuple[Mapping[str, KeywordAction], KeywordSetBy]] = [
            (DEFAULT_KEYWORDS, "default"),
            (self._set.get(ACCOUNT_WIDE, {}), "account"),
        ]
        if sub_account != ACCOUNT_WIDE:
            layers.append((self._set.get(sub_account, {}), "subAccount"))
        merged = {word: (action, by) for words, by in layers for word, action in words.items()}
        return {word: chosen for word, chosen in sorted(merged.items()) if chosen[0] != "none"}


# ---------------------------------------------------------------------------- phone numbers

_SEPARATORS = re.compile(r"[\s().\-]")
# Shortcuts for the two ways Brazilian numbers are written most, where phonenumbers gives "+",
# the country code and the digits for every number (held by a test against the library over
# every two-digit start): with the country code, as Wavy writes destinations
# ("5511987654321", "+55 11 98765-4321"), and as people write them at home
# ("(11) 98765-4321"); neither starting with a national prefix ("0", or "90" and a carrier
# code), nor, at home, with 55 (which the library may read as the country code). They exist
# because the library takes tens of microseconds a number, and a check of 1000 numbers must
# answer in milliseconds; everything else goes to the library.
_BRAZIL_INTERNATIONAL = re.compile(r"\+?55(?!0|90)[0-9]{10,11}")
_BRAZIL_NATIONAL = re.compile(r"(?!0|90|55)[0-9]{10,11}")


class NotAPhoneNumber(ValueError):
    """Text that no reading makes a phone number of."""


def to_e164(raw: str, region: str) -> str:
    """The number in E.164 (``+5511987654321``), read as the default ``region`` writes numbers
    when it has no country code; NotAPhoneNumber when it cannot be one (parsable, but not of a
    possible length for its country)."""
    if region == "BR":
        # _BRAZIL_INTERNATIONAL as Wavy writes it, told apart without a regex.
        wavy_form = raw.isascii() and raw.isdigit() and len(raw) in (12, 13) and raw[:2] == "55"
        if wavy_form and raw[2] != "0" and raw[2:4] != "90":
            return "+" + raw
        compact = _SEPARATORS.sub("", raw)
        if _BRAZIL_INTERNATIONAL.fullmatch(compact):
            return compact if compact[0] == "+" else "+" + compact
        if _BRAZIL_NATIONAL.fullmatch(compact):
            return "+55" + compact
    return parsed_e164(raw, region)


def parsed_e164(raw: str, region: str) -> str:
    """``to_e164`` by the library alone."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise NotAPhoneNumber(raw) from None
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber(raw)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def e164_or_none(raw: str | None, region: str) -> str | None:
    if not raw:
        return None
    try:
        return to_e164(raw, region)
    except NotAPhoneNumber:
        return None


# ---------------------------------------------------------------------------- changes


@dataclass(slots=True)
class OptoutChange:
    """One entry of a number's history: it opted out (or back in) of one list at ``at``."""

    # ACCOUNT_WIDE for the account-wide list; None: the list of the message's stored
    # sub-account (a 204 sent with the account's own key), else the account-wide one.
    sub_account: str | None
    e164: str
    opted_out: bool
    at: datetime
    source: OptoutSource
    keyword: str | None = None
    mo_id: str | None = None  # the reply that said so
    message_id: str | None = None  # the MT whose callback said so (Wavy's codes)
    actor: str | None = None  # who changed it by hand
    reason: str | None = None


def change_from_reply(
    book: KeywordBook,
    *,
    sub_account: str | None,
    text: str | None,
    source: str | None,
    mo_id: str,
    received_at: datetime,
    region: str,
) -> OptoutChange | None:
    """The change a reply makes, if its whole text is a keyword in force for its list and its
    sender is a phone number."""
    keyword = reply_keyword(text)
    if keyword is None:
        return None
    scope = sub_account or ACCOUNT_WIDE
    action = book.action(scope, keyword)
    if action == "none":
        return None
    e164 = e164_or_none(source, region)
    if e164 is None:
        return None
    return OptoutChange(
        sub_account=scope,
        e164=e164,
        opted_out=action == "out",
        at=received_at,
        source="mo",
        keyword=keyword,
        mo_id=mo_id,
    )


def change_from_status(
    *,
    sent_status_code: int | None,
    sub_account: str | None,
    destination: str | None,
    message_id: str,
    at: datetime,
    region: str,
) -> OptoutChange | None:
    """The change a callback or DLR makes when Wavy refused its message because of a list:
    204 (opted out of the sub-account) or 203 (the company's blacklist). ``sub_account`` is
    the sending key's. A 204 of the account's own key takes the message's stored sub-account
    (app.db.optouts); a 203 of the account's own key goes on the account-wide list, but a
    sub-account's key writes only its own list: one key must not be able to stop every other
    sub-account from sending to a number."""
    if sent_status_code not in WAVY_LIST_CODES:
        return None
    e164 = e164_or_none(destination, region)
    if e164 is None:
        return None
    blacklisted = sent_status_code == BLACKLISTED
    return OptoutChange(
        sub_account=ACCOUNT_WIDE if blacklisted and sub_account is None else sub_account,
        e164=e164,
        opted_out=True,
        at=at,
        source="wavy",
        keyword="BLACKLISTED" if blacklisted else "DESTINATION_BLOCKED_BY_OPTOUT",
        message_id=message_id,
    )


@dataclass(frozen=True, slots=True)
class OptoutMatcher:
    """What stored callbacks, DLRs and replies do to the lists: the keywords in force and the
    region numbers without a country code are read in."""

    book: KeywordBook
    region: str
    enabled: bool = True  # WAVY_OPTOUTS_FROM_TRAFFIC

    def changes(self, records: Iterable[EventRecord]) -> list[OptoutChange]:
        found: list[OptoutChange] = []
        if not self.enabled:
            return found
        for record in records:
            change: OptoutChange | None = None
            mo = record.mo
            if mo is not None:
                change = change_from_reply(
                    self.book,
                    sub_account=mo.sub_account,
                    text=mo.message_text,
                    source=mo.source,
                    mo_id=mo.id,
                    received_at=mo.received_at,
                    region=self.region,
                )
            elif record.sent_status_code in WAVY_LIST_CODES and record.status is not None:
                status = record.status
                change = change_from_status(
                    sent_status_code=record.sent_status_code,
                    sub_account=record.sub_account,
                    destination=status.destination,
                    message_id=record.message_id,
                    at=status.sent_at or record.received_at,
                    region=self.region,
                )
            if change is not None:
                found.append(change)
        return found


@dataclass(frozen=True, slots=True)
class DayChanges:
    """Numbers that opted out of a list, and back in, on one day."""

    day: date
    opted_out: int
    opted_in: int


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One day of a list's life: its changes, and its size at the day's end."""

    day: date
    opted_out: int
    opted_in: int
    size: int


def every_day(
    size_before: int, changes: Sequence[DayChanges], first: date, last: date
) -> list[DayFigures]:
    """The days from ``first`` to ``last`` (``changes``: those with changes, in order), each
    with the list's size at its end, from its size before ``first``."""
    by_day = {change.day: change for change in changes}
    size = size_before
    series: list[DayFigures] = []
    for offset in range((last - first).days + 1):  # never a day past ``last``: it may be 9999's
        day = first + timedelta(days=offset)
        change = by_day.get(day) or DayChanges(day, 0, 0)
        size += change.opted_out - change.opted_in
        series.append(DayFigures(day, change.opted_out, change.opted_in, size))
    return series


# The defaults alone, with Brazil's numbering (tests and tools that set no keywords).
DEFAULT_MATCHER = OptoutMatcher(KeywordBook(), "BR")
