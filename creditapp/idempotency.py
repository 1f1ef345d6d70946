"""Idempotency keys: a mutating request runs once per caller and key (the key lives in the
caller's scope, `Principal.idempotency_scope`); repeats get its response.

A request first *claims* its key, in a transaction of its own (`claim`), or in its own first
write transaction, with what it writes there (`Asking`: a metered call claims with its hold, so
that a refusal there frees the key with no write of its own); a concurrent twin sees the claim
once that commits. The request's last transaction *completes* the claim together with its own
changes and the response to replay: a crash can never leave the work done without the response
stored, or the response stored without the work. A request that fails *releases* its key, so a
retry runs again. A claim left by a killed process can be taken over after a while; the
original then fails to complete (its claim token no longer matches) and its last transaction
rolls back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import (
    JSON,
    CheckConstraint,
    Index,
    Integer,
    LargeBinary,
    Row,
    Select,
    String,
    UniqueConstraint,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import (
    BigIntId,
    DbSession,
    UTCDateTime,
    one_of,
    write_transaction,
)
from creditapp.errors import IdempotencyKeyReused, RequestInProgress
from creditapp.extensions import db
from creditapp.ledger.sql import Later, LedgerSql, Statement

KEY_STATUSES = ("in_progress", "completed")


class IdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    # Whose key it is (`Principal.idempotency_scope`): the same key from two callers never meets.
    scope: Mapped[str] = mapped_column(String(80), nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    claim_token: Mapped[str] = mapped_column(String(32), nullable=False)
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    response_content_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The headers a response is not whole without (`StoredResponse.headers`); None: none.
    response_headers: Mapped[dict[str, str] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        UniqueConstraint("scope", "key", name="uq_idempotency_keys_scope_key"),
        CheckConstraint(one_of("status", KEY_STATUSES), name="status_known"),
        CheckConstraint(
            "status = 'in_progress' OR response_status IS NOT NULL", name="completed_has_response"
        ),
        # The purge job's walk over keys past their retention.
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )


keys = IdempotencyKey.__table__


@dataclass(frozen=True)
class Claim:
    id: int
    token: str


@dataclass(frozen=True)
class StoredResponse:
    """A response as a replay answers it: its status, body and content type, and the headers
    it is not whole without (a metered call's `X-Credits-*`), as the view that made it chose."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, row: Any) -> StoredResponse:
        """The response a completed key's row (`idempotency_keys`) stored."""
        return cls(
            row.response_status,
            row.response_body,
            row.response_content_type,
            tuple((row.response_headers or {}).items()),
        )


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests 'the same': method, path with query, and the exact body bytes."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Asked:
    """A request asking for its key."""

    scope: str
    key: str
    fingerprint: str
    now: datetime
    retention: timedelta
    takeover_after: timedelta


def claim(session: DbSession, asked: Asked) -> Claim | StoredResponse:
    """Claim the key for this request, or return the response to replay. Commits."""
    for _attempt in range(3):
        with write_transaction(session):
            outcome = _claim_once(session, asked)
        if outcome is not None:
            return outcome
    raise RequestInProgress()


class Replayed(Exception):
    """The request's key has its response stored: the request is answered with it, and what
    its transaction wrote so far is rolled back."""

    def __init__(self, stored: StoredResponse) -> None:
        super().__init__("replayed")
        self.stored = stored


class Asking:
    """A key a request claims in its first write transaction (`take`), together with what it
    writes there. The claim is the request's once that transaction commits (the caller says so
    by calling what `take` returns: `claim`); if the transaction is refused (a 402), the key was
    never claimed and is free, with no write to free it. A request refused before it asked
    (`asked_yet` false) is answered as its key says (`look`): a key already used answers with
    its response, or is still in progress."""

    def __init__(self, asked: Asked) -> None:
        self._asked = asked
        self._taken: Claim | None = None
        self.claim: Claim | None = None
        self.asked_yet = False
        self._locked: Later | None = None

    def take(self, session: DbSession) -> Callable[[], None]:
        """Claim the key in the caller's write transaction; raises Replayed (the key's response
        is stored), RequestInProgress or IdempotencyKeyReused. Returns what to call once that
        transaction committed."""
        self.asked_yet = True
        for _attempt in range(3):
            outcome = _claim_once(session, self._asked)
            if isinstance(outcome, StoredResponse):
                raise Replayed(outcome)
            if outcome is not None:
                self._taken = outcome
                return self._committed
        raise RequestInProgress()

    def _committed(self) -> None:
        self.claim = self._taken

    def complete_taken(self, session: DbSession, *, response: StoredResponse) -> None:
        """`complete` the claim in the transaction that took it, still open: a request that
        runs whole in one transaction claims, runs and stores its response there, and leaves
        no claim behind if it fails or its process dies before the commit."""
        assert self._taken is not None, "completed before it was taken"
        complete(session, self._taken, response=response)

    def refused(self) -> None:
        """The request was refused (a 4xx) before its claim's transaction committed: that
        transaction rolled back, and the key is free."""
        if self.claim is None:
            self._taken = None

    def to_free(self) -> Claim | None:
        """What a failed request frees: its claim; or one whose transaction ended in doubt (its
        commit failed, and may have reached the database): freeing is conditional on the claim
        being ours and in progress, so it is safe either way."""
        return self.claim or self._taken

    def look(self, session: DbSession) -> StoredResponse | None:
        """What the key says of a request refused before it asked: its stored response, None
        if it is free, or RequestInProgress or IdempotencyKeyReused, as a claim would."""
        existing = session.execute(_key_of(self._asked)).one_or_none()
        session.rollback()  # a read: nothing to keep, and no transaction left open
        if existing is None or existing.expires_at <= self._asked.now:
            return None
        return _answer_of(existing, self._asked)  # None: abandoned, the request may run again

    def lock(self, session: DbSession) -> None:
        """Lock the claim, still the request's, first in the transaction that will complete
        it: sent with that transaction's next statements, not alone, and taken before anything
        else there, as a claim is taken before its hold (no deadlock with a retry taking it
        over). `complete` then stores the response without a read of its own."""
        assert self.claim is not None, "locked before its claim committed"
        self._locked = LedgerSql(session).later(
            _LOCK_CLAIM, id=self.claim.id, token=self.claim.token
        )

    def complete(self, session: DbSession, *, response: StoredResponse) -> None:
        """`complete` the claim, which committed with the request's first write."""
        assert self.claim is not None, "completed before its claim committed"
        locked, self._locked = self._locked, None
        if locked is None:
            complete(session, self.claim, response=response)
            return
        if not locked.rows():
            raise _taken_over()
        # Still the request's, and locked: stored with the transaction's COMMIT, unread.
        sql = LedgerSql(session)
        sql.run(_STORE_RESPONSE, **_storing(sql, self.claim, response))


# A claim still the request's, locked (`Asking.lock`); and its response stored.
_LOCK_CLAIM = Statement(
    """SELECT id FROM idempotency_keys
       WHERE id = :id AND claim_token = :token AND status = 'in_progress'""",
    lock="FOR UPDATE",
)
_STORE_RESPONSE = Statement(
    """UPDATE idempotency_keys SET status = 'completed', response_status = :status,
              response_body = :body, response_content_type = :content_type,
              response_headers = :headers
       WHERE id = :id AND claim_token = :token AND status = 'in_progress'
       RETURNING id"""
)


def _storing(sql: LedgerSql, held: Claim, response: StoredResponse) -> dict[str, Any]:
    """`_STORE_RESPONSE`'s parameters: the claim, and the response as the key's row keeps it."""
    headers = dict(response.headers)
    return {
        "id": held.id,
        "token": held.token,
        "status": response.status,
        "body": response.body,
        "content_type": response.content_type,
        "headers": sql.json(headers) if headers else None,
    }


def _taken_over() -> RequestInProgress:
    return RequestInProgress("This request's Idempotency-Key was taken over by a retry.")


def _claim_once(session: DbSession, asked: Asked) -> Claim | StoredResponse | None:
    """One try at the key (see `claim`). Its row may be another request's, written in a
    transaction still running (a request that claims in its one transaction): waited for up to
    the lock timeout, and past it, that request is still in progress, not a database down."""
    try:
        return _claim_or_look(session, asked)
    except (OperationalError, psycopg.errors.LockNotAvailable) as error:
        if isinstance(getattr(error, "orig", error), psycopg.errors.LockNotAvailable):
            raise RequestInProgress() from error
        raise


def _claim_or_look(session: DbSession, asked: Asked) -> Claim | StoredResponse | None:
    token = secrets.token_hex(16)
    # The common case, a new key, is one statement (plain SQL: it runs on every message); a key
    # seen before is looked at under lock.
    sql = LedgerSql(session)
    claimed = sql.one(
        _CLAIM_NEW_KEY,
        scope=asked.scope,
        key=asked.key,
        fingerprint=asked.fingerprint,
        token=token,
        claimed_at=sql.time(asked.now),
        expires_at=sql.time(asked.now + asked.retention),
    )
    if claimed is not None:
        return Claim(claimed[0], token)
    existing = session.execute(_key_of(asked).with_for_update()).one_or_none()
    if existing is None:
        return None  # released by its request meanwhile: try again
    if existing.expires_at <= asked.now:
        # A key older than the retention is free for a new request: claimed as a new key is.
        session.execute(
            update(keys)
            .where(keys.c.id == existing.id)
            .values(
                fingerprint=asked.fingerprint,
                status="in_progress",
                claim_token=token,
                claimed_at=asked.now,
                expires_at=asked.now + asked.retention,
                response_status=None,
                response_body=None,
                response_content_type=None,
                response_headers=None,
            )
        )
        return Claim(existing.id, token)
    stored = _answer_of(existing, asked)
    if stored is not None:
        return stored
    session.execute(
        update(keys).where(keys.c.id == existing.id).values(claim_token=token, claimed_at=asked.now)
    )
    return Claim(existing.id, token)


_CLAIM_NEW_KEY = Statement(
    """INSERT INTO idempotency_keys
              (scope, key, fingerprint, status, claim_token, claimed_at, expires_at)
       VALUES (:scope, :key, :fingerprint, 'in_progress', :token, :claimed_at, :expires_at)
       ON CONFLICT (scope, key) DO NOTHING RETURNING id"""
)


def _key_of(asked: Asked) -> Select[Any]:
    return select(keys).where(keys.c.scope == asked.scope, keys.c.key == asked.key)


def _answer_of(existing: Row[Any], asked: Asked) -> StoredResponse | None:
    """What a key seen before (within its retention) answers `asked`: its stored response;
    IdempotencyKeyReused (another request's key) or RequestInProgress (its request still runs);
    or None, a claim abandoned long enough ago to be taken over."""
    if existing.fingerprint != asked.fingerprint:
        raise IdempotencyKeyReused()
    if existing.status == "completed":
        return StoredResponse.of(existing)
    if existing.claimed_at + asked.takeover_after > asked.now:
        raise RequestInProgress()
    return None


def complete(session: DbSession, held: Claim, *, response: StoredResponse) -> None:
    """Store the response in the caller's transaction; fails if the claim was taken over."""
    sql = LedgerSql(session)
    if not sql.all(_STORE_RESPONSE, **_storing(sql, held, response)):
        raise _taken_over()


# What a failed request had committed before it failed, removed as its key is freed.
Undo = Callable[[DbSession], None]


def release(session: DbSession, held: Claim, *, undo: Undo | None = None) -> None:
    """Free the key of a request that failed, so that a retry runs again. Commits.

    A request that failed after committing something (a stream's hold and user message) passes
    `undo`, which removes it in the same transaction, so that a retry never sees it; it runs only
    if the claim was still the request's and in progress (a request whose last commit reached
    the database after all keeps its response, and everything that goes with it)."""
    with write_transaction(session):
        freed = session.execute(
            delete(keys).where(
                keys.c.id == held.id,
                keys.c.claim_token == held.token,
                keys.c.status == "in_progress",
            )
        )
        if undo is not None and freed.rowcount == 1:  # type: ignore[attr-defined]
            undo(session)


def purge_expired(session: DbSession, *, now: datetime, retention: timedelta, limit: int) -> int:
    """Delete up to `limit` keys past their retention, in the caller's transaction; returns how
    many. A claim still in progress stays until its claim too is older than the retention (no
    request runs that long), and a key a request has locked right now is skipped (PostgreSQL)
    rather than waited for."""
    doomed = (
        select(keys.c.id)
        .where(
            keys.c.expires_at <= now,
            or_(keys.c.status == "completed", keys.c.claimed_at <= now - retention),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deleted = session.execute(delete(keys).where(keys.c.id.in_(doomed.scalar_subquery())))
    return int(deleted.rowcount)  # type: ignore[attr-defined]
