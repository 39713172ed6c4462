"""An obstetric ultrasound report as DICOM, so that other systems read its numbers: a
Comprehensive SR (1.2.840.10008.5.1.4.1.1.88.33) whose content is PS3.16 TID 5000 "OB-GYN
Ultrasound Procedure Report", stored into the study through the one Ingestor, read back here.

Comprehensive SR rather than Enhanced SR: TID 5000's sub-templates allow by-reference
relationships (TID 5008 row 5, R-INFERRED FROM), which Enhanced SR forbids; ultrasound
systems write their OB reports as Comprehensive SR too, and highdicom builds and reads it.

The content tree (PS3.16 "OB-GYN Report Templates"; the rows Lancang fills):

  CONTAINER (125000, DCM, "OB-GYN Ultrasound Procedure Report")      TID 5000, CID 12024
   HAS OBS CONTEXT   the reader as person observer (TID 1001/1002: name, login, institution)
   CONTAINS TID 5001 (121118, DCM, "Patient Characteristics"): Gravida (11996-6), Para (11977-6)
   CONTAINS TID 5002 (121111, DCM, "Summary"):
     DATE   CID 12003: LMP (8665-2), EDD (11778-8), EDD from LMP (11779-6),
            EDD from average ultrasound age (11781-2)
     TEXT   Comment (121106, DCM): the impression, as signed
     CODE   placenta position and grade (private codes, below)
     CONTAINER TID 5003 (125008, DCM, "Fetus Summary"), CID 12019 items: Gestational Age
            (18185-9, the GA the report states), GA by LMP (11885-1), Composite Ultrasound Age
            (11888-5: the equation cited, its ±2 SD), Estimated Weight (11727-5: its equation
            from CID 12014, ±15 % as 2 sigma values of CID 226), EFW percentile rank (11767-1, by
            (128041, DCM, "FWP by GA, Hadlock, 1991") of CID 12016), Fetal Heart Rate (11948-7);
            the presentation (private code)
   CONTAINS TID 5004 (125001, DCM, "Fetal Biometry Ratios"): HC/AC, FL/AC, FL/BPD (CID 12004)
   CONTAINS TID 5005 (125002, DCM, "Fetal Biometry"): per measurement a TID 5008 container
            (125005, DCM, "Biometry Group") holding the measurement in mm (CID 12005: BPD
            11820-8, HC 11984-2, AC 11979-2, FL 11963-6) and its Gestational Age (18185-9) in
            days, INFERRED FROM (121420, DCM, "Equation") = the Hadlock 1984 regression of CID
            12013, HAS PROPERTIES its ±2 SD as 2 Sigma Lower/Upper Value of population
            (371918003/371920000, SCT; TID 5008 row 6: "the uncertainty ... of the GA")
   CONTAINS TID 5010 (121070, DCM, "Findings"), Finding Site (363698007, SCT) = amniotic sac
            (70847004, SCT; the SNOMED code of SRT T-F1300): Amniotic Fluid Index (11627-7, cm,
            CID 12008). TID 5009 "Biophysical Profile" holds only 0-2 scores, not the AFI.
   CONTAINS TID 5015 (125011, DCM, "Pelvis and Uterus"): Cervix Length (11961-0, mm, CID 12011)

Units are UCUM: mm, cm, g, d, %, {H.B.}/min (BPM), {ratio}, 1 (no units).

Private codes: TID 5000 and its CIDs have no concept for the fetal presentation, the placenta's
position or its grade (Grannum 0-III); they use the coding scheme "99LANCANG" (PS3.16 8: a
private designator begins with 99), described in the document's Coding Scheme Identification
Sequence. One fetus: TID 1008 "Subject Context, Fetus" is needed only for several.

One document per final report version: its SOP Instance UID is derived from the version, so a
repeat of the export is refused before anything is built, and a later final report of the same
study is a new document beside it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Iterator

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from imaging import keyimages
from imaging.annotations import CHARSET, Author, evidence_dataset, part10
from imaging.dataset import InvalidInstance
from imaging.models import Instance, Series, Study
from imaging.service import IngestResult, Ingestor
from storage import db
from storage.errors import Invalid, Unavailable

log = logging.getLogger("lancang.imaging")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SERIES_NUMBER, SERIES_DESCRIPTION = 9904, "产科超声结构化报告 OB-GYN SR"
PRIVATE = "99LANCANG"
MAX_EVIDENCE = 1000  # images listed as the procedure's evidence; an OB study has far fewer

REPORT = Code("125000", "DCM", "OB-GYN Ultrasound Procedure Report")
PATIENT_CHARACTERISTICS, SUMMARY = Code("121118", "DCM", "Patient Characteristics"), Code("121111", "DCM", "Summary")
FETUS_SUMMARY, RATIOS = Code("125008", "DCM", "Fetus Summary"), Code("125001", "DCM", "Fetal Biometry Ratios")
BIOMETRY, GROUP = Code("125002", "DCM", "Fetal Biometry"), Code("125005", "DCM", "Biometry Group")
FINDINGS, FINDING_SITE = Code("121070", "DCM", "Findings"), Code("363698007", "SCT", "Finding Site")
AMNIOTIC_SAC, PELVIS_UTERUS = Code("70847004", "SCT", "Amniotic Sac"), Code("125011", "DCM", "Pelvis and Uterus")
COMMENT, EQUATION = Code("121106", "DCM", "Comment"), Code("121420", "DCM", "Equation")
EQUATION_CITATION = Code("121421", "DCM", "Equation Citation")
TWO_SIGMA_LOW = Code("371918003", "SCT", "2 Sigma Lower Value of population")
TWO_SIGMA_HIGH = Code("371920000", "SCT", "2 Sigma Upper Value of population")
GRAVIDA, PARA = Code("11996-6", "LN", "Gravida"), Code("11977-6", "LN", "Para")
LMP, EDD = Code("8665-2", "LN", "LMP"), Code("11778-8", "LN", "EDD")
EDD_FROM_LMP = Code("11779-6", "LN", "EDD from LMP")
EDD_FROM_US = Code("11781-2", "LN", "EDD from average ultrasound age")
GA, GA_BY_LMP = Code("18185-9", "LN", "Gestational Age"), Code("11885-1", "LN", "Gestational Age by LMP")
COMPOSITE_GA, EFW = Code("11888-5", "LN", "Composite Ultrasound Age"), Code("11727-5", "LN", "Estimated Weight")
EFW_PERCENTILE, FHR = Code("11767-1", "LN", "EFW percentile rank"), Code("11948-7", "LN", "Fetal Heart Rate")
FWP_HADLOCK_1991 = Code("128041", "DCM", "FWP by GA, Hadlock, 1991")
AFI, CERVIX = Code("11627-7", "LN", "Amniotic Fluid Index"), Code("11961-0", "LN", "Cervix Length")
# CID 12005 measurement and the CID 12013 Hadlock 1984 equation of its GA, by Lancang's key.
MEASUREMENTS = {"bpd": (Code("11820-8", "LN", "Biparietal Diameter"), Code("11902-4", "LN", "BPD, Hadlock 1984")),
                "hc": (Code("11984-2", "LN", "Head Circumference"), Code("11932-1", "LN", "HC, Hadlock 1984")),
                "ac": (Code("11979-2", "LN", "Abdominal Circumference"), Code("11892-7", "LN", "AC, Hadlock 1984")),
                "fl": (Code("11963-6", "LN", "Femur Length"), Code("11920-6", "LN", "FL, Hadlock 1984"))}
# CID 12004 ratios: (numerator, denominator).
RATIOS_OF = {("hc", "ac"): Code("11947-9", "LN", "HC/AC"), ("fl", "ac"): Code("11871-1", "LN", "FL/AC"),
             ("fl", "bpd"): Code("11872-9", "LN", "FL/BPD")}
# CID 12014: the Hadlock 1985 EFW models by the key consult/obstetrics.py names them with.
EFW_EQUATIONS = {"hadlock1985_bpd_hc_ac_fl": Code("11732-5", "LN", "EFW by AC, BPD, FL, HC, Hadlock 1985"),
                 "hadlock1985_hc_ac_fl": Code("11746-5", "LN", "EFW by AC, FL, HC, Hadlock 1985"),
                 "hadlock1985_bpd_ac_fl": Code("11735-8", "LN", "EFW by AC, BPD, FL, Hadlock 1985"),
                 "hadlock1985_ac_fl": Code("11751-5", "LN", "EFW by AC, FL, Hadlock 1985")}
COMPOSITE_CITATION = ("Hadlock FP, Deter RL, Harrist RB, Park SK. Estimating fetal age: computer-assisted analysis "
                      "of multiple fetal growth parameters. Radiology 1984;152:497-501")
UNITS = {"mm": Code("mm", "UCUM", "mm"), "cm": Code("cm", "UCUM", "cm"), "g": Code("g", "UCUM", "g"),
         "d": Code("d", "UCUM", "day"), "%": Code("%", "UCUM", "Percent"), "bpm": Code("{H.B.}/min", "UCUM", "BPM"),
         "ratio": Code("{ratio}", "UCUM", "ratio"), "1": Code("1", "UCUM", "no units")}
# Private concepts (see the module doc) and their values, by the keys consult/obstetrics.py stores.
PRESENTATION = Code("OB-PRES", PRIVATE, "Fetal presentation")
PLACENTA_POSITION = Code("OB-PLAC", PRIVATE, "Placenta position")
PLACENTA_GRADE = Code("OB-PLGR", PRIVATE, "Placental grade (Grannum)")
PRIVATE_VALUES = {  # {concept: {stored key: (code value, meaning)}}; code values fit SH (16)
    PRESENTATION: {"cephalic": ("CEPHALIC", "Cephalic"), "breech": ("BREECH", "Breech"),
                   "transverse": ("TRANSVERSE", "Transverse"), "oblique": ("OBLIQUE", "Oblique")},
    PLACENTA_POSITION: {"anterior": ("PL-ANTERIOR", "Anterior"), "posterior": ("PL-POSTERIOR", "Posterior"),
                        "fundal": ("PL-FUNDAL", "Fundal"), "lateral": ("PL-LATERAL", "Lateral"),
                        "low_lying": ("PL-LOWLYING", "Low-lying"), "previa": ("PL-PREVIA", "Previa")},
    PLACENTA_GRADE: {"0": ("PG-0", "Grade 0"), "I": ("PG-I", "Grade I"), "II": ("PG-II", "Grade II"),
                     "III": ("PG-III", "Grade III")},
}


@dataclass(frozen=True)
class Biometric:
    """A measurement (mm) and the GA (days) its Hadlock 1984 regression gives, with ±2 SD."""

    key: str  # bpd | hc | ac | fl
    mm: float
    ga_days: int | None = None
    two_sd_days: int | None = None


@dataclass(frozen=True)
class Observations:
    """What the sonographer recorded beside the biometry, as plain values."""

    fhr_bpm: float | None = None
    afi_cm: float | None = None
    cervix_mm: float | None = None
    presentation: str = ""  # a key of PRIVATE_VALUES[PRESENTATION]
    placenta: str = ""  # a key of PRIVATE_VALUES[PLACENTA_POSITION]
    placenta_grade: str = ""  # a key of PRIVATE_VALUES[PLACENTA_GRADE]
    gravida: int | None = None
    para: int | None = None


@dataclass(frozen=True)
class ObstetricValues:
    """What the document says, as plain values (imaging/ does not know consult's report)."""

    biometry: tuple[Biometric, ...] = ()
    lmp: date | None = None
    edd: date | None = None
    edd_by_lmp: date | None = None
    edd_by_ultrasound: date | None = None
    stated_ga_days: int | None = None
    ga_by_lmp_days: int | None = None
    composite_ga_days: int | None = None
    composite_two_sd_days: int | None = None
    efw_g: float | None = None
    efw_model: str = ""  # a key of EFW_EQUATIONS, "" for a weight typed without its model
    efw_low_g: float | None = None
    efw_high_g: float | None = None
    efw_percentile: float | None = None
    observed: Observations = Observations()
    comment: str = ""


# -- content items --------------------------------------------------------------------------------

CONTAINS, HAS_PROPERTIES = hd.sr.RelationshipTypeValues.CONTAINS, hd.sr.RelationshipTypeValues.HAS_PROPERTIES
INFERRED_FROM = hd.sr.RelationshipTypeValues.INFERRED_FROM


def _num(name: Code, value: float, unit: str, relationship=CONTAINS, children=()) -> hd.sr.NumContentItem:
    item = hd.sr.NumContentItem(name=name, value=round(float(value), 4), unit=UNITS[unit],
                                relationship_type=relationship)
    return _with(item, children)


def _with(item, children):
    children = [c for c in children if c is not None]
    if children:
        item.ContentSequence = hd.sr.ContentSequence(children)
    return item


def _container(name: Code, children, template: str | None = None, relationship=CONTAINS):
    return _with(hd.sr.ContainerContentItem(name=name, template_id=template, relationship_type=relationship),
                 children)


def _private(concept: Code, key: str, relationship=CONTAINS) -> hd.sr.CodeContentItem | None:
    found = PRIVATE_VALUES[concept].get(key)
    if found is None:
        return None
    value = Code(found[0], PRIVATE, found[1])
    return hd.sr.CodeContentItem(name=concept, value=value, relationship_type=relationship)


def _days(name: Code, days: int | None, two_sd: int | None = None, inferred=None):
    """A GA in days, with where it comes from and its ±2 SD as 2 sigma values (CID 226)."""
    if days is None:
        return None
    spread = [] if two_sd is None else [_num(TWO_SIGMA_LOW, days - two_sd, "d", HAS_PROPERTIES),
                                        _num(TWO_SIGMA_HIGH, days + two_sd, "d", HAS_PROPERTIES)]
    return _num(name, days, "d", children=[inferred, *spread])


def _equation(value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=EQUATION, value=value, relationship_type=INFERRED_FROM)


def _patient(values: ObstetricValues):
    """TID 5001: gravida and para, when the report gives them."""
    items = [_num(name, count, "1") for name, count in ((GRAVIDA, values.observed.gravida), (PARA, values.observed.para))
             if count is not None]
    return _container(PATIENT_CHARACTERISTICS, items, "5001") if items else None


def _dates(values: ObstetricValues) -> list:
    pairs = ((LMP, values.lmp), (EDD, values.edd), (EDD_FROM_LMP, values.edd_by_lmp),
             (EDD_FROM_US, values.edd_by_ultrasound))
    return [hd.sr.DateContentItem(name=name, value=day, relationship_type=CONTAINS) for name, day in pairs if day]


def _weight(values: ObstetricValues) -> list:
    if values.efw_g is None:
        return []
    model = EFW_EQUATIONS.get(values.efw_model)
    spread = [] if values.efw_low_g is None else [_num(TWO_SIGMA_LOW, values.efw_low_g, "g", HAS_PROPERTIES),
                                                  _num(TWO_SIGMA_HIGH, values.efw_high_g, "g", HAS_PROPERTIES)]
    items = [_num(EFW, values.efw_g, "g", children=[_equation(model) if model else None, *spread])]
    if values.efw_percentile is not None:
        items.append(_num(EFW_PERCENTILE, values.efw_percentile, "%", children=[_equation(FWP_HADLOCK_1991)]))
    return items


def _fetus(values: ObstetricValues):
    """TID 5003, one fetus: the GAs, the EFW, the heart rate, the presentation."""
    citation = hd.sr.TextContentItem(name=EQUATION_CITATION, value=COMPOSITE_CITATION, relationship_type=INFERRED_FROM)
    items = [_days(GA, values.stated_ga_days), _days(GA_BY_LMP, values.ga_by_lmp_days),
             _days(COMPOSITE_GA, values.composite_ga_days, values.composite_two_sd_days, citation), *_weight(values),
             _num(FHR, values.observed.fhr_bpm, "bpm") if values.observed.fhr_bpm is not None else None,
             _private(PRESENTATION, values.observed.presentation)]
    items = [item for item in items if item is not None]
    return _container(FETUS_SUMMARY, items, "5003") if items else None


def _summary(values: ObstetricValues):
    """TID 5002: the dates, the impression, the placenta, the fetus summary."""
    items = [*_dates(values),
             hd.sr.TextContentItem(name=COMMENT, value=values.comment[:10000], relationship_type=CONTAINS)
             if values.comment.strip() else None,
             _private(PLACENTA_POSITION, values.observed.placenta), _private(PLACENTA_GRADE, values.observed.placenta_grade),
             _fetus(values)]
    items = [item for item in items if item is not None]
    return _container(SUMMARY, items, "5002") if items else None


def _group(b: Biometric):
    """TID 5008: the measurement and the GA it gives by Hadlock 1984."""
    concept, equation = MEASUREMENTS[b.key]
    return _container(GROUP, [_num(concept, b.mm, "mm"), _days(GA, b.ga_days, b.two_sd_days, _equation(equation))],
                      "5008")


def _ratios(values: ObstetricValues):
    mm = {b.key: b.mm for b in values.biometry}
    items = [_num(code, mm[top] / mm[bottom], "ratio") for (top, bottom), code in RATIOS_OF.items()
             if mm.get(top) and mm.get(bottom)]
    return _container(RATIOS, items, "5004") if items else None


def _sections(values: ObstetricValues) -> list:
    """TID 5000's rows 4 (5001), 7 (5002), 8 (5004), 9 (5005), 14 (5010), 15 (5015), in its order."""
    biometry = _container(BIOMETRY, [_group(b) for b in values.biometry], "5005") if values.biometry else None
    sac = None
    if values.observed.afi_cm is not None:
        site = hd.sr.CodeContentItem(name=FINDING_SITE, value=AMNIOTIC_SAC,
                                     relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
        sac = _container(FINDINGS, [site, _num(AFI, values.observed.afi_cm, "cm")], "5010")
    pelvis = (_container(PELVIS_UTERUS, [_num(CERVIX, values.observed.cervix_mm, "mm")], "5015")
              if values.observed.cervix_mm is not None else None)
    return [s for s in (_patient(values), _summary(values), _ratios(values), biometry, sac, pelvis) if s is not None]


def content(values: ObstetricValues, author: Author) -> hd.sr.ContainerContentItem:
    """The TID 5000 content tree of these values, observed by `author` (see the module doc)."""
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121006", "DCM", "Person"),
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=author.person_name, login_name=author.login or None,
            organization_name=author.institution[:64] or None))
    context = hd.sr.ObservationContext(observer_person_context=observer)
    return _with(hd.sr.ContainerContentItem(name=REPORT, template_id="5000"), [*context, *_sections(values)])


