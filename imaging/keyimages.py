"""Key images and the documents stored beside a study's images, read from the index alone.

A Key Object Selection document (KOS, PS3.3 A.35.4, TID 2010) names images. A study's key
images are those of its newest KOS that no rejection note withdrew. A KOS whose title rejects
(PS3.16 CID 7010, e.g. "Rejected for Quality Reasons": an IHE IOCM rejection note) withdraws
the instances it references instead: Lancang writes one when a reader clears the key images or their own
measurements, because a KOS that names nothing is not valid DICOM and the index keeps no
other state for them (imaging/annotations.py).

Everything here reads the stored DICOM JSON of the index (imaging/dataset.dicom_json), never
the objects, and needs no SR library: the film sheet, the patient's page and the report use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging.dataset import display_name
from imaging.models import Instance, Series

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
# The document titles of PS3.16 CID 7010 that reject (Rejected for Quality Reasons, for Patient
# Safety Reasons, Incorrect Modality Worklist Entry, Data Retention Policy Expired: the IHE
# IOCM rejection notes): a KOS titled so withdraws what it references.
REJECTION_TITLES = frozenset({("113001", "DCM"), ("113037", "DCM"), ("113038", "DCM"), ("113039", "DCM")})
# Modalities of documents, not images: they say nothing about what kind of exam a study was.
DOCUMENT_MODALITIES = frozenset({"SR", "KO", "PR"})

_CONTENT, _EVIDENCE, _CONCEPT = "0040A730", "0040A375", "0040A043"
_REF_SERIES, _REF_SOP, _REF_SOP_UID, _REF_FRAME = "00081115", "00081199", "00081155", "00081160"
_SERIES_UID, _CODE_VALUE, _CODE_SCHEME = "0020000E", "00080100", "00080102"
_RELATIONSHIP, _PERSON_NAME, _TEXT_VALUE = "0040A010", "0040A123", "0040A160"
_OBSERVER_NAME, _OBSERVER_LOGIN = ("121008", "DCM"), ("128774", "DCM")


@dataclass(frozen=True)
class Reference:
    """One image a document names: frame None means the whole image."""

    sop_uid: str
    series_uid: str
    frame: int | None = None


@dataclass(frozen=True)
class KeyImage:
    """A key image as the index knows it, for the film page, the film sheet and the report."""

    series_uid: str
    sop_uid: str
    frame: int | None
    instance_id: int
    frames: int
    series_number: int | None
    instance_number: int | None

    @property
    def label(self) -> str:
        """序列 Series 2 · 图像 Image 17 (· 帧 Frame 3): how a reader finds it again."""
        text = (f"序列 Series {'—' if self.series_number is None else self.series_number} · "
                f"图像 Image {'—' if self.instance_number is None else self.instance_number}")
        return f"{text} · 帧 Frame {self.frame}" if self.frame else text


@dataclass(frozen=True)
class Selection:
    """The KOS that currently says which images are key, and who made it."""

    sop_uid: str
    author: str
    references: list[Reference]


def _items(element: dict | None) -> list[dict]:
    return [item for item in (element or {}).get("Value", []) if isinstance(item, dict)]


def _first(element: dict | None):
    values = (element or {}).get("Value") or [None]
    return values[0]


def load(dicom_json: str | None) -> dict:
    """The stored DICOM JSON as a dict; {} for anything malformed."""
    try:
        document = json.loads(dicom_json or "{}")
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def series_by_instance(document: dict) -> dict[str, str]:
    """{SOP Instance UID: Series Instance UID} of a document's evidence (PS3.3 C.17.2)."""
    return {str(_first(ref.get(_REF_SOP_UID))): str(_first(series.get(_SERIES_UID)) or "")
            for study in _items(document.get(_EVIDENCE)) for series in _items(study.get(_REF_SERIES))
            for ref in _items(series.get(_REF_SOP)) if isinstance(_first(ref.get(_REF_SOP_UID)), str)}


def references(document: dict) -> list[Reference]:
    """The images a KOS names, in its content order (the order the reader chose), then any
    only in its evidence list. Malformed content names nothing."""
    series_of = series_by_instance(document)
    found: list[Reference] = []
    for ref in (ref for item in _items(document.get(_CONTENT)) for ref in _items(item.get(_REF_SOP))):
        uid, frame = _first(ref.get(_REF_SOP_UID)), _first(ref.get(_REF_FRAME))
        if not isinstance(uid, str):
            continue
        frame = frame if isinstance(frame, int) and frame >= 1 else None
        reference = Reference(uid, series_of.get(uid) or "", frame)
        found += [] if reference in found else [reference]
    named = {ref.sop_uid for ref in found}
    return found + [Reference(uid, series) for uid, series in series_of.items() if uid not in named]


