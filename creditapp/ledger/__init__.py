"""The ledger: the only code that changes a balance.

Design overview
---------------
Each user has one **account** with a `balance` and a `reserved` amount, in integer micro-credits;
`available = balance - reserved`. Credits live in **grants** (subscription, purchase, promo,
admin), each with an `amount`, a `remaining` and an optional `expires_at`; the balance is the sum
of the grants' remainders. Spending draws grants soonest-expiring first (never-expiring last),
then oldest first.

Every change of a balance is a **ledger entry** for one grant (`grant`, `refresh`, `expire`,
`charge`, `refund`, `adjust`, `transfer_out`, `transfer_in`; signed amount, `balance_after`, and
the user who caused it where one did), and every operation writes one
**audit record** that its entries point to. Entries of an account form a chain (`seq`,
`balance_before` = previous `balance_after`), and the account's balance must equal the newest
entry's `balance_after`: the database refuses to commit a balance change without its entry.

Spending is two-phase, like pending transfers: `hold` reserves the worst case or fails with
`insufficient_credits`; the hold resolves exactly once, by `settle(actual)` (charges `actual`,
capped at the hold plus what is available, the rest recorded as uncollected), `void` or expiry.
Resolving a resolved hold returns the first outcome and changes nothing, with one exception: a
settle that finds its hold expired still charges `actual`, from what is available then (a late
answer is never free), and the hold becomes settled.

A grant is never spent after it expires. The first operation on the account after that time
writes its remainder off (an `expire` entry), except what open holds placed before the expiry
still need: that part stays payable to those holds and is written off when they resolve.

A **transfer** moves available credits from one account to another in one transaction (a
member funding their team): the source's grants are drawn as by a charge, and each part arrives
as a `transfer` grant with the same expiry; each side has its entries and its audit record.
The two accounts are locked in id order.

Entries are stamped no earlier than the account's newest entry, so along the chain time never
goes backwards.

Invariants (database constraints, or checked by `reconcile`, which reads one snapshot):
- balance >= 0 and 0 <= reserved <= balance;
- balance == sum(entries) == newest entry's balance_after == sum(grants' remaining);
- each grant's remaining == sum(its entries);
- reserved == sum(pending holds);
- every balance change has exactly one entry and one audit record, committed together.

Concurrency: each operation runs in one short transaction owned by the caller (see
`creditapp.database.write_transaction`). On PostgreSQL (READ COMMITTED) a hold is a single
conditional `UPDATE ... WHERE balance - reserved >= :amount`; resolving a hold starts with the
hold's own conditional `UPDATE ... WHERE status = 'pending'`, which decides who resolves it;
operations then lock the account row. Locks are always taken in the order hold -> spending
caps (in id order) -> account -> grants, and a transfer locks its two accounts in id order, so
operations cannot deadlock. The account row is locked FOR NO KEY UPDATE, which does
not wait for the KEY SHARE locks of foreign-key checks: a caller may insert a row that refers
to the account (a compensation) before its ledger operation, in the same transaction. On SQLite
the write transaction holds the database's write lock from `BEGIN IMMEDIATE`.
"""

from creditapp.ledger.alerts import MAX_THRESHOLDS, Threshold, thresholds
from creditapp.ledger.operations import (
    AuditContext,
    Balance,
    GrantResult,
    GrantStanding,
    HoldResult,
    Resolution,
    TransferResult,
    accounts_with_expired_credits,
    adjust,
    balance,
    claw_back,
    clawed_back_from,
    expire_grants,
    expire_hold,
    grant,
    grant_standings,
    hold,
    open_account,
    overdue_hold_ids,
    record_action,
    refresh,
    refund,
    set_thresholds,
    settle,
    transfer,
    void,
)
from creditapp.ledger.queries import (
    OPENING_TYPES,
    EntryGrounds,
    audit_trail,
    entries_of,
    entry_grounds,
    grant_origins,
    grants_of,
    live_grants,
)
from creditapp.ledger.reconcile import Drift, reconcile

__all__ = [
    "MAX_THRESHOLDS",
    "OPENING_TYPES",
    "AuditContext",
    "Balance",
    "Drift",
    "EntryGrounds",
    "GrantResult",
    "GrantStanding",
    "HoldResult",
    "Resolution",
    "Threshold",
    "TransferResult",
    "accounts_with_expired_credits",
    "adjust",
    "audit_trail",
    "balance",
    "claw_back",
    "clawed_back_from",
    "entries_of",
    "entry_grounds",
    "expire_grants",
    "expire_hold",
    "grant",
    "grant_origins",
    "grant_standings",
    "grants_of",
    "hold",
    "live_grants",
    "open_account",
    "overdue_hold_ids",
    "reconcile",
    "record_action",
    "refresh",
    "refund",
    "set_thresholds",
    "settle",
    "thresholds",
    "transfer",
    "void",
]
