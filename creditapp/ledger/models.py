"""Tables of the ledger: accounts, grants, holds, ledger entries and audit records.

The rules money depends on are constraints here, so that even code that bypasses the ledger
module cannot commit a broken state:
- an account's `balance` is the `balance_after` of its newest ledger entry (a deferred composite
  foreign key), and every entry continues the previous one (`balance_before` is the previous
  entry's `balance_after`, `seq` counts up by one). By induction the balance is the sum of the
  account's entries, and no balance change can be committed without its entry;
- every ledger entry names the audit record written with it (NOT NULL foreign key);
- balance >= 0, 0 <= reserved <= balance, 0 <= remaining <= amount, one subscription grant per
  account and period, a hold is pending exactly while it has no resolution time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

# Subscription credits come only from the refresh; an admin grants the others; a member's
# transfer moves credits into a team's account as `transfer` grants.
ADMIN_GRANT_SOURCES = ("purchase", "promo", "admin")
GRANT_SOURCES = ("subscription", *ADMIN_GRANT_SOURCES, "transfer")
ENTRY_TYPES = (
    "grant",
    "refresh",
    "expire",
    "charge",
    "refund",
    "adjust",
    "transfer_out",
    "transfer_in",
)
HOLD_STATUSES = ("pending", "settled", "voided", "expired")
ACTOR_TYPES = ("user", "admin", "job", "system")
# A spending cap counts per UTC calendar day, ISO week, calendar month, or ever.
CAP_PERIODS = ("day", "week", "month", "total")
# Whose spending a cap bounds: an API key's (its `limit`), a team member's (their `cap`).
CAP_KINDS = ("key", "member")


class Account(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "accounts"

    # Explicit: being part of the balance foreign key would otherwise switch autoincrement off.
    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # The owner: a user (their personal account) or a team, exactly one. The ledger itself
    # speaks only of accounts; `creditapp.accounts` answers which account a caller spends from.
    user_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("users.id"), unique=True, nullable=True
    )
    team_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("teams.id"), unique=True, nullable=True
    )
    balance: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # seq of the newest ledger entry; NULL until the first one.
    last_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # created_at of the newest ledger entry: the next entry is never stamped earlier.
    last_entry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Someone listens to this account's signals (it has alert thresholds or webhook endpoints):
    # its ledger operations look for thresholds crossed. Read with the balance, so that an
    # account nobody listens to costs no statement more.
    watched: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )

    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("reserved >= 0 AND reserved <= balance", name="reserved_within_balance"),
        CheckConstraint("last_seq IS NOT NULL OR balance = 0", name="balance_has_entries"),
        CheckConstraint("(user_id IS NULL) <> (team_id IS NULL)", name="one_owner"),
        ForeignKeyConstraint(
            ["id", "last_seq", "balance"],
            ["ledger_entries.account_id", "ledger_entries.seq", "ledger_entries.balance_after"],
            name="fk_accounts_balance_is_last_entry",
            deferrable=True,
            initially="DEFERRED",
            use_alter=True,
        ),
    )


# The most characters an admin's reason for a grant or adjustment has.
REASON_CHARS = 500


class Grant(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    remaining: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(REASON_CHARS), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # `grant.expiring` was emitted for this grant (once, days before it expires).
    expiry_signalled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )

    __table_args__ = (
        CheckConstraint(one_of("source", GRANT_SOURCES), name="source_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_within_amount"),
        CheckConstraint(
            "(source = 'subscription' AND period IS NOT NULL)"
            " OR (source <> 'subscription' AND period IS NULL)",
            name="period_iff_subscription",
        ),
        UniqueConstraint("account_id", "period", name="uq_grants_account_period"),
        # Draw order and the expiry check read the few grants of one account. The index names
        # no column a draw changes, so PostgreSQL can update `remaining` in place (HOT).
        # With the id: an account's grants listed newest first, a page at a time.
        Index("ix_grants_account_id", "account_id", "id"),
        # The expire-grants job's search for expired credits; `expires_at` never changes.
        Index("ix_grants_expires_at", "expires_at"),
    )


class Hold(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    captured: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    uncollected: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Who spends (the caller, for a team's account the member): the entries of its
    # resolution name them.
    user_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=True)
    # The hold counts against spending caps (`hold_caps`): resolving it releases them too.
    capped: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )

    __table_args__ = (
        CheckConstraint(one_of("status", HOLD_STATUSES), name="status_known"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "(status = 'pending' AND resolved_at IS NULL AND captured IS NULL)"
            " OR (status <> 'pending' AND resolved_at IS NOT NULL AND captured IS NOT NULL)",
            name="resolved_once",
        ),
        CheckConstraint("captured IS NULL OR captured >= 0", name="captured_not_negative"),
        CheckConstraint("uncollected >= 0", name="uncollected_not_negative"),
        # The expiry job's index. Its predicate is `resolved_at IS NULL` (the same as pending, by
        # resolved_once) rather than `status = 'pending'`: resolving a hold filters on status,
        # and a plan cached while the table was small could otherwise scan every pending hold
        # through this index instead of using the primary key.
        Index(
            "ix_holds_unresolved_expiry",
            "expires_at",
            postgresql_where=text("resolved_at IS NULL"),
            sqlite_where=text("resolved_at IS NULL"),
        ),
        # An account's open holds, read when it has expired credits they may claim.
        Index(
            "ix_holds_unresolved_account",
            "account_id",
            postgresql_where=text("resolved_at IS NULL"),
            sqlite_where=text("resolved_at IS NULL"),
        ),
    )


class SpendCap(db.Model):  # type: ignore[name-defined,misc]
    """A bound on what one spender (an API key, a team member) may spend per period, kept beside the
    accounts it spends from: `spent` this period (since `period_start`) plus `reserved` by open
    holds never passes `ceiling` when a hold is placed, by the same conditional update pattern
    as an account's balance. No ceiling: the spending is only counted."""

    __tablename__ = "spend_caps"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    # The account its spender spends from: reconciliation checks the cap with that account's
    # invariants, holds or none.
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    ceiling: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    period: Mapped[str] = mapped_column(String(8), nullable=False)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    spent: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # A closed cap refuses every new hold, in the hold's own update (its key was revoked, its
    # member left the team: a request already past those checks is refused too); the holds it
    # has resolve as usual.
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The period whose refusal was signalled (`key.limit_reached`, `team.member_cap_reached`):
    # one event per cap and period, however many calls it refuses.
    reached_signalled_for: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint(one_of("kind", CAP_KINDS), name="kind_known"),
        CheckConstraint(one_of("period", CAP_PERIODS), name="period_known"),
        CheckConstraint("ceiling IS NULL OR ceiling > 0", name="ceiling_positive"),
        CheckConstraint("spent >= 0 AND reserved >= 0", name="counts_not_negative"),
        Index("ix_spend_caps_account_id", "account_id"),
    )


