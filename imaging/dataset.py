"""What the index keeps of a DICOM dataset, and its DICOM JSON without bulk data.

Character sets: pydicom decodes text with the dataset's Specific Character Set
(GB18030, GBK, ISO_IR 192, ISO 2022 IR 58/87/149 and the rest it knows); the index keeps
Unicode, so a 张秀英 sent in GB18030 is stored, matched and returned as 张秀英.
"""

from __future__ import annotations


import json
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from storage.keys import conforming_uid

# Bulk data URIs in stored JSON are relative to the instance's DICOMweb URL; readers
# replace this marker with the real prefix (a string replace, no JSON parse).
INSTANCE_PREFIX = "@@INSTANCE@@"
BULK_THRESHOLD = 1024
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


# pydicom decodes ISO 2022 IR 58 (GB2312 with code extensions) correctly but leaves the
# escape sequence (ESC $ ) A) in the text; nothing downstream wants control characters.
_ISO2022_ESCAPE = re.compile(r"\x1b[$()*+\-./]{1,2}[@-~]")


def clean_text(value: str) -> str:
    return _ISO2022_ESCAPE.sub("", value) if "\x1b" in value else value


class InvalidInstance(ValueError):
    """The dataset cannot be indexed; `status` is the DICOM C-STORE failure status to return."""

    def __init__(self, reason: str, status: int = 0xA900):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class PersonNameGroups:
    full: str
    alphabetic: str
    ideographic: str
    phonetic: str


@dataclass
class IndexRecord:
    """Attributes the index stores for one instance, grouped by level."""

    patient_id: str
    issuer: str
    patient_name: PersonNameGroups
    birth_date: str
    sex: str
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician: str
    institution_name: str
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    uid_warnings: tuple[str, ...] = ()
    # (IssuerOfPatientID, PatientID) of each OtherPatientIDsSequence item: where a 居民身份证号
    # or 电子健康卡 number travels (imaging/persons.py).
    other_ids: tuple[tuple[str, str], ...] = ()


def _text(ds: Dataset, keyword: str, limit: int = 200) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not stop the instance being stored
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return clean_text(str(value)).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def person_name(value) -> PersonNameGroups:
    """The three component groups of a PN, decoded; groups upper-cased for matching."""
    if not value:
        return PersonNameGroups("", "", "", "")
    name = value if isinstance(value, PersonName) else PersonName(str(value))
    return PersonNameGroups(
        full=clean_text(str(name))[:330],
        alphabetic=clean_text(name.alphabetic or "").upper()[:110],
        ideographic=clean_text(name.ideographic or "").upper()[:110],
        phonetic=clean_text(name.phonetic or "").upper()[:110],
    )


def display_name(pn: str | None) -> str:
    """A DICOM PN for people: the ideographic group when present, without carets
    (张^秀英 -> 张秀英, Wang^Fang=王^芳 -> 王芳, Zhang^Xiuying -> Zhang Xiuying)."""
    groups = (pn or "").split("=")
    ideographic = groups[1] if len(groups) > 1 else ""
    chosen = ideographic if ideographic.strip("^ ") else groups[0]
    parts = [part.strip() for part in chosen.split("^") if part.strip()]
    return "".join(parts) if not chosen.isascii() else " ".join(parts)


MAX_UID_CHARS = 128  # what the index columns hold; the standard's limit is 64
# Characters a stored UID may have: printable ASCII, without the multi-value separator and
# without what would change the meaning of a URL path they appear in.
_NOT_IN_A_STORED_UID = frozenset("\\/?#%")


def storable_uid(value: str) -> bool:
    return all("!" <= ch <= "~" and ch not in _NOT_IN_A_STORED_UID for ch in value)


def uid_warning(keyword: str, value: str) -> str | None:
    if conforming_uid(value):
        return None
    why = "longer than 64 characters" if len(value) > 64 else "not digits and dots as PS3.5 9.1 requires"
    return f"{keyword} is {why}; stored exactly as sent"


