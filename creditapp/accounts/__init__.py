"""Which account pays: one answer for every door.

An account is owned by a user (their personal account) or by a team; the ledger itself knows only
account ids. Every endpoint acts on the caller's personal account unless it names a `team_id`
the caller may use: a member of the team spends from the team's account, and a team the caller
is not a member of does not exist for them (404, never 403: its existence is not disclosed)."""

from __future__ import annotations

from typing import TypeVarTuple

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, select

from creditapp.accounts.models import TeamMember
from creditapp.auth.models import User
from creditapp.auth.principal import Principal
from creditapp.database import DbSession
from creditapp.errors import NotFound
from creditapp.ledger.models import Account

Columns = TypeVarTuple("Columns")


def of_user(session: DbSession, user_id: int) -> int:
    """The personal account of the user."""
    account_id = session.execute(
        select(Account.id).where(owned_by_user(user_id))
    ).scalar_one_or_none()
    if account_id is None:
        raise NotFound("No such user.")
    return account_id


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


def paying_account(session: DbSession, principal: Principal, team_id: int | None = None) -> int:
    """The account the caller spends from and reads: their personal account, or the account of
    `team_id` when they are a member of that team."""
    if principal.user_id is None:
        raise NotFound("No account belongs to this caller.")
    if team_id is None:
        return of_user(session, principal.user_id)
    account_id = session.execute(
        select(Account.id)
        .join(TeamMember, TeamMember.team_id == Account.team_id)
        .where(Account.team_id == team_id, TeamMember.user_id == principal.user_id)
    ).scalar_one_or_none()
    if account_id is None:
        raise NotFound("No such team.")
    return account_id


def with_owner_email(query: Select[*Columns]) -> Select[*Columns, str | None]:
    """`query` (which selects from accounts or joins them) with one more column: the email of
    the account's owner, None for a team's account. A listing's page stays one query."""
    return query.outerjoin(User, User.id == Account.user_id).add_columns(User.email)
