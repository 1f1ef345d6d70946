"""The table of reconciliation reports (the roll-ups live beside the usage records)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer
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

    __table_args__ = (Index("ix_reconciliation_reports_ran_at", "ran_at"),)
