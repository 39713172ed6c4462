"""Tenancy, identity and audit rows shared by every domain.

They live here, at the bottom, because the DICOM receiver (imaging/) and the consult
workflow (consult/) must apply the same authorization and write the same audit trail
as the web application, and imports only point downward.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.types import UTCDateTime, utcnow

LEVELS = ("township", "county", "city", "partner")
ROLES = ("radiographer", "specialist", "coordinator", "admin")


class Institution(Base):
    """A member of the referral tree: township -> county -> city -> partner."""

    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name_zh: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200), default="")
    level: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Printed under the name on the reports it signs (migration 0009).
    department: Mapped[str] = mapped_column(String(100), default="", server_default="")
    address: Mapped[str] = mapped_column(String(300), default="", server_default="")
    # The institution declares that its PatientIDs are resident ID numbers (imaging/persons.py).
    patient_ids_are_resident_ids: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    parent: Mapped["Institution | None"] = relationship(remote_side=[id])


class DicomNode(Base):
    """A registered DICOM application entity; host/port only for C-MOVE destinations."""

    __tablename__ = "dicom_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What the AE may do, comma-separated from store, query, retrieve. A new AE may only
    # store (a modality); rows from before migration 0006 kept all three.
    permissions: Mapped[str] = mapped_column(String(64), default="store", server_default="store,query,retrieve")
    # Networks (CIDR, comma-separated) associations may come from; empty means anywhere.
    allowed_networks: Mapped[str] = mapped_column(Text, default="", server_default="")

    institution: Mapped[Institution] = relationship()

    @property
    def can(self) -> frozenset[str]:
        return frozenset(p for p in self.permissions.split(",") if p)

    @property
    def networks(self) -> list[str]:
        return [n for n in self.allowed_networks.split(",") if n]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    # Professional title printed beside the name on signed reports (主任医师, 副主任医师, 主治医师…).
    title: Mapped[str] = mapped_column(String(32), default="", server_default="")
    role: Mapped[str] = mapped_column(String(16))
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Login lockout with back-off (storage/identity.py): consecutive failures, and until when.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Where notifications reach the user outside the platform (consult/notify.py): e-mail,
    # and the mobile number a 企业微信 group robot mentions. Empty: in-app only.
    email: Mapped[str] = mapped_column(String(254), default="", server_default="")
    mobile: Mapped[str] = mapped_column(String(32), default="", server_default="")
    # SHA-256 of the secret in the user's calendar feed URL (consult/scheduling.py); rotating
    # it ends every subscription made with the old URL. None: no feed URL issued.
    calendar_feed_hash: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    # Set when someone else chose the password (printed by the installer, reset by an admin):
    # every page asks the user to choose their own until they do.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    institution: Mapped[Institution] = relationship()


class ApiToken(Base):
    """A bearer token or a browser session: only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8), default="api")  # api | session
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class AccessGrant(Base):
    """Explicit, revocable access to one study for an institution or a single user.

    Consults create these when a request is accepted; the authorization function reads them.
    """

    __tablename__ = "access_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    grantee_institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"), index=True)
    grantee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    source: Mapped[str] = mapped_column(String(64), default="")  # e.g. "consult:12"
    granted_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditRecord(Base):
    """One access to patient data (or a security event); hash-chained in id order."""

    __tablename__ = "audit_records"
    __table_args__ = (UniqueConstraint("seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | ae | patient | system | anonymous
    institution: Mapped[str] = mapped_column(String(32), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str] = mapped_column(String(32), default="")
    object_id: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(255), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # ok | denied | failed | error
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # An HMAC under the audit key (storage/audit.py); False only for records from before it.
    keyed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
