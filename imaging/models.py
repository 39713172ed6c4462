"""The DICOM index: Patient -> Study -> Series -> Instance.

Everything a query or a metadata read needs is here, including each instance's DICOM
JSON without bulk data, so reads never fetch objects from the store just to answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from imaging.dataset import MAX_UID_CHARS
from storage.db import Base
from storage.types import UTCDateTime, utcnow

# A DICOM UID column, MAX_UID_CHARS wide: the standard's limit is 64, and a sender's longer UID
# is stored as sent (with a warning) rather than refused.
DicomUid = Annotated[str, mapped_column(String(MAX_UID_CHARS))]


class Person(Base):
    """One person above the per-institution patient records (imaging/persons.py): joined only
    by a trusted identifier or by an admin, never by name."""

    __tablename__ = "persons"

    id: Mapped[int] = mapped_column(primary_key=True)
    resident_id: Mapped[str | None] = mapped_column(String(18), unique=True)  # 居民身份证号
    health_card: Mapped[str | None] = mapped_column(String(64), unique=True)  # 电子健康卡
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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
        *(Index(f"ix_patients_{column}", column, postgresql_ops={column: "varchar_pattern_ops"})
          for column in ("name_pinyin", "name_initials")),
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
    # Pinyin of the name (imaging/pinyin.py), for "zhangxiuying" and "zxy" (migration 0010).
    name_pinyin: Mapped[str] = mapped_column(String(200), default="", server_default="")
    name_initials: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The person this record belongs to, and how it was joined: resident_id | health_card | manual.
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    link_source: Mapped[str] = mapped_column(String(16), default="", server_default="")
    resident_id: Mapped[str] = mapped_column(String(18), default="", server_default="", index=True)
    health_card: Mapped[str] = mapped_column(String(64), default="", server_default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_institution_date", "institution_id", "study_date"),
                      # The study list's order and cursor (workspace/service.py), migration 0010.
                      Index("ix_studies_newest", "study_date", "id"),
                      Index("ix_studies_institution_newest", "institution_id", "study_date", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[DicomUid] = mapped_column(unique=True)
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
    series_instance_uid: Mapped[DicomUid] = mapped_column(unique=True)
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
    sop_instance_uid: Mapped[DicomUid] = mapped_column(unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[DicomUid]
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
    sop_instance_uid: Mapped[DicomUid] = mapped_column(index=True)
    object_key: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    replaced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    replaced_by: Mapped[str] = mapped_column(Text, default="")


RECOGNITION_REASONS = {
    # 不互认 reasons, in the order of 国卫医发〔2022〕6号 (医疗机构检查检验结果互认管理办法), art. 15.
    "condition_changed": "病情变化 Condition changed",
    "fast_changing": "检查结果随时间变化快 Result changes quickly with time",
    "before_procedure": "手术、输血等重大诊疗前 Before surgery, transfusion or a major procedure",
    "emergency": "急诊、急救 Emergency",
    "forensic": "司法鉴定、伤残评定等 Forensic or disability assessment",
    "patient_request": "患者或其家属要求 Patient or family request",
    "quality_failed": "检查未通过质量控制 The exam failed quality control",
    "too_old": "检查时间过久 Too long ago",
    "clinician_judges": "医师判断需复查 Clinician judges a repeat necessary",
    "other": "其他 Other",
}


class RecognitionDecision(Base):
    """互认: a clinician of one institution recognises another institution's study (no repeat
    exam) or does not, with a reason from the national list. Never edited: a new decision
    is a new row."""

    __tablename__ = "recognition_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_instance_uid: Mapped[DicomUid] = mapped_column(index=True)
    # The study's institution (whose result it is) and the deciding clinician's.
    performing_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    deciding_institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    modality: Mapped[str] = mapped_column(String(100), default="")
    recognised: Mapped[bool] = mapped_column()
    reason: Mapped[str] = mapped_column(String(32), default="")
    reason_text: Mapped[str] = mapped_column(String(200), default="")
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
