"""Pydantic shapes of the web API."""

from __future__ import annotations

from pydantic import BaseModel


class InstitutionOut(BaseModel):
    code: str
    name: str
    name_en: str
    level: str


class MeOut(BaseModel):
    username: str
    display_name: str
    role: str
    institution: InstitutionOut


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str]
