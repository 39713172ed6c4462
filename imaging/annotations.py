"""A reader's measurements as a DICOM SR and their key images as a Key Object Selection, stored
into the study through the one Ingestor (C-STORE, STOW-RS and import use it) and read back.

Measurements: one Comprehensive 3D SR (1.2.840.10008.5.1.4.1.1.88.34) per save, content
TID 1500 "Imaging Measurement Report" (highdicom), observer = the user (TID 1002: name,
login, institution). Each measurement is one TID 1410 "Planar ROI" measurement group:

* Tracking Identifier ``lancang:{type}:{unit}:{n}`` (the viewer's tool and its unit as posted,
  the way OHIF marks its tools) and a new Tracking Unique Identifier; the ROI is an Image Region (SCOORD,
  pixel coordinates, TLHC of the image 0,0) SELECTED FROM the source image (its frame for a
  multi-frame image):
  length   POLYLINE of the two ends                    Length (410668003, SCT) mm
  angle    POLYLINE arm, vertex, arm                    Angle (1483009, SCT) deg
  rect     closed POLYLINE (5 points: 4 corners, the first again; SCOORD has no POLYGON,
           PS3.3 C.18.6.1.2 calls a closed POLYLINE a polygon)
  ellipse  ELLIPSE: major axis ends, then minor axis ends, of the bounding box
  probe    POINT
  arrow    POLYLINE tip, tail (PS3.3 leaves the order of a two-point POLYLINE to the template)
* areas Area (42798000, SCT) mm2; region statistics Mean (373098007), Standard Deviation
  (386136009), Minimum (255605001), Maximum (56851009), all SCT (PS3.16 CID 7464, the codes
  highdicom's `codes.SCT` names), in [hnsf'U] for HU and 1 otherwise; a probed value is an
  Attenuation Coefficient (112031, DCM) in [hnsf'U], else a Quantity (246205007, SCT) in 1.
* an arrow's label (any text) is a TEXT Comment (121106, DCM) of its group.

Angle: PS3.16 CID 7469/7470 have no plain angle; (1483009, SCT, "Angle") is SNOMED's generic
concept, already a measurement name in PS3.16 (CID 12304); Cobb angle (285285000) or an
acetabular angle say more than a viewer's three-point tool knows.

Reading: a reader's newest TID 1500 document wins; a save replaces the set, so each save is a
new instance and nothing is edited. Clearing (an empty save) writes an IHE IOCM rejection
note (imaging/keyimages.py) that withdraws the cleared documents: a KOS that names nothing is
not valid DICOM, and a rejection note is how DICOM itself says "no longer current".
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imaging import keyimages
from imaging.dataset import InvalidInstance
from imaging.models import Instance, Series, Study
from imaging.schemas import KeyImageRef, Measurement
from imaging.service import IngestResult, Ingestor
from storage.errors import Invalid, Unavailable

log = logging.getLogger("lancang.imaging")

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
# The SR classes highdicom reads a TID 1500 document from.
SR_CLASSES = {COMPREHENSIVE_3D_SR: hd.sr.Comprehensive3DSR, "1.2.840.10008.5.1.4.1.1.88.33": hd.sr.ComprehensiveSR,
              "1.2.840.10008.5.1.4.1.1.88.22": hd.sr.EnhancedSR}

ANGLE = Code("1483009", "SCT", "Angle")
QUANTITY = Code("246205007", "SCT", "Quantity")
COMMENT = Code("121106", "DCM", "Comment")
NO_UNITS = Code("1", "UCUM", "no units")
STATISTICS = {"mean": codes.SCT.Mean, "sd": codes.SCT.StandardDeviation, "min": codes.SCT.Minimum,
              "max": codes.SCT.Maximum}
GEOMETRY = {"length_mm": (codes.SCT.Length, codes.UCUM.Millimeter), "angle_deg": (ANGLE, codes.UCUM.Degree),
            "area_mm2": (codes.SCT.Area, codes.UCUM.SquareMillimeter)}
# Concept code value -> the viewer's value key, for reading back.
VALUE_KEYS = {"410668003": "lengthMm", "1483009": "angleDeg", "42798000": "areaMm2", "373098007": "mean",
              "386136009": "sd", "255605001": "min", "56851009": "max", "112031": "value", "246205007": "value"}
GRAPHIC = {"length": "POLYLINE", "angle": "POLYLINE", "rect": "POLYLINE", "ellipse": "ELLIPSE", "probe": "POINT",
           "arrow": "POLYLINE"}
TRACKING_PREFIX = "lancang"
# Per study, one series for each kind of document Lancang writes (UIDs derived from the study's,
# so every save lands in the same series, not one more series per save): (number, description).
SERIES = {"measurements": (9901, "测量 Measurements"), "key-images": (9902, "关键图像 Key images"),
          "withdrawn": (9903, "撤回 Withdrawn")}
# LOINC / SNOMED codes of PS3.16 CID 100 for "Procedure reported", by the study's first image modality.
PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
              "NM": codes.LN.NMUnspecifiedBodyRegion, "PT": codes.LN.PETUnspecifiedBodyRegion,
              **dict.fromkeys(("CR", "DX", "DR", "MG", "XA", "RF", "IO", "PX"), codes.LN.XRUnspecifiedBodyRegion)}
CHARSET = "ISO_IR 192"  # names and labels are Chinese
# What an evidence dataset needs of a referenced instance (highdicom copies the patient and
# study from the first): the index's DICOM JSON, cut to these, so no object is opened.
_EVIDENCE_TAGS = {"00080016", "00080018", "00080020", "00080030", "00080050", "00080090", "00100010", "00100020",
                  "00100021", "00100030", "00100040", "0020000D", "0020000E", "00200010", "00280008", "00280010",
                  "00280011"}
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
           "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True)
class Author:
    """Who saves: the person observer of the document."""

    name: str
    login: str
    institution: str

    @property
    def person_name(self) -> str:
        """The display name as a DICOM PN: one family-name component unless it has carets."""
        name = "".join(ch for ch in (self.name or self.login) if ch not in "\\=")[:60]
        return name if "^" in name else f"{name}^"


@dataclass(frozen=True)
class Evidence:
    """A referenced instance as the index knows it, and the dataset highdicom takes for it."""

    series_uid: str
    sop_uid: str
    frames: int
    rows: int | None
    columns: int | None
    dataset: Dataset

    def source(self, frame: int | None) -> hd.sr.SourceImageForRegion:
        """The image reference; a frame only for a multi-frame image (PS3.3 10.3: Referenced Frame
        Number is there to choose among frames; dciodvfy refuses it for a single-frame object)."""
        frames = [frame or 1] if self.frames > 1 else None
        return hd.sr.SourceImageForRegion(self.dataset.SOPClassUID, self.sop_uid, frames)


# -- the index --------------------------------------------------------------------------------


def evidence_dataset(content: dict) -> Dataset:
    """A dataset of what highdicom copies from a referenced instance, from its stored DICOM JSON."""
    ds = Dataset.from_json({tag: value for tag, value in content.items() if tag in _EVIDENCE_TAGS})
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def evidence_for(session: Session, study: Study, wanted: list[tuple[str, str]]) -> dict[str, Evidence]:
    """{SOP Instance UID: Evidence} of the (series, instance) pairs the caller named, each an
    image of this study; Invalid (422) naming the first that is not."""
    uids = {sop for _, sop in wanted}
    rows = session.execute(
        select(Instance.sop_instance_uid, Series.series_instance_uid, Instance.number_of_frames, Instance.rows,
               Instance.columns, Instance.dicom_json)
        .join(Series, Series.id == Instance.series_pk)
        .where(Series.study_pk == study.id, Instance.sop_instance_uid.in_(uids))).all()
    found = {row.sop_instance_uid: row for row in rows}
    for series_uid, sop in wanted:
        row = found.get(sop)
        if row is None or row.series_instance_uid != series_uid:
            raise Invalid(f"该检查中没有这幅图像 / series {series_uid[:70]}, instance {sop[:70]} "
                          "is not in this study")
        if row.rows is None:
            raise Invalid(f"所选对象不是图像 / instance {sop[:70]} is not an image")
    return {sop: Evidence(row.series_instance_uid, sop, max(1, row.number_of_frames or 1), row.rows, row.columns,
                          evidence_dataset(keyimages.load(row.dicom_json))) for sop, row in found.items()}


def _series_uid(study: Study, kind: str) -> str:
    return generate_uid(prefix="2.25.", entropy_srcs=["lancang", kind, study.study_instance_uid])


def _next_number(session: Session, series_uid: str) -> int:
    count = session.scalar(select(func.count()).select_from(Instance).join(Series, Series.id == Instance.series_pk)
                           .where(Series.series_instance_uid == series_uid))
    return int(count or 0) + 1


def _identity(session: Session, study: Study, kind: str) -> dict:
    """The series and instance attributes of a new document of this kind in this study."""
    number, description = SERIES[kind]
    series_uid = _series_uid(study, kind)
    return dict(series_instance_uid=series_uid, series_number=number, series_description=description,
                sop_instance_uid=hd.UID(), instance_number=_next_number(session, series_uid),
                manufacturer="Lancang", specific_character_set=CHARSET)


def _observer(author: Author) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=author.person_name, login_name=author.login or None,
            organization_name=author.institution[:64] or None))


# -- measurements -------------------------------------------------------------------------------


def check_geometry(measurements: list[Measurement], evidence: dict[str, Evidence]) -> None:
    """Frames that exist and points on the image (PS3.3 C.18.6.1.1: 0,0 to Columns,Rows)."""
    for index, m in enumerate(measurements, start=1):
        source = evidence[m.sop_instance_uid]
        if m.frame > source.frames:
            raise Invalid(f"第 {index} 项测量的帧号超出范围 / measurement {index}: frame {m.frame} of an image "
                          f"with {source.frames}")
        for x, y in m.points:
            if not (0 <= x <= (source.columns or 0) and 0 <= y <= (source.rows or 0)):
                raise Invalid(f"第 {index} 项测量的点在图像之外 / measurement {index}: point ({x:g}, {y:g}) is "
                              f"outside the {source.columns}x{source.rows} image")


def graphic_data(kind: str, points) -> list[list[float]]:
    """The SCOORD points of a measurement's region (see the module doc)."""
    if kind == "rect":
        (x0, y0), (x1, y1) = points
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    if kind == "ellipse":
        (x0, y0), (x1, y1) = points
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        across, down = [[x0, cy], [x1, cy]], [[cx, y0], [cx, y1]]
        # The major axis first (PS3.3 C.18.6.1.2); each axis keeps the corners' order, so the
        # two corners read back as they were posted.
        return across + down if abs(x1 - x0) >= abs(y1 - y0) else down + across
    return [[x, y] for x, y in points]


