"""Reconciliation: recompute every ledger invariant from the rows and report drift, never fix it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, case, func, select

from creditapp.database import DbSession, snapshot
from creditapp.ledger.models import Account, Grant, Hold, HoldCap, LedgerEntry, SpendCap
from creditapp.money import format_credits

accounts = Account.__table__
grants = Grant.__table__
holds = Hold.__table__
entries = LedgerEntry.__table__
spend_caps = SpendCap.__table__
hold_caps = HoldCap.__table__


COUNT_INVARIANTS = frozenset({"last_seq == number of entries"})


@dataclass(frozen=True)
class Drift:
    account_id: int
    user_id: int | None  # the owner of a personal account; None for a team's account
    invariant: str
    expected: int
    actual: int
    team_id: int | None = None  # the owner of a team's account

    def as_wire(self) -> dict[str, str | None]:
        """The report's shape: amounts as credit strings, counts as whole numbers."""
        show = str if self.invariant in COUNT_INVARIANTS else format_credits
        return {
            "user_id": None if self.user_id is None else str(self.user_id),
            "team_id": None if self.team_id is None else str(self.team_id),
            "invariant": self.invariant,
            "expected": show(self.expected),
            "actual": show(self.actual),
        }


class _Scope:
    """Restricts every query of one reconciliation to the accounts asked for."""

    def __init__(self, account_ids: list[int] | None):
        self.account_ids = account_ids

    def where(self, query: Any, table: Table) -> Any:
        column = table.c.id if table is accounts else table.c.account_id
        return query if self.account_ids is None else query.where(column.in_(self.account_ids))

    def totals(
        self, session: DbSession, table: Table, aggregate: Any, *conditions: Any
    ) -> dict[int, int]:
        query = select(table.c.account_id, aggregate).where(*conditions)
        query = self.where(query, table).group_by(table.c.account_id)
        return {account_id: int(total or 0) for account_id, total in session.execute(query)}


def reconcile(session: DbSession, *, account_ids: list[int] | None = None) -> list[Drift]:
    """Check the invariants of the accounts named (all when None). Reads only, from one
    snapshot (see `creditapp.database.snapshot`): its queries run one after another, and
    numbers read at different moments of a busy account would look like drift."""
    with snapshot(session):
        return _reconcile(session, _Scope(account_ids))


def _reconcile(session: DbSession, scope: _Scope) -> list[Drift]:
    entry_sums = scope.totals(session, entries, func.sum(entries.c.amount))
    entry_counts = scope.totals(session, entries, func.count())
    grant_sums = scope.totals(session, grants, func.sum(grants.c.remaining))
    pending_sums = scope.totals(
        session, holds, func.sum(holds.c.amount), holds.c.status == "pending"
    )

    newest_seq = select(entries.c.account_id, func.max(entries.c.seq).label("seq")).group_by(
        entries.c.account_id
    )
    newest = scope.where(newest_seq, entries).subquery()
    last_balances = {
        account_id: balance_after
        for account_id, balance_after in session.execute(
            select(entries.c.account_id, entries.c.balance_after).join(
                newest,
                (newest.c.account_id == entries.c.account_id) & (newest.c.seq == entries.c.seq),
            )
        )
    }

    per_grant = (
        select(entries.c.grant_id, func.sum(entries.c.amount).label("total"))
        .group_by(entries.c.grant_id)
        .subquery()
    )
    grant_drift: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    grant_rows = session.execute(
        scope.where(
            select(
                grants.c.account_id,
                grants.c.id,
                grants.c.remaining,
                func.coalesce(per_grant.c.total, 0),
            ).outerjoin(per_grant, per_grant.c.grant_id == grants.c.id),
            grants,
        )
    )
    for account_id, grant_id, remaining, total in grant_rows:
        if remaining != int(total):
            grant_drift[account_id].append((grant_id, int(total), remaining))

    cap_drift = _cap_drift(session, scope)

    drift: list[Drift] = []
    account_rows = session.execute(
        scope.where(
            select(
                accounts.c.id,
                accounts.c.user_id,
                accounts.c.team_id,
                accounts.c.balance,
                accounts.c.reserved,
                accounts.c.last_seq,
            ),
            accounts,
        ).order_by(accounts.c.id)
    )
    for account in account_rows:
        checks = [
            ("balance >= 0", max(account.balance, 0), account.balance),
            ("reserved >= 0", max(account.reserved, 0), account.reserved),
            ("reserved <= balance", min(account.reserved, account.balance), account.reserved),
            ("balance == sum(ledger entries)", entry_sums.get(account.id, 0), account.balance),
            (
                "balance == newest entry's balance_after",
                last_balances.get(account.id, 0),
                account.balance,
            ),
            (
                "last_seq == number of entries",
                entry_counts.get(account.id, 0),
                account.last_seq or 0,
            ),
            ("balance == sum(grants' remaining)", grant_sums.get(account.id, 0), account.balance),
            ("reserved == sum(pending holds)", pending_sums.get(account.id, 0), account.reserved),
        ]
        checks += [
            (f"grant {grant_id}: remaining == sum(its entries)", expected, actual)
            for grant_id, expected, actual in grant_drift.get(account.id, [])
        ]
        checks += cap_drift.get(account.id, [])
        drift += [
            Drift(account.id, account.user_id, invariant, expected, actual, account.team_id)
            for invariant, expected, actual in checks
            if expected != actual
        ]
    return drift


def _cap_drift(session: DbSession, scope: _Scope) -> dict[int, list[tuple[str, int, int]]]:
    """Each spending cap against the holds counted in it, by the account its spender spends
    from: what it reserves is what its pending holds hold, and what it spent in its period is
    what its holds settled since the period began captured (a resolution in a later period
    would have started that period). A cap with no holds has reserved and spent nothing."""
    since_period = and_(
        holds.c.status == "settled", holds.c.resolved_at >= spend_caps.c.period_start
    )
    rows = session.execute(
        scope.where(
            select(
                spend_caps.c.id,
                spend_caps.c.account_id,
                spend_caps.c.reserved,
                func.sum(case((holds.c.status == "pending", holds.c.amount), else_=0)),
                spend_caps.c.spent,
                func.sum(case((since_period, holds.c.captured), else_=0)),
            )
            .outerjoin(hold_caps, hold_caps.c.cap_id == spend_caps.c.id)
            .outerjoin(holds, holds.c.id == hold_caps.c.hold_id),
            spend_caps,
        ).group_by(
            spend_caps.c.id, spend_caps.c.account_id, spend_caps.c.reserved, spend_caps.c.spent
        )
    )
    found: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for cap_id, account_id, reserved, pending, spent, captured in rows:
        found[account_id] += [
            (f"cap {cap_id}: reserved == sum(its pending holds)", int(pending or 0), reserved),
            (f"cap {cap_id}: spent == sum(captured this period)", int(captured or 0), spent),
        ]
    return found
