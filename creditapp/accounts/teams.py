"""Teams: a shared account that members fund and spend from, each within their own cap.

A team has one owner (who created it, and stays), admins and members. The owner and admins
manage it (members, roles, caps); every member funds it by transfers from their personal
account and spends from it (messages naming the team, keys made for it). A member's spending is
held to their cap per UTC day or calendar month by a spending cap of kind `member`
(`creditapp.ledger.caps`): reserved in the hold's own conditional update, like the balance, so
that no burst of concurrent calls passes it. Every member has one, a cap without a ceiling
only counting, so that what each member spent this period is always one row.

A caller who is not a member finds no team (404, its existence not disclosed); a member who
asks for what only managers may do is refused (403).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select

from creditapp import ledger
from creditapp.accounts import of_team
from creditapp.accounts.models import MANAGING_ROLES, Team, TeamMember
from creditapp.auth import api_keys, users
from creditapp.auth.models import User
from creditapp.database import DbSession
from creditapp.errors import (
    AlreadyTeamMember,
    NotFound,
    NotTeamManager,
    TeamOwnerFixed,
    TeamOwnerOnly,
    UserNotFound,
)
from creditapp.ledger import caps
from creditapp.ledger.models import Account, SpendCap
from creditapp.money import format_credits

# A transfer's entries name the other side: the team credits went to, the member they came from.
TO_TEAM, FROM_USER = "team:", "user:"
# A new member's cap counts per calendar month unless told otherwise.
DEFAULT_CAP_PERIOD = "month"


@dataclass(frozen=True)
class MemberChange:
    """A member as a change left them, and whether it made an admin a plain member."""

    standing: MemberStanding
    demoted: bool


@dataclass(frozen=True)
class MemberStanding:
    user_id: int
    email: str
    role: str
    cap: int | None
    cap_period: str
    spent_this_period: int
    reserved: int
    created_at: datetime


@dataclass(frozen=True)
class TeamStanding:
    """A team as one member sees it: their role, the shared balance, and the members they may
    see (all of them for the owner and admins, themselves for a member)."""

    id: int
    name: str
    role: str | None  # None: as a service admin sees it
    balance: ledger.Balance
    created_at: datetime
    members: list[MemberStanding]


def _member_standing(
    member: TeamMember, email: str, cap: SpendCap, now: datetime
) -> MemberStanding:
    return MemberStanding(
        user_id=member.user_id,
        email=email,
        role=member.role,
        cap=cap.ceiling,
        cap_period=cap.period,
        spent_this_period=caps.spent_this_period(cap, now=now),
        reserved=cap.reserved,
        created_at=member.created_at,
    )


def _members(team_id: int) -> Select[TeamMember, str, SpendCap]:
    return (
        select(TeamMember, User.email, SpendCap)
        .join(User, User.id == TeamMember.user_id)
        .join(SpendCap, SpendCap.id == TeamMember.cap_id)
        .where(TeamMember.team_id == team_id)
    )


def members(
    session: DbSession, *, team_id: int, user_id: int | None
) -> Select[TeamMember, str, SpendCap]:
    """The members `user_id` may see: every one for the owner and admins, themselves for a
    member (NotFound for anyone else); every one for a service admin (`user_id` None)."""
    if user_id is None:
        of_team(session, team_id)  # NotFound for no such team
        return _members(team_id)
    caller = membership(session, team_id=team_id, user_id=user_id)
    query = _members(team_id)
    if caller.role not in MANAGING_ROLES:
        query = query.where(TeamMember.user_id == user_id)
    return query


def member_row(row: Any, *, now: datetime) -> MemberStanding:
    """A row of `members` as the member's standing."""
    member, email, cap = row
    return _member_standing(member, email, cap, now)


@dataclass(frozen=True)
class Reading:
    """What a member may read of a team's account: its id, and whose entries and calls (None:
    everyone's, for the owner and admins; their own for a member)."""

    account_id: int
    only_user: int | None


def reading(session: DbSession, *, team_id: int, user_id: int) -> Reading:
    member = membership(session, team_id=team_id, user_id=user_id)
    only_user = None if member.role in MANAGING_ROLES else user_id
    return Reading(of_team(session, team_id), only_user)


def membership(session: DbSession, *, team_id: int, user_id: int) -> TeamMember:
    """The caller's membership of the team; a team they are not a member of is NotFound."""
    member = session.get(TeamMember, (team_id, user_id))
    if member is None:
        raise NotFound("No such team.")
    return member


def staying_member(session: DbSession, *, team_id: int, user_id: int) -> TeamMember:
    """The caller's membership, with the team's row held (FOR SHARE) until the transaction
    ends: what they make for the team meanwhile (an API key) is made before a removal of them,
    which then undoes it, or refused after it."""
    held = session.execute(
        select(Team.id).where(Team.id == team_id).with_for_update(read=True)
    ).scalar_one_or_none()
    member = None if held is None else _member_now(session, team_id=team_id, user_id=user_id)
    if member is None:
        raise NotFound("No such team.")
    return member


