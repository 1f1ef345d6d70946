"""Teams (contract section 8, "Teams"): made by their owner, members added by email with a role
and a cap, managed by the owner and admins only, and invisible to everyone else (404); spending
from the team names the member on every entry, in every listing, usage report and receipt; a
removed member's key spends no more."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.test import TestResponse

from creditapp import ledger
from creditapp.accounts import teams
from creditapp.billing.models import UsageRollup
from creditapp.database import write_transaction
from creditapp.extensions import db
from creditapp.money import format_credits
from tests.conftest import TEST_CONTEXT, Person, utcnow
from tests.fake_providers import Answer, FakeProviders
from tests.helpers import (
    ADJUST,
    GRANT,
    add_price,
    assert_error,
    run_job_at,
    start_conversation,
    until,
    waits_for_a_lock,
)

CR = 1_000_000
TEAMS = "/api/teams"
# 100 tokens in at 1 USD and 50 out at 2 USD per million: 0.2 credits a call.
USAGE = {"prompt_tokens": 100, "completion_tokens": 50}
CALL_COST = 200_000


def with_key(person: Person) -> dict[str, str]:
    return {**person.headers, "Idempotency-Key": secrets.token_hex(8)}


def make_team(client: FlaskClient, owner: Person, name: str = "Ours") -> dict[str, Any]:
    made = client.post(TEAMS, json={"name": name}, headers=with_key(owner))
    assert made.status_code == 201, made.get_json()
    team: dict[str, Any] = made.get_json()
    return team


def add(client: FlaskClient, manager: Person, team_id: str, email: str, **fields: Any) -> Any:
    return client.post(
        f"{TEAMS}/{team_id}/members", json={"email": email, **fields}, headers=with_key(manager)
    )


def added(client: FlaskClient, manager: Person, team_id: str, member: Person, **fields: Any) -> Any:
    response = add(client, manager, team_id, member.email, **fields)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def member_path(team_id: str, person: Person) -> str:
    return f"{TEAMS}/{team_id}/members/{person.id}"


def fund(client: FlaskClient, person: Person, team_id: str, amount: str) -> None:
    moved = client.post(
        f"{TEAMS}/{team_id}/transfers", json={"amount": amount}, headers=with_key(person)
    )
    assert moved.status_code == 201, moved.get_json()


def team_balance(client: FlaskClient, person: Person, team_id: str) -> str:
    seen: str = client.get(f"{TEAMS}/{team_id}", headers=person.headers).get_json()["balance"]
    return seen


def member_row(client: FlaskClient, viewer: Person, team_id: str, member: Person) -> Any:
    members = client.get(f"{TEAMS}/{team_id}", headers=viewer.headers).get_json()["members"]
    [row] = [row for row in members if row["user_id"] == str(member.id)]
    return row


@pytest.fixture
def priced(app: Flask) -> None:
    add_price(app, "openai", "gpt-team", input="1", output="2")


def message(
    client: FlaskClient, person: Person, conversation: str, team_id: str | None
) -> TestResponse:
    return client.post(
        f"/api/conversations/{conversation}/messages",
        json={"content": "Hello there", "team_id": team_id},
        headers=with_key(person),
    )


def spend(
    client: FlaskClient,
    fake: FakeProviders,
    person: Person,
    team_id: str,
    model: str = "gpt-team",
    times: int = 1,
) -> None:
    """`times` messages of the person's to `model`, paid by the team, 0.2 credits each."""
    conversation = start_conversation(client, person, "openai", model)
    fake.script("openai", *(Answer(usage=USAGE) for _ in range(times)))
    for _ in range(times):
        sent = message(client, person, conversation, team_id)
        assert sent.status_code == 201, sent.get_json()
        assert sent.get_json()["credits_charged"] == "0.2"


# 1. Making and listing teams


def test_a_new_team_is_empty_and_its_maker_is_its_uncapped_owner(
    client: FlaskClient, person_factory: Any
) -> None:
    owner = person_factory()

    team = make_team(client, owner, "Research")

    [me] = team["members"]
    assert me == {
        "user_id": str(owner.id),
        "email": owner.email,
        "role": "owner",
        "cap": None,
        "cap_period": "month",
        "spent_this_period": "0",
        "reserved": "0",
        "created_at": me["created_at"],
    }
    assert team == {
        "id": team["id"],
        "name": "Research",
        "role": "owner",
        "balance": "0",
        "reserved": "0",
        "available": "0",
        "created_at": team["created_at"],
        "members": [me],
    }
    assert client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json() == team
    for bad in ({"name": ""}, {"name": "   "}, {"name": "n" * 101}, {}):
        refused = client.post(TEAMS, json=bad, headers=with_key(owner))
        assert list(assert_error(refused, 400, "validation_error")["details"]) == ["name"]


