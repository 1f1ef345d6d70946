"""What the service counts for Prometheus, named as operators will query it.

Counters and histograms live in each process (under gunicorn, in multiprocess mode: every
worker writes its samples to PROMETHEUS_MULTIPROC_DIR and `/metrics` sums them). What must be
true across every machine is read from the database when scraped (`creditapp.monitoring`).
This module imports nothing of ours, so any module may count.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "creditapp_http_requests",
    "HTTP requests answered, by route (the URL rule)",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "creditapp_http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"]
)
# The `model` label of a call refused for a model the price book does not have.
UNPRICED = "(unpriced)"
MESSAGES = Counter(
    "creditapp_messages",
    "Metered calls (chat messages and gateway completions) by outcome: charged, refunded,"
    " client_closed, timed_out, insufficient_credits, key_limit_reached, member_cap_reached,"
    " provider_error, refused, settle_failed; a call for a model the price book lacks is"
    ' counted as model "(unpriced)"',
    ["provider", "model", "outcome"],
)
CREDITS_CHARGED = Counter(
    "creditapp_credits_charged_microcredits",
    "Micro-credits charged for messages (the sum of their credits_charged)",
    ["provider", "model"],
)
PROVIDER_DURATION = Histogram(
    "creditapp_provider_request_duration_seconds",
    "Time an AI provider took to answer (or fail)",
    ["provider", "model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
LEDGER_OPERATIONS = Counter(
    "creditapp_ledger_operations",
    "Ledger operations by outcome (ok or the refusal's code)",
    ["operation", "outcome"],
)
AUTH_FAILURES = Counter(
    "creditapp_auth_failures", "Refused sign-ins and token misuse, by reason", ["reason"]
)
WEBHOOK_SIGNATURE_FAILURES = Counter(
    "creditapp_webhook_signature_failures",
    "Incoming webhooks refused for a missing, forged or stale signature, by sender",
    ["sender"],
)
WEBHOOK_DELIVERIES = Counter(
    "creditapp_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (2xx), retrying (failed, due again),"
    " failed (the last attempt, or 410 Gone), url_refused (not posted: the URL rules refused"
    " its address at delivery time; retried as a failure is)",
    ["outcome"],
)
