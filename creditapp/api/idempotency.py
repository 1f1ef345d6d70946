"""The Idempotency-Key header on mutating endpoints (see creditapp.idempotency for the design).

The decorated view runs inside one write transaction; the stored response commits with it. A
view that runs its own transactions is handed the claim instead, and completes it itself.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, Protocol, TypeVar

import structlog
from flask import Flask, Response, current_app, make_response, request

from creditapp import idempotency
from creditapp.api import openapi
from creditapp.api.errors import DATABASE_DOWN
from creditapp.api.identity import principal
from creditapp.database import write_transaction
from creditapp.errors import CreditAppError, ValidationFailed
from creditapp.extensions import db

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger(__name__)
HEADER = "Idempotency-Key"


def _valid_key(key: str) -> bool:
    return 1 <= len(key) <= 255 and all(" " <= char <= "~" for char in key)


def to_store(response: Response) -> idempotency.StoredResponse:
    """What is kept of a response, to replay it."""
    return idempotency.StoredResponse(
        response.status_code, response.get_data(), response.content_type
    )


def without(field: str) -> Callable[[Response], idempotency.StoredResponse]:
    """What is kept of a creation whose response shows a secret once (`field`): the same
    record without it, so that a retry's replay never shows it again."""

    def kept(response: Response) -> idempotency.StoredResponse:
        body = json.loads(response.get_data())
        body.pop(field, None)
        return idempotency.StoredResponse(
            response.status_code, json.dumps(body).encode(), response.content_type
        )

    return kept


def from_store(stored: idempotency.StoredResponse) -> Response:
    return Response(
        stored.body,
        status=stored.status,
        content_type=stored.content_type,
        headers=list(stored.headers),
    )


def _replay(stored: idempotency.StoredResponse) -> Response:
    response = from_store(stored)
    response.headers["Idempotent-Replayed"] = "true"
    return response


# Seconds between attempts to free a key while the database is unreachable (about a minute in
# all); past that, a retry may take the key over after IDEMPOTENCY_TAKEOVER.
RELEASE_BACKOFF = (0.25, 0.5, 1, 2, 4, 8, 16, 32)


def _free(claim: idempotency.Claim, undo: idempotency.Undo | None = None) -> None:
    """Free the key of a request that failed, so that the client's retry runs again, with what
    `undo` removes (see `idempotency.release`). When the database itself is what failed, keep
    trying in the background with a short backoff: the retry is then refused as in progress
    only until the database is back, not for as long as a takeover waits. (Freeing is
    conditional on the claim still being in progress and ours: a request whose commit reached
    the database after all keeps its stored response.)"""
    try:
        db.session.rollback()
        idempotency.release(db.session, claim, undo=undo)
    except DATABASE_DOWN as error:
        log.warning("idempotency_release_deferred", claim_id=claim.id, error=str(error))
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        # In a copy of this context: its log lines carry the request's id.
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(_release_later, app, claim, undo),
            name="idempotency-release",
            daemon=True,
        ).start()


def _release_later(app: Flask, claim: idempotency.Claim, undo: idempotency.Undo | None) -> None:
    for delay in RELEASE_BACKOFF:
        time.sleep(delay)
        with app.app_context():
            try:
                idempotency.release(db.session, claim, undo=undo)
            except DATABASE_DOWN:
                continue
            finally:
                db.session.remove()
        log.info("idempotency_release_done", claim_id=claim.id)
        return
    log.error("idempotency_release_gave_up", claim_id=claim.id)


class _Release(Protocol):
    def __call__(self, undo: idempotency.Undo | None = None) -> None: ...


def _releaser(claim_of: Callable[[], idempotency.Claim | None]) -> _Release:
    """The `release` a view that runs its own transactions gets: frees the request's claim (if
    it holds one by then) with `undo`, once."""
    released = False

    def release(undo: idempotency.Undo | None = None) -> None:
        nonlocal released
        if released:  # once: a second, without the undo, could be first to run
            return
        released = True
        claim = claim_of()
        if claim is None:
            _no_claim(undo)
            return
        try:
            _free(claim, undo)
        except Exception:
            if undo is None:
                raise
            # The undo itself failed: the key is still freed, or the client's retry would be
            # refused until a takeover.
            log.exception("idempotency_undo_failed", claim_id=claim.id)
            _free(claim)

    return release


def _asking(
    view: Callable[..., Any], asking: idempotency.Asking, *args: Any, **kwargs: Any
) -> Response:
    """Run a view that claims its key with its first write (see `idempotent`)."""
    release = _releaser(asking.to_free)
    try:
        return make_response(view(*args, claim=asking, release=release, **kwargs))
    except idempotency.Replayed as replayed:
        return _replay(replayed.stored)
    except CreditAppError as error:
        if error.status < 500:  # a refusal, before anything committed
            asking.refused()
        release()
        if not asking.asked_yet:
            stored = asking.look(db.session)
            if stored is not None:
                return _replay(stored)
        raise
    except BaseException:
        release()
        raise