def test_teams_are_listed_newest_first_a_page_at_a_time_and_only_ones_own(
    client: FlaskClient, person_factory: Any
) -> None:
    person, other = person_factory(), person_factory()
    mine = [make_team(client, person, f"Mine {n}") for n in range(2)]
    theirs = make_team(client, other, "Theirs, with me")
    added(client, other, theirs["id"], person)
    make_team(client, other, "Theirs alone")

    first = client.get(f"{TEAMS}?limit=2", headers=person.headers).get_json()
    assert [(item["id"], item["role"]) for item in first["items"]] == [
        (theirs["id"], "member"),
        (mine[1]["id"], "owner"),
    ]
    assert first["items"][1] == {k: v for k, v in mine[1].items() if k != "members"}
    rest = client.get(
        f"{TEAMS}?limit=2&cursor={first['next_cursor']}", headers=person.headers
    ).get_json()
    assert [item["id"] for item in rest["items"]] == [mine[0]["id"]]
    assert rest["next_cursor"] is None
    assert client.get(TEAMS, headers=person_factory().headers).get_json() == {
        "items": [],
        "next_cursor": None,
    }


def test_lists_of_teams_never_show_expired_credits_as_spendable(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    """Credits that expired and were not yet written off (no operation on the team since)."""
    owner = person_factory()
    team = make_team(client, owner)
    past = utcnow() - timedelta(hours=2)
    with app.app_context():
        with write_transaction(db.session):
            ledger.grant(
                db.session,
                account_id=teams.of_team(db.session, int(team["id"])),
                amount=5 * CR,
                source="promo",
                reason="expired since",
                context=TEST_CONTEXT,
                now=past,
                expires_at=past + timedelta(hours=1),
            )
        db.session.remove()
    figures = ("balance", "reserved", "available")
    shown = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()
    assert [shown[name] for name in figures] == ["0", "0", "0"]
    [listed] = client.get(TEAMS, headers=owner.headers).get_json()["items"]
    [found] = client.get(f"/api/admin/teams?q={team['id']}", headers=admin.headers).get_json()[
        "items"
    ]
    assert [listed[name] for name in figures] == [found[name] for name in figures] == ["0"] * 3


# 2. Members


def test_the_owner_sees_every_member_and_a_member_only_themselves(
    client: FlaskClient, person_factory: Any
) -> None:
    owner, helper, member = person_factory(), person_factory(), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], helper, role="admin")
    added(client, owner, team["id"], member, cap="5", cap_period="day")

    for manager in (owner, helper):
        seen = client.get(f"{TEAMS}/{team['id']}", headers=manager.headers).get_json()
        assert [(m["user_id"], m["role"]) for m in seen["members"]] == [
            (str(owner.id), "owner"),
            (str(helper.id), "admin"),
            (str(member.id), "member"),
        ]
        listed = client.get(f"{TEAMS}/{team['id']}/members", headers=manager.headers).get_json()
        assert [m["user_id"] for m in listed["items"]] == [
            str(member.id),
            str(helper.id),
            str(owner.id),
        ]
    as_member = client.get(f"{TEAMS}/{team['id']}", headers=member.headers).get_json()
    assert as_member["role"] == "member"
    [only] = as_member["members"]
    assert (only["user_id"], only["cap"], only["cap_period"]) == (str(member.id), "5", "day")
    listed = client.get(f"{TEAMS}/{team['id']}/members", headers=member.headers).get_json()
    assert listed == {"items": [only], "next_cursor": None}


