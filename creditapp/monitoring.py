"""What `/metrics` reads from the database when scraped: true across every machine (the jobs'
runs, open holds, compensations owed, drift), with a few cheap indexed queries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import aliased

from creditapp.billing.models import Compensation
from creditapp.database import DbSession, read_time
from creditapp.jobs import reconciliation
from creditapp.jobs.models import JobOutcome
from creditapp.ledger.models import Hold
from creditapp.purchases.models import PURCHASE_STATUSES, Purchase
from creditapp.signals.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

log = structlog.get_logger(__name__)


class DatabaseCollector(Collector):
    """Metrics read from the database at scrape time. `read` runs the queries (in a session
    the caller provides) and returns the rows this turns into metric families. The settings
    alert rules compare with (each job's period, the holds' time to live) come along. A read
    that raises one of `unavailable` (the database down, a query past its timeout) gives only
    `creditapp_database_up 0`: the scrape still has the process's own metrics, which are what
    an outage shows (its 503s)."""

    def __init__(
        self,
        read: Callable[[], dict[str, Any]],
        *,
        job_periods: dict[str, int],
        hold_ttl: int,
        unavailable: tuple[type[Exception], ...],
    ):
        self._read = read
        self._job_periods = job_periods
        self._hold_ttl = hold_ttl
        self._unavailable = unavailable

    def collect(self) -> Iterator[Any]:
        try:
            state = self._read()
        except self._unavailable as error:
            log.warning("metrics_database_unavailable", error=type(error).__name__)
            yield _database_up(0)
            return
        yield _database_up(1)
        holds = GaugeMetricFamily(
            "creditapp_open_holds", "Pending holds", value=state["open_holds"]
        )
        reserved = GaugeMetricFamily(
            "creditapp_open_holds_reserved_microcredits",
            "Micro-credits reserved by pending holds",
            value=state["reserved"],
        )
        compensations = GaugeMetricFamily(
            "creditapp_compensations", "Compensations owed, by status", labels=["status"]
        )
        for status, count in state["compensations"].items():
            compensations.add_metric([status], count)
        drift = GaugeMetricFamily(
            "creditapp_reconciliation_drift_accounts",
            "Accounts with drift in the newest reconciliation report",
            value=state["drift_accounts"],
        )
        oldest = GaugeMetricFamily(
            "creditapp_oldest_open_hold_age_seconds",
            "Age of the oldest pending hold (0: none)",
            value=state["oldest_hold_age"],
        )
        runs = CounterMetricFamily(
            "creditapp_job_runs",
            "Job runs by outcome (all workers)",
            labels=["job_name", "outcome"],
        )
        last_success = GaugeMetricFamily(
            "creditapp_job_last_success_timestamp_seconds",
            "When each job last finished without error",
            labels=["job_name"],
        )
        for (job, outcome), (count, last_at) in state["job_runs"].items():
            runs.add_metric([job, outcome], count)
            if outcome == "success":
                last_success.add_metric([job], last_at)
        periods = GaugeMetricFamily(
            "creditapp_job_period_seconds", "How often beat runs each job", labels=["job_name"]
        )
        for job, seconds in self._job_periods.items():
            periods.add_metric([job], seconds)
        ttl = GaugeMetricFamily(
            "creditapp_hold_ttl_seconds", "How long a hold may stay pending", value=self._hold_ttl
        )
        bought = GaugeMetricFamily(
            "creditapp_purchases", "Purchases of credits, by status", labels=["status"]
        )
        for status, count in state["purchases"].items():
            bought.add_metric([status], count)
        sold = CounterMetricFamily(
            "creditapp_credits_sold_microcredits",
            "Micro-credits granted by paid purchases (before any refund)",
            value=state["credits_sold"],
        )
        waiting = GaugeMetricFamily(
            "creditapp_pending_purchase_unanswered_seconds",
            "Longest a pending purchase has gone without word from Stripe (0: none): since it"
            " was made, or since the sync-purchases job last had Stripe's answer about it"
            " (flagged ones aside, creditapp_purchases_flagged)",
            value=state["pending_purchase_unanswered"],
        )
        flagged = GaugeMetricFamily(
            "creditapp_purchases_flagged",
            "Pending purchases the sync-purchases job leaves to an admin (an amount Stripe took"
            " that is not its price, a session Stripe does not know)",
            value=state["purchases_flagged"],
        )
        undelivered = GaugeMetricFamily(
            "creditapp_webhook_oldest_undelivered_seconds",
            "Age of the event of the oldest webhook delivery still pending (0: none): events"
            " wait for the deliver-webhooks job, or for an endpoint that keeps failing",
            value=state["oldest_undelivered_webhook_age"],
        )
        pending = GaugeMetricFamily(
            "creditapp_webhook_pending_deliveries",
            "Webhook deliveries waiting to be posted, for their first attempt or a retry, to"
            " endpoints that are enabled",
            value=state["pending_webhook_deliveries"],
        )
        overdue = GaugeMetricFamily(
            "creditapp_webhook_overdue_seconds",
            "How long the webhook delivery due the longest has waited for the deliver-webhooks"
            " job (0: none due): the job is behind, or not running. An endpoint that keeps"
            " failing is not due between its retries",
            value=state["webhook_overdue"],
        )
        yield from (holds, reserved, compensations, drift, oldest, runs, last_success)
        yield from (periods, ttl, bought, sold, waiting, flagged, pending, undelivered, overdue)


def database_state(session: DbSession) -> dict[str, Any]:
    """What `DatabaseCollector` reports, read with a few indexed queries."""
    now = datetime.now(UTC)
    count, reserved, oldest_created = session.execute(
        select(
            func.count(), func.coalesce(func.sum(Hold.amount), 0), func.min(Hold.created_at)
        ).where(Hold.resolved_at.is_(None))
    ).one()
    # min() of a timestamp comes back as the driver's value (SQLite: text), not through the type.
    oldest_hold = read_time(oldest_created)
    compensations = dict.fromkeys(("pending", "processing", "failed"), 0)
    compensations.update(
        session.execute(
            select(Compensation.status, func.count())
            .where(Compensation.status.in_(tuple(compensations)))
            .group_by(Compensation.status)
        ).all()
    )
    # An account is its owner: a user, or a team (whose drift names no user).
    drifted = {
        (item["user_id"], item.get("team_id")) for item in reconciliation.latest(session).drift
    }
    runs = {
        (row.job, row.outcome): (row.runs, row.last_at.timestamp())
        for row in session.scalars(select(JobOutcome))
    }
    bought = dict.fromkeys(PURCHASE_STATUSES, 0)
    bought.update(
        session.execute(select(Purchase.status, func.count()).group_by(Purchase.status)).all()
    )
    credits_sold = session.scalar(
        select(func.coalesce(func.sum(Purchase.credits), 0)).where(Purchase.grant_id.is_not(None))
    )
    # A pending purchase is known as of Stripe's last answer about it: an abandoned checkout
    # stays pending until Stripe expires its session a day later, asked about at every run.
    # Flagged ones are counted apart (an admin's to look at).
    unanswered, purchases_flagged = session.execute(
        select(
            func.min(
                case(
                    (
                        Purchase.problem.is_(None),
                        func.coalesce(Purchase.looked_up_at, Purchase.created_at),
                    )
                )
            ),
            func.count(Purchase.problem),
        ).where(Purchase.status == "pending")
    ).one()
    unanswered_since = read_time(unanswered)
    # Pending deliveries of endpoints the job sends to (one disabled or deleted sends nothing):
    # how many, the oldest event among them, and since when the one due longest has been due
    # (a retry scheduled for later is not due yet). The job runs in Celery workers, which are
    # not scraped: what it did is read here.
    # A delivery whose endpoint has a post under way waits for it (one post an endpoint at a
    # time), not for the job: it is not overdue, however long the endpoint's backlog.
    posting = aliased(WebhookDelivery)
    endpoint_busy = (
        select(posting.id)
        .where(
            posting.endpoint_id == WebhookDelivery.endpoint_id,
            posting.status == "pending",
            posting.claimed_until > now,
        )
        .exists()
    )
    pending_deliveries, oldest_undelivered, longest_due = session.execute(
        select(
            func.count(),
            func.min(WebhookEvent.created_at),
            func.min(
                case(
                    (
                        (WebhookDelivery.next_attempt_at <= now) & ~endpoint_busy,
                        WebhookDelivery.next_attempt_at,
                    )
                )
            ),
        )
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookEndpoint.enabled,
            WebhookEndpoint.deleted_at.is_(None),
        )
    ).one()
    return {
        "pending_webhook_deliveries": pending_deliveries,
        "oldest_undelivered_webhook_age": _age(read_time(oldest_undelivered), now),
        "webhook_overdue": _age(read_time(longest_due), now),
        "purchases": bought,
        "credits_sold": int(credits_sold or 0),
        "pending_purchase_unanswered": _age(unanswered_since, now),
        "purchases_flagged": purchases_flagged,
        "open_holds": count,
        "reserved": int(reserved),
        "oldest_hold_age": _age(oldest_hold, now),
        "compensations": compensations,
        "drift_accounts": len(drifted),
        "job_runs": runs,
    }


def _database_up(up: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "creditapp_database_up", "Whether the database answered this scrape's queries", value=up
    )


def _age(since: datetime | None, now: datetime) -> float:
    """Seconds since `since`; 0 when there is nothing (no open hold, no pending purchase,
    no pending or due delivery)."""
    return (now - since).total_seconds() if since is not None else 0.0
