"""The rules of forwarding, with no I/O: the event types, the retry schedule, which addresses a
delivery may reach, secrets and the Standard Webhooks signature headers."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

EventType = Literal["mo.received", "status.updated", "optout.changed"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
DisabledReason = Literal["manual", "failing"]

# Svix's schedule: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h later.
DEFAULT_RETRY_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
# The bounds of the schedule and of an attempt's wait: a value past them is a typo, and a
# delay of years would overflow the dates computed from it.
MAX_RETRY_DELAY_S = 7 * 24 * 3600
MAX_RETRY_ATTEMPTS = 100
MAX_FORWARD_TIMEOUT_S = 300

# Batches each sender of an endpoint claims and sends at once, so that one batch's database
# round trips overlap another's requests.
PIPELINES = 2
# What an attempt keeps of the answer (the API shows it to the endpoint's owner).
RESPONSE_EXCERPT_BYTES = 1024
# Standard Webhooks' secrets: 24 to 64 random bytes, base64, after "whsec_".
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 32
MAX_URL_CHARS = 2048


def delay_before_attempt(schedule: Sequence[float], attempts_made: int) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` (the first attempt is
    ``schedule[0]``); None when the schedule is spent: the delivery has failed."""
    return schedule[attempts_made] if attempts_made < len(schedule) else None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_id_of(endpoint_id: int, feed: str, tx_id: int, seq: int) -> str:
    """The webhook id of a change's delivery to an endpoint: the same however often the change
    is turned into a delivery, and telling nothing of what it is made from."""
    digest = hashlib.blake2b(f"{endpoint_id}.{feed}.{tx_id}.{seq}".encode(), digest_size=12)
    return "msg_" + digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs with the endpoint's secret, and during a rotation's overlap with the previous one
    too (a consumer accepts either; both go in one ``webhook-signature`` header)."""

    hooks: tuple[Webhook, ...]

    @classmethod
    def of(cls, secret: str, previous: str | None = None) -> Signer:
        found = [Webhook(secret)] + ([Webhook(previous)] if previous else [])
        return cls(tuple(found))

    def headers(self, webhook_id: str, moment: datetime, body: bytes) -> dict[str, str]:
        text = body.decode()
        moment = moment.astimezone(UTC)
        signatures = " ".join(hook.sign(webhook_id, moment, text) for hook in self.hooks)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signatures,
            "content-type": "application/json",
        }


class UrlNotAllowed(ValueError):
    """A URL no delivery may go to; the message says why."""


# What an operator sets to let deliveries reach private addresses (a refusal names it).
ALLOW_PRIVATE_HINT = (
    "to allow private addresses, set WAVY_FORWARD_ALLOW_PRIVATE=true in .env (read by serve "
    "and the CLI alike) or in the environment of both, and restart serve"
)
# A host name's limits (RFC 1035): 253 characters, labels of 1 to 63.
MAX_HOST_CHARS = 253
# Whitespace and control characters: a URL holds them percent-encoded, never raw (a raw CR or
# LF would reach the request line, a space would be read two ways).
_RAW_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f]")


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        raise UrlNotAllowed("the host is not a valid name (labels of 1 to 63 characters)") from None
    if len(encoded) > MAX_HOST_CHARS:
        raise UrlNotAllowed(f"the host is longer than {MAX_HOST_CHARS} characters")


def check_url_shape(url: str) -> str:
    """An absolute http(s) URL with a valid host and port and no credentials in it; returns
    its host."""
    if len(url) > MAX_URL_CHARS:
        raise UrlNotAllowed(f"the URL is longer than {MAX_URL_CHARS} characters")
    if _RAW_IN_URL.search(url):
        raise UrlNotAllowed("the URL holds a space or a control character (percent-encode it)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UrlNotAllowed(f"not a URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlNotAllowed("the URL must start with http:// or https://")
    if not parts.hostname:
        raise UrlNotAllowed("the URL has no host")
    if port == 0:
        raise UrlNotAllowed("the URL's port must be 1 to 65535")
    if parts.username or parts.password:
        raise UrlNotAllowed("the URL must not carry credentials (the signature authenticates)")
    _check_host(parts.hostname)
    return parts.hostname


# NAT64 prefixes (RFC 6052's well-known one and RFC 8215's local-use one): the IPv4 address
# is the last 32 bits with the well-known prefix; the local-use one is never public.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Public IPv6 unicast is this block (RFC 4291); anything outside it is refused, NAT64 of a
# public address aside: the IPv4-translated ::ffff:0:a.b.c.d, the retired site-local fec0::,
# blocks reserved after this Python's ipaddress was written.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# Inside it, yet never public: documentation (RFC 9637), unknown to older Pythons.
_NOT_PUBLIC_UNICAST = (ipaddress.IPv6Network("3fff::/20"),)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: mapped, IPv4-compatible, NAT64, 6to4 and
    Teredo (its server and its client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def address_refused(address: str) -> bool:
    """Loopback, private, link-local (the clouds' metadata address is one), shared, multicast,
    reserved or unspecified: anything but the public internet. An IPv6 address that carries
    an IPv4 one (mapped, compatible, NAT64, 6to4, Teredo) is refused when that one is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip not in _GLOBAL_UNICAST and ip not in _NAT64_WELL_KNOWN:
            return True
        if any(ip in block for block in _NOT_PUBLIC_UNICAST):
            return True
        return any(not v4.is_global or v4.is_multicast for v4 in _embedded_ipv4(ip))
    return False