def test_a_member_is_added_by_the_email_they_signed_up_with(
    client: FlaskClient, person_factory: Any
) -> None:
    owner, member = person_factory(), person_factory()
    team = make_team(client, owner)

    made = added(client, owner, team["id"], member, role="admin", cap="12.5", cap_period="day")

    assert made == {
        "user_id": str(member.id),
        "email": member.email,
        "role": "admin",
        "cap": "12.5",
        "cap_period": "day",
        "spent_this_period": "0",
        "reserved": "0",
        "created_at": made["created_at"],
    }
    plain = added(client, owner, team["id"], person_factory())
    assert (plain["role"], plain["cap"], plain["cap_period"]) == ("member", None, "month")
    assert_error(add(client, owner, team["id"], "nobody@example.com"), 404, "user_not_found")
    assert_error(add(client, owner, team["id"], member.email), 409, "already_team_member")
    assert_error(add(client, owner, team["id"], owner.email), 409, "already_team_member")
    stranger = person_factory()
    for bad, field in (
        ({"role": "owner"}, "role"),
        ({"role": "boss"}, "role"),
        ({"cap": "-1"}, "cap"),
        ({"cap": "0.0000001"}, "cap"),
        ({"cap_period": "week"}, "cap_period"),
    ):
        refused = add(client, owner, team["id"], stranger.email, **bad)
        assert list(assert_error(refused, 400, "validation_error")["details"]) == [field]
    members = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()["members"]
    assert len(members) == 3 and str(stranger.id) not in {m["user_id"] for m in members}


def test_a_members_role_and_cap_change_and_a_null_cap_lifts_it(
    client: FlaskClient, person_factory: Any
) -> None:
    owner, member = person_factory(), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member, cap="5")

    changed = client.patch(
        member_path(team["id"], member),
        json={"role": "admin", "cap": "25", "cap_period": "day"},
        headers=owner.headers,
    )
    assert changed.status_code == 200, changed.get_json()
    body = changed.get_json()
    assert (body["role"], body["cap"], body["cap_period"]) == ("admin", "25", "day")
    assert member_row(client, owner, team["id"], member) == body

    lifted = client.patch(
        member_path(team["id"], member), json={"cap": None}, headers=owner.headers
    )
    assert lifted.status_code == 200, lifted.get_json()
    assert (lifted.get_json()["cap"], lifted.get_json()["cap_period"]) == (None, "day")
    # Made an admin, the member manages the team too.
    added(client, member, team["id"], person_factory())
    # Back to a plain member: no more.
    demoted = client.patch(
        member_path(team["id"], member), json={"role": "member"}, headers=owner.headers
    )
    assert demoted.get_json()["role"] == "member"
    assert_error(add(client, member, team["id"], person_factory().email), 403, "team_managers_only")
    refused = client.patch(
        member_path(team["id"], member), json={"cap": "-2"}, headers=owner.headers
    )
    assert list(assert_error(refused, 400, "validation_error")["details"]) == ["cap"]
    assert_error(
        client.patch(
            f"{TEAMS}/{team['id']}/members/99999", json={"cap": "1"}, headers=owner.headers
        ),
        404,
        "not_found",
    )


def test_a_capped_admin_adds_no_member_and_changes_no_cap(
    client: FlaskClient, person_factory: Any
) -> None:
    """A member a capped admin adds or uncaps may be the admin under another account, as many
    as they like: adding members and setting caps are then the owner's. An uncapped admin
    does both."""
    owner, capped, free, member = (person_factory() for _ in range(4))
    team = make_team(client, owner)
    added(client, owner, team["id"], capped, role="admin", cap="20", cap_period="month")
    added(client, owner, team["id"], free, role="admin")
    added(client, owner, team["id"], member, cap="5", cap_period="month")
    newcomer = person_factory()
    for fields in ({}, {"cap": "1", "cap_period": "month"}):
        refused = add(client, capped, team["id"], newcomer.email, **fields)
        assert_error(refused, 403, "team_owner_only")
    for change in ({"cap": None}, {"cap": "1"}, {"cap_period": "day"}):
        refused = client.patch(member_path(team["id"], member), json=change, headers=capped.headers)
        assert_error(refused, 403, "team_owner_only")
    assert member_row(client, owner, team["id"], member)["cap"] == "5"
    # What is not about money stays theirs: removing a plain member.
    assert client.delete(member_path(team["id"], member), headers=capped.headers).status_code == 204

    joined = added(client, free, team["id"], newcomer)
    assert joined["cap"] is None
    capped_by_free = client.patch(
        member_path(team["id"], newcomer), json={"cap": "3"}, headers=free.headers
    )
    assert capped_by_free.status_code == 200 and capped_by_free.get_json()["cap"] == "3"


