"""The `deliver-webhooks` job: posts the outbox's due deliveries, signed, and records each outcome.

A run claims a few due deliveries in a short transaction (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so that runs at once never take the same one; SQLite runs one writer at a time)
and leases them (`claimed_until`), long enough for the post: no other run takes them meanwhile,
and a manual retry only makes them due again after it. It commits, posts them outside any
transaction (no lock is held while a receiver answers), then records each outcome as it comes,
in a short transaction of its own, only where the lease is still its own. It keeps up to
POSTS_AT_ONCE posts under way, each slot that frees taking the next due delivery, and one post
an endpoint at a time: a receiver that never answers holds one slot until its timeout, not the
deliveries of every other account due after its own. A run that dies
while posting records nothing: once the lease ends, the delivery is claimed again and posted
with the same `webhook-id` (at least once; receivers drop what they have seen by that id).

Each attempt connects to the address the URL rules just checked (`urls.destination`), never
follows a redirect, and gives up after WEBHOOK_TIMEOUT_SECONDS to connect and as long again
for the whole answer (a receiver that sends it a byte at a time is cut off then), well within
the lease.
2xx is delivered; anything else is retried on WEBHOOK_RETRY_SCHEDULE, and the attempt after
its last entry fails the delivery for good; 410 (the receiver says it is gone) also disables
its endpoint and fails all its pending deliveries. Every run also fails what is still pending
for an endpoint disabled or deleted meanwhile (an event that fanned out as it was disabled).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import update
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from creditapp import ledger
from creditapp.database import DbSession, read_time, write_transaction
from creditapp.errors import DependencyUnavailable, WebhookUrlRefused
from creditapp.ledger.sql import LedgerSql, Statement
from creditapp.metrics import WEBHOOK_DELIVERIES
from creditapp.signals import urls
from creditapp.signals.models import WebhookDelivery

# Posts a run has under way at once; a slot that frees is filled from what is due at once.
POSTS_AT_ONCE = 10
# A lease outlives the longest post (connecting, then reading, each up to the timeout) by
# this much: the time to record its outcome on a busy database.
LEASE_MARGIN_SECONDS = 30
PURGE_BATCH = 1000
USER_AGENT = "creditapp-webhooks/1.0"
# An endpoint that answered 410 Gone is disabled for this reason (`disabled_reason`).
GONE = "gone"
ERROR_LENGTH = 200

CLAIM = Statement(
    """SELECT d.id, d.attempts, d.endpoint_id, e.url, e.secret, v.id, v.type, v.data,
              v.created_at
       FROM webhook_deliveries d
       JOIN webhook_endpoints e ON e.id = d.endpoint_id
       JOIN webhook_events v ON v.id = d.event_id
       WHERE d.status = 'pending' AND d.next_attempt_at <= :now
         AND (d.claimed_until IS NULL OR d.claimed_until <= :clock)
         AND e.enabled AND e.deleted_at IS NULL
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries posting
                         WHERE posting.endpoint_id = d.endpoint_id
                           AND posting.status = 'pending' AND posting.claimed_until > :clock)
       ORDER BY d.next_attempt_at, d.id
       LIMIT :limit""",
    # Only the deliveries: locking their endpoint would hide its other deliveries from
    # another run.
    lock="FOR UPDATE OF d SKIP LOCKED",
)
LEASE = Statement("UPDATE webhook_deliveries SET claimed_until = :lease WHERE id = :delivery")
# Every outcome is recorded only while the lease is the run's own: a run that outlived its
# lease leaves the delivery to whoever took it since.
_LEASED = "id = :delivery AND status = 'pending' AND claimed_until = :lease"
RECORD_DELIVERED = Statement(
    f"""UPDATE webhook_deliveries
       SET status = 'delivered', attempts = attempts + 1, next_attempt_at = NULL,
           claimed_until = NULL, last_attempt_at = :now, last_status = :http_status,
           last_error = NULL, delivered_at = :now
       WHERE {_LEASED} RETURNING id"""
)
# A retry its owner asked for while the attempt was under way (`retry` made it due after the
# run's `now`, when it was claimed) stands: the delivery stays pending, due then.
_RETRIED = "next_attempt_at > :now"
RECORD_FAILED_ATTEMPT = Statement(
    f"""UPDATE webhook_deliveries
       SET status = CASE WHEN {_RETRIED} THEN 'pending' ELSE :status END,
           next_attempt_at = CASE WHEN {_RETRIED} THEN next_attempt_at ELSE :next_attempt_at END,
           attempts = attempts + 1, claimed_until = NULL, last_attempt_at = :now,
           last_status = :http_status, last_error = :error
       WHERE {_LEASED} RETURNING status"""
)
# An endpoint that stops listening is locked as its owner's change locks it (`endpoints`,
# "Locks"): the endpoint's row, then its account's, as a ledger operation locks it.
LOCK_ENDPOINT = Statement(
    "SELECT account_id FROM webhook_endpoints WHERE id = :endpoint", lock="FOR NO KEY UPDATE"
)
LOCK_ENDPOINTS_ACCOUNT = Statement(
    """SELECT id FROM accounts
       WHERE id = (SELECT account_id FROM webhook_endpoints WHERE id = :endpoint)""",
    lock="FOR NO KEY UPDATE",
)
DISABLE_GONE_ENDPOINT = Statement(
    """UPDATE webhook_endpoints SET enabled = false, disabled_reason = :reason
       WHERE id = :endpoint AND enabled RETURNING account_id"""
)
# What another run is posting right now is left to it (its outcome is recorded, and the next
# sweep fails it if it stays pending).
_UNCLAIMED = "(claimed_until IS NULL OR claimed_until <= :clock)"
FAIL_PENDING_OF_ENDPOINT = Statement(
    f"""UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, last_error = :error
       WHERE endpoint_id = :endpoint AND status = 'pending' AND {_UNCLAIMED}"""
)
FAIL_PENDING_OF_DISABLED = Statement(
    f"""UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, last_error = :error
       WHERE status = 'pending' AND {_UNCLAIMED}
         AND endpoint_id IN (SELECT id FROM webhook_endpoints
                             WHERE NOT enabled OR deleted_at IS NOT NULL)
       RETURNING id"""
)
# Deliveries are found through their event's `created_at` (indexed): a delivery is created
# with its event.
PURGE_DELIVERIES = Statement(
    """DELETE FROM webhook_deliveries WHERE status <> 'pending' AND id IN (
         SELECT d.id FROM webhook_events v JOIN webhook_deliveries d ON d.event_id = v.id
         WHERE v.created_at < :cutoff AND d.created_at < :cutoff AND d.status <> 'pending'
         LIMIT :limit)
       RETURNING id"""
)
PURGE_EVENTS = Statement(
    """DELETE FROM webhook_events WHERE id IN (
         SELECT v.id FROM webhook_events v
         WHERE v.created_at < :cutoff
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = v.id)
         LIMIT :limit)
       RETURNING id"""
)


def webhook_id(event_id: int) -> str:
    """An event's `webhook-id`, the same on every attempt to every endpoint."""
    return f"evt_{event_id}"