def points_of(kind: str, data: list[list[float]]) -> list[list[float]]:
    """graphic_data read back: the viewer's points."""
    if kind == "rect":
        return [data[0], data[2]]
    if kind == "ellipse":
        first, second = data[:2], data[2:]
        # The pair whose ends share a column (and not a row) is the vertical axis.
        vertical_first = first[0][0] == first[1][0] and first[0][1] != first[1][1]
        across, down = (second, first) if vertical_first else (first, second)
        return [[across[0][0], down[0][1]], [across[1][0], down[1][1]]]
    return data


def _measurements(m: Measurement) -> list[hd.sr.Measurement]:
    values = m.values
    found = [hd.sr.Measurement(name=name, value=getattr(values, key), unit=unit)
             for key, (name, unit) in GEOMETRY.items() if getattr(values, key) is not None]
    hounsfield = "HU" in (m.unit, m.value_unit)
    intensity = codes.UCUM.HounsfieldUnit if hounsfield else NO_UNITS
    found += [hd.sr.Measurement(name=name, value=getattr(values, key), unit=intensity)
              for key, name in STATISTICS.items() if getattr(values, key) is not None]
    if values.value is not None:
        name = codes.DCM.AttenuationCoefficient if hounsfield else QUANTITY
        found.append(hd.sr.Measurement(name=name, value=values.value, unit=intensity))
    return found