# -- the document ---------------------------------------------------------------------------------


def sop_uid_for(seed: str) -> str:
    """The document's SOP Instance UID, derived from what it reports (a final version): the same
    report always makes the same UID, so a repeat finds it stored."""
    return generate_uid(prefix="2.25.", entropy_srcs=["lancang", "ob-gyn-sr", seed])


def _series_uid(study: Study) -> str:
    return generate_uid(prefix="2.25.", entropy_srcs=["lancang", "ob-gyn-sr-series", study.study_instance_uid])


def is_stored(session: Session, sop_uid: str) -> bool:
    return session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid)) is not None


def study_evidence(session: Session, study: Study) -> list[Dataset]:
    """The study's images (not its documents) as the evidence datasets highdicom takes, from the
    index's DICOM JSON (no object is opened): the procedure's Current Requested Procedure
    Evidence, and where the document's patient and study attributes come from."""
    rows = session.scalars(select(Instance.dicom_json).join(Series, Series.id == Instance.series_pk)
                           .where(Series.study_pk == study.id, Instance.rows.is_not(None))
                           .order_by(Series.id, Instance.id).limit(MAX_EVIDENCE)).all()
    return [evidence_dataset(keyimages.load(text)) for text in rows]


def build(*, session: Session, study: Study, values: ObstetricValues, author: Author, verifier: Author | None,
          seed: str) -> Dataset | None:
    """The TID 5000 Comprehensive SR of these values in this study, final and complete, verified
    by `verifier` (the senior who co-signed) when given; None when the document for `seed` is
    stored already. Invalid (422) when the study has no image to be the evidence."""
    sop_uid = sop_uid_for(seed)
    if is_stored(session, sop_uid):
        return None
    evidence = study_evidence(session, study)
    if not evidence:
        raise Invalid("该检查没有图像，无法生成结构化报告 / the study has no image for the structured report")
    series_uid = _series_uid(study)
    number = session.scalar(select(func.count()).select_from(Instance).join(Series, Series.id == Instance.series_pk)
                            .where(Series.series_instance_uid == series_uid)) or 0
    document = hd.sr.ComprehensiveSR(
        evidence=evidence, content=content(values, author), series_instance_uid=series_uid,
        series_number=SERIES_NUMBER, series_description=SERIES_DESCRIPTION, sop_instance_uid=sop_uid,
        instance_number=number + 1, manufacturer="Lancang", is_complete=True, is_final=True,
        is_verified=verifier is not None, verifying_observer_name=verifier.person_name if verifier else None,
        verifying_organization=(verifier.institution[:64] or "—") if verifier else None,
        institution_name=author.institution[:64] or None, specific_character_set=CHARSET)
    document.CodingSchemeIdentificationSequence = [_private_scheme()]
    return document


