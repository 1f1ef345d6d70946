"""What each ledger entry was for, in words: a charge's call (the conversation's character and
the model, or the API key it was made with), a grant's source and reason, an adjustment's or a
refund's reason, the credits a refresh or an expiry concerns. Chat describes them because only
chat knows whose conversation a charge paid for."""

from __future__ import annotations

from sqlalchemy import select

from creditapp import ledger
from creditapp.accounts.models import Team
from creditapp.accounts.teams import FROM_USER, TO_TEAM
from creditapp.auth import api_keys
from creditapp.auth.models import ApiKey, User
from creditapp.billing.models import UsageRecord
from creditapp.chat.models import Character, Conversation
from creditapp.database import DbSession
from creditapp.ledger.models import LedgerEntry

# How a grant's source reads in a description.
SOURCE_WORDS = {
    "purchase": "Purchase",
    "promo": "Promo",
    "admin": "From an admin",
    "transfer": "Transfer",
}

# A charge's call: provider, model, how it ended, and the conversation's character (if any).
Call = tuple[str, str, str, str | None]


def describe(session: DbSession, entries: list[LedgerEntry]) -> dict[int, str]:
    """What each of the entries was for, by entry id: the ledger's grounds (grant, audit
    record) and a charge's call (usage record, conversation's character) read in two queries
    for all of them."""
    grounds = ledger.entry_grounds(session, entry_ids=[entry.id for entry in entries])
    charges = [entry for entry in entries if entry.type == "charge" and entry.hold_id]
    calls = _calls(session, [entry.hold_id for entry in charges if entry.hold_id])
    keys = _key_names(session, [api_keys.key_of_reference(entry.reference) for entry in charges])
    descriptions = {
        entry.id: _description(
            entry, grounds.get(entry.id), calls.get(entry.hold_id) if entry.hold_id else None
        )
        for entry in entries
    }
    for entry in charges:
        name = keys.get(api_keys.key_of_reference(entry.reference))
        if name is not None:
            descriptions[entry.id] = f"API key “{name}”: {descriptions[entry.id]}"
    descriptions.update(_transfers(session, entries))
    return descriptions


def _referenced(entries: list[LedgerEntry], entry_type: str, prefix: str) -> dict[int, int]:
    """The id each entry of `entry_type` names in its reference (`team:3`), by entry id."""
    return {
        entry.id: int(entry.reference.removeprefix(prefix))
        for entry in entries
        if entry.type == entry_type and entry.reference and entry.reference.startswith(prefix)
    }


def _transfers(session: DbSession, entries: list[LedgerEntry]) -> dict[int, str]:
    """Transfers' entries by the other side: the team's name, the member's email."""
    to_teams = _referenced(entries, "transfer_out", TO_TEAM)
    from_users = _referenced(entries, "transfer_in", FROM_USER)
    names: dict[int, str] = {}
    if to_teams:
        names = dict(
            session.execute(select(Team.id, Team.name).where(Team.id.in_(set(to_teams.values()))))
            .tuples()
            .all()
        )
    emails: dict[int, str] = {}
    if from_users:
        emails = dict(
            session.execute(
                select(User.id, User.email).where(User.id.in_(set(from_users.values())))
            )
            .tuples()
            .all()
        )
    described = {
        entry_id: f"Transfer to team “{names[team_id]}”"
        for entry_id, team_id in to_teams.items()
        if team_id in names
    }
    return described | {
        entry_id: f"Transfer from {emails[user_id]}"
        for entry_id, user_id in from_users.items()
        if user_id in emails
    }


def _key_names(session: DbSession, key_ids: list[int | None]) -> dict[int | None, str]:
    wanted = {key_id for key_id in key_ids if key_id is not None}
    if not wanted:
        return {}
    rows = session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(wanted)))
    return {key_id: name for key_id, name in rows}


def _calls(session: DbSession, hold_ids: list[int]) -> dict[int, Call]:
    """The call each of the holds paid for, by hold id."""
    if not hold_ids:
        return {}
    rows = session.execute(
        select(
            UsageRecord.hold_id,
            UsageRecord.provider,
            UsageRecord.model,
            UsageRecord.ending,
            Character.name,
        )
        .outerjoin(Conversation, Conversation.id == UsageRecord.conversation_id)
        .outerjoin(Character, Character.id == Conversation.character_id)
        .where(UsageRecord.hold_id.in_(hold_ids))
    )
    return {
        hold_id: (provider, model, ending, name) for hold_id, provider, model, ending, name in rows
    }


def _charge_description(call: Call | None) -> str:
    if call is None:
        return "Charge"
    provider, model, ending, character = call
    called = f"{provider}:{model}"
    said = f"Chat with {character} ({called})" if character else f"Call to {called}"
    return said if ending == "completed" else f"{said}, cut short"


def _description(entry: LedgerEntry, grounds: ledger.EntryGrounds | None, call: Call | None) -> str:
    if entry.type == "charge":
        return _charge_description(call)
    if grounds is None:  # every entry has a grant and an audit record: never, but typed so
        return entry.type.capitalize()
    reason = grounds.details.get("reason") or grounds.grant_reason
    if entry.type == "refund":
        if reason and reason.lower().startswith("refund"):
            return reason[0].upper() + reason[1:]
        return f"Refund: {reason}" if reason else "Refund"
    if entry.type == "adjust":
        return f"Adjustment: {reason}" if reason else "Adjustment"
    if entry.type == "refresh":
        return f"Subscription credits for {grounds.grant_period}"
    source = SOURCE_WORDS.get(grounds.grant_source, grounds.grant_source)
    if entry.type == "expire":
        if grounds.grant_source == "subscription":
            return f"Expired: subscription credits for {grounds.grant_period}"
        given_for = f": {grounds.grant_reason}" if grounds.grant_reason else ""
        return f"Expired: a grant ({source.lower()}){given_for}"
    return f"{source}: {reason}" if reason else source