class HoldCap(db.Model):  # type: ignore[name-defined,misc]
    """A hold counted against a cap: released from it when the hold resolves."""

    __tablename__ = "hold_caps"

    hold_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("holds.id"), primary_key=True)
    cap_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("spend_caps.id"), primary_key=True)

    __table_args__ = (Index("ix_hold_caps_cap_id", "cap_id"),)


class AuditRecord(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    actor_type: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    account_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("accounts.id"), nullable=True
    )
    balance_before: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    balance_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reserved_before: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reserved_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("actor_type", ACTOR_TYPES), name="actor_type_known"),
        Index("ix_audit_records_account_id", "account_id", "id"),
    )


class LedgerEntry(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("accounts.id"), nullable=False)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prev_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_before: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_after: Mapped[int] = mapped_column(BigInteger, nullable=False)
    grant_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("grants.id"), nullable=False)
    hold_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("holds.id"), nullable=True)
    audit_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("audit_records.id"), nullable=False)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The user whose spending, transfer or purchase caused the entry (on a team's account: the
    # member); None for what an admin or a job did (their audit record names them).
    user_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("type", ENTRY_TYPES), name="type_known"),
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint("balance_after = balance_before + amount", name="balance_follows"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        CheckConstraint(
            "(seq = 1 AND prev_seq IS NULL AND balance_before = 0)"
            " OR (seq > 1 AND prev_seq = seq - 1)",
            name="seq_chain",
        ),
        UniqueConstraint("account_id", "seq", name="uq_ledger_entries_account_seq"),
        # The targets of the two chain foreign keys (PostgreSQL wants an exact unique key).
        UniqueConstraint(
            "account_id", "seq", "balance_after", name="uq_ledger_entries_account_seq_balance"
        ),
        ForeignKeyConstraint(
            ["account_id", "prev_seq", "balance_before"],
            ["ledger_entries.account_id", "ledger_entries.seq", "ledger_entries.balance_after"],
            name="fk_ledger_entries_continues_previous",
        ),
        # What the claw-backs of a purchase took (`CLAWED_BACK`, when a dispute is won): the
        # only lookup by reference, of adjust entries only, which are few (no write cost on
        # holds and settles).
        Index(
            "ix_ledger_entries_adjust_reference",
            "account_id",
            "reference",
            postgresql_where=text("type = 'adjust'"),
            sqlite_where=text("type = 'adjust'"),
        ),
    )