def test_the_owner_can_be_neither_removed_nor_given_another_role(
    client: FlaskClient, person_factory: Any
) -> None:
    owner, helper = person_factory(), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], helper, role="admin")

    for manager in (owner, helper):
        assert_error(
            client.delete(member_path(team["id"], owner), headers=manager.headers),
            409,
            "team_owner_fixed",
        )
        for role in ("admin", "member"):
            refused = client.patch(
                member_path(team["id"], owner), json={"role": role}, headers=manager.headers
            )
            if manager is owner:
                assert_error(refused, 409, "team_owner_fixed")
            else:  # an admin does not change the owner at all
                assert_error(refused, 403, "team_owner_only")
    assert member_row(client, owner, team["id"], owner)["role"] == "owner"
    # An admin can be removed (by another manager), and is then no member.
    removed = client.delete(member_path(team["id"], helper), headers=owner.headers)
    assert removed.status_code == 204 and removed.get_data() == b""
    assert_error(client.get(f"{TEAMS}/{team['id']}", headers=helper.headers), 404, "not_found")
    assert_error(
        client.delete(member_path(team["id"], helper), headers=owner.headers), 404, "not_found"
    )


def test_an_admin_manages_plain_members_and_the_admins_are_the_owners(
    client: FlaskClient, person_factory: Any
) -> None:
    """A cap an admin could lift, themselves or through an admin they made, would bind
    nothing: the owner adds and makes admins and sets their caps and roles, and their own."""
    owner, helper, other_admin, member = (person_factory() for _ in range(4))
    team = make_team(client, owner)
    added(client, owner, team["id"], helper, role="admin", cap="20", cap_period="day")
    added(client, owner, team["id"], other_admin, role="admin", cap="20", cap_period="day")
    added(client, owner, team["id"], member)
    before = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()

    for target, change in (
        (helper, {"cap": None}),
        (helper, {"cap": "1000"}),
        (helper, {"role": "member"}),
        (other_admin, {"cap": None}),
        (member, {"role": "admin"}),
        (owner, {"cap": "1"}),
    ):
        refused = client.patch(member_path(team["id"], target), json=change, headers=helper.headers)
        assert_error(refused, 403, "team_owner_only")
    newcomer = person_factory()
    refused = add(client, helper, team["id"], newcomer.email, role="admin")
    assert_error(refused, 403, "team_owner_only")
    assert client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json() == before

    # The helper's own cap makes a member's cap the owner's too (see the capped admin's test).
    refused = client.patch(
        member_path(team["id"], member), json={"cap": "3"}, headers=helper.headers
    )
    assert_error(refused, 403, "team_owner_only")
    lifted = client.patch(
        member_path(team["id"], helper), json={"cap": None}, headers=owner.headers
    )
    assert lifted.status_code == 200 and lifted.get_json()["cap"] is None
    own = client.patch(member_path(team["id"], owner), json={"cap": "50"}, headers=owner.headers)
    assert own.status_code == 200 and own.get_json()["cap"] == "50"
    # Another admin is the owner's to remove; a plain member is an admin's, and so is leaving.
    refused = client.delete(member_path(team["id"], other_admin), headers=helper.headers)
    assert_error(refused, 403, "team_owner_only")
    for target in (member, helper):
        gone = client.delete(member_path(team["id"], target), headers=helper.headers)
        assert gone.status_code == 204, gone.get_json()
    standing = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()
    assert sorted(each["user_id"] for each in standing["members"]) == sorted(
        [str(owner.id), str(other_admin.id)]
    )


# 3. Who may see and do what