@dataclass(frozen=True)
class Claimed:
    """A delivery this run holds the lease of, with what its post needs."""

    delivery_id: int
    attempts: int  # before this one
    endpoint_id: int
    url: str
    secret: str
    webhook_id: str
    body: str


@dataclass(frozen=True)
class Attempt:
    """What one post came to: an HTTP status, or why there was none."""

    http_status: int | None
    error: str | None = None
    url_refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


def run(
    session: DbSession,
    *,
    now: datetime,
    context: ledger.AuditContext,
    settings: Mapping[str, Any],
) -> dict[str, int]:
    """Post every delivery due at `now`, record each outcome, then purge what is past its
    retention. Returns how many attempts came to each outcome and how many rows were purged."""
    schedule = tuple(settings["WEBHOOK_RETRY_SCHEDULE"])
    timeout = int(settings["WEBHOOK_TIMEOUT_SECONDS"])
    allow_private = bool(settings["WEBHOOK_ALLOW_PRIVATE"])
    lease_length = timedelta(seconds=2 * timeout + LEASE_MARGIN_SECONDS)
    started = time.monotonic()
    summary = dict.fromkeys(
        ("delivered", "retrying", "failed", "url_refused", "lease_lost", "disabled"), 0
    )

    def clock() -> datetime:
        """`now` moved on by the time the run has taken: leases run from when they are taken
        and end when they end, however long the run waited on slow receivers before."""
        return now + timedelta(seconds=time.monotonic() - started)

    with write_transaction(session):
        sql = LedgerSql(session)
        failed = sql.all(
            FAIL_PENDING_OF_DISABLED,
            error="The endpoint was disabled or deleted.",
            clock=sql.time(clock()),
        )
    summary["disabled"] = len(failed)
    # A rolling pool (module docstring): each outcome is recorded as it comes.
    posting: dict[Future[Attempt], tuple[Claimed, datetime]] = {}
    with ThreadPoolExecutor(max_workers=POSTS_AT_ONCE) as pool:
        while True:
            while len(posting) < POSTS_AT_ONCE:
                lease = clock() + lease_length
                # Each claim leaves out the endpoints the last ones took: claimed again until
                # the slots are full or nothing more is due.
                claimed = _claim(
                    session, now=now, clock=clock(), lease=lease, most=POSTS_AT_ONCE - len(posting)
                )
                if not claimed:
                    break
                for item in claimed:
                    posted = pool.submit(post, item, timeout=timeout, allow_private=allow_private)
                    posting[posted] = (item, lease)
            if not posting:
                break
            done, _ = wait(posting, return_when=FIRST_COMPLETED)
            for finished in done:
                item, lease = posting.pop(finished)
                with write_transaction(session):
                    outcome = _record(
                        session,
                        item,
                        finished.result(),
                        now=now,
                        clock=clock(),
                        lease=lease,
                        schedule=schedule,
                        context=context,
                    )
                summary[outcome] += 1
                if outcome != "lease_lost":
                    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    summary.update(_purge(session, cutoff=now - timedelta(days=settings["WEBHOOK_RETENTION_DAYS"])))
    return summary


