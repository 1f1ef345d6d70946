"""Teams on the dashboard and in the admin console, in a real browser (Debian's Chromium through
Playwright, against a real gunicorn in demo mode, as in test_dashboard): the demo user creates a
team and has it chosen, moves credits to it (both balances shown move by the exact amount; more
than they have is refused in words), adds a member with a small daily cap (an unknown email, a
member added twice and the owner's role changed are refused in words). The member, on the same
tab, chooses the team and sends messages paid by it until their cap refuses one, said in words,
their spending never past the cap. The admin finds the team by name and sees its members, their
caps and spending, and its entries naming them. axe finds nothing serious; screenshots go to
DASHBOARD_SCREENSHOTS."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from decimal import Decimal

import pytest
from flask.testing import FlaskClient
from playwright.sync_api import Locator, Page, expect

from tests.conftest import Person
from tests.integration.test_dashboard import (
    Browsing,
    _api,
    _grouped,
    _send_and_wait_for_the_reply,
    _serious_violations,
    browsing,  # noqa: F401 (the fixture)
)
from tests.integration.test_teams import add, make_team

pytestmark = pytest.mark.real_clock
OWNER = "user@demo.creditapp"  # the demo user
TRANSFER = Decimal("123.5")
# A day's cap that the holds of the first two messages fit under (a hold is what the free
# tier's 1024 tokens would cost, about 8.4 credits with the history), with the first one's
# charge (about 0.13), but not the third's with the first two charges.
CAP = Decimal("8.7")


def _figure(page: Page, section: str, field: str) -> Locator:
    return page.locator(f"{section} [data-field={field}]")


def _member_rows(page: Page) -> dict[str, list[str]]:
    """The members' table, each row by email: role, cap, spent, reserved."""
    rows = page.locator("#team-members tbody tr").all()
    return {cells[0]: cells[1:5] for cells in (row.locator("td").all_inner_texts() for row in rows)}


def _entry_column(page: Page, column: int) -> list[str]:
    """A column of the team's transactions, newest first."""
    rows = page.locator("#team-transactions tbody tr").all()
    return [row.locator("td").nth(column).inner_text() for row in rows]


def _refused_in_words(on: Browsing, form: str, path: str, status: int) -> Callable[[], str]:
    """Submits `form` expecting `status` from `path`: what its outcome then says."""

    def submit() -> str:
        page = on.page
        with page.expect_response(f"**{path}") as answer:
            page.locator(f"{form} button[type=submit]").click()
        assert answer.value.status == status, answer.value.text()
        on.meant_refusals.append((status, path))
        outcome = page.locator(f"{form} .outcome")
        expect(outcome).to_have_class("outcome refused")
        return outcome.inner_text()

    return submit