def _team_paths(team_id: str, member: Person) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every team endpoint: method, path and body."""
    return [
        ("GET", f"{TEAMS}/{team_id}", None),
        ("GET", f"{TEAMS}/{team_id}/members", None),
        ("POST", f"{TEAMS}/{team_id}/members", {"email": member.email}),
        ("PATCH", member_path(team_id, member), {"cap": "1"}),
        ("DELETE", member_path(team_id, member), None),
        ("POST", f"{TEAMS}/{team_id}/transfers", {"amount": "1"}),
        ("GET", f"{TEAMS}/{team_id}/transactions", None),
        ("GET", f"{TEAMS}/{team_id}/transactions/1", None),
        ("GET", f"{TEAMS}/{team_id}/usage", None),
    ]


def test_a_team_is_not_found_by_anyone_outside_it(client: FlaskClient, person_factory: Any) -> None:
    owner, member = person_factory(credits=5 * CR), person_factory()
    stranger = person_factory(credits=5 * CR)
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "2")
    before = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()

    for team_id in (team["id"], str(int(team["id"]) + 1000)):
        for method, path, body in _team_paths(team_id, member):
            answer = client.open(path, method=method, json=body, headers=with_key(stranger))
            assert_error(answer, 404, "not_found")
    assert client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json() == before
    assert client.get("/api/credit/balance", headers=stranger.headers).get_json()["balance"] == "5"


def test_a_plain_member_may_not_manage_members(client: FlaskClient, person_factory: Any) -> None:
    owner, member, other = person_factory(), person_factory(), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    added(client, owner, team["id"], other)
    before = client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json()

    for target in (other, member, owner):
        assert_error(
            client.patch(
                member_path(team["id"], target), json={"cap": "1"}, headers=member.headers
            ),
            403,
            "team_managers_only",
        )
        assert_error(
            client.delete(member_path(team["id"], target), headers=with_key(member)),
            403,
            "team_managers_only",
        )
    assert_error(add(client, member, team["id"], person_factory().email), 403, "team_managers_only")
    assert client.get(f"{TEAMS}/{team['id']}", headers=owner.headers).get_json() == before


def _refused_without_exactly_one_account(
    client: FlaskClient, admin: Person, path: str, team_id: str, user: Person
) -> None:
    """An admin's operation naming both a user and a team, or neither, is refused."""
    for both_or_neither in ({"team_id": team_id, "user_id": str(user.id)}, {}):
        refused = client.post(
            path, json={"amount": "1", "reason": "which?", **both_or_neither}, headers=admin.headers
        )
        assert list(assert_error(refused, 400, "validation_error")["details"]) == ["user_id"]