def retry(session: DbSession, *, delivery_id: int, now: datetime) -> None:
    """Make a failed or pending delivery due now, in the caller's transaction. Its attempts are
    kept: one that fails again after the schedule's last is failed again."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status.in_(("pending", "failed")))
        .values(status="pending", next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )


def fail_pending(session: DbSession, *, endpoint_id: int, reason: str, now: datetime) -> None:
    """Fail the endpoint's pending deliveries, saying why (it stopped listening), in the
    caller's transaction; what a run is posting right now is left to it."""
    sql = LedgerSql(session)
    sql.run(FAIL_PENDING_OF_ENDPOINT, endpoint=endpoint_id, error=reason, clock=sql.time(now))


def post(item: Claimed, *, timeout: int, allow_private: bool) -> Attempt:
    """One attempt: sign and post the delivery's body to the checked address of its URL."""
    try:
        destination = urls.destination(item.url, allow_private=allow_private)
    except WebhookUrlRefused as refused:
        return Attempt(None, refused.message, url_refused=True)
    except DependencyUnavailable as unresolved:  # the resolver hung: retried as a failure
        return Attempt(None, unresolved.message)
    # The signature's time is the wall clock's, whatever time the run is "as of": receivers
    # refuse a timestamp more than five minutes from their own clock.
    sent_at = datetime.now(UTC)
    headers = {
        "Host": urlsplit(item.url).netloc,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": item.webhook_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(item.secret).sign(item.webhook_id, sent_at, item.body),
    }
    with requests.Session() as http:
        # No proxy and no .netrc from the environment: the post goes to the checked address.
        http.trust_env = False
        http.mount(f"{destination.scheme}://", PinnedAddress(destination, answer_within=timeout))
        try:
            # `stream`: the answer's status is all that is read, never its body.
            with http.post(
                item.url,
                data=item.body.encode(),
                headers=headers,
                timeout=(timeout, timeout),
                allow_redirects=False,
                stream=True,
            ) as answer:
                return Attempt(answer.status_code)
        except requests.Timeout:
            return Attempt(None, f"No answer within {timeout} s.")
        # ValueError: what urllib3 raises for a URL or an answer it cannot parse. One
        # receiver's answer must not stop the run's other deliveries.
        except (requests.RequestException, ValueError) as error:
            return Attempt(None, f"{type(error).__name__}: {error}"[:ERROR_LENGTH])


