"""Secrets: webhook keys and read-API tokens, how they are made, stored (hashed) and checked
(in constant time)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX_CHARS = 6


def generate_key() -> str:
    """192 random bits, URL-safe: pasted into Wavy's portal as part of a URL."""
    return secrets.token_urlsafe(24)


MIN_CHOSEN_SECRET_CHARS = 16


def hash_key(key: str) -> str:
    # Keys and tokens are long random secrets (or at least 16 chars when chosen by hand), not
    # passwords: a fast hash is enough and keeps every request cheap.
    return hashlib.sha256(key.encode()).hexdigest()


def secret_matches(presented: str, stored_hash: str | None) -> bool:
    """Constant-time check; with no stored hash (unknown user) it does the same work and fails,
    so timing does not reveal which usernames exist."""
    expected = (stored_hash or "0" * 64).encode()
    return hmac.compare_digest(hash_key(presented).encode(), expected) and stored_hash is not None


def key_prefix(key: str) -> str:
    """What `keys list` shows so an operator can tell keys apart without seeing them."""
    return key[:KEY_PREFIX_CHARS]


@dataclass(frozen=True, slots=True)
class KnownKey:
    key_hash: str
    sub_account: str | None


def match_key(presented: str, known: list[KnownKey]) -> KnownKey | None:
    """The key ``presented`` matches, comparing against every known hash without stopping early,
    so the time taken says nothing about which keys exist or how close a guess came."""
    presented_hash = hash_key(presented).encode()
    found: KnownKey | None = None
    for candidate in known:
        if hmac.compare_digest(presented_hash, candidate.key_hash.encode()):
            found = candidate
    return found