def test_a_team_is_funded_and_a_capped_member_is_refused(
    browsing: Browsing,  # noqa: F811 (the fixture)
    person_factory: Callable[..., Person],
) -> None:
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    member = person_factory(f"{secrets.token_hex(4)}@example.com", tier="free")
    # Its second word, searched for below, is found in no other team's name and is not an id.
    name = f"Research r{secrets.token_hex(6)}"

    # The demo user pays from their own credits until they choose a team.
    page.goto(f"{base}/")
    page.get_by_role("button", name="Sign in as the demo user").click()
    expect(page.locator("#balance")).not_to_have_text("\u2013")
    expect(page.locator("#chat-payer")).to_have_text("Messages are paid from your own credits.")
    expect(page.locator("#team")).to_be_hidden()
    personal = Decimal(_api(base, page, "/api/credit/balance")["balance"])

    # Created, the team is chosen: its section shows it empty, the owner alone in it.
    page.locator("#team-name").fill(name)
    page.get_by_role("button", name="Create team").click()
    expect(page.locator("#team-form .outcome")).to_have_text(
        f"The team {name} is made, and chosen above: move credits to it, then add its members."
    )
    (team,) = [each for each in _api(base, page, "/api/teams")["items"] if each["name"] == name]
    teams_path = f"/api/teams/{team['id']}"
    expect(page.locator("#team-chosen")).to_have_value(str(team["id"]))
    expect(page.locator("#team-title")).to_have_text(f"Team {name}")
    expect(_figure(page, "#team-figures", "balance")).to_have_text("0")
    expect(page.locator("#chat-payer")).to_have_text(
        f"Messages are paid by the team {name} (your cap there: none)."
    )
    assert _member_rows(page) == {OWNER: ["owner", "no cap", "0", "0"]}

    # A transfer: the team's balance rises and the owner's falls by exactly the amount.
    page.locator("#transfer-amount").fill(str(TRANSFER))
    page.get_by_role("button", name="Transfer", exact=True).click()
    left = personal - TRANSFER
    expect(page.locator("#transfer-form .outcome")).to_have_text(
        f"Moved {TRANSFER} credits to the team: it has {TRANSFER} available,"
        f" and you {_grouped(str(left))} of your own."
    )
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(TRANSFER))
    expect(_figure(page, "#team-figures", "available")).to_have_text(str(TRANSFER))
    expect(page.locator("#balance")).to_have_text(_grouped(str(left)))
    assert Decimal(_api(base, page, "/api/credit/balance")["balance"]) == left
    assert Decimal(_api(base, page, teams_path)["balance"]) == TRANSFER
    # One entry per expiry of the credits drawn (the credits keep it), each naming the owner.
    funded = _api(base, page, f"{teams_path}/transactions")["items"]
    assert sum(Decimal(entry["amount"]) for entry in funded) == TRANSFER
    expect(page.locator("#team-transactions tbody tr")).to_have_count(len(funded))
    assert _entry_column(page, 1) == ["transfer_in"] * len(funded)
    assert _entry_column(page, 3) == [OWNER] * len(funded)

    # More than the owner has: refused in words, nothing moved.
    transfers = _refused_in_words(browsing, "#transfer-form", f"{teams_path}/transfers", 402)
    page.locator("#transfer-amount").fill("1000000")
    assert transfers() == (
        f"Not enough credits: the transfer needs 1,000,000 and you have {_grouped(str(left))}"
        " available of your own."
    )
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(TRANSFER))
    assert Decimal(_api(base, page, "/api/credit/balance")["balance"]) == left
    assert _serious_violations(page) == []
    page.locator("#team").screenshot(path=str(screenshots / "dashboard-team-transfer.png"))

    # Members: an unknown email and a member added twice are refused in words.
    add = _refused_in_words(browsing, "#member-form", f"{teams_path}/members", 404)
    page.locator("#member-email").fill("nobody@example.com")
    assert add() == (
        "No one has signed up with the email nobody@example.com: they must sign up before they"
        " can be added."
    )
    page.locator("#member-email").fill(member.email)
    page.locator("#member-cap").fill(str(CAP))
    page.locator("#member-period").select_option("day")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#member-form .outcome")).to_have_text(
        f"{member.email} is a member of the team, with a cap of {CAP} a day."
    )
    expect(page.locator("#team-members tbody tr")).to_have_count(2)
    assert _member_rows(page)[member.email] == ["member", f"{CAP} a day", "0", "0"]
    again = _refused_in_words(browsing, "#member-form", f"{teams_path}/members", 409)
    page.locator("#member-email").fill(member.email)
    assert again() == f"{member.email} is already a member of this team."

    # The owner's role stays: changed from the owner's row, refused in words.
    page.get_by_role("button", name=f"Change {OWNER}").click()
    expect(page.locator("#change-role")).to_have_value("owner")
    page.locator("#change-role").select_option("admin")
    owner_path = f"{teams_path}/members/{_api(base, page, '/api/me')['id']}"
    change = _refused_in_words(browsing, "#member-change", owner_path, 409)
    assert change() == (
        "The team's owner stays its owner: they cannot be removed, and their role cannot change."
    )
    assert _serious_violations(page) == []
    page.locator("#team").screenshot(path=str(screenshots / "dashboard-team-members.png"))

    # The member, on the same tab: the team chosen, they see their own row, and manage nothing.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()
    page.evaluate(f"sessionStorage.setItem('creditapp.access_token', '{member.token}')")
    page.reload()
    page.locator("#team-chosen").select_option(label=f"{name} (member)")
    expect(page.locator("#team-title")).to_have_text(f"Team {name}")
    expect(page.locator("#team-members tbody tr")).to_have_count(1)
    expect(page.locator("#team-manage")).to_be_hidden()
    expect(page.locator("#chat-payer")).to_have_text(
        f"Messages are paid by the team {name} (your cap there: {CAP} a day)."
    )

    # Messages paid by the team until the cap refuses one; the member's own credits untouched.
    page.get_by_role("button", name="Start a conversation").click()
    page.get_by_label("Your message").wait_for()
    conversation = _api(base, page, "/api/conversations")["items"][0]["id"]
    own = _api(base, page, "/api/credit/balance")["balance"]
    charges = [_send_and_wait_for_the_reply(page, f"Hello {n}") for n in range(2)]
    spent = sum(charges, Decimal(0))
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(TRANSFER - spent))
    messages = f"/api/conversations/{conversation}/messages"
    with page.expect_response(f"**{messages}") as answer:
        page.get_by_label("Your message").fill("Hello 2")
        page.get_by_role("button", name="Send").click()
    assert answer.value.status == 402
    browsing.meant_refusals.append((402, messages))
    details = answer.value.json()["error"]["details"]
    assert Decimal(details["spent"]) == spent
    assert spent + Decimal(details["required"]) > CAP
    expect(page.locator("#chat-error")).to_have_text(
        f"You have reached your cap in this team for the day: of {CAP} credits, {spent} are"
        f" spent and 0 held, and this message needs up to {details['required']}."
    )
    standing = _api(base, page, teams_path)
    assert standing["members"] == [
        {**standing["members"][0], "spent_this_period": str(spent), "reserved": "0"}
    ]
    assert Decimal(standing["balance"]) == TRANSFER - spent
    assert _member_rows(page)[member.email] == ["member", f"{CAP} a day", str(spent), "0"]
    assert _api(base, page, "/api/credit/balance")["balance"] == own
    # The member sees their own entries only: the two charges.
    expect(page.locator("#team-transactions tbody tr")).to_have_count(2)
    assert _entry_column(page, 3) == [member.email] * 2
    assert _serious_violations(page) == []
    page.locator("#team").screenshot(path=str(screenshots / "dashboard-team-member.png"))
    chat = page.locator("section").filter(has=page.locator("#chat-title"))
    chat.screenshot(path=str(screenshots / "dashboard-team-capped.png"))

    # The admin finds the team by its name and sees who spent what from it. (The member's
    # sign-out is over before the tab moves on: left midway, the admin page would find the
    # member's token revoked in the tab, and say so.)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as the demo user").wait_for()
    page.goto(f"{base}/admin")
    page.get_by_role("button", name="Sign in as the demo admin").click()
    page.get_by_label("Name contains, or id").fill(name.split()[1])
    page.get_by_role("button", name="Search teams").click()
    found = page.locator("#teams tbody tr")
    expect(found).to_have_count(1)
    found.get_by_role("button", name=f"Open the team {name}").click()
    expect(page.locator("#team-title")).to_have_text(f"Team {name} (id {team['id']})")
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(TRANSFER - spent))
    expect(page.locator("#team-members tbody tr")).to_have_count(2)
    assert _member_rows(page) == {
        OWNER: ["owner", "no cap", "0", "0"],
        member.email: ["member", f"{CAP} a day", str(spent), "0"],
    }
    expect(page.locator("#team-transactions tbody tr")).to_have_count(2 + len(funded))
    assert _entry_column(page, 1) == ["charge"] * 2 + ["transfer_in"] * len(funded)
    assert _entry_column(page, 3) == [member.email] * 2 + [OWNER] * len(funded)
    # Every column, the receipts' included, in view without scrolling sideways: the members'
    # emails wrap after their "@".
    entries = page.locator("#team-transactions .table-scroll")
    assert entries.evaluate("region => region.scrollWidth <= region.clientWidth")
    assert _serious_violations(page) == []

    # The admin grants the team credits and takes some away; more than it has is refused.
    balance = TRANSFER - spent
    page.locator("#team-grant-amount").fill("10")
    page.locator("#team-grant-reason").fill("launch credit")
    page.get_by_role("button", name="Grant to the team").click()
    expect(page.locator("#team-grant-form .outcome")).to_have_text(
        f"Granted 10 credits: the balance is {balance + 10}."
    )
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(balance + 10))
    adjust = page.get_by_role("button", name="Adjust the team's balance")
    page.locator("#team-adjust-amount").fill(str(-(balance + 11)))
    page.locator("#team-adjust-reason").fill("correction")
    with page.expect_response("**/api/admin/credit/adjust") as refused:
        adjust.click()
    assert refused.value.status == 409
    browsing.meant_refusals.append((409, "/api/admin/credit/adjust"))
    expect(page.locator("#team-adjust-form .outcome")).to_contain_text("available")
    page.locator("#team-adjust-amount").fill("-2.5")
    adjust.click()
    expect(page.locator("#team-adjust-form .outcome")).to_have_text(
        f"Adjusted by -2.5 credits: the balance is {balance + Decimal('7.5')}."
    )
    expect(_figure(page, "#team-figures", "balance")).to_have_text(str(balance + Decimal("7.5")))
    assert _api(base, page, f"/api/admin/teams/{team['id']}")["balance"] == str(
        balance + Decimal("7.5")
    )
    expect(page.locator("#team-transactions tbody tr")).to_have_count(4 + len(funded))
    assert _entry_column(page, 1)[:2] == ["adjust", "grant"]
    assert _entry_column(page, 3)[:2] == ["\u2013", "\u2013"]  # caused by no member
    assert _serious_violations(page) == []
    page.locator("#team").screenshot(path=str(screenshots / "admin-team.png"))


