"""Cloud film (云胶片): the link and PIN that let one patient see their shared studies on a phone."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from imaging.models import Study
from storage.db import Base
from storage.types import UTCDateTime, utcnow


class Share(Base):
    """A cloud-film link (云胶片) that lets one patient see one study after a PIN.

    Only hashes are stored: the link token as SHA-256, the PIN as HMAC-SHA256 keyed with
    the server secret and a per-share salt. The token is derived from `token_nonce` with
    the server secret (film/service.py), so a worker holding the key can print the QR
    code again while the database alone opens nothing.
    """

    __tablename__ = "shares"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_nonce: Mapped[str] = mapped_column(String(32))
    pin_salt: Mapped[str] = mapped_column(String(32))
    pin_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str] = mapped_column(String(128), default="")
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Temporary lockout after MAX_FAILED_PINS wrong PINs, longer each time (film/service.py).
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lockouts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    opened_count: Mapped[int] = mapped_column(Integer, default=0)
    last_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The printable film sheet (film/sheet.py), made by a worker.
    film_key: Mapped[str | None] = mapped_column(String(400))
    film_state: Mapped[str] = mapped_column(String(16), default="")  # "" pending ready failed

    study: Mapped[Study] = relationship()


class ShareStudy(Base):
    """Another study of the same patient shared through the same link ("shared together"):
    the patient sees it after the same PIN; nothing else of the patient."""

    __tablename__ = "share_studies"
    __table_args__ = (UniqueConstraint("share_id", "study_pk"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id"), index=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    study_instance_uid: Mapped[str] = mapped_column(String(128))
