"""Pydantic shapes of the imaging JSON API (DICOMweb answers in DICOM JSON instead)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator


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


# -- measurements and key images (imaging/annotations.py) --------------------------------

# The points each viewer tool draws: two line ends; arm, vertex, arm; two opposite corners of
# a rectangle or of an ellipse's bounding box; one probed pixel; an arrow's tip, then its tail.
POINTS = {"length": 2, "angle": 3, "rect": 2, "ellipse": 2, "probe": 1, "arrow": 2}
MAX_MEASUREMENTS = 500
MAX_KEY_IMAGES = 500
MAX_TEXT = 200


def printable(text: str) -> bool:
    """No control characters but line breaks and tabs (DICOM UT/ST allow no others)."""
    return all(ch in "\n\r\t" or (ord(ch) >= 32 and ord(ch) != 127) for ch in text)


class _Camel(BaseModel):
    """Camel-case keys as the viewer sends them. Keys outside the contract are ignored: the
    viewer posts its own measurement objects, which also carry what it keeps for itself
    (an index, the author, lengthPx...), all derivable from what is stored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class MeasurementValues(_Camel):
    length_mm: FiniteFloat | None = Field(None, alias="lengthMm")
    angle_deg: FiniteFloat | None = Field(None, alias="angleDeg")
    area_mm2: FiniteFloat | None = Field(None, alias="areaMm2")
    mean: FiniteFloat | None = None
    sd: FiniteFloat | None = None
    min: FiniteFloat | None = None
    max: FiniteFloat | None = None
    value: FiniteFloat | None = None


class Measurement(_Camel):
    type: Literal["length", "angle", "rect", "ellipse", "probe", "arrow"]
    series_uid: str = Field(alias="seriesUid", min_length=1, max_length=128)
    sop_instance_uid: str = Field(alias="sopInstanceUid", min_length=1, max_length=128)
    frame: int = Field(ge=1, le=1_000_000)
    points: list[tuple[FiniteFloat, FiniteFloat]]
    values: MeasurementValues = Field(default_factory=MeasurementValues)
    # Lengths and areas: "mm" (PixelSpacing), "mm*" (ImagerPixelSpacing: approximate at the
    # patient) or "px"; "HU" is still read as "values in HU" from clients that say it here.
    unit: Literal["HU", "mm", "mm*", "px", ""] = ""
    value_unit: Literal["HU", ""] = Field("", alias="valueUnit")  # pixel values: HU (CT) or none
    text: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="after")
    def _points_fit_the_tool(self) -> "Measurement":
        self.text = self.text or None  # "" is no label
        wanted = POINTS[self.type]
        if len(self.points) != wanted:
            raise ValueError(f"{self.type} 需要 {wanted} 个点 / a {self.type} takes {wanted} point(s), "
                             f"not {len(self.points)}")
        if self.text is not None and not printable(self.text):
            raise ValueError("文字含控制字符 / the text holds control characters")
        return self


class MeasurementsIn(_Camel):
    measurements: list[Measurement] = Field(max_length=MAX_MEASUREMENTS)


class MeasurementsSaved(BaseModel):
    sop_instance_uid: str | None = Field(serialization_alias="sopInstanceUid")
    series_instance_uid: str | None = Field(serialization_alias="seriesInstanceUid")
    count: int


class MeasurementOut(BaseModel):
    type: str
    series_uid: str = Field(serialization_alias="seriesUid")
    sop_instance_uid: str = Field(serialization_alias="sopInstanceUid")
    frame: int
    points: list[list[float]]
    values: dict[str, float]
    unit: str
    value_unit: str = Field("", serialization_alias="valueUnit")
    text: str | None = None


class MeasurementDocument(BaseModel):
    sop_instance_uid: str = Field(serialization_alias="sopInstanceUid")
    author: str
    created_at: str = Field(serialization_alias="createdAt")
    measurements: list[MeasurementOut]


class MeasurementDocuments(BaseModel):
    documents: list[MeasurementDocument]


class KeyImageRef(_Camel):
    series_uid: str = Field(alias="seriesUid", min_length=1, max_length=128)
    sop_instance_uid: str = Field(alias="sopInstanceUid", min_length=1, max_length=128)
    frame: int | None = Field(None, ge=1, le=1_000_000)


class KeyImagesIn(_Camel):
    images: list[KeyImageRef] = Field(max_length=MAX_KEY_IMAGES)
    note: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="after")
    def _each_once(self) -> "KeyImagesIn":
        named = [(i.sop_instance_uid, i.frame) for i in self.images]
        if len(set(named)) != len(named):
            raise ValueError("同一图像重复 / an image is listed twice")
        if self.note is not None and not printable(self.note):
            raise ValueError("说明含控制字符 / the note holds control characters")
        return self


class KeyImageOut(BaseModel):
    series_uid: str = Field(serialization_alias="seriesUid")
    sop_instance_uid: str = Field(serialization_alias="sopInstanceUid")
    frame: int | None


class KeyImagesOut(BaseModel):
    images: list[KeyImageOut]
    sop_instance_uid: str | None = Field(serialization_alias="sopInstanceUid")
    author: str | None
