"""Signals out: webhook endpoints an account's events are posted to, and their delivery.

Events are written by the ledger's own operations into the outbox (`creditapp.ledger.outbox`,
thresholds in `creditapp.ledger.alerts`); this package manages where they go (`endpoints`:
the URL rules of `urls`, the secret shown once) and sends them (`delivery`: signed per the
Standard Webhooks specification, retried on a schedule, at least once).
"""
