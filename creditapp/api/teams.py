"""Teams (`/api/teams`): shared wallets. Members fund a team by transfers and spend from it
within their caps; the owner and admins manage members and see everyone's spending, a member
sees their own. A team the caller is not a member of is 404."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from creditapp import accounts, ledger
from creditapp.accounts import teams
from creditapp.accounts.models import MEMBER_CAP_PERIODS, Team, TeamMember
from creditapp.api import csv_export, limits
from creditapp.api.credit import (
    CSV_ANSWER,
    TRANSACTIONS_CSV,
    DescribedTransactionPageSchema,
    OwnTransactionArgs,
    TransactionDetailSchema,
    UsageArgs,
    UsageReportSchema,
    transactions_of,
    usage_answer,
)
from creditapp.api.idempotency import idempotent
from creditapp.api.identity import audit_context, authenticated, caller
from creditapp.api.openapi import answers
from creditapp.api.pagination import keyset_page
from creditapp.api.parsing import Blueprint, path_id
from creditapp.api.schemas import AmountsSchema, Credits, Id, PageArgs, Text, UtcDateTime, page_of
from creditapp.billing import receipts, usage_report
from creditapp.extensions import db
from creditapp.ledger import Balance
from creditapp.ledger.models import Account
from creditapp.signals import endpoints

blp = Blueprint("teams", __name__, url_prefix="/api", description="Teams: shared wallets")

ROLES_GIVEN = ("admin", "member")  # the owner's role is never given


def _cap(**kwargs: Any) -> Credits:
    return Credits(
        allow_none=True,
        metadata={"description": "the most the member may spend per `cap_period`; null: no cap"},
        **kwargs,
    )


def _cap_period(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.OneOf(MEMBER_CAP_PERIODS), **kwargs)


class TeamArgs(Schema):
    name = Text(required=True, max_length=100, validate=validate.Length(min=1))


class MemberArgs(Schema):
    email = Text(required=True, max_length=254)
    role = fields.String(load_default="member", validate=validate.OneOf(ROLES_GIVEN))
    cap = _cap(load_default=None)
    cap_period = _cap_period(load_default=teams.DEFAULT_CAP_PERIOD)


class MemberChangeArgs(Schema):
    role = fields.String(validate=validate.OneOf(ROLES_GIVEN))
    cap = _cap()
    cap_period = _cap_period()


class TransferArgs(Schema):
    amount = Credits(required=True)


class MemberSchema(Schema):
    user_id = Id()
    email = fields.String()
    role = fields.String(metadata={"enum": ["owner", "admin", "member"]})
    cap = Credits(allow_none=True)
    cap_period = fields.String(metadata={"enum": list(MEMBER_CAP_PERIODS)})
    spent_this_period = Credits()
    reserved = Credits(metadata={"description": "held by the member's calls in flight"})
    created_at = UtcDateTime()


class TeamSummarySchema(AmountsSchema):
    id = Id()
    name = fields.String()
    role = fields.String(allow_none=True, metadata={"description": "the caller's role in the team"})
    created_at = UtcDateTime()


MemberPageSchema = page_of(MemberSchema)


class TeamSchema(TeamSummarySchema):
    members = fields.List(
        fields.Nested(MemberSchema),
        metadata={"description": "every member for the owner and admins; yourself for a member"},
    )


class TransferSchema(Schema):
    amount = Credits()
    team = fields.Nested(AmountsSchema, metadata={"description": "the team's account after"})
    personal = fields.Nested(AmountsSchema, metadata={"description": "your account after"})


class TeamUsageArgs(UsageArgs):
    group_by = Text(
        load_default="day",
        max_length=16,
        validate=validate.OneOf(usage_report.ACCOUNT_GROUPINGS),
        metadata={"description": "member: a group per member, its key their email"},
    )


def _flat(standing: teams.TeamStanding) -> dict[str, Any]:
    return {**vars(standing), **_amounts(standing.balance)}


def _amounts(balance: Balance) -> dict[str, int]:
    return {
        "balance": balance.balance,
        "reserved": balance.reserved,
        "available": balance.available,
    }


def _summary(team: Team, account: Account, now: datetime) -> dict[str, Any]:
    """A team in a list: its name and its account's figures as of `now` (expired credits not
    yet written off are not shown as spendable)."""
    return {
        "id": team.id,
        "name": team.name,
        "created_at": team.created_at,
        **_amounts(ledger.balance(db.session, account_id=account.id, now=now)),
    }


def _team_id(team_id: str) -> int:
    return path_id(team_id, "team_id")


@blp.route("/teams", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.arguments(TeamArgs)
@blp.response(201, TeamSchema)
def create_team(args: dict[str, Any]) -> Any:
    """A new team with its own account; you are its owner."""
    standing = teams.create(
        db.session,
        owner_id=caller().id,
        name=args["name"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return _flat(standing)


@blp.route("/teams", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, page_of(TeamSummarySchema))
def list_teams(args: dict[str, Any]) -> Any:
    """The teams you are a member of, newest first."""
    now = datetime.now(UTC)
    return keyset_page(
        db.session,
        teams.of_user(caller().id),
        key=Team.id,
        args=args,
        item=lambda row: {**_summary(row[0], row[2], now), "role": row[1]},
        position=lambda team: team["id"],
    )


@blp.route("/teams/<team_id>", methods=["GET"])
@authenticated()
@blp.response(200, TeamSchema)
@answers(404)
def team(team_id: str) -> Any:
    """The team's balance and the members you may see (all of them for the owner and admins,
    yourself for a member), each with their cap and what they spent this period."""
    return _team(team_id, user_id=caller().id)


def _team(team_id: str, *, user_id: int | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return _flat(teams.standing(db.session, team_id=_team_id(team_id), user_id=user_id, now=now))


@blp.route("/teams/<team_id>/members", methods=["GET"])
@authenticated()
@blp.arguments(PageArgs, location="query")
@blp.response(200, MemberPageSchema)
@answers(404)
def members(args: dict[str, Any], team_id: str) -> Any:
    """The members you may see (all for the owner and admins, yourself for a member), by user
    id, the highest first."""
    return _members_page(team_id, args, user_id=caller().id)


def _members_page(team_id: str, args: dict[str, Any], *, user_id: int | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    query = teams.members(db.session, team_id=_team_id(team_id), user_id=user_id)
    return keyset_page(
        db.session,
        query,
        key=TeamMember.user_id,
        args=args,
        item=lambda row: teams.member_row(row, now=now),
        position=lambda member: member.user_id,
    )


@blp.route("/teams/<team_id>/members", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.arguments(MemberArgs)
@blp.response(201, MemberSchema)
@answers(403, 404, 409)
def add_member(args: dict[str, Any], team_id: str) -> Any:
    """Add a user who has signed up, by their email (owner and admins)."""
    return teams.add_member(
        db.session,
        team_id=_team_id(team_id),
        actor_id=caller().id,
        **args,
        context=audit_context(),
        now=datetime.now(UTC),
    )


@blp.route("/teams/<team_id>/members/<user_id>", methods=["PATCH"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.arguments(MemberChangeArgs)
@blp.response(200, MemberSchema)
@answers(403, 404, 409)
def change_member(args: dict[str, Any], team_id: str, user_id: str) -> Any:
    """Change a member's role or cap (owner and admins). A new cap binds calls from now on.
    An admin made a plain member has the team's webhook endpoints they made disabled."""
    team, member = _team_id(team_id), path_id(user_id, "user_id")
    context, now = audit_context(), datetime.now(UTC)
    change = teams.change_member(
        db.session,
        team_id=team,
        actor_id=caller().id,
        user_id=member,
        **args,
        context=context,
        now=now,
    )
    if change.demoted:
        endpoints.stop_of_former_manager(
            db.session, team_id=team, user_id=member, context=context, now=now
        )
    return change.standing


