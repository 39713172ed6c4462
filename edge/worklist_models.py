"""The township's registration desk: the patients and exams a modality pulls as its worklist."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from storage import localtime
from storage.db import Base
from storage.models import Institution
from storage.types import UTCDateTime, utcnow

# scheduled: on the modalities' worklist; cancelled: registered by mistake, no longer offered.
# (Whether images arrived is read from the index by the study's UID, not kept here.)
STATUSES = ("scheduled", "cancelled")
# The scheme of `procedure_code` (the desk's exams, edge/worklist.py EXAMS): a private one,
# "99" prefix (PS3.16 8.2).
CODING_SCHEME = "99LANCANG"


class WorklistEntry(Base):
    """One scheduled exam of one registered patient (a Scheduled Procedure Step)."""

    __tablename__ = "edge_worklist"
    __table_args__ = (Index("ix_edge_worklist_day", "institution_id", "scheduled_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # Issued at registration and given to the modality in the worklist, so the images carry it
    # and the forwarder finds the exam's priority by it (edge/forward.py).
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str] = mapped_column(String(16), unique=True)
    # 0 urgent or maternal risk red/purple (forwarded first), 1 routine.
    priority: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Only AEs of this institution are offered the entry (edge/mwl.py).
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    # The patient as typed at the desk: the name in Chinese in two parts (a Lahu or Wa name may
    # have no family name), its pinyin as the PN alphabetic group ("Zhang^Xiuying").
    family_name: Mapped[str] = mapped_column(String(64), default="")
    given_name: Mapped[str] = mapped_column(String(64))
    name_pinyin: Mapped[str] = mapped_column(String(130))
    sex: Mapped[str] = mapped_column(String(1))  # M | F | O
    birth_date: Mapped[date] = mapped_column(Date)
    # 居民身份证号, validated (check digit, birth date and sex agree); "" when the patient has none.
    resident_id: Mapped[str] = mapped_column(String(18), default="", index=True)
    phone: Mapped[str] = mapped_column(String(32), default="")
    # The institution's PatientID, or the resident ID where the institution declared that its
    # PatientIDs are resident ID numbers (imaging/persons.py).
    patient_id: Mapped[str] = mapped_column(String(64), index=True)

    modality: Mapped[str] = mapped_column(String(16))
    procedure_code: Mapped[str] = mapped_column(String(16))
    # The exam's words as offered at registration, kept even if the list of exams changes.
    procedure: Mapped[str] = mapped_column(String(64))
    station_ae: Mapped[str] = mapped_column(String(16), default="")  # "" : any station of the modality
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    risk_colour: Mapped[str] = mapped_column(String(8), default="")  # green … purple, "" not graded
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    registered_by: Mapped[str] = mapped_column(String(64))

    institution: Mapped[Institution] = relationship()


def day_bounds(first: date, last: date | None = None) -> tuple[datetime, datetime]:
    """[start of `first`, start of the day after `last`) in local time (Beijing), as UTC
    instants: how a local day selects `scheduled_at`. Here rather than in edge/worklist.py so
    that the worklist SCP does not load the desk's pinyin dictionary (54 MB, 0.55 s)."""
    zone = localtime.zone()
    start = datetime.combine(first, time(), tzinfo=zone)
    end = datetime.combine((last or first) + timedelta(days=1), time(), tzinfo=zone)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)
