"""Consults: requests and their history, schedules, reports and their signed versions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.models import Institution, User
from storage.types import UTCDateTime, utcnow

KINDS = ("read", "live")
PRIORITIES = ("routine", "urgent", "critical")
# 孕产妇妊娠风险五色管理: green low, yellow moderate, orange high, red very high, purple infectious.
RISK_COLOURS = ("green", "yellow", "orange", "red", "purple")
STATUSES = ("requested", "accepted", "declined", "assigned", "scheduled", "in_progress", "reported", "final",
            "returned", "acknowledged", "cancelled")


class ConsultRequest(Base):
    __tablename__ = "consult_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="requested", index=True)
    requesting_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    target_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8), default="up")  # up (上转) | down (下转)
    clinical_question: Mapped[str] = mapped_column(Text)
    history: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(String(8), default="routine")
    risk_colour: Mapped[str | None] = mapped_column(String(8))
    reader_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    coordinator_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")  # decline / cancel reason
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # 危重孕产妇 fast path: skips the queue, the room opens at once, first specialist to accept
    # owns it; accepted_at measures the response (migration 0013).
    emergency: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the invitation must carry (远程医疗服务管理规范（试行）, 2018) beside the purpose
    # (clinical_question) and the case summary (history).
    invite_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    specialty: Mapped[str] = mapped_column(String(64), default="", server_default="")
    requested_title: Mapped[str] = mapped_column(String(32), default="", server_default="")
    preferred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    requesting_institution: Mapped[Institution] = relationship(foreign_keys=[requesting_institution_id])
    target_institution: Mapped[Institution] = relationship(foreign_keys=[target_institution_id])
    requested_by: Mapped[User] = relationship(foreign_keys=[requested_by_id])
    reader: Mapped[User | None] = relationship(foreign_keys=[reader_id])
    reviewer: Mapped[User | None] = relationship(foreign_keys=[reviewer_id])
    studies: Mapped[list["ConsultStudy"]] = relationship(order_by="ConsultStudy.id", cascade="all, delete-orphan")


class ConsultStudy(Base):
    __tablename__ = "consult_studies"
    __table_args__ = (UniqueConstraint("consult_id", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)


class ConsultEvent(Base):
    """One transition of a consult (also in the audit chain): who, when, from, to, why."""

    __tablename__ = "consult_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")


class Availability(Base):
    """A weekly recurring window in Asia/Shanghai local time (weekday 0 = Monday)."""

    __tablename__ = "availability"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    weekday: Mapped[int] = mapped_column(Integer)
    start_minute: Mapped[int] = mapped_column(Integer)  # minutes after local midnight
    end_minute: Mapped[int] = mapped_column(Integer)


class AvailabilityException(Base):
    """A one-off change on a local date: unavailable (leave) or extra hours."""

    __tablename__ = "availability_exceptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    available: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(String(200), default="")


class Booking(Base):
    """A person's slot in a live consult; active bookings of one person never overlap."""

    __tablename__ = "bookings"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # specialist | presenter | reviewer | coordinator
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class Notification(Base):
    """An in-app message to one user (the bell); read_at is set when they open it."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str] = mapped_column(String(300), default="")
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Channels outside the platform it has reached ("email,wecom"), and when all had.
    delivered: Mapped[str] = mapped_column(String(64), default="", server_default="")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Report(Base):
    """The report of one consult: a working draft plus its signed versions."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), unique=True)
    template: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | preliminary | final
    draft: Mapped[dict] = mapped_column(JSON, default=dict)
    review_comment: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list["ReportVersion"]] = relationship(order_by="ReportVersion.number")


class ReportVersion(Base):
    """A signed, immutable version: preliminary, final (co-signed) or addendum."""

    __tablename__ = "report_versions"
    __table_args__ = (UniqueConstraint("report_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # preliminary | final | addendum
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # in the QR verification link
    content: Mapped[dict] = mapped_column(JSON)
    content_sha256: Mapped[str] = mapped_column(String(64))
    pdf_key: Mapped[str] = mapped_column(String(300))
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    signatures: Mapped[list] = mapped_column(JSON, default=list)  # [{user, role, signed_at, cms_b64}]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SigningAuthority(Base):
    """The institutional CA (where no national CA is configured); its key is encrypted."""

    __tablename__ = "signing_authorities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    cert_pem: Mapped[bytes] = mapped_column(LargeBinary)
    key_pem_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class SignerCredential(Base):
    """A specialist's X.509 certificate and private key, encrypted with their signing password."""

    __tablename__ = "signer_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("signing_authorities.id"))
    cert_pem: Mapped[bytes] = mapped_column(LargeBinary)
    key_pem_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


CONSENT_SIGNERS = ("patient", "guardian", "relative")


class ConsentRecord(Base):
    """The patient's informed consent to a remote consult, obtained by the requesting side:
    who obtained it, when, who signed (the patient, or a guardian or close relative where the
    patient should not be told, with the reason), and the scanned written form."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    consult_id: Mapped[int] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    obtained_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    obtained_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signer: Mapped[str] = mapped_column(String(16))  # patient | guardian | relative
    signer_name: Mapped[str] = mapped_column(String(64), default="")
    relationship_to_patient: Mapped[str] = mapped_column(String(32), default="")
    reason_not_patient: Mapped[str] = mapped_column(Text, default="")
    form_key: Mapped[str] = mapped_column(String(300), default="")
    form_sha256: Mapped[str] = mapped_column(String(64), default="")
    form_type: Mapped[str] = mapped_column(String(64), default="")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    obtained_by: Mapped[User] = relationship()


ACK_ACTIONS = ("转诊", "电话告知", "复查", "收入院", "其他")


class CriticalFinding(Base):
    """A 危急值: a critical finding on a study, told to the institution that asked for the exam
    and acknowledged there by a named person; unacknowledged it escalates (consult/critical.py)."""

    __tablename__ = "critical_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    consult_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)  # told and acknowledges
    category: Mapped[str] = mapped_column(String(64))
    statement: Mapped[str] = mapped_column(Text)
    flagged_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # of the current step
    level: Mapped[int] = mapped_column(Integer, default=0)  # 0 on-duty staff, 1 + coordinators, 2 + region
    steps: Mapped[list] = mapped_column(JSON, default=list)  # [{at, level, told: [usernames]}]
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(16), default="")
    phone: Mapped[str] = mapped_column(String(32), default="")
    remarks: Mapped[str] = mapped_column(Text, default="")

    institution: Mapped[Institution] = relationship()
    flagged_by: Mapped[User] = relationship(foreign_keys=[flagged_by_id])
    acknowledged_by: Mapped[User | None] = relationship(foreign_keys=[acknowledged_by_id])
