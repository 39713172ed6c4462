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
