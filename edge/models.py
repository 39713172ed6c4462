"""Tables of the transfer from a township edge to the region.

At the edge (its own embedded database): the durable outbox, one row per study and per
instance to forward, and one row for the line to the region. At the region: the edges with
the hash of their credential, and what each edge has announced (a study's manifest) and
uploaded (one row per instance; the bytes of a partial upload live in a file under the
region's data dir, whose length is the offset an edge resumes at).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.models import Institution
from storage.types import UTCDateTime, utcnow

# -- at the edge -----------------------------------------------------------------------------

# queued: instances to send or a completion to ask for; sent: the region confirmed every
# instance; purged: sent, kept for the retention period, then deleted here.
OUTBOX_STATES = ("queued", "sent", "purged")


class OutboxStudy(Base):
    """A local study to forward. Its priority is read from the worklist when a study is picked
    (edge/worklist_models.py), so a registrar who marks an exam urgent late still moves it up."""

    __tablename__ = "edge_outbox_studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When an instance last arrived or changed: completion waits for a quiet study.
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Consecutive failures of this study (the line's own are on EdgeLink) and the back-off.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_kind: Mapped[str] = mapped_column(String(32), default="")
    error_detail: Mapped[str] = mapped_column(Text, default="")
    error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxInstance(Base):
    """One instance version to forward; `done` only once the region verified its SHA-256 and
    indexed it. `confirmed` is how many of its bytes the region holds (for progress)."""

    __tablename__ = "edge_outbox_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("edge_outbox_studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    object_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    confirmed: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[OutboxStudy] = relationship()


class EdgeLink(Base):
    """The line to the region (one row): what the status page says about it."""

    __tablename__ = "edge_link"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the region last answered
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, since the last answer
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_kind: Mapped[str] = mapped_column(String(32), default="")
    error_detail: Mapped[str] = mapped_column(Text, default="")
    error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Measured while sending: wire bytes per second, and wire bytes per stored byte (gzip).
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0)
    wire_ratio: Mapped[float] = mapped_column(Float, default=0.0)
    measured_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The scanner's watermark on series.last_received_at (edge/outbox.py).
    scanned_through: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- at the region ---------------------------------------------------------------------------


class EdgeNode(Base):
    """A township edge and its credential (only the SHA-256 of the secret is kept), bound to
    the institution whose studies it may send. What it last reported shows on /admin/edges."""

    __tablename__ = "edge_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    credential_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_address: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[str] = mapped_column(String(32), default="")
    backlog_studies: Mapped[int] = mapped_column(Integer, default=0)
    backlog_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    oldest_queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_error: Mapped[str] = mapped_column(String(32), default="")

    institution: Mapped[Institution] = relationship()


class EdgeStudy(Base):
    """A study an edge announced (its manifest) and whether the region confirmed it complete."""

    __tablename__ = "edge_studies"
    __table_args__ = (UniqueConstraint("edge_id", "study_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    edge_id: Mapped[int] = mapped_column(ForeignKey("edge_nodes.id"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    edge: Mapped[EdgeNode] = relationship()


class EdgeUpload(Base):
    """One instance of a manifest: partial until its bytes are complete, verified against the
    SHA-256 and indexed through the Ingestor; then done."""

    __tablename__ = "edge_uploads"
    __table_args__ = (UniqueConstraint("edge_study_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    edge_study_id: Mapped[int] = mapped_column(ForeignKey("edge_studies.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[EdgeStudy] = relationship()