def _private_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE
    item.CodingSchemeName = "Lancang obstetric ultrasound terms"
    item.CodingSchemeResponsibleOrganization = "Lancang regional imaging cloud"
    return item


# -- storing --------------------------------------------------------------------------------------


class EngineUnits:
    """What the Ingestor asks of a Database, a unit of work, on an engine the caller holds.

    The co-signing request has its session (hence the engine) but not the runtime's Database,
    and the SR is stored only after that request's transaction commits (its SQLite write lock
    would keep the Ingestor's own transaction waiting until it timed out): this opens that
    transaction on the same engine, with the engine's own BEGIN IMMEDIATE and pragmas."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @contextmanager
    def scope(self, *, readonly: bool = False) -> Iterator[Session]:
        session = Session(self.engine.execution_options(lancang_readonly=True) if readonly else self.engine,
                          expire_on_commit=False)
        try:
            yield session
            db.commit(session)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


def store(*, engine: Engine, store, document: Dataset, institution_id: int, source: str) -> IngestResult:
    """Store the document into its study through the Ingestor (as the study's institution, which
    owns every instance of the study); an identical repeat is "already"."""
    ingestor = Ingestor(EngineUnits(engine), store)
    try:
        return ingestor.ingest(part10(document), institution_id=institution_id, source=source[:64])
    except InvalidInstance as exc:
        log.error("imaging.ob_sr.refused sop=%s reason=%s", document.SOPInstanceUID, exc.reason)
        raise Invalid(f"结构化报告未能保存 / the structured report was refused: {exc.reason}") from None
    except OSError as exc:
        raise Unavailable(f"存储暂时不可用 / the store is unavailable: {type(exc).__name__}") from None
    finally:
        ingestor.close()


# -- reading back ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One numeric item of a document: its concept, value and unit, and the container it is in."""

    container: tuple[str, str]
    concept: tuple[str, str, str]  # code value, scheme, meaning
    value: float
    unit: tuple[str, str]  # code value, scheme


def readings(document: Dataset) -> list[Reading]:
    """Every NUM item of an SR document in tree order, with its nearest container's concept."""
    found: list[Reading] = []
    _walk(document, ("", ""), found)
    return found


def _walk(item: Dataset, container: tuple[str, str], found: list[Reading]) -> None:
    for child in item.get("ContentSequence", []):
        name = child.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in child else None
        if child.ValueType == "NUM" and name is not None:
            measured = child.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0]
            found.append(Reading(container, (name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning),
                                 float(measured.NumericValue), (unit.CodeValue, unit.CodingSchemeDesignator)))
        inner = (name.CodeValue, name.CodingSchemeDesignator) if child.ValueType == "CONTAINER" and name else container
        _walk(child, inner, found)
