"""Pregnancies, their risk gradings (every one kept), referrals and the referrals' transport events."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, Date, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.models import Institution, User
from storage.types import UTCDateTime, utcnow

PREGNANCY_STATUSES = ("ongoing", "delivered", "ended")
DIRECTIONS = ("up", "down")  # 上转 | 下转
TRANSPORT_STATUSES = ("pending", "in_transit", "arrived", "cancelled")


class Pregnancy(Base):
    """One pregnancy of a person (the master patient index row) or, when the patient has no
    person, of one patient record; managed by one institution."""

    __tablename__ = "pregnancies"
    __table_args__ = (CheckConstraint("(person_id IS NULL) <> (patient_pk IS NULL)", name="owner"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    patient_pk: Mapped[int | None] = mapped_column(ForeignKey("patients.id"), index=True)
    lmp: Mapped[date | None] = mapped_column(Date)  # 末次月经
    edd: Mapped[date | None] = mapped_column(Date)  # 预产期
    gravida: Mapped[int] = mapped_column(Integer, default=1)
    para: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="ongoing")  # ongoing | delivered | ended
    ended_on: Mapped[date | None] = mapped_column(Date)  # delivered or ended on (grading stays open 42 days)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)  # managing
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    institution: Mapped[Institution] = relationship()
    created_by: Mapped[User] = relationship()


class RiskGrading(Base):
    """One grading: the criteria chosen from maternal/criteria.py, the colour they give, who,
    where and when. Never edited: the pregnancy's current colour is its newest grading."""

    __tablename__ = "pregnancy_gradings"

    id: Mapped[int] = mapped_column(primary_key=True)
    pregnancy_id: Mapped[int] = mapped_column(ForeignKey("pregnancies.id"), index=True)
    level: Mapped[str] = mapped_column(String(8))  # green | yellow | orange | red
    infectious: Mapped[bool] = mapped_column(Boolean, default=False)  # purple beside the level
    criteria: Mapped[list] = mapped_column(JSON, default=list)  # codes
    note: Mapped[str] = mapped_column(Text, default="")
    ga_days: Mapped[int | None] = mapped_column(Integer)  # gestational age at grading
    graded_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    graded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    graded_by: Mapped[User] = relationship()
    institution: Mapped[Institution] = relationship()


class Referral(Base):
    """上转 (to an ancestor or a partner) or 下转 (to a descendant) of a pregnant or postpartum
    woman, with the record as it stood when she was referred (`record`), the transport status
    and, going down, the follow-up instructions."""

    __tablename__ = "maternal_referrals"

    id: Mapped[int] = mapped_column(primary_key=True)
    pregnancy_id: Mapped[int] = mapped_column(ForeignKey("pregnancies.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # up | down
    from_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    to_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    consult_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    referred_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_findings: Mapped[str] = mapped_column(Text, default="")
    record: Mapped[dict] = mapped_column(JSON, default=dict)  # the snapshot (maternal/referrals.py)
    transport_status: Mapped[str] = mapped_column(String(16), default="pending")
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    cancel_reason: Mapped[str] = mapped_column(Text, default="")
    follow_up_instructions: Mapped[str] = mapped_column(Text, default="")  # 下转 only
    follow_up_on: Mapped[date | None] = mapped_column(Date)

    pregnancy: Mapped[Pregnancy] = relationship()
    from_institution: Mapped[Institution] = relationship(foreign_keys=[from_institution_id])
    to_institution: Mapped[Institution] = relationship(foreign_keys=[to_institution_id])
    referred_by: Mapped[User] = relationship()


class ReferralEvent(Base):
    """A change of a referral's transport status (the first has no from_status)."""

    __tablename__ = "maternal_referral_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("maternal_referrals.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    note: Mapped[str] = mapped_column(Text, default="")

    user: Mapped[User] = relationship()
