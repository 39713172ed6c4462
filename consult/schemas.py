"""Pydantic shapes of the consult API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ConsultCreate(BaseModel):
    kind: str = Field(description="read (report only) or live (video consult)")
    target: str = Field(description="institution code, up or down the referral tree")
    study_uids: list[str]
    clinical_question: str
    history: str = ""
    priority: str = "routine"
    risk_colour: str | None = Field(None, description="green, yellow, orange, red or purple (obstetrics)")
    emergency: bool = Field(False, description="危重孕产妇 fast path: live, critical, the room opens at once")
    invite_reason: str = Field("", description="why the consult is asked (会诊原因)")
    specialty: str = Field("", description="the specialty requested, e.g. 妇产科")
    requested_title: str = Field("", description="the professional title requested, e.g. 主任医师")
    preferred_at: datetime | None = Field(None, description="preferred time (local Asia/Shanghai unless an offset is given)")


class Reason(BaseModel):
    reason: str


class Assignment(BaseModel):
    reader: str
    reviewer: str


class Slot(BaseModel):
    specialist: str
    start: datetime = Field(description="local Asia/Shanghai time unless an offset is given")
    minutes: int = 30
    invite_reviewer: bool = Field(False, description="give the assigned senior reviewer a seat in the room")


class Draft(BaseModel):
    template: str
    findings: str = ""
    impression: str = ""
    recommendation: str = ""
    fields: dict[str, float | str] = {}


class Password(BaseModel):
    password: str


class Comments(BaseModel):
    comments: str


class Addendum(BaseModel):
    text: str
    password: str


class Windows(BaseModel):
    windows: list[tuple[int, str, str]] = Field(description="[weekday 0=Mon, '08:00', '12:00'] in local time")


class ExceptionIn(BaseModel):
    starts: datetime
    ends: datetime
    available: bool = False
    note: str = ""


class EventOut(BaseModel):
    at: datetime
    from_status: str
    to_status: str
    note: str


class VersionOut(BaseModel):
    number: int
    kind: str
    public_id: str
    created_at: datetime
    signers: list[str]
    content: dict
    pdf_url: str
    standing: str = ""  # current final, superseded by vN, returned for revision, addendum to vN
    current: bool = False  # the version to rely on


class ConsultOut(BaseModel):
    id: int
    kind: str
    status: str
    direction: str
    requesting_institution: str
    target_institution: str
    requested_by: str
    clinical_question: str
    history: str
    priority: str
    risk_colour: str | None
    reader: str | None
    reviewer: str | None
    study_uids: list[str]
    created_at: datetime
    due_at: datetime
    overdue: bool
    reason: str
    emergency: bool = False
    accepted_at: datetime | None = None
    invite_reason: str = ""
    specialty: str = ""
    requested_title: str = ""
    preferred_at: datetime | None = None


class ConsultDetail(ConsultOut):
    events: list[EventOut]
    report_status: str | None
    draft: dict | None
    review_comment: str
    versions: list[VersionOut]
    bookings: list[dict]
    key_images: list[str] = []  # the studies' key images, as the report lists them


class NotificationOut(BaseModel):
    id: int
    at: datetime
    kind: str
    title: str
    body: str
    link: str
    read: bool


class ConsentOut(BaseModel):
    id: int
    obtained_by: str
    obtained_at: datetime
    signer: str
    signer_name: str
    relationship: str
    reason_not_patient: str
    form_url: str | None
    form_sha256: str


class CriticalFlag(BaseModel):
    study_uid: str
    category: str
    statement: str
    consult_id: int | None = None


class CriticalAck(BaseModel):
    action: str = Field(description="转诊, 电话告知, 复查, 收入院 or 其他")
    phone: str = ""
    remarks: str = ""


class CriticalOut(BaseModel):
    id: int
    study_uid: str
    consult_id: int | None
    institution: str
    category: str
    statement: str
    flagged_by: str
    flagged_at: datetime
    due_at: datetime
    level: int
    steps: list[dict]
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    action: str
    phone: str
    remarks: str
    overdue: bool
