"""The DICOM index: Patient -> Study -> Series -> Instance.

Everything a query or a metadata read needs is here, including each instance's DICOM
JSON without bulk data, so reads never fetch objects from the store just to answer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage.db import Base
from storage.types import UTCDateTime, utcnow


class Patient(Base):
    """A patient as known to one institution: PatientID is only unique within its issuer."""

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("institution_id", "issuer", "patient_id"),
        # Prefix (wildcard) matching, migration 0005: an index serves LIKE 'prefix%' on
        # PostgreSQL only with a *_pattern_ops operator class, one per ORed PN group and ID.
        Index("ix_patients_name_phonetic", "name_phonetic", postgresql_ops={"name_phonetic": "varchar_pattern_ops"}),
        *(Index(f"ix_patients_{column}_pattern", column, postgresql_ops={column: "varchar_pattern_ops"},
                info={"only_on": "postgresql"}).ddl_if(dialect="postgresql")
          for column in ("name_alphabetic", "name_ideographic", "patient_id")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    # PN as decoded Unicode ("Zhang^Xiuying=张^秀英"); the groups upper-cased for matching.
    name: Mapped[str] = mapped_column(String(330), default="")
    name_alphabetic: Mapped[str] = mapped_column(String(110), default="", index=True)
    name_ideographic: Mapped[str] = mapped_column(String(110), default="", index=True)
    name_phonetic: Mapped[str] = mapped_column(String(110), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_institution_date", "institution_id", "study_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    referring_physician: Mapped[str] = mapped_column(String(330), default="")
    institution_name: Mapped[str] = mapped_column(String(200), default="")
    # Denormalised so study-level queries need no joins: "\"-joined, sorted.
    modalities: Mapped[str] = mapped_column(String(100), default="")
    num_series: Mapped[int] = mapped_column(Integer, default=0)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship()


class Series(Base):
    """One series of a study, with the state of its derived images (thumbnail, previews)."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Derived images (imaging/derive.py). The series is up to date when derived_through
    # equals last_received_at; the sweep re-derives series where it lags behind.
    thumbnail_key: Mapped[str | None] = mapped_column(String(400))
    derive_state: Mapped[str] = mapped_column(String(16), default="")  # "" running done partial failed
    derived_through: Mapped[datetime | None] = mapped_column(UTCDateTime)
    derived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Attempts since the last completed derivation: a task that kills its worker (a decoder
    # crash, out of memory) is redelivered; this bounds how often.
    derive_attempts: Mapped[int] = mapped_column(Integer, default=0)
    derive_error: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship()


class Instance(Base):
    """One stored SOP instance: where its Part 10 object is, and what the viewer needs to show it."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128), unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(128))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    # DICOM JSON model (PS3.18 F.2) as text, bulk data replaced by BulkDataURIs relative to
    # the instance (see imaging.dataset.INSTANCE_PREFIX); served without re-parsing.
    dicom_json: Mapped[str] = mapped_column(Text)
    received_from: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The small preview (imaging/derive.py); preview_sha256 is the version of the instance it
    # was attempted for, so a replaced instance is previewed again and a corrupt one is not
    # retried until its bytes change. preview_error says why there is no preview.
    preview_key: Mapped[str | None] = mapped_column(String(400))
    preview_sha256: Mapped[str] = mapped_column(String(64), default="")
    preview_error: Mapped[str] = mapped_column(Text, default="")

    series: Mapped[Series] = relationship()


class SupersededInstance(Base):
    """An earlier version of an instance that was re-sent with different bytes.

    Policy: the newest version becomes current, the old object stays in the store and is
    listed here (never deleted), and the replacement is audited.
    """

    __tablename__ = "superseded_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(128), index=True)
    object_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    replaced_by: Mapped[str] = mapped_column(Text, default="")