def test_an_admin_grants_credits_to_a_team(
    app: Flask, client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    owner = person_factory()
    team = make_team(client, owner)

    granted = client.post(
        GRANT,
        json={"team_id": team["id"], "amount": "40", "reason": "launch credit", "source": "promo"},
        headers=admin.headers,
    )

    assert granted.status_code == 201, granted.get_json()
    body = granted.get_json()
    assert body["balance"] == {"balance": "40", "reserved": "0", "available": "40"}
    assert (body["grant"]["source"], body["grant"]["amount"]) == ("promo", "40")
    assert team_balance(client, owner, team["id"]) == "40"
    assert client.get("/api/credit/balance", headers=owner.headers).get_json()["balance"] == "0"
    _refused_without_exactly_one_account(client, admin, GRANT, team["id"], owner)
    missing = {"team_id": str(int(team["id"]) + 1000), "amount": "1", "reason": "nobody"}
    assert_error(client.post(GRANT, json=missing, headers=admin.headers), 404, "not_found")
    assert_error(
        client.post(GRANT, json={**missing, "team_id": team["id"]}, headers=owner.headers),
        403,
        "forbidden",
    )
    assert team_balance(client, owner, team["id"]) == "40"


def test_an_admin_adjusts_a_teams_credits_but_never_below_zero(
    client: FlaskClient, person_factory: Any, admin: Person
) -> None:
    owner = person_factory(credits=10 * CR)
    team = make_team(client, owner)
    fund(client, owner, team["id"], "10")

    def adjust(amount: str, *, who: Person = admin, **account: str) -> TestResponse:
        return client.post(
            ADJUST,
            json={"amount": amount, "reason": "correction", **(account or {"team_id": team["id"]})},
            headers=who.headers,
        )

    up, down = adjust("5"), adjust("-12.5")
    assert (up.status_code, down.status_code) == (200, 200)
    assert down.get_json() == {
        "amount": "-12.5",
        "balance": {"balance": "2.5", "reserved": "0", "available": "2.5"},
    }
    error = assert_error(adjust("-2.500001"), 409, "balance_would_go_negative")
    assert error["details"] == {"requested": "2.500001", "available": "2.5"}
    _refused_without_exactly_one_account(client, admin, ADJUST, team["id"], owner)
    assert_error(adjust("1", team_id=str(int(team["id"]) + 1000)), 404, "not_found")
    assert_error(adjust("1", who=owner), 403, "forbidden")
    # The team's account moved, on its own entries (no member caused them); the owner's did not.
    assert team_balance(client, owner, team["id"]) == "2.5"
    assert client.get("/api/credit/balance", headers=owner.headers).get_json()["balance"] == "0"
    entries = client.get(f"{TEAMS}/{team['id']}/transactions", headers=owner.headers).get_json()
    # (Taken from the team's grants one entry each, as the ledger draws them.)
    assert [(entry["type"], entry["amount"], entry["user_id"]) for entry in entries["items"]] == [
        ("adjust", "-2.5", None),
        ("adjust", "-10", None),
        ("adjust", "5", None),
        ("transfer_in", "10", str(owner.id)),
    ]


def _completion(client: FlaskClient, key: str) -> TestResponse:
    return client.post(
        "/v1/chat/completions",
        json={"model": "openai/gpt-team", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )


def _team_key(client: FlaskClient, person: Person, team_id: str) -> dict[str, Any]:
    made = client.post(
        "/api/keys", json={"name": "team", "team_id": team_id}, headers=with_key(person)
    )
    assert made.status_code == 201, made.get_json()
    key: dict[str, Any] = made.get_json()
    return key


@pytest.mark.postgres_only
def test_a_key_asked_for_while_its_maker_is_removed_is_refused(
    app: Flask, client: FlaskClient, person_factory: Any
) -> None:
    """The removal holds the team's row; the key waits for it, then finds no membership: no
    key of the team is left to a user outside it (it would work again were they re-added)."""
    owner, member = person_factory(), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    answers: list[Any] = []

    def ask_for_a_key() -> None:
        with app.test_client() as own:
            body = {"name": "racing", "team_id": team["id"]}
            answers.append(own.post("/api/keys", json=body, headers=with_key(member)))

    asking = threading.Thread(target=ask_for_a_key)
    with app.app_context():
        with write_transaction(db.session):
            teams.remove_member(
                db.session,
                team_id=int(team["id"]),
                actor_id=owner.id,
                user_id=member.id,
                context=TEST_CONTEXT,
                now=utcnow(),
            )
            asking.start()
            assert until(lambda: not asking.is_alive() or waits_for_a_lock())
        db.session.remove()
    asking.join(30)
    [answer] = answers
    assert_error(answer, 404, "not_found")
    assert client.get("/api/keys", headers=member.headers).get_json()["items"] == []


def test_a_removed_members_key_stops_spending_at_the_next_request(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(credits=10 * CR), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "10")
    members_key, owners_key = (
        _team_key(client, member, team["id"]),
        _team_key(client, owner, team["id"]),
    )
    fake_providers.script("openai", *(Answer(usage=USAGE) for _ in range(3)))
    assert _completion(client, members_key["key"]).status_code == 200
    assert _completion(client, owners_key["key"]).status_code == 200

    assert client.delete(member_path(team["id"], member), headers=owner.headers).status_code == 204

    refused = _completion(client, members_key["key"])
    assert refused.status_code == 401, refused.get_json()
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    assert len(fake_providers.calls("openai")) == 2
    assert (
        client.get(f"/api/keys/{members_key['id']}", headers=member.headers).get_json()[
            "revoked_at"
        ]
        is not None
    )
    assert _completion(client, owners_key["key"]).status_code == 200
    assert team_balance(client, owner, team["id"]) == format_credits(10 * CR - 3 * CALL_COST)


# 4. Spending from the team, and reading what was spent


def test_a_message_naming_the_team_is_paid_by_the_team_and_counted_for_the_member(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(credits=10 * CR), person_factory(credits=3 * CR)
    team = make_team(client, owner)
    added(client, owner, team["id"], member, cap="1")
    fund(client, owner, team["id"], "10")

    spend(client, fake_providers, member, team["id"], times=2)

    assert team_balance(client, owner, team["id"]) == format_credits(10 * CR - 2 * CALL_COST)
    assert client.get("/api/credit/balance", headers=member.headers).get_json()["balance"] == "3"
    row = member_row(client, owner, team["id"], member)
    assert (row["spent_this_period"], row["reserved"], row["cap"]) == (
        format_credits(2 * CALL_COST),
        "0",
        "1",
    )
    assert member_row(client, member, team["id"], member) == row
    assert member_row(client, owner, team["id"], owner)["spent_this_period"] == "0"
    # Without the team, the member pays from their own account.
    conversation = start_conversation(client, member, "openai", "gpt-team")
    fake_providers.script("openai", Answer(usage=USAGE))
    assert message(client, member, conversation, None).status_code == 201
    assert client.get("/api/credit/balance", headers=member.headers).get_json()[
        "balance"
    ] == format_credits(3 * CR - CALL_COST)
    assert member_row(client, owner, team["id"], member)["spent_this_period"] == format_credits(
        2 * CALL_COST
    )
    # Someone outside the team cannot pay with it.
    stranger = person_factory(credits=3 * CR)
    theirs = start_conversation(client, stranger, "openai", "gpt-team")
    assert_error(message(client, stranger, theirs, team["id"]), 404, "not_found")
    assert len(fake_providers.calls("openai")) == 3


def _transactions(client: FlaskClient, person: Person, team_id: str) -> list[dict[str, Any]]:
    answer = client.get(f"{TEAMS}/{team_id}/transactions?limit=100", headers=person.headers)
    assert answer.status_code == 200, answer.get_json()
    items: list[dict[str, Any]] = answer.get_json()["items"]
    return items


def test_team_transactions_name_the_member_and_members_read_their_own(
    app: Flask,
    client: FlaskClient,
    admin: Person,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(credits=10 * CR), person_factory(credits=2 * CR)
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "10")
    fund(client, member, team["id"], "2")
    spend(client, fake_providers, owner, team["id"])
    spend(client, fake_providers, member, team["id"], times=2)

    everything = _transactions(client, owner, team["id"])
    assert [(item["type"], item["amount"], item["user_id"]) for item in everything] == [
        ("charge", "-0.2", str(member.id)),
        ("charge", "-0.2", str(member.id)),
        ("charge", "-0.2", str(owner.id)),
        ("transfer_in", "2", str(member.id)),
        ("transfer_in", "10", str(owner.id)),
    ]
    own = _transactions(client, member, team["id"])
    assert own == [item for item in everything if item["user_id"] == str(member.id)]

    # A charge's receipt names the member who made the call.
    members_charge, owners_charge = everything[0], everything[2]
    detail = client.get(
        f"{TEAMS}/{team['id']}/transactions/{members_charge['id']}", headers=owner.headers
    )
    assert detail.status_code == 200, detail.get_json()
    assert detail.get_json()["entry"] == members_charge
    receipt = detail.get_json()["receipt"]
    assert (receipt["model"], receipt["charged"]) == ("gpt-team", "0.2")
    own_detail = client.get(
        f"{TEAMS}/{team['id']}/transactions/{members_charge['id']}", headers=member.headers
    )
    assert own_detail.get_json() == detail.get_json()
    # A member cannot read another's entry of the team, nor a team entry as their own.
    assert_error(
        client.get(
            f"{TEAMS}/{team['id']}/transactions/{owners_charge['id']}", headers=member.headers
        ),
        404,
        "not_found",
    )
    assert_error(
        client.get(f"/api/credit/transactions/{members_charge['id']}", headers=member.headers),
        404,
        "not_found",
    )
    # An admin reads the team's entries and receipts as its owner does.
    as_admin = client.get(f"/api/admin/teams/{team['id']}/transactions", headers=admin.headers)
    assert as_admin.get_json()["items"] == everything
    admin_detail = client.get(
        f"/api/admin/teams/{team['id']}/transactions/{members_charge['id']}",
        headers=admin.headers,
    )
    assert admin_detail.get_json() == detail.get_json()


def test_team_usage_sums_exactly_by_member_model_and_day(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    add_price(app, "openai", "gpt-other", input="1", output="2")
    owner, member = person_factory(credits=10 * CR), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "10")
    first_day = utcnow().date()
    spend(client, fake_providers, owner, team["id"])
    spend(client, fake_providers, member, team["id"], times=2)
    spend(client, fake_providers, member, team["id"], model="gpt-other")
    days = {first_day.isoformat(), utcnow().date().isoformat()}

    def usage(person: Person, group_by: str) -> dict[str, Any]:
        answer = client.get(
            f"{TEAMS}/{team['id']}/usage?group_by={group_by}", headers=person.headers
        )
        assert answer.status_code == 200, answer.get_json()
        report: dict[str, Any] = answer.get_json()
        return report

    def sums(report: dict[str, Any]) -> dict[str, tuple[int, str]]:
        return {group["key"]: (group["requests"], group["credits"]) for group in report["groups"]}

    by_member = usage(owner, "member")
    assert sums(by_member) == {owner.email: (1, "0.2"), member.email: (3, "0.6")}
    assert (by_member["totals"]["requests"], by_member["totals"]["credits"]) == (4, "0.8")
    assert (by_member["totals"]["input_tokens"], by_member["totals"]["output_tokens"]) == (400, 200)
    assert sums(usage(owner, "model")) == {
        "openai:gpt-team": (3, "0.6"),
        "openai:gpt-other": (1, "0.2"),
    }
    by_day = usage(owner, "day")
    assert set(sums(by_day)) <= days
    assert sum(requests for requests, _credits in sums(by_day).values()) == 4
    # A member's report is their own calls only.
    assert sums(usage(member, "member")) == {member.email: (3, "0.6")}
    assert sums(usage(member, "model")) == {
        "openai:gpt-team": (2, "0.4"),
        "openai:gpt-other": (1, "0.2"),
    }
    refused = client.get(f"{TEAMS}/{team['id']}/usage?group_by=user", headers=owner.headers)
    assert list(assert_error(refused, 400, "validation_error")["details"]) == ["group_by"]
    with app.app_context():
        assert ledger.reconcile(db.session) == []
        db.session.remove()


def test_a_teams_usage_of_whole_days_comes_from_the_roll_ups_as_a_users_does(
    app: Flask,
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    """A team of many members' calls over a year is read from its roll-ups, not summed from
    every record: the same report before and after the roll-up job, whose sums it then shows."""
    owner, member = person_factory(credits=10 * CR), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "10")
    spend(client, fake_providers, owner, team["id"])
    spend(client, fake_providers, member, team["id"], times=2)
    today = utcnow().date()

    def by_member(person: Person) -> dict[str, tuple[int, str]]:
        answer = client.get(
            f"{TEAMS}/{team['id']}/usage?group_by=member&from={today}&to={today}",
            headers=person.headers,
        )
        assert answer.status_code == 200, answer.get_json()
        groups = answer.get_json()["groups"]
        return {group["key"]: (group["requests"], group["credits"]) for group in groups}

    before = {person.email: by_member(person) for person in (owner, member)}
    assert before[owner.email] == {owner.email: (1, "0.2"), member.email: (2, "0.4")}
    assert before[member.email] == {member.email: (2, "0.4")}
    assert run_job_at(app, "rollup", utcnow())["rolled_up"] == 3
    assert {person.email: by_member(person) for person in (owner, member)} == before
    # Today is a whole day of the range: its sums are the roll-ups', as the job wrote them.
    with app.app_context():
        db.session.execute(
            update(UsageRollup).where(UsageRollup.user_id == member.id).values(requests=20)
        )
        db.session.commit()
    assert by_member(owner) == {owner.email: (1, "0.2"), member.email: (20, "0.4")}
    assert by_member(member) == {member.email: (20, "0.4")}


def test_a_removed_member_can_no_longer_pay_from_the_team(
    client: FlaskClient,
    person_factory: Any,
    fake_providers: FakeProviders,
    priced: None,
) -> None:
    owner, member = person_factory(credits=10 * CR), person_factory()
    team = make_team(client, owner)
    added(client, owner, team["id"], member)
    fund(client, owner, team["id"], "10")
    conversation = start_conversation(client, member, "openai", "gpt-team")
    assert (
        client.delete(member_path(team["id"], member), headers=with_key(owner)).status_code == 204
    )

    assert_error(message(client, member, conversation, team["id"]), 404, "not_found")
    assert fake_providers.calls("openai") == []
    assert team_balance(client, owner, team["id"]) == "10"


def test_managers_changing_one_member_at_once_get_answers_never_a_server_error(
    app: Flask, person_factory: Any
) -> None:
    """Changes to one team run one at a time: of two adding one email, one adds and the other
    is told the member exists; of a change and a removal of one member, whichever runs second
    sees the first's outcome."""
    owner, other_admin, member = person_factory(), person_factory(), person_factory()
    client = app.test_client()
    team = make_team(client, owner)
    added(client, owner, team["id"], other_admin, role="admin")

    def at_once(*requests: Any) -> list[TestResponse]:
        barrier = threading.Barrier(len(requests))

        def one(request: Any) -> TestResponse:
            own_client = app.test_client()
            barrier.wait(timeout=60)
            answer: TestResponse = request(own_client)
            return answer

        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            return list(pool.map(one, requests))

    adding = at_once(
        lambda own: add(own, owner, team["id"], member.email),
        lambda own: add(own, other_admin, team["id"], member.email),
    )
    assert sorted(answer.status_code for answer in adding) == [201, 409]
    assert {answer.get_json().get("error", {}).get("code") for answer in adding} == {
        None,
        "already_team_member",
    }

    changing = at_once(
        lambda own: own.patch(
            member_path(team["id"], member), json={"cap": "5"}, headers=with_key(owner)
        ),
        lambda own: own.delete(member_path(team["id"], member), headers=with_key(other_admin)),
    )
    statuses = sorted(answer.status_code for answer in changing)
    assert statuses in ([200, 204], [204, 404]), statuses
    members = client.get(f"{TEAMS}/{team['id']}/members", headers=owner.headers).get_json()
    assert member.id not in {int(row["user_id"]) for row in members["items"]}
