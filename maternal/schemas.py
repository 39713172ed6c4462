"""Pydantic shapes of the maternal API."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class CriterionOut(BaseModel):
    code: str
    colour: str = Field(description="green, yellow, orange, red or purple")
    zh: str
    en: str
    needs_note: bool


class PregnancyCreate(BaseModel):
    lmp: date | None = Field(None, description="末次月经 last menstrual period")
    edd: date | None = Field(None, description="预产期 expected date of delivery (LMP + 280 days when not given)")
    gravida: int = 1
    para: int = 0


class GradingCreate(BaseModel):
    criteria: list[str] = Field(description="codes from GET /api/maternal/criteria; G0 when no risk is found")
    note: str = ""


class Closing(BaseModel):
    status: str = Field(description="delivered or ended")
    ended_on: date


class GradingOut(BaseModel):
    id: int
    colour: str = Field(description='e.g. "orange", "purple", "orange+purple"')
    label: str
    criteria: list[str]
    note: str
    ga: str = Field(description='gestational age at grading, "24+3"; empty when unknown')
    graded_by: str
    institution: str
    graded_at: datetime


class ReferralCreate(BaseModel):
    to: str = Field(description="receiving institution code, up or down the referral tree")
    key_findings: str
    study_uids: list[str] = []
    consult_id: int | None = None
    follow_up_instructions: str = Field("", description="下转 only (required there)")
    follow_up_on: date | None = Field(None, description="下转 only")


class Transport(BaseModel):
    status: str = Field(description="in_transit, arrived or cancelled")
    reason: str = Field("", description="required when cancelling")


class ReferralOut(BaseModel):
    id: int
    pregnancy_id: int
    direction: str = Field(description="up (上转) or down (下转)")
    from_institution: str
    to_institution: str
    consult_id: int | None
    transport_status: str
    cancel_reason: str
    follow_up_instructions: str
    follow_up_on: date | None
    created_at: datetime
    record: dict = Field(description="the record at the time of referral: colours, GA, key findings, studies")


class PregnancyOut(BaseModel):
    id: int
    person_id: int | None
    patient_pk: int | None
    lmp: date | None
    edd: date | None
    gravida: int
    para: int
    status: str
    ended_on: date | None
    institution: str
    colour: str | None = Field(description="current colour (the newest grading); null when never graded")
    ga_today: str
    grading_open: bool
    gradings: list[GradingOut] = []
    referrals: list[ReferralOut] = []


class Counts(BaseModel):
    up: int
    down: int
