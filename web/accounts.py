"""Web console accounts and logins: argon2 password hashes, roles, sessions kept in the database.

A session is a random token in an HttpOnly cookie; the database keeps only its
SHA-256, with the account and the session's CSRF token. Logging out deletes the
row, so a stolen cookie stops working at once, and nothing needs a server secret.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from botkit import BotkitError
from botkit.storage import Database, WebAccountRecord, WebSessionRecord, utcnow

from .settings import ROLES

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 12

_hasher = PasswordHasher()  # argon2id with argon2-cffi's RFC 9106 low-memory profile
# Verified against when the name is unknown, so that a wrong name costs the same time as a wrong password.
_UNKNOWN_NAME_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(BotkitError):
    """An account cannot be added or changed as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Login:
    """Who is logged in on a request: the account, its role, and the CSRF token of the session."""

    account_id: int
    name: str
    role: str
    csrf_token: str

    def may(self, role: str) -> bool:
        """Whether this login may see a page for ``role``: admins see everything."""
        return self.role == "admin" or self.role == role


def check_new_account(name: str, role: str, password: str) -> None:
    if not NAME.fullmatch(name):
        raise AccountError(
            f"account name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    if role not in ROLES:
        raise AccountError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


async def add_account(db: Database, name: str, role: str, password: str) -> None:
    """Create account ``name`` with ``role``; ``AccountError`` if it exists or a value is not acceptable."""
    check_new_account(name, role, password)
    password_hash = _hasher.hash(password)
    async with db.session() as session:
        exists = await session.scalar(select(WebAccountRecord.id).where(WebAccountRecord.name == name))
        if exists is not None:
            raise AccountError(f"account {name!r} exists already")
        session.add(WebAccountRecord(name=name, role=role, password_hash=password_hash, created_at=utcnow()))


async def list_accounts(db: Database) -> list[tuple[str, str]]:
    """Every account as (name, role), by name."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(WebAccountRecord.name, WebAccountRecord.role).order_by(WebAccountRecord.name)
        )
        return [(name, role) for name, role in rows.all()]


async def check_password(db: Database, name: str, password: str) -> int | None:
    """The id of account ``name`` if ``password`` is its password, else None (same cost either way)."""
    async with db.sessions() as session:
        account = await session.scalar(select(WebAccountRecord).where(WebAccountRecord.name == name))
    try:
        _hasher.verify(account.password_hash if account else _UNKNOWN_NAME_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if account is None:
        return None
    if _hasher.check_needs_rehash(account.password_hash):  # argon2's parameters were raised since
        async with db.session() as session:
            stored = await session.get(WebAccountRecord, account.id)
            if stored is not None:
                stored.password_hash = _hasher.hash(password)
    return account.id


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(db: Database, account_id: int, hours: int) -> str:
    """Log account ``account_id`` in for ``hours``: returns the token for the cookie (stored only hashed)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    async with db.session() as session:
        # Expired logins of anyone go here rather than in a timer: logging in is rare.
        await session.execute(delete(WebSessionRecord).where(WebSessionRecord.expires_at < now))
        session.add(
            WebSessionRecord(
                token_hash=_token_hash(token),
                account_id=account_id,
                csrf_token=secrets.token_urlsafe(32),
                created_at=now,
                expires_at=now + timedelta(hours=hours),
            )
        )
    return token


async def login_for(db: Database, token: str) -> Login | None:
    """The login a session cookie's token stands for, or None (unknown, expired, or its account removed)."""
    async with db.sessions() as session:
        row = (
            await session.execute(
                select(WebSessionRecord.csrf_token, WebAccountRecord.id, WebAccountRecord.name, WebAccountRecord.role)
                .join(WebAccountRecord, WebAccountRecord.id == WebSessionRecord.account_id)
                .where(WebSessionRecord.token_hash == _token_hash(token), WebSessionRecord.expires_at > utcnow())
            )
        ).first()
    if row is None:
        return None
    csrf_token, account_id, name, role = row
    return Login(account_id, name, role, csrf_token)


async def close_session(db: Database, token: str) -> None:
    """Log out: the token no longer stands for anyone."""
    async with db.session() as session:
        await session.execute(delete(WebSessionRecord).where(WebSessionRecord.token_hash == _token_hash(token)))


async def remove_account(db: Database, name: str) -> None:
    """Delete account ``name`` and its sessions; ``AccountError`` if there is none."""
    async with db.session() as session:
        account = await session.scalar(select(WebAccountRecord).where(WebAccountRecord.name == name))
        if account is None:
            raise AccountError(f"there is no account {name!r}: `botkit web user list` shows them")
        await session.execute(delete(WebSessionRecord).where(WebSessionRecord.account_id == account.id))
        await session.delete(account)
