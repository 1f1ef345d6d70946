"""API keys: the gateway's door (`/v1`), one key per tool a person points at it.

A key is `ca-` and 43 URL-safe random characters, shown once when it is made: only its SHA-256
digest (to find it by) and its first 12 characters (to recognise it by) are stored, so the
database cannot give a key away. Every request looks its key up again (revocation is seen by
every worker at the next request: nothing about a key's validity is cached), and writes
`last_used_at` at most once a minute, not on every call.

A key spends from one account (its owner's, or a team's) within its spending cap
(`creditapp.ledger.caps`): `limit` credits per UTC day, ISO week, calendar month or ever,
enforced in the hold's own transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, select, update
from sqlalchemy.orm.attributes import set_committed_value

from creditapp import ledger
from creditapp.auth.models import ApiKey, User
from creditapp.database import DbSession
from creditapp.errors import Conflict, ExpiryNotInFuture, InvalidApiKey, NotFound
from creditapp.ledger import caps
from creditapp.ledger.models import SpendCap
from creditapp.ledger.sql import LedgerSql, Statement, columns_of

KEY_PREFIX = "ca-"
PREFIX_CHARS = 12
# How stale `last_used_at` may be: a key used all day is written once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def models_allowed(allowed_models: list[str] | None, provider: str, model: str) -> bool:
    """A key's `allowed_models` holds "provider/model" or "provider/*"; None allows every
    model (the owner's tier still decides)."""
    if allowed_models is None:
        return True
    return bool({f"{provider}/*", f"{provider}/{model}"} & set(allowed_models))


@dataclass(frozen=True)
class KeyStanding:
    """A key as its owner sees it: the key, its limit and what it spent this period."""

    key: ApiKey
    limit: int | None
    limit_period: str
    spent: int


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: `secret` is the key itself, never stored, shown once."""

    standing: KeyStanding
    secret: str


def create(
    session: DbSession,
    *,
    owner: User,
    account_id: int,
    team_id: int | None,
    name: str,
    limit: int | None,
    limit_period: str,
    allowed_models: list[str] | None,
    expires_at: datetime | None,
    context: ledger.AuditContext,
    now: datetime,
) -> IssuedKey:
    if expires_at is not None and expires_at <= now:
        raise ExpiryNotInFuture("An API key must expire in the future.")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    cap_id = caps.open_cap(
        session, account_id=account_id, kind="key", ceiling=limit, period=limit_period, now=now
    )
    key = ApiKey(
        user_id=owner.id,
        account_id=account_id,
        team_id=team_id,
        cap_id=cap_id,
        name=name,
        digest=digest(secret),
        prefix=secret[:PREFIX_CHARS],
        allowed_models=allowed_models,
        expires_at=expires_at,
        created_at=now,
    )
    session.add(key)
    session.flush()
    _audit(session, key, "api_key_created", context=context, now=now)
    return IssuedKey(KeyStanding(key, limit, limit_period, 0), secret)


@dataclass(frozen=True)
class LiveKey:
    """A key that authenticated, and its owner, read with it in one statement."""

    key: ApiKey
    owner: User


_KEY_WITH_OWNER = Statement(
    f"SELECT {columns_of(ApiKey, 'k')}, {columns_of(User, 'u')}"
    " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.digest = :digest"
)


def authenticate(session: DbSession, presented: str | None, *, now: datetime) -> LiveKey:
    """The live key `presented` is, with its owner, or InvalidApiKey. Read on every gateway
    call, as plain SQL (`LedgerSql.instances`)."""
    if not presented or not presented.startswith(KEY_PREFIX):
        raise InvalidApiKey()
    found = LedgerSql(session).instances(_KEY_WITH_OWNER, (ApiKey, User), digest=digest(presented))
    if found is None:
        raise InvalidApiKey()
    key, owner = found
    if key.revoked_at is not None:
        raise InvalidApiKey("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= now:
        raise InvalidApiKey("This API key has expired.")
    return LiveKey(key, owner)


def use_unrecorded(key: ApiKey, *, now: datetime) -> bool:
    """Whether `last_used_at` is older than a minute (or unset): only then is a use written."""
    return key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION


def mark_used(session: DbSession, key: ApiKey, *, now: datetime) -> None:
    """Record that the key was used, unless it was within the last minute (no write then). The
    update is conditional, so that many workers at once write it once."""
    if not use_unrecorded(key, now=now):
        return
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    # What the row now holds, not a change for the session to flush: a second, unconditional
    # UPDATE at commit would be a write more, and could set back a concurrent worker's newer use.
    set_committed_value(key, "last_used_at", now)


def of_user(user_id: int) -> Select[ApiKey, SpendCap]:
    """A user's keys, revoked ones included (they say when), with their caps."""
    return (
        select(ApiKey, SpendCap)
        .join(SpendCap, SpendCap.id == ApiKey.cap_id)
        .where(ApiKey.user_id == user_id)
    )


def standing_of(key: ApiKey, cap: SpendCap, *, now: datetime) -> KeyStanding:
    """What the key spent in the current period."""
    return KeyStanding(key, cap.ceiling, cap.period, caps.spent_this_period(cap, now=now))


def get(
    session: DbSession, *, key_id: int, user_id: int | None, now: datetime, to_change: bool = False
) -> KeyStanding:
    """One key, of `user_id` (None: anyone's, for admins); another's is NotFound. One
    `to_change` is locked until the caller's transaction ends: of two changes or revocations at
    once, the second sees what the first did (both read it live, and both were audited)."""
    query = select(ApiKey, SpendCap).join(SpendCap, SpendCap.id == ApiKey.cap_id)
    query = query.where(ApiKey.id == key_id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if to_change:
        query = query.with_for_update(of=ApiKey)
    found = session.execute(query).one_or_none()
    if found is None:
        raise NotFound("No such API key.")
    key, cap = found
    return standing_of(key, cap, now=now)


def change(
    session: DbSession,
    standing: KeyStanding,
    *,
    context: ledger.AuditContext,
    now: datetime,
    **changes: object,
) -> KeyStanding:
    """Rename a key, or change its limit, allowed models or expiry (given in `changes`); a
    revoked key cannot be changed back to life."""
    key = standing.key
    if key.revoked_at is not None:
        raise Conflict("A revoked API key cannot be changed.")
    if "expires_at" in changes:
        expires_at = changes["expires_at"]
        if isinstance(expires_at, datetime) and expires_at <= now:
            raise ExpiryNotInFuture("An API key must expire in the future.")
        key.expires_at = expires_at  # type: ignore[assignment]
    for name in ("name", "allowed_models"):
        if name in changes:
            setattr(key, name, changes[name])
    limit = standing.limit
    if "limit" in changes:
        limit = changes["limit"]  # type: ignore[assignment]
        caps.set_ceiling(session, cap_id=key.cap_id, ceiling=limit)
    session.flush()
    _audit(session, key, "api_key_changed", context=context, now=now, changed=sorted(changes))
    return KeyStanding(key, limit, standing.limit_period, standing.spent)


def revoke(session: DbSession, key: ApiKey, *, context: ledger.AuditContext, now: datetime) -> None:
    """Refused from the next request on, by every worker; revoking twice changes nothing."""
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
        caps.close(session, cap_id=key.cap_id, now=now)
        _audit(session, key, "api_key_revoked", context=context, now=now)


def revoke_of_member(
    session: DbSession, *, team_id: int, user_id: int, context: ledger.AuditContext, now: datetime
) -> int:
    """Revoke the keys `user_id` made for the team (they left it); returns how many."""
    keys = session.scalars(
        select(ApiKey).where(
            ApiKey.team_id == team_id, ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)
        )
    ).all()
    for key in keys:
        revoke(session, key, context=context, now=now)
    return len(keys)


def _audit(
    session: DbSession,
    key: ApiKey,
    action: str,
    *,
    context: ledger.AuditContext,
    now: datetime,
    **details: object,
) -> None:
    ledger.record_action(
        session,
        action=action,
        context=context,
        now=now,
        account_id=key.account_id,
        details={"api_key_id": str(key.id), "prefix": key.prefix, "name": key.name, **details},
    )


# A call made with a key names it in its hold's reference: statements say which key paid.
HOLD_REFERENCE = "api_key:"


def hold_reference(key_id: int) -> str:
    return f"{HOLD_REFERENCE}{key_id}"


def key_of_reference(reference: str | None) -> int | None:
    """The key a hold's reference names, or None."""
    digits = (reference or "").removeprefix(HOLD_REFERENCE)
    named = digits != (reference or "") and digits.isascii() and digits.isdigit()
    return int(digits) if named and len(digits) <= 18 else None