def _in_one_transaction(
    view: Callable[..., Any],
    asked: idempotency.Asked,
    kept: Callable[[Response], idempotency.StoredResponse],
    *args: Any,
    **kwargs: Any,
) -> Response:
    """The default: the key claimed, the view run and its response stored in one write
    transaction. A failure rolls the claim back with the rest, and a process that dies before
    the commit leaves nothing: a retry runs at once (with a claim committed first, it was
    refused as in progress until the takeover time, though nothing had run). A twin request
    waits for the first one's commit, then replays its response."""
    asking = idempotency.Asking(asked)
    try:
        with write_transaction(db.session):
            asking.take(db.session)
            response = make_response(view(*args, **kwargs))
            asking.complete_taken(db.session, response=kept(response))
    except idempotency.Replayed as replayed:
        return _replay(replayed.stored)
    return response


def _no_claim(undo: idempotency.Undo | None = None) -> None:
    """`release` of a request sent without an Idempotency-Key: no key to free; what it
    committed is undone all the same."""
    if undo is not None:
        db.session.rollback()
        with write_transaction(db.session):
            undo(db.session)


def idempotent(
    *,
    required: bool = False,
    runs_own_transactions: bool = False,
    claims_with_first_write: bool = False,
    kept: Callable[[Response], idempotency.StoredResponse] = to_store,
    first: Callable[..., None] | None = None,
) -> Callable[[F], F]:
    """Run the view at most once per (caller, Idempotency-Key); replay its response after.

    Must sit inside `authenticated` (or a view whose principal is established before it runs):
    keys belong to the principal's `idempotency_scope`. By default the view runs in one write
    transaction, which also claims the key and stores its response. A view that
    `runs_own_transactions` (it must not hold one across a slow call) gets the claim as its
    `claim` argument and completes it in its last transaction; if it fails, its key is freed.
    It also gets `release`, which frees the key with an undo of what it committed
    (`idempotency.release`), in the same way: for a failure after the view returned (a stream
    ends in its body), or before. Sent without a key, such a view gets `claim` None and a
    `release` that frees nothing.

    A view that `claims_with_first_write` (a metered call) gets `claim` as an
    `idempotency.Asking` instead, which it takes in its first write transaction (with its hold):
    a refusal there rolls the claim back with it, and the key stays free with no write to free
    it. A refusal before that (a request read and found wrong) is answered as the key says: a
    key already used answers with its response.

    `kept` is what is stored of the response for a replay: all of it, unless the response holds
    a secret shown once (a new API key), which a replay must not show again.

    `first` (with the default transaction only) is a slow check the view needs before its write
    transaction opens, called with the view's arguments: no lock may be held while it waits
    (resolving a host). It runs once the key is known to be new, so that a retry of a request
    that succeeded is replayed even if the check would now refuse it.
    """
    if first is not None and (runs_own_transactions or claims_with_first_write):
        raise TypeError("`first` runs before the default write transaction only")

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            key = request.headers.get(HEADER)
            if key is not None and not _valid_key(key):
                raise ValidationFailed(details={HEADER: ["Must be 1-255 printable ASCII."]})
            if key is None and required:
                raise ValidationFailed(
                    f"The {HEADER} header is required here.", details={HEADER: ["Required."]}
                )
            if key is None and runs_own_transactions:
                return make_response(view(*args, claim=None, release=_no_claim, **kwargs))
            if key is None:
                if first is not None:
                    first(*args, **kwargs)
                with write_transaction(db.session):
                    return make_response(view(*args, **kwargs))

            config = current_app.config
            asked = idempotency.Asked(
                scope=principal().idempotency_scope,
                key=key,
                fingerprint=idempotency.fingerprint(
                    request.method, request.full_path, request.get_data(cache=True)
                ),
                now=datetime.now(UTC),
                retention=config["IDEMPOTENCY_RETENTION"],
                takeover_after=config["IDEMPOTENCY_TAKEOVER"],
            )
            if claims_with_first_write:
                return _asking(view, idempotency.Asking(asked), *args, **kwargs)
            if first is None and not runs_own_transactions:
                return _in_one_transaction(view, asked, kept, *args, **kwargs)
            outcome = idempotency.claim(db.session, asked)
            if isinstance(outcome, idempotency.StoredResponse):
                return _replay(outcome)
            if runs_own_transactions:
                release = _releaser(lambda: outcome)
                try:
                    return make_response(view(*args, claim=outcome, release=release, **kwargs))
                except BaseException:
                    release()
                    raise
            try:
                assert first is not None
                first(*args, **kwargs)
                with write_transaction(db.session):
                    response = make_response(view(*args, **kwargs))
                    idempotency.complete(db.session, outcome, response=kept(response))
            except BaseException:
                # Nothing the view did was committed: free the key so a retry runs again.
                _free(outcome)
                raise
            return response

        documented = openapi.declare(wrapper, idempotency="required" if required else "optional")
        return documented  # type: ignore[return-value]

    return decorator
