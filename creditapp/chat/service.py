"""Chat: characters, conversations, and the messages sent in them.

Sending a message is a metered call (`creditapp.billing.call`): chat turns the message into the
call's request, with the conversation's character and history (`message_call`), and stores the
exchange, the user message and the reply linked to the call's usage record, in the settle
transaction (`store_exchange`), so that both messages commit with the charge, or neither does.
A streamed reply's user message is stored with the hold instead (`store_message`), so that the
stream can name it, and removed again when nothing is charged (`unsend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, delete, func, or_, select

from creditapp import ledger
from creditapp.auth.models import User
from creditapp.billing import compensations
from creditapp.billing.call import Held, MeteredRequest, Origin, Settled, Undo
from creditapp.billing.models import Compensation, UsageRecord
from creditapp.chat.models import Character, Conversation, Message
from creditapp.database import DbSession
from creditapp.errors import Forbidden, NotFound, ValidationFailed
from creditapp.kept import Kept
from creditapp.ledger.sql import LedgerSql, Statement
from creditapp.metering.providers import PROVIDER_NAMES, ChatMessage
from creditapp.metering.usage import Usage
from creditapp.pricing import book

# Characters


def visible_characters(user: User) -> Select[tuple[Character]]:
    """The public characters and the user's own: each side read by an index of its own
    (`public` as the partial index says it), not the whole table."""
    return select(Character).where(or_(Character.public, Character.owner_id == user.id))


def get_character(session: DbSession, *, user: User, character_id: int) -> Character:
    character = session.get(Character, character_id)
    if character is None or not (character.public or character.owner_id == user.id):
        raise NotFound("No such character.")
    return character


def create_character(
    session: DbSession,
    *,
    owner: User,
    name: str,
    system_prompt: str,
    provider: str,
    model: str,
    public: bool,
    context: ledger.AuditContext,
    now: datetime,
) -> Character:
    """A character of the owner's; a public one (an admin's: every user may chat with it) is
    audited."""
    if public and not owner.is_admin:  # a role's refusal (contract, section 4: 403)
        raise Forbidden("Only admins may create public characters.")
    if provider not in PROVIDER_NAMES:
        raise ValidationFailed(
            details={"provider": [f"Must be one of {', '.join(PROVIDER_NAMES)}."]}
        )
    book.price_in_force(session, provider=provider, model=model, at=now)
    character = Character(
        owner_id=owner.id,
        name=name,
        system_prompt=system_prompt,
        provider=provider,
        model=model,
        public=public,
        created_at=now,
    )
    session.add(character)
    session.flush()
    if public:
        ledger.record_action(
            session,
            action="public_character_created",
            context=context,
            now=now,
            details={
                "character_id": str(character.id),
                "name": name,
                "provider": provider,
                "model": model,
            },
        )
    return character


# Conversations


def create_conversation(
    session: DbSession, *, user: User, character_id: int, now: datetime
) -> Conversation:
    character = get_character(session, user=user, character_id=character_id)
    conversation = Conversation(user_id=user.id, character_id=character.id, created_at=now)
    session.add(conversation)
    session.flush()
    return conversation


def get_conversation(session: DbSession, *, user: User, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None or conversation.user_id != user.id:
        raise NotFound("No such conversation.")
    return conversation


def user_conversations(user: User) -> Select[Conversation]:
    return select(Conversation).where(Conversation.user_id == user.id)


def conversation_messages(conversation: Conversation) -> Select[Message]:
    return select(Message).where(Message.conversation_id == conversation.id)


def message_charged_by(session: DbSession, usage_id: int) -> int | None:
    """The message whose exchange a call's charge paid for (its first message: refunding
    either message of the exchange is the same refund), or None for a call of no message."""
    return session.scalar(select(func.min(Message.id)).where(Message.usage_id == usage_id))


def refund_message(
    session: DbSession,
    *,
    message_id: int,
    reason: str,
    context: ledger.AuditContext,
    now: datetime,
) -> Compensation:
    """An admin's refund of the charge for a message (either message of the exchange)."""
    usage = session.scalar(
        select(UsageRecord)
        .join(Message, Message.usage_id == UsageRecord.id)
        .where(Message.id == message_id)
    )
    if usage is None:
        raise NotFound("No such message, or no charge belongs to it.")
    return compensations.refund_usage(
        session,
        usage=usage,
        reason=f"refund of message {message_id}: {reason}",
        context=context,
        now=now,
    )


# Messages


@dataclass(frozen=True)
class _Speaker:
    """What a conversation's character brings to each of its calls."""

    provider: str
    model: str
    system_prompt: str


# A conversation's user and character, and a character's prompt and model, never change once
# made: every process keeps them (for a few seconds, all the same: a copy read in a transaction
# that then rolled back must not last).
_kept_characters: Kept[tuple[int, int], _Speaker] = Kept()


def _character_of(session: DbSession, conversation_id: int, user: User) -> _Speaker:
    character = session.scalars(
        select(Character)
        .join(Conversation, Conversation.character_id == Character.id)
        .where(Conversation.id == conversation_id, Conversation.user_id == user.id)
    ).one_or_none()
    if character is None:
        raise NotFound("No such conversation.")
    return _Speaker(character.provider, character.model, character.system_prompt)


@dataclass(frozen=True)
class MessageCall:
    """A message on its way: the metered call it makes, and what chat stores of it."""

    conversation_id: int
    content: str
    request: MeteredRequest
    origin: Origin


