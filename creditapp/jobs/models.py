"""The table of reconciliation reports (the roll-ups live beside the usage records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime
from creditapp.extensions import db


class ReconciliationReport(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "reconciliation_reports"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    checked_accounts: Mapped[int] = mapped_column(Integer, nullable=False)
    drift: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    # Provider calls answered but never billed (their settle failed): how many, what they cost.
    unbilled_calls: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    unbilled_cost: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # Purchases refunded or disputed after their credits were spent: what could not be taken
    # back, by purchase.
    shortfalls: Mapped[list[dict[str, Any]]] = mapped_column(
        JSON, nullable=False, server_default="[]"
    )

    __table_args__ = (Index("ix_reconciliation_reports_ran_at", "ran_at"),)


class JobOutcome(db.Model):  # type: ignore[name-defined,misc]
    """How often each job finished with each outcome (`success`, `failure`), and when it last
    did: written by whichever worker ran it, read by `/metrics` on any machine."""

    __tablename__ = "job_outcomes"

    job: Mapped[str] = mapped_column(String(32), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    runs: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
