"""Tables of chat: characters, conversations and their messages."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from creditapp.database import BigIntId, UTCDateTime, one_of
from creditapp.extensions import db

MESSAGE_ROLES = ("user", "assistant")


class Character(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "characters"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    owner_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    system_prompt: Mapped[str] = mapped_column(Text, nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    public: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    # The characters a user sees (`chat.service.visible_characters`), newest first: their own
    # by the first index, the public ones by the second, each in id order.
    __table_args__ = (
        Index("ix_characters_owner_id", "owner_id", "id"),
        Index(
            "ix_characters_public",
            "id",
            postgresql_where=text("public"),
            sqlite_where=text("public"),
        ),
    )


class Conversation(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("users.id"), nullable=False)
    character_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("characters.id"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    # A user's conversations newest first, a page at a time.
    __table_args__ = (Index("ix_conversations_user_id", "user_id", "id"),)


class Message(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("conversations.id"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # A reply cut short (the client left, or the provider failed, mid-stream): what was delivered.
    partial: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # Both messages of an exchange point to the usage record of the call that answered.
    usage_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("usage_records.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(one_of("role", MESSAGE_ROLES), name="role_known"),
        Index("ix_messages_conversation_id", "conversation_id", "id"),
    )