def managing(session: DbSession, *, team_id: int, user_id: int) -> TeamMember:
    """The caller's membership, when it lets them manage the team (owner or admin).

    The team's row is locked first (in the caller's write transaction): changes to one team's
    members run one at a time, each seeing the last one's outcome (two adding one email, one
    changing a member another removes, a manager demoted meanwhile)."""
    locked = session.execute(
        select(Team.id).where(Team.id == team_id).with_for_update()
    ).scalar_one_or_none()
    if locked is None:
        raise NotFound("No such team.")
    member = _member_now(session, team_id=team_id, user_id=user_id)
    if member is None:
        raise NotFound("No such team.")
    if member.role not in MANAGING_ROLES:
        raise NotTeamManager()
    return member


def _capped(session: DbSession, member: TeamMember, *, now: datetime) -> bool:
    """Whether the member's own spending has a ceiling (see TeamOwnerOnly)."""
    return caps.standing(session, cap_id=member.cap_id, now=now).ceiling is not None


def _member_now(session: DbSession, *, team_id: int, user_id: int) -> TeamMember | None:
    """A membership as the database has it now, not as the session last loaded it."""
    return session.execute(
        select(TeamMember)
        .where(TeamMember.team_id == team_id, TeamMember.user_id == user_id)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _member_of(session: DbSession, *, team_id: int, user_id: int) -> TeamMember:
    """A member of a team whose row `managing` locked."""
    member = _member_now(session, team_id=team_id, user_id=user_id)
    if member is None:
        raise NotFound("No such member.")
    return member


def _audit(
    session: DbSession,
    team_id: int,
    action: str,
    *,
    context: ledger.AuditContext,
    now: datetime,
    **details: str | None,
) -> None:
    ledger.record_action(
        session,
        action=action,
        context=context,
        now=now,
        account_id=of_team(session, team_id),
        details={"team_id": str(team_id), **details},
    )


def create(
    session: DbSession, *, owner_id: int, name: str, context: ledger.AuditContext, now: datetime
) -> TeamStanding:
    """A new team with its own empty account, `owner_id` its owner (uncapped)."""
    team = Team(name=name, created_at=now)
    session.add(team)
    session.flush()
    ledger.open_account(session, team_id=team.id, now=now)
    _join(session, team.id, owner_id, "owner", cap=None, cap_period=DEFAULT_CAP_PERIOD, now=now)
    _audit(session, team.id, "team_created", context=context, now=now, name=name)
    return standing(session, team_id=team.id, user_id=owner_id, now=now)


def _join(
    session: DbSession,
    team_id: int,
    user_id: int,
    role: str,
    *,
    cap: int | None,
    cap_period: str,
    now: datetime,
) -> TeamMember:
    cap_id = caps.open_cap(
        session,
        account_id=of_team(session, team_id),
        kind="member",
        ceiling=cap,
        period=cap_period,
        now=now,
    )
    member = TeamMember(team_id=team_id, user_id=user_id, role=role, cap_id=cap_id, created_at=now)
    session.add(member)
    session.flush()
    return member


def named(text: str | None) -> Select[Team, Account]:
    """Teams whose name contains `text` (any case; `%` and `_` match themselves), or whose id
    it is; all when None: what an admin searches."""
    query = select(Team, Account).join(Account, Account.team_id == Team.id)
    if not text:
        return query
    by_name = func.lower(Team.name).contains(text.lower(), autoescape=True)
    # An id is ASCII digits that fit a bigint (a Unicode digit or a 5,000-digit number is
    # only searched for in names).
    if text.isascii() and text.isdigit() and len(text) < 19:
        return query.where(or_(by_name, Team.id == int(text)))
    return query.where(by_name)


def of_user(user_id: int) -> Select[Team, str, Account]:
    """The teams a user is a member of, with their role and the team's account."""
    return (
        select(Team, TeamMember.role, Account)
        .join(TeamMember, TeamMember.team_id == Team.id)
        .join(Account, Account.team_id == Team.id)
        .where(TeamMember.user_id == user_id)
    )


def standing(
    session: DbSession, *, team_id: int, user_id: int | None, now: datetime
) -> TeamStanding:
    """The team as the member `user_id` sees it (NotFound for anyone else), or as a service
    admin does (`user_id` None)."""
    query = members(session, team_id=team_id, user_id=user_id)
    shown = [
        member_row(row, now=now)
        for row in session.execute(query.order_by(TeamMember.created_at, TeamMember.user_id))
    ]
    team = session.get(Team, team_id)
    assert team is not None
    role = next((member.role for member in shown if member.user_id == user_id), None)
    return TeamStanding(
        id=team.id,
        name=team.name,
        role=role,
        balance=ledger.balance(session, account_id=of_team(session, team_id), now=now),
        created_at=team.created_at,
        members=shown,
    )


def member_standing(
    session: DbSession, *, team_id: int, user_id: int, now: datetime
) -> MemberStanding:
    found = session.execute(_members(team_id).where(TeamMember.user_id == user_id)).one_or_none()
    if found is None:
        raise NotFound("No such member.")
    return member_row(found, now=now)


def add_member(
    session: DbSession,
    *,
    team_id: int,
    actor_id: int,
    email: str,
    role: str,
    cap: int | None,
    cap_period: str,
    context: ledger.AuditContext,
    now: datetime,
) -> MemberStanding:
    """Add the user with this email (they must have signed up) as an admin (by the owner: see
    TeamOwnerOnly) or a member."""
    actor = managing(session, team_id=team_id, user_id=actor_id)
    if actor.role != "owner" and role == "admin":
        raise TeamOwnerOnly()
    if actor.role != "owner" and _capped(session, actor, now=now):
        raise TeamOwnerOnly("Only the team's owner may add members while your spending is capped.")
    user = users.find_by_email(session, email)
    if user is None:
        raise UserNotFound()
    user_id = user.id
    if session.execute(
        select(TeamMember.user_id).where(
            TeamMember.team_id == team_id, TeamMember.user_id == user_id
        )
    ).first():
        raise AlreadyTeamMember()
    _join(session, team_id, user_id, role, cap=cap, cap_period=cap_period, now=now)
    _audit(
        session,
        team_id,
        "team_member_added",
        context=context,
        now=now,
        user_id=str(user_id),
        role=role,
        cap=None if cap is None else format_credits(cap),
        cap_period=cap_period,
    )
    return member_standing(session, team_id=team_id, user_id=user_id, now=now)


_UNCHANGED = object()


def change_member(
    session: DbSession,
    *,
    team_id: int,
    actor_id: int,
    user_id: int,
    context: ledger.AuditContext,
    now: datetime,
    role: str | None = None,
    cap: int | object | None = _UNCHANGED,
    cap_period: str | None = None,
) -> MemberChange:
    """Change a member's role (admin or member: the owner's stays) or cap. A new cap binds the
    holds placed from now on; a new period counts this period's spending from the charges.
    An admin changes plain members only, and makes none an admin (TeamOwnerOnly)."""
    actor = managing(session, team_id=team_id, user_id=actor_id)
    member = _member_of(session, team_id=team_id, user_id=user_id)
    changes_cap = cap is not _UNCHANGED or cap_period is not None
    if actor.role != "owner" and (
        member.role != "member"
        or role == "admin"
        or (changes_cap and _capped(session, actor, now=now))
    ):
        raise TeamOwnerOnly()
    demoted = member.role == "admin" and role == "member"
    changed: dict[str, str | None] = {}
    if role is not None and role != member.role:
        if member.role == "owner":
            raise TeamOwnerFixed()
        member.role = role
        changed["role"] = role
    if cap is not _UNCHANGED:
        ceiling = cap if isinstance(cap, int) else None
        caps.set_ceiling(session, cap_id=member.cap_id, ceiling=ceiling)
        changed["cap"] = None if ceiling is None else format_credits(ceiling)
    if cap_period is not None:
        caps.set_period(session, cap_id=member.cap_id, period=cap_period, now=now)
        changed["cap_period"] = cap_period
    session.flush()
    if changed:
        _audit(
            session,
            team_id,
            "team_member_changed",
            context=context,
            now=now,
            user_id=str(user_id),
            **changed,
        )
    # The cap row was changed by SQL: read it again, not from the session's identity map.
    session.expire_all()
    return MemberChange(
        member_standing(session, team_id=team_id, user_id=user_id, now=now), demoted=demoted
    )


def remove_member(
    session: DbSession,
    *,
    team_id: int,
    actor_id: int,
    user_id: int,
    context: ledger.AuditContext,
    now: datetime,
) -> None:
    """Remove a member (never the owner; another admin by the owner only: TeamOwnerOnly; an
    admin may leave). Their keys for the team are revoked with it, so that every worker refuses
    them from the next request; their open holds settle as usual."""
    actor = managing(session, team_id=team_id, user_id=actor_id)
    member = _member_of(session, team_id=team_id, user_id=user_id)
    if member.role == "owner":
        raise TeamOwnerFixed()
    if member.role == "admin" and actor.role != "owner" and user_id != actor_id:
        raise TeamOwnerOnly()
    caps.close(session, cap_id=member.cap_id, now=now)
    session.delete(member)
    session.flush()
    revoked = api_keys.revoke_of_member(
        session, team_id=team_id, user_id=user_id, context=context, now=now
    )
    _audit(
        session,
        team_id,
        "team_member_removed",
        context=context,
        now=now,
        user_id=str(user_id),
        keys_revoked=str(revoked),
    )


def fund(
    session: DbSession,
    *,
    team_id: int,
    user_id: int,
    personal_account: int,
    amount: int,
    context: ledger.AuditContext,
    now: datetime,
) -> ledger.TransferResult:
    """Move `amount` from the member's personal account to the team's (any member may). The
    team's row is held (`staying_member`): a removal of the member commits before the transfer
    (which is then refused) or after it, never between the check and the move."""
    staying_member(session, team_id=team_id, user_id=user_id)
    return ledger.transfer(
        session,
        from_account=personal_account,
        to_account=of_team(session, team_id),
        amount=amount,
        user_id=user_id,
        references=(f"{TO_TEAM}{team_id}", f"{FROM_USER}{user_id}"),
        context=context,
        now=now,
    )
