"""Live consult rooms: chat kept with the consult, recording consents, stored recordings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.db import Base
from storage.types import UTCDateTime, utcnow


class _RoomEvent:
    """What a participant added to a consult's room record, and when; rows are only appended."""

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoomChatMessage(_RoomEvent, Base):
    """A chat line said in a consult's room; part of the consult's record."""

    __tablename__ = "room_chat_messages"

    text: Mapped[str] = mapped_column(Text)


class RoomConsent(_RoomEvent, Base):
    """One consent decision (given or withdrawn); the latest one counts."""

    __tablename__ = "room_consents"

    given: Mapped[bool] = mapped_column(Boolean)


class Recording(Base):
    """A recorded stretch of a room (audio and video of everyone present), in the object store."""

    __tablename__ = "room_recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    session: Mapped[str] = mapped_column(String(32), unique=True)
    object_key: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(64), default="video/mp4")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    participants: Mapped[list] = mapped_column(JSON, default=list)  # usernames present, all of whom consented
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