class PinnedAddress(HTTPAdapter):
    """Connects to the destination's checked address, whatever its host would resolve to by
    now (DNS rebinding); https still sends the URL's host as SNI and checks the certificate
    against it. The Host header is the URL's too (set by `post`)."""

    def __init__(self, destination: urls.Destination, *, answer_within: float):
        self._destination = destination
        super().__init__(max_retries=0)
        self.poolmanager.pool_classes_by_scheme = _pools_answering_within(answer_within)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if self._destination.address is not None:
            host_params["host"] = self._destination.address
            if host_params["scheme"] == "https":
                pool_kwargs["server_hostname"] = self._destination.host
                pool_kwargs["assert_hostname"] = self._destination.host
        return host_params, pool_kwargs


def _pools_answering_within(seconds: float) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections are cut `seconds` after they connect: the read
    timeout bounds each wait for a byte, this bounds the whole answer."""

    def cut_off(connection: HTTPConnection) -> None:
        # Shutting the socket down wakes the thread blocked reading it (OSError: it is gone).
        with suppress(OSError):
            if connection.sock is not None:
                connection.sock.shutdown(socket.SHUT_RDWR)

    class Deadline:
        _deadline: threading.Timer | None = None

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            self._deadline = threading.Timer(seconds, cut_off, args=(self,))
            self._deadline.daemon = True
            self._deadline.start()

        def close(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().close()  # type: ignore[misc]

    class HttpConnection(Deadline, HTTPConnection):
        pass

    class HttpsConnection(Deadline, HTTPSConnection):
        pass

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = HttpConnection

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = HttpsConnection

    return {"http": HttpPool, "https": HttpsPool}


def _claim(
    session: DbSession, *, now: datetime, clock: datetime, lease: datetime, most: int
) -> list[Claimed]:
    """Lease up to `most` due deliveries, one an endpoint (CLAIM leaves out endpoints with a
    post under way; of several due for one endpoint, the soonest is taken, the rest stay)."""
    with write_transaction(session):
        sql = LedgerSql(session)
        taken: list[tuple[Any, ...]] = []
        endpoints: set[int] = set()
        for row in sql.all(CLAIM, now=sql.time(now), clock=sql.time(clock), limit=most):
            if row[2] not in endpoints:  # its endpoint's soonest only
                endpoints.add(row[2])
                taken.append(row)
        if taken:
            sql.run_many(LEASE, [{"lease": sql.time(lease), "delivery": row[0]} for row in taken])
    return [_claimed(row) for row in taken]


def _claimed(row: tuple[Any, ...]) -> Claimed:
    delivery_id, attempts, endpoint_id, url, secret, event_id, event_type, data, created = row
    created_at = read_time(created)
    assert created_at is not None
    body = {
        "type": event_type,
        "timestamp": created_at.isoformat().replace("+00:00", "Z"),
        # PostgreSQL's driver parses JSON; SQLite's returns its text.
        "data": json.loads(data) if isinstance(data, str) else data,
    }
    return Claimed(
        delivery_id=int(delivery_id),
        attempts=int(attempts),
        endpoint_id=int(endpoint_id),
        url=url,
        secret=secret,
        webhook_id=webhook_id(int(event_id)),
        body=json.dumps(body, separators=(",", ":")),
    )


def _record(
    session: DbSession,
    item: Claimed,
    attempt: Attempt,
    *,
    now: datetime,
    clock: datetime,
    lease: datetime,
    schedule: tuple[int, ...],
    context: ledger.AuditContext,
) -> str:
    """Store the attempt's outcome and name it: delivered, retrying, failed, url_refused (not
    posted; retried as a failure is), or lease_lost (someone else has the delivery now). An
    endpoint it disables (410) is audited as its owner's disabling is, as `context`."""
    sql = LedgerSql(session)
    leased = {"delivery": item.delivery_id, "lease": sql.time(lease), "now": sql.time(now)}
    gone = attempt.http_status == 410
    if gone:
        # Before the delivery's row, in the order an owner's disabling takes them (`endpoints`,
        # "Locks"): the endpoint, then its account, so that no fan-out to the endpoint is under
        # way while its pending deliveries fail, and no two stoppings wait for each other.
        sql.together(
            (LOCK_ENDPOINT, {"endpoint": item.endpoint_id}),
            (LOCK_ENDPOINTS_ACCOUNT, {"endpoint": item.endpoint_id}),
        )
    if attempt.delivered:
        recorded = sql.one(RECORD_DELIVERED, http_status=attempt.http_status, **leased)
        return "delivered" if recorded else "lease_lost"
    attempts = item.attempts + 1
    last = gone or attempts >= 1 + len(schedule)
    next_attempt_at = None if last else now + timedelta(seconds=schedule[attempts - 1])
    recorded = sql.one(
        RECORD_FAILED_ATTEMPT,
        status="failed" if last else "pending",
        next_attempt_at=sql.time(next_attempt_at),
        http_status=attempt.http_status,
        error=_error(attempt),
        **leased,
    )
    if not recorded:
        return "lease_lost"
    if gone:
        disabled = sql.one(DISABLE_GONE_ENDPOINT, endpoint=item.endpoint_id, reason=GONE)
        if disabled is not None:  # not already disabled by an earlier attempt or its owner
            ledger.record_action(
                session,
                action="webhook_endpoint_changed",
                context=context,
                now=now,
                account_id=int(disabled[0]),
                details={
                    "endpoint_id": str(item.endpoint_id),
                    "changed": "enabled",
                    "disabled_reason": GONE,
                },
            )
        sql.run(
            FAIL_PENDING_OF_ENDPOINT,
            endpoint=item.endpoint_id,
            error="The endpoint was disabled: it answered 410 Gone.",
            clock=sql.time(clock),
        )
    if attempt.url_refused:
        return "url_refused"
    # Pending still (a retry asked for meanwhile stands), or failed for good (410: with the rest).
    return "retrying" if recorded[0] == "pending" and not gone else "failed"


def _error(attempt: Attempt) -> str | None:
    if attempt.error is not None:
        return attempt.error[:ERROR_LENGTH]
    assert attempt.http_status is not None
    if 300 <= attempt.http_status < 400:
        return f"HTTP {attempt.http_status}: redirects are not followed."
    return f"HTTP {attempt.http_status}."


def _purge(session: DbSession, *, cutoff: datetime) -> dict[str, int]:
    purged = {"purged_deliveries": 0, "purged_events": 0}
    for statement, key in (
        (PURGE_DELIVERIES, "purged_deliveries"),
        (PURGE_EVENTS, "purged_events"),
    ):
        while True:
            with write_transaction(session):
                sql = LedgerSql(session)
                deleted = len(sql.all(statement, cutoff=sql.time(cutoff), limit=PURGE_BATCH))
            purged[key] += deleted
            if deleted < PURGE_BATCH:
                break
    return purged