def _group(m: Measurement, n: int, source: Evidence) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region = hd.sr.ImageRegion(graphic_type=GRAPHIC[m.type], graphic_data=np.array(graphic_data(m.type, m.points)),
                               source_image=source.source(m.frame))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                     identifier=f"{TRACKING_PREFIX}:{m.type}:{m.unit}:{n}"),
        referenced_region=region, measurements=_measurements(m))
    if m.text:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=COMMENT, value=m.text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def measurement_report(*, session: Session, study: Study, author: Author,
                       measurements: list[Measurement]) -> Dataset:
    """The Comprehensive 3D SR of these measurements (TID 1500, one TID 1410 group each), after
    checking each names an image of this study, a frame it has and points on it."""
    evidence = evidence_for(session, study, [(m.series_uid, m.sop_instance_uid) for m in measurements])
    check_geometry(measurements, evidence)
    groups = [_group(m, n, evidence[m.sop_instance_uid]) for n, m in enumerate(measurements, start=1)]
    modality = next(iter(keyimages.image_modalities(study.modalities)), "")
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=_observer(author)),
        procedure_reported=PROCEDURES.get(modality, codes.cid100.ImagingProcedure), imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[e.dataset for e in evidence.values()], content=report[0], is_complete=True,
        institution_name=author.institution[:64] or None, **_identity(session, study, "measurements"))