def flagged_uids(dicom_json: str) -> list[str]:
    """The SOP Instance UIDs a KOS flags, in its content order, then any only in its evidence."""
    return list(dict.fromkeys(ref.sop_uid for ref in references(load(dicom_json))))


def title(document: dict) -> tuple[str, str] | None:
    """(code value, scheme) of the document title (its root Concept Name), if it has one."""
    concept = next(iter(_items(document.get(_CONCEPT))), None)
    if concept is None:
        return None
    return str(_first(concept.get(_CODE_VALUE)) or ""), str(_first(concept.get(_CODE_SCHEME)) or "")


def is_rejection(document: dict) -> bool:
    return title(document) in REJECTION_TITLES


def observer(document: dict) -> tuple[str, str]:
    """(login name, display name) of the person observer in the root's observation context
    (TID 1002), or ("", "") when the document names none."""
    login = name = ""
    for item in _items(document.get(_CONTENT)):
        if _first(item.get(_RELATIONSHIP)) != "HAS OBS CONTEXT":
            continue
        concept = title(item)
        if concept == _OBSERVER_NAME:
            name = display_name(_person_name(_first(item.get(_PERSON_NAME))))
        elif concept == _OBSERVER_LOGIN:
            login = str(_first(item.get(_TEXT_VALUE)) or "")
    return login, name


def _person_name(value) -> str:
    """A PN of DICOM JSON ({"Alphabetic": ..., "Ideographic": ...}) as its DICOM string form."""
    if not isinstance(value, dict):
        return str(value or "")
    groups = [str(value.get(group) or "") for group in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


class Document(NamedTuple):
    sop_uid: str
    series_uid: str
    stored_at: datetime
    content: dict  # the DICOM JSON


def study_documents(session: Session, study_pk: int, sop_classes) -> list[Document]:
    """The study's instances of these SOP classes with their DICOM JSON, newest first (the
    index's arrival order)."""
    rows = session.execute(
        select(Instance.sop_instance_uid, Series.series_instance_uid, Instance.created_at, Instance.dicom_json)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study_pk, Instance.sop_class_uid.in_(list(sop_classes)))
        .order_by(Instance.id.desc())).all()
    return [Document(sop, series, stored_at, load(text)) for sop, series, stored_at, text in rows]


def withdrawn(kos_documents: list[Document]) -> set[str]:
    """The SOP Instance UIDs that a rejection note among these KOS withdrew."""
    return {ref.sop_uid for document in kos_documents if is_rejection(document.content)
            for ref in references(document.content)}


def current_selection(session: Session, study_pk: int) -> Selection | None:
    """The study's newest KOS that is neither a rejection note nor withdrawn by one."""
    documents = study_documents(session, study_pk, [KEY_OBJECT_SELECTION])
    gone = withdrawn(documents)
    for document in documents:
        if document.sop_uid not in gone and not is_rejection(document.content):
            login, name = observer(document.content)
            return Selection(document.sop_uid, name or login, references(document.content))
    return None


def key_images(session: Session, study_pk: int) -> list[KeyImage]:
    """The current selection's images that this study holds, in the document's order."""
    selection = current_selection(session, study_pk)
    if selection is None:
        return []
    uids = {ref.sop_uid for ref in selection.references}
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.id, Instance.number_of_frames, Instance.instance_number,
               Series.series_instance_uid, Series.series_number)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study_pk, Instance.sop_instance_uid.in_(uids), Instance.rows.is_not(None))).all()
    known = {row.sop_instance_uid: row for row in rows}
    return [KeyImage(row.series_instance_uid, ref.sop_uid, ref.frame, row.id, max(1, row.number_of_frames or 1),
                     row.series_number, row.instance_number)
            for ref in selection.references if (row := known.get(ref.sop_uid)) is not None]


def image_modalities(modalities: str) -> list[str]:
    """A study's modalities ("CT\\KO\\SR") without those of documents (["CT"])."""
    return [m for m in (modalities or "").split("\\") if m and m.upper() not in DOCUMENT_MODALITIES]