def _checked_uid(ds: Dataset, keyword: str) -> str:
    """The UID as sent. Real devices send UIDs longer than 64 characters or with other
    characters; other archives store them and so do we (with a warning status), as long as
    the value can be kept exactly and used safely."""
    value = _text(ds, keyword, MAX_UID_CHARS + 1)
    if not value:
        raise InvalidInstance(f"missing {keyword}")
    if len(value) > MAX_UID_CHARS or not storable_uid(value):
        raise InvalidInstance(f"{keyword} {value[:70]!r} cannot be stored as a UID "
                              f"(more than {MAX_UID_CHARS} characters, or characters outside printable ASCII, "
                              "or one of \\ / ? # %)")
    return value


def native_frame_bits(ds: Dataset) -> int:
    """Bits one frame of native (uncompressed) pixel data occupies; 0 without the image
    pixel attributes. YBR_FULL_422 keeps one Cb and one Cr per pair of pixels (PS3.3
    C.7.6.3.1.2): two samples per pixel on average, not three. Frames of 1-bit data are
    packed one after another with no padding between them (PS3.5 8.1.1), so a frame need
    not start or end on a byte."""
    rows, columns = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    bits, samples = _int(ds, "BitsAllocated") or 0, _int(ds, "SamplesPerPixel") or 1
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2
    return rows * columns * samples * bits


def check_native_pixel_length(ds: Dataset) -> None:
    """Refuse native (uncompressed) pixel data shorter than Rows x Columns x frames needs:
    the sign of a truncated transfer that pydicom itself reads without complaint."""
    element = ds.get("PixelData")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if element is None or syntax is None or syntax.is_compressed:
        return
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (native_frame_bits(ds) * frames + 7) // 8
    actual = len(element) if isinstance(element, (bytes, bytearray)) else len(ds["PixelData"].value or b"")
    if actual < expected:
        raise InvalidInstance(f"pixel data has {actual} bytes, the image needs {expected}: truncated", 0xC002)


def extract(ds: Dataset) -> IndexRecord:
    """Read the index attributes; raise InvalidInstance when required UIDs are missing
    or native pixel data is shorter than the image it describes."""
    if not any(_text(ds, keyword) for keyword in REQUIRED_UIDS):
        # Not one identifying attribute: this is not a DICOM object we can make sense of.
        raise InvalidInstance("no SOP Class, SOP Instance, Study or Series UID: not a DICOM data set", 0xC001)
    uids = {keyword: _checked_uid(ds, keyword) for keyword in REQUIRED_UIDS}
    check_native_pixel_length(ds)
    try:
        name = person_name(ds.get("PatientName"))
    except Exception:
        name = PersonNameGroups("", "", "", "")
    return IndexRecord(
        patient_id=_text(ds, "PatientID", 64),
        issuer=_text(ds, "IssuerOfPatientID", 64),
        patient_name=name,
        birth_date=_text(ds, "PatientBirthDate", 8),
        sex=_text(ds, "PatientSex", 16),
        study_uid=uids["StudyInstanceUID"],
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=str(person_name(ds.get("ReferringPhysicianName")).full) if "ReferringPhysicianName" in ds else "",
        institution_name=_text(ds, "InstitutionName"),
        series_uid=uids["SeriesInstanceUID"],
        modality=_text(ds, "Modality", 16).upper(),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        body_part=_text(ds, "BodyPartExamined", 64),
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        uid_warnings=tuple(w for k, v in uids.items() if (w := uid_warning(k, v))),
        other_ids=_other_ids(ds),
    )


def _other_ids(ds: Dataset) -> tuple[tuple[str, str], ...]:
    try:
        items = ds.get("OtherPatientIDsSequence") or []
        return tuple((_text(item, "IssuerOfPatientID", 64), _text(item, "PatientID", 64)) for item in items[:16])
    except Exception:  # a malformed sequence must not stop the instance being stored
        return ()


def _bulk_uri(element) -> str:
    return f"{INSTANCE_PREFIX}/bulkdata/{element.tag:08X}"


def dicom_json(ds: Dataset) -> str:
    """DICOM JSON (PS3.18 F.2) of the dataset with bulk data as BulkDataURIs, as text."""
    try:
        model = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=_bulk_uri)
    except Exception:
        # A value pydicom cannot convert should not lose the instance: keep what converts.
        model = {}
        for element in ds:
            try:
                model.update(Dataset({element.tag: element}).to_json_dict(
                    bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=_bulk_uri))
            except Exception:
                continue
    return json.dumps(model, ensure_ascii=False, separators=(",", ":"))