def message_call(
    session: DbSession,
    *,
    user: User,
    conversation_id: int,
    content: str,
    max_tokens: int | None,
    history_messages: int,
) -> MessageCall:
    """The call that sends `content` to the conversation's character, with the last
    `history_messages` messages of the conversation before it."""
    character = _kept_characters.get(
        session, (conversation_id, user.id), lambda: _character_of(session, conversation_id, user)
    )
    history = LedgerSql(session).all(
        _HISTORY, conversation=conversation_id, messages=history_messages
    )
    # A reply of only whitespace (a stream cut after a space, a reply of max_tokens 1) says
    # nothing, and Anthropic refuses a message of no text: it is not sent again.
    earlier = [ChatMessage(role, text) for role, text in reversed(history) if text.strip()]
    request = MeteredRequest(
        provider=character.provider,
        model=character.model,
        system_prompt=character.system_prompt,
        messages=(*earlier, ChatMessage("user", content)),
        max_tokens=max_tokens,
    )
    origin = Origin(f"conversation:{conversation_id}", conversation_id)
    return MessageCall(conversation_id, content, request, origin)


# The last messages of a conversation, newest first: what a message sends before it (plain SQL:
# the ORM would make an instance of each of them, on every message).
_HISTORY = Statement(
    """SELECT role, content FROM messages WHERE conversation_id = :conversation
       ORDER BY id DESC LIMIT :messages"""
)


@dataclass(frozen=True)
class Exchange:
    """The outcome of one message. `reply` is None when the provider gave no reply and the
    charge is being refunded by `compensation`."""

    message: Message
    reply: Message | None
    settled: Settled

    @property
    def usage(self) -> Usage:
        return self.settled.usage

    @property
    def credits_charged(self) -> int:
        return self.settled.credits_charged

    @property
    def balance(self) -> ledger.Balance:
        return self.settled.balance

    @property
    def compensation(self) -> Compensation | None:
        return self.settled.compensation


def store_message(session: DbSession, call: MessageCall, held: Held) -> Message:
    """Store the user message of a streamed reply with its hold (the caller's transaction)."""
    (message,) = _inserted(
        LedgerSql(session), [_message(call, "user", call.content, held.at, usage_id=None)]
    )
    return message


def unsend(message: Message) -> Undo:
    """The undo of `store_message`, for a stream that charged nothing."""
    message_id = message.id

    def remove(session: DbSession) -> None:
        # By id, not through the ORM: the undo may run in another session, once the database
        # is back.
        session.execute(delete(Message).where(Message.id == message_id))

    return remove


def store_exchange(
    session: DbSession, call: MessageCall, settled: Settled, message: Message | None = None
) -> Exchange:
    """Store the user message (new, or `message` stored when its stream began) and the reply,
    both linked to the call's usage record, in the settle transaction. New messages go in one
    statement, sent with the settle's writes: on a busy database the round trip costs more
    than the rows."""
    sql = LedgerSql(session)
    new = []
    if message is None:
        new.append(_message(call, "user", call.content, settled.held.at, settled.usage_id))
    else:
        # Stored by the hold's transaction: linked here, a write that goes with the commit.
        sql.run(_LINK_MESSAGE, usage=settled.usage_id, id=message.id)
        message.usage_id = settled.usage_id
    if settled.text:
        reply = _message(call, "assistant", settled.text, settled.at, settled.usage_id)
        reply.partial = settled.ending != "completed"
        new.append(reply)
    inserted = _inserted(sql, new)
    if message is None:
        message = inserted.pop(0)
    return Exchange(message, inserted[0] if inserted else None, settled)


def _message(
    call: MessageCall, role: str, content: str, at: datetime, usage_id: int | None
) -> Message:
    """A message of the call's conversation, not stored yet."""
    return Message(
        conversation_id=call.conversation_id,
        role=role,
        content=content,
        partial=False,
        usage_id=usage_id,
        created_at=at,
    )


_MESSAGE_COLUMNS = ("conversation_id", "role", "content", "partial", "usage_id", "created_at")
# Messages inserted in one statement, by how many (an exchange's: at most two). Their roles tell
# which id is whose: the order of RETURNING's rows is not promised.
_INSERT_MESSAGES = {
    count: Statement(
        "INSERT INTO messages ({}) VALUES {} RETURNING id, role".format(
            ", ".join(_MESSAGE_COLUMNS),
            ", ".join(
                "({})".format(", ".join(f":{column}_{index}" for column in _MESSAGE_COLUMNS))
                for index in range(count)
            ),
        )
    )
    for count in (1, 2)
}
_LINK_MESSAGE = Statement("UPDATE messages SET usage_id = :usage WHERE id = :id")


def _inserted(sql: LedgerSql, messages: list[Message]) -> list[Message]:
    """Insert `messages` (of distinct roles) in one statement; they come back with their ids,
    as they are (not loaded in a session: nothing of them is read again)."""
    if not messages:
        return []
    params = {
        f"{column}_{index}": getattr(message, column)
        for index, message in enumerate(messages)
        for column in _MESSAGE_COLUMNS
    }
    for index, message in enumerate(messages):
        params[f"created_at_{index}"] = sql.time(message.created_at)
    ids = {
        role: message_id for message_id, role in sql.all(_INSERT_MESSAGES[len(messages)], **params)
    }
    for message in messages:
        message.id = ids[message.role]
    return messages