def measurement_documents(session: Session, study: Study) -> list[keyimages.Document]:
    """The study's TID 1500 documents that no rejection note withdrew, newest first."""
    gone = keyimages.withdrawn(keyimages.study_documents(session, study.id, [keyimages.KEY_OBJECT_SELECTION]))
    return [d for d in keyimages.study_documents(session, study.id, SR_CLASSES)
            if d.sop_uid not in gone and _template(d.content) == "1500"]


def _template(content: dict) -> str:
    item = next(iter((content.get("0040A504") or {}).get("Value") or []), {})
    return str(((item.get("0040DB00") or {}).get("Value") or [""])[0])


def newest_per_author(documents: list[keyimages.Document]) -> list[tuple[keyimages.Document, str]]:
    """(document, author's name) of each author's newest document, newest first."""
    seen, found = set(), []
    for document in documents:
        if _author_key(document) not in seen:
            seen.add(_author_key(document))
            login, name = keyimages.observer(document.content)
            found.append((document, name or login))
    return found


def read_measurements(*, session: Session, study: Study) -> list[dict]:
    """Each author's newest measurement document of the study, parsed; one that cannot be
    parsed is skipped (and logged), never the reason the read fails."""
    out = []
    for document, author in newest_per_author(measurement_documents(session, study)):
        try:
            measurements = parse_report(document.content)
        except Exception as exc:  # noqa: BLE001 - any malformed document, whoever wrote it
            log.warning("imaging.measurements.unreadable sop=%s reason=%s", document.sop_uid, exc)
            continue
        out.append({"sop_instance_uid": document.sop_uid, "author": author,
                    "created_at": document.stored_at.isoformat(), "measurements": measurements})
    return out


def parse_report(content: dict) -> list[dict]:
    """The viewer's measurements of a stored TID 1500 document (its DICOM JSON), parsed by
    highdicom; groups Lancang did not write (no `lancang:` tracking identifier) are left out."""
    ds = Dataset.from_json(content)
    sr = SR_CLASSES[str(ds.SOPClassUID)].from_dataset(ds, copy=False)
    if not isinstance(sr.content, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 measurement report")
    series_of = keyimages.series_by_instance(content)
    found = []
    for group in sr.content.get_planar_roi_measurement_groups():
        parsed = _parse_group(group, series_of)
        if parsed is not None:
            found.append(parsed)
    return found


def _parse_group(group, series_of: dict[str, str]) -> dict | None:
    parts = str(group.tracking_identifier or "").split(":")
    roi = group.roi  # highdicom builds it anew on each access: once
    if len(parts) != 4 or parts[0] != TRACKING_PREFIX or parts[1] not in GRAPHIC or not isinstance(
            roi, hd.sr.ImageRegion):
        return None
    kind, unit = parts[1], parts[2]
    reference = roi.ContentSequence[0].ReferencedSOPSequence[0]
    frames = reference.get("ReferencedFrameNumber")
    frame = int(frames[0] if isinstance(frames, MultiValue) else frames) if frames else 1
    data = [[round(float(x), 4), round(float(y), 4)] for x, y in roi.value.tolist()]
    measured = [m for m in group.get_measurements() if m.name.value in VALUE_KEYS]
    values = {VALUE_KEYS[m.name.value]: float(m.value) for m in measured}
    hounsfield = any(m.unit.value == codes.UCUM.HounsfieldUnit.value for m in measured)
    text = next((str(item.TextValue) for item in group[0].ContentSequence
                 if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == COMMENT.value), None)
    sop = str(reference.ReferencedSOPInstanceUID)
    return {"type": kind, "series_uid": series_of.get(sop, ""), "sop_instance_uid": sop, "frame": frame,
            "points": points_of(kind, data), "values": values, "unit": unit,
            "value_unit": "HU" if hounsfield else "", "text": text}


# -- key images ---------------------------------------------------------------------------------


def key_object_selection(*, session: Session, study: Study, author: Author, images: list[KeyImageRef],
                         note: str | None) -> tuple[Dataset, list[keyimages.Reference]]:
    """A KOS "Of Interest" (113000, DCM) naming these images of the study in this order, a frame
    only of a multi-frame image; its Current Requested Procedure Evidence Sequence lists them
    (highdicom builds it from the evidence). Returns it and the references as it names them."""
    evidence = evidence_for(session, study, [(i.series_uid, i.sop_instance_uid) for i in images])
    for image in images:
        if (image.frame or 1) > evidence[image.sop_instance_uid].frames:
            raise Invalid(f"帧号超出范围 / frame {image.frame} of an image with "
                          f"{evidence[image.sop_instance_uid].frames}")
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, observer_person_context=_observer(author), description=note or None,
        referenced_objects=[evidence[i.sop_instance_uid].dataset for i in images])
    named = [item for item in content[0].ContentSequence if item.ValueType == "IMAGE"]
    refs = [keyimages.Reference(i.sop_instance_uid, i.series_uid,
                                i.frame if evidence[i.sop_instance_uid].frames > 1 else None) for i in images]
    for item, ref in zip(named, refs):
        if ref.frame:
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = ref.frame
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[e.dataset for e in evidence.values()], content=content,
        institution_name=author.institution[:64] or None, **_identity(session, study, "key-images"))
    return document, refs