@blp.route("/teams/<team_id>/members/<user_id>", methods=["DELETE"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent()
@blp.response(204)
@answers(403, 404, 409)
def remove_member(team_id: str, user_id: str) -> Any:
    """Remove a member (owner and admins; never the owner): their keys for the team stop, and
    the team's webhook endpoints they made are disabled."""
    team, member = _team_id(team_id), path_id(user_id, "user_id")
    context, now = audit_context(), datetime.now(UTC)
    teams.remove_member(
        db.session, team_id=team, actor_id=caller().id, user_id=member, context=context, now=now
    )
    endpoints.stop_of_former_manager(
        db.session, team_id=team, user_id=member, context=context, now=now
    )


@blp.route("/teams/<team_id>/transfers", methods=["POST"])
@limits.limiter.limit(limits.sensitive)
@authenticated()
@idempotent(required=True)
@blp.arguments(TransferArgs)
@blp.response(201, TransferSchema)
@answers(402, 404)
def transfer(args: dict[str, Any], team_id: str) -> Any:
    """Move credits from your personal account to the team, in one transaction."""
    user_id = caller().id
    moved = teams.fund(
        db.session,
        team_id=_team_id(team_id),
        user_id=user_id,
        personal_account=accounts.of_user(db.session, user_id),
        amount=args["amount"],
        context=audit_context(),
        now=datetime.now(UTC),
    )
    return {
        "amount": args["amount"],
        "team": _amounts(moved.destination),
        "personal": _amounts(moved.source),
    }


def _reader(team_id: str) -> teams.Reading:
    return teams.reading(db.session, team_id=_team_id(team_id), user_id=caller().id)


@blp.route("/teams/<team_id>/transactions", methods=["GET"])
@authenticated()
@blp.arguments(OwnTransactionArgs, location="query")
@blp.response(200, DescribedTransactionPageSchema)
@blp.alt_response(
    200, success=True, schema=CSV_ANSWER, content_type="text/csv", description=TRANSACTIONS_CSV
)
@answers(404)
def transactions(args: dict[str, Any], team_id: str) -> Any:
    """The team's ledger entries, newest first (a member's own for a member), each naming
    the member who caused it (`user_id`)."""
    read = _reader(team_id)
    return transactions_of(read.account_id, args, user_id=read.only_user)


@blp.route("/teams/<team_id>/transactions/<entry_id>", methods=["GET"])
@authenticated()
@blp.response(200, TransactionDetailSchema)
@answers(404)
def transaction(team_id: str, entry_id: str) -> Any:
    """One entry of the team's account and, for a charge, its receipt."""
    read = _reader(team_id)
    return receipts.transaction(
        db.session,
        account_id=read.account_id,
        entry_id=path_id(entry_id, "entry_id"),
        user_id=read.only_user,
    )


@blp.route("/teams/<team_id>/usage", methods=["GET"])
@authenticated()
@blp.arguments(TeamUsageArgs, location="query")
@blp.response(200, UsageReportSchema)
@blp.alt_response(
    200,
    success=True,
    schema=CSV_ANSWER,
    content_type="text/csv",
    description=csv_export.DESCRIPTION,
)
@answers(404)
def usage(args: dict[str, Any], team_id: str) -> Any:
    """Calls paid by the team (a member's own for a member), grouped by member, model or day."""
    read = _reader(team_id)
    report = usage_report.report(
        db.session,
        account_id=read.account_id,
        user_id=read.only_user,
        start=args["start"],
        end=args["end"],
        group_by=args["group_by"],
    )
    return usage_answer(report, args)


class TeamSearchArgs(PageArgs):
    q = Text(
        load_default=None,
        max_length=100,
        metadata={"description": "a part of the team's name (any case), or its id"},
    )


class AdminTeamSummarySchema(AmountsSchema):
    id = Id()
    name = fields.String()
    created_at = UtcDateTime()


@blp.route("/admin/teams", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(TeamSearchArgs, location="query")
@blp.response(200, page_of(AdminTeamSummarySchema))
def admin_teams(args: dict[str, Any]) -> Any:
    """Teams whose name contains `q` or whose id it is, newest first."""
    now = datetime.now(UTC)
    return keyset_page(
        db.session,
        teams.named(args["q"]),
        key=Team.id,
        args=args,
        item=lambda row: _summary(row[0], row[1], now),
        position=lambda team: team["id"],
    )


@blp.route("/admin/teams/<team_id>", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, TeamSchema)
@answers(404)
def admin_team(team_id: str) -> Any:
    """A team with every member, their caps and spending (`role` is null: you are not in it)."""
    return _team(team_id, user_id=None)


@blp.route("/admin/teams/<team_id>/transactions/<entry_id>", methods=["GET"])
@authenticated(admin=True)
@blp.response(200, TransactionDetailSchema)
@answers(404)
def admin_team_transaction(team_id: str, entry_id: str) -> Any:
    """One entry of the team's account and, for a charge, its receipt."""
    return receipts.transaction(
        db.session,
        account_id=accounts.of_team(db.session, _team_id(team_id)),
        entry_id=path_id(entry_id, "entry_id"),
    )


@blp.route("/admin/teams/<team_id>/members", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(PageArgs, location="query")
@blp.response(200, MemberPageSchema)
@answers(404)
def admin_team_members(args: dict[str, Any], team_id: str) -> Any:
    """Every member of the team, with their cap and spending, a page at a time."""
    return _members_page(team_id, args, user_id=None)


@blp.route("/admin/teams/<team_id>/transactions", methods=["GET"])
@authenticated(admin=True)
@blp.arguments(OwnTransactionArgs, location="query")
@blp.response(200, DescribedTransactionPageSchema)
@blp.alt_response(
    200, success=True, schema=CSV_ANSWER, content_type="text/csv", description=TRANSACTIONS_CSV
)
@answers(404)
def admin_team_transactions(args: dict[str, Any], team_id: str) -> Any:
    """Every entry of the team's account, as its owner sees them."""
    return transactions_of(accounts.of_team(db.session, _team_id(team_id)), args)
