"""Pydantic shapes of the imaging JSON API (DICOMweb answers in DICOM JSON instead)."""

from __future__ import annotations

from pydantic import BaseModel


class SeriesOut(BaseModel):
    series_instance_uid: str
    modality: str
    series_number: int | None
    description: str
    num_instances: int


class StudyOut(BaseModel):
    study_instance_uid: str
    patient_name: str
    patient_id: str
    patient_sex: str
    patient_birth_date: str
    study_date: str
    study_time: str
    accession_number: str
    description: str
    modalities: str
    num_series: int
    num_instances: int
    institution: str


class StudyDetailOut(StudyOut):
    series: list[SeriesOut]


class StudyPage(BaseModel):
    items: list[StudyOut]
    offset: int
    limit: int
    total: int
