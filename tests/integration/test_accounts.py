"""Which account pays: the caller's personal account, or a team's account when the caller is a
member of that team; a team the caller is not a member of does not exist for them (404). An
account has exactly one owner, a user or a team, and the database refuses anything else (these
tests really commit: a constraint must speak at COMMIT on both databases)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from creditapp import accounts, ledger
from creditapp.accounts.models import Team
from creditapp.auth.models import User
from creditapp.auth.principal import Principal
from creditapp.database import write_transaction
from creditapp.errors import NotFound
from creditapp.extensions import db
from tests.conftest import UNFUNDED_TIER, Person, utcnow
from tests.helpers import new_team


def _team(*members: int) -> tuple[int, int]:
    """A committed team with these members (the first its owner) and its own account: (team
    id, account id)."""
    return new_team(*members)


def _signed_in(person: Person) -> Principal:
    user = db.session.get(User, person.id)
    assert user is not None
    return Principal.signed_in(user)


def _refused_as_not_found(principal: Principal, team_id: int | None = None) -> None:
    with pytest.raises(NotFound) as refused:
        accounts.paying_account(db.session, principal, team_id)
    assert (refused.value.status, refused.value.code) == (404, "not_found")


def test_a_caller_pays_from_their_personal_account(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    person, other = person_factory(), person_factory()
    _team(person.id)  # being a member of a team changes nothing when no team is named

    assert accounts.paying_account(db.session, _signed_in(person)) == person.account_id
    assert accounts.paying_account(db.session, _signed_in(other)) == other.account_id
    assert accounts.of_user(db.session, person.id) == person.account_id
    assert person.account_id != other.account_id


def test_an_api_key_spends_from_its_owners_personal_account(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    person = person_factory()
    owner = db.session.get(User, person.id)
    key = Principal("api_key", user=owner, api_key_id=1)

    assert accounts.paying_account(db.session, key) == person.account_id


def test_a_member_naming_their_team_pays_from_the_teams_account(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    owner, member = person_factory(), person_factory()
    team_id, team_account = _team(owner.id, member.id)

    assert team_account not in (owner.account_id, member.account_id)
    assert accounts.paying_account(db.session, _signed_in(owner), team_id) == team_account
    assert accounts.paying_account(db.session, _signed_in(member), team_id) == team_account
    assert accounts.of_team(db.session, team_id) == team_account


def test_a_team_the_caller_is_not_a_member_of_does_not_exist_for_them(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    member, outsider = person_factory(), person_factory()
    team_id, _ = _team(member.id)
    other_team_id, _ = _team(outsider.id)

    _refused_as_not_found(_signed_in(outsider), team_id)
    _refused_as_not_found(_signed_in(member), other_team_id)


def test_a_team_that_does_not_exist_is_not_found(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    person = person_factory()
    team_id, _ = _team(person.id)

    _refused_as_not_found(_signed_in(person), team_id + 1000)
    with pytest.raises(NotFound):
        accounts.of_team(db.session, team_id + 1000)
    with pytest.raises(NotFound):
        accounts.of_user(db.session, person.id + 1000)


def test_a_webhook_sender_has_no_account_to_pay_from(ctx, person_factory) -> None:  # type: ignore[no-untyped-def]
    person = person_factory()
    team_id, _ = _team(person.id)
    sender = Principal("webhook", sender="stripe")

    _refused_as_not_found(sender)
    _refused_as_not_found(sender, team_id)


def _bare_user(email: str) -> int:
    """A committed user without an account (users.create always opens one)."""
    now = utcnow()
    with write_transaction(db.session):
        user = User(
            email=email, role="user", tier_name=UNFUNDED_TIER, period_anchor=now, created_at=now
        )
        db.session.add(user)
        db.session.flush()
        return user.id


def _insert_account(*, user_id: int | None, team_id: int | None) -> None:
    with write_transaction(db.session):
        db.session.execute(
            text(
                "INSERT INTO accounts (user_id, team_id, balance, reserved, last_seq, created_at)"
                " VALUES (:user, :team, 0, 0, NULL, :now)"
            ),
            {"user": user_id, "team": team_id, "now": _now_param()},
        )


def _now_param() -> object:
    # Raw SQL binds bypass the UTCDateTime type: give each database what it stores.
    now = utcnow()
    return now.replace(tzinfo=None) if db.engine.dialect.name == "sqlite" else now


@pytest.mark.parametrize("owners", ["both", "neither"])
def test_an_account_with_both_or_no_owners_cannot_commit(ctx, owners: str) -> None:  # type: ignore[no-untyped-def]
    user_id = _bare_user("bare@example.com")
    with write_transaction(db.session):
        team_without_account = Team(name="No account yet", created_at=utcnow())
        db.session.add(team_without_account)
    before = db.session.execute(text("SELECT COUNT(*) FROM accounts")).scalar_one()

    with pytest.raises(IntegrityError, match="one_owner"):
        if owners == "both":
            _insert_account(user_id=user_id, team_id=team_without_account.id)
        else:
            _insert_account(user_id=None, team_id=None)

    assert db.session.execute(text("SELECT COUNT(*) FROM accounts")).scalar_one() == before
    # Exactly one owner commits, a user or a team.
    _insert_account(user_id=user_id, team_id=None)
    _insert_account(user_id=None, team_id=team_without_account.id)
    assert accounts.of_user(db.session, user_id) != accounts.of_team(
        db.session, team_without_account.id
    )
    assert ledger.reconcile(db.session) == []
