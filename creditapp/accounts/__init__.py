"""Which account pays: one answer for every door.

An account is owned by a user (their personal account) or by a team; the ledger itself knows only
account ids. Every endpoint acts on the caller's personal account unless it names a `team_id`
the caller may use: a member of the team spends from the team's account, and a team the caller
is not a member of does not exist for them (404, never 403: its existence is not disclosed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVarTuple

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, select

from creditapp.accounts.models import TeamMember
from creditapp.auth.models import ApiKey, User
from creditapp.auth.principal import Principal
from creditapp.database import DbSession
from creditapp.errors import InvalidApiKey, NotFound
from creditapp.kept import Kept
from creditapp.ledger.models import Account

Columns = TypeVarTuple("Columns")


# A personal account is its user's for good: every process keeps which it is (for a few
# seconds, all the same: a copy read in a transaction that then rolled back must not last).
_kept_personal: Kept[int, int] = Kept()


def of_user(session: DbSession, user_id: int) -> int:
    """The personal account of the user."""

    def load() -> int:
        account_id = session.execute(
            select(Account.id).where(owned_by_user(user_id))
        ).scalar_one_or_none()
        if account_id is None:
            raise NotFound("No such user.")
        return account_id

    return _kept_personal.get(session, user_id, load)


def owned_by_user(user_id: SQLColumnExpression[int] | int) -> ColumnElement[bool]:
    """The condition "the account is the personal account of `user_id`": an id, or a column to
    join on, so that a batch query pairs every user with their personal account in one query."""
    return Account.user_id == user_id


def of_team(session: DbSession, team_id: int) -> int:
    """The team's account."""
    account_id = session.execute(
        select(Account.id).where(Account.team_id == team_id)
    ).scalar_one_or_none()
    if account_id is None:
        raise NotFound("No such team.")
    return account_id


@dataclass(frozen=True)
class Payer:
    """Who pays for a spend: the account, and the spending caps the spender is held to there
    (a team member's cap; none on a personal account)."""

    account_id: int
    caps: tuple[int, ...] = ()


def payer(session: DbSession, user_id: int | None, team_id: int | None = None) -> Payer:
    """The account `user_id` spends from: their personal account, or the account of `team_id`
    when they are a member of that team, with their member cap there."""
    if user_id is None:
        raise NotFound("No account belongs to this caller.")
    if team_id is None:
        return Payer(of_user(session, user_id))
    found = session.execute(
        select(Account.id, TeamMember.cap_id)
        .join(TeamMember, TeamMember.team_id == Account.team_id)
        .where(Account.team_id == team_id, TeamMember.user_id == user_id)
    ).one_or_none()
    if found is None:
        raise NotFound("No such team.")
    account_id, cap_id = found
    return Payer(account_id, (cap_id,))


def key_payer(session: DbSession, key: ApiKey) -> Payer:
    """Who pays for a call made with an API key: the key's account, held to the key's limit
    and, for a team's key, to its owner's member cap. A key whose owner has left the team
    spends no more (revoked with the membership; refused here too)."""
    if key.team_id is None:
        return Payer(key.account_id, (key.cap_id,))
    try:
        member = payer(session, key.user_id, key.team_id)
    except NotFound:
        raise InvalidApiKey("This API key's owner is no longer a member of its team.") from None
    return Payer(member.account_id, (key.cap_id, *member.caps))


def paying_account(session: DbSession, principal: Principal, team_id: int | None = None) -> int:
    """The account the caller spends from and reads: their personal account, or the account of
    `team_id` when they are a member of that team."""
    return payer(session, principal.user_id, team_id).account_id


def with_owner_email(query: Select[*Columns]) -> Select[*Columns, str | None]:
    """`query` (which selects from accounts or joins them) with one more column: the email of
    the account's owner, None for a team's account. A listing's page stays one query."""
    return query.outerjoin(User, User.id == Account.user_id).add_columns(User.email)
