"""Who may see what, as at Wavy: an admin sees every sub-account and may narrow to one; a user
belongs to one sub-account and sees only its data. Data with no sub-account is admins' only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Reader:
    """An authenticated user of the read API."""

    id: int
    username: str
    role: Role
    sub_account: str | None


@dataclass(frozen=True, slots=True)
class Scope:
    """What one query may return: every sub-account (``sub_account is None``, admins only) or
    exactly one."""

    sub_account: str | None

    @property
    def everything(self) -> bool:
        return self.sub_account is None

    @property
    def cursor_key(self) -> str:
        """How per-user read cursors tell scopes apart."""
        return self.sub_account or ""


class OutsideScope(Exception):
    """A user asked for a sub-account other than their own."""


def resolve_scope(reader: Reader, requested_sub_account: str | None) -> Scope:
    if reader.role is Role.ADMIN:
        return Scope(sub_account=requested_sub_account or None)
    if requested_sub_account and requested_sub_account != reader.sub_account:
        raise OutsideScope(requested_sub_account)
    return Scope(sub_account=reader.sub_account)


def can_see(scope: Scope, sub_account: str | None) -> bool:
    return scope.everything or sub_account == scope.sub_account