def test_a_team_admin_manages_its_plain_members_only(
    browsing: Browsing,  # noqa: F811 (the fixture)
    client: FlaskClient,
    person_factory: Callable[..., Person],
) -> None:
    """What a team's admin is offered is what the service lets them do: Change on plain
    members' rows only (not on the owner's, another admin's or their own), Remove on plain
    members' and their own (to leave), and the admin role never to give; a plain member's cap
    they change, and leaving, they pay from their own credits again."""
    base, page, screenshots = browsing.base, browsing.page, browsing.screenshots
    owner, admin, other_admin, member = (
        person_factory(f"{role}-{secrets.token_hex(4)}@example.com")
        for role in ("owner", "admin", "second", "member")
    )
    name = f"Managed t{secrets.token_hex(6)}"
    team = make_team(client, owner, name)
    for who, role in ((admin, "admin"), (other_admin, "admin"), (member, "member")):
        assert add(client, owner, team["id"], who.email, role=role).status_code == 201

    page.goto(f"{base}/")
    page.evaluate(f"sessionStorage.setItem('creditapp.access_token', '{admin.token}')")
    page.reload()
    page.locator("#team-chosen").select_option(label=f"{name} (admin)")
    expect(page.locator("#team-members tbody tr")).to_have_count(4)
    expect(page.locator("#team-standing")).to_have_text(
        "You are its admin: you see every member and manage them."
    )
    buttons = {
        row.locator("td").first.inner_text(): row.get_by_role("button").all_inner_texts()
        for row in page.locator("#team-members tbody tr").all()
    }
    assert buttons == {
        owner.email: [],
        admin.email: ["Remove"],
        other_admin.email: [],
        member.email: ["Change", "Remove"],
    }
    expect(page.locator('#member-role option[value="admin"]')).to_be_disabled()
    expect(page.locator('#change-role option[value="admin"]')).to_be_disabled()
    expect(page.locator("#change-member option")).to_have_text([f"{member.email} (member)"])

    page.get_by_role("button", name=f"Change {member.email}").click()
    page.locator("#change-cap").fill("5")
    page.locator("#change-period").select_option("month")
    with page.expect_response(f"**/api/teams/{team['id']}/members/*") as changed:
        page.locator("#member-change button[type=submit]").click()
    assert changed.value.status == 200, changed.value.text()
    expect(page.locator("#team-members tbody tr").filter(has_text=member.email)).to_contain_text(
        "5 a month"
    )
    assert _serious_violations(page) == []
    page.locator("#team").screenshot(path=str(screenshots / "dashboard-team-admin.png"))

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(f"**/api/teams/{team['id']}/members/*") as left:
        page.get_by_role("button", name=f"Remove {admin.email}").click()
    assert left.value.status == 204
    expect(page.locator("#team")).to_be_hidden()
    expect(page.locator("#team-chosen option")).to_have_text(["Personal: your own credits"])
    expect(page.locator("#chat-payer")).to_have_text("Messages are paid from your own credits.")