def read_key_images(*, session: Session, study: Study) -> dict:
    """The study's current key images: the newest KOS that nothing withdrew, as it names them."""
    selection = keyimages.current_selection(session, study.id)
    if selection is None:
        return {"images": [], "sop_instance_uid": None, "author": None}
    return {"images": [{"series_uid": ref.series_uid, "sop_instance_uid": ref.sop_uid, "frame": ref.frame}
                       for ref in selection.references],
            "sop_instance_uid": selection.sop_uid, "author": selection.author or None}


# -- withdrawing --------------------------------------------------------------------------------


def rejection_note(*, session: Session, study: Study, author: Author,
                   documents: list[keyimages.Document]) -> Dataset | None:
    """An IOCM rejection note (KOS titled "Rejected for Quality Reasons", 113001 DCM) that
    withdraws these documents; None when there is nothing to withdraw."""
    if not documents:
        return None
    evidence = [evidence_dataset(d.content) for d in documents]
    content = hd.ko.KeyObjectSelection(document_title=codes.DCM.RejectedForQualityReasons,
                                       observer_person_context=_observer(author), referenced_objects=evidence)
    return hd.ko.KeyObjectSelectionDocument(evidence=evidence, content=content,
                                            institution_name=author.institution[:64] or None,
                                            **_identity(session, study, "withdrawn"))


def own_measurements(session: Session, study: Study, author: Author) -> list[keyimages.Document]:
    """This author's current measurement documents of the study (what clearing withdraws)."""
    return [d for d in measurement_documents(session, study) if _author_key(d) == (author.login or author.name)]


def _author_key(document: keyimages.Document) -> str:
    login, name = keyimages.observer(document.content)
    return login or name


def current_selections(session: Session, study: Study) -> list[keyimages.Document]:
    """Every KOS of the study that still selects images (what clearing the key images withdraws)."""
    documents = keyimages.study_documents(session, study.id, [keyimages.KEY_OBJECT_SELECTION])
    gone = keyimages.withdrawn(documents)
    return [d for d in documents if d.sop_uid not in gone and not keyimages.is_rejection(d.content)]


# -- storing ------------------------------------------------------------------------------------


def part10(document: Dataset) -> bytes:
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def store(*, ingestor: Ingestor, document: Dataset, institution_id: int, author: Author) -> IngestResult:
    """Store a document into its study through the Ingestor, as the study's institution (an
    instance belongs to its study's institution; the ingest refuses anything else)."""
    try:
        return ingestor.ingest(part10(document), institution_id=institution_id,
                               source=f"annotation:{author.login}"[:64])
    except InvalidInstance as exc:
        log.error("imaging.annotation.refused sop=%s reason=%s", document.SOPInstanceUID, exc.reason)
        raise Invalid(f"文档未能保存 / the document was refused: {exc.reason}") from None
    except OSError as exc:
        raise Unavailable(f"存储暂时不可用 / the store is unavailable: {type(exc).__name__}") from None
