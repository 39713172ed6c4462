"""JSON API over the index for pages (worklists, study summaries), and a reader's measurements
and key images, stored into the study as DICOM (imaging/annotations.py). Every read goes
through the authorization scope and is audited; so is every save, refused ones too."""


from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging import annotations, policy, query
from imaging.dicomweb.stow import ingestor_for
from imaging.models import Series, Study
from imaging.schemas import (KeyImagesIn, KeyImagesOut, MeasurementDocuments, MeasurementsIn, MeasurementsSaved,
                             SeriesOut, StudyDetailOut, StudyOut, StudyPage)
from storage import access, audit, identity
from storage.access import Principal
from storage.deps import CurrentPrincipal, CurrentUser, DbSession
from storage.errors import DomainError, NotFound
from storage.models import Institution, User


router = APIRouter(prefix="/api/studies", tags=["imaging"])


@router.get("", response_model=StudyPage)
def list_studies(request: Request, session: DbSession, principal: CurrentPrincipal,
                 patient_name: str = "", patient_id: str = "", study_date: str = "",
                 accession_number: str = "", modality: str = "",
                 offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)) -> StudyPage:
    """Studies visible to the caller, newest first; DICOM matching on the filters."""
    keys = {k: "" for k in query.DEFAULT_RETURN["STUDY"]}
    keys.update(PatientName=patient_name, PatientID=patient_id, StudyDate=study_date,
                AccessionNumber=accession_number, ModalitiesInStudy=modality)
    scope = access.scope_for(session, principal)
    rows = query.run(session, scope, query.Query("STUDY", keys, limit=limit, offset=offset))
    total = len(rows) + offset if len(rows) < limit else _count(session, scope, keys)
    audit.record_read(request.app.state.runtime.db, principal=principal, action="study.search",
                 object_type="study", source=_source(request),
                 object_id=str({k: v for k, v in keys.items() if v}), detail={"matches": len(rows)})
    return StudyPage(items=[_study(session, r) for r in rows], offset=offset, limit=limit, total=total)


@router.get("/{study_uid}", response_model=StudyDetailOut)
def get_study(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal):
    """One study with its series, if the caller may see it."""
    study = _visible_study(session, request, principal, study_uid, "study.read")
    _audit(request, principal, "study.read", study_uid)
    series = session.scalars(select(Series).where(Series.study_pk == study.id)
                             .order_by(Series.series_number.asc().nullslast(), Series.id)).all()
    base = _study(session, {"_entities": {"Study": study, "Patient": study.patient}})
    return StudyDetailOut(**base.model_dump(), series=[
        SeriesOut(series_instance_uid=s.series_instance_uid, modality=s.modality,
                  series_number=s.series_number, description=s.description,
                  num_instances=s.num_instances) for s in series])


# -- measurements (DICOM SR, TID 1500) and key images (KOS): imaging/annotations.py -----------


@router.post("/{study_uid}/measurements", status_code=201, response_model=MeasurementsSaved)
def save_measurements(study_uid: str, body: MeasurementsIn, request: Request, session: DbSession,
                      user: CurrentUser) -> MeasurementsSaved:
    """Store the caller's measurements as one new SR in the study (it replaces their earlier set
    for readers); an empty list withdraws their earlier set."""
    action = "study.measurements.save"
    principal, author, study = _annotator(session, request, user, study_uid, action)

    def build():
        if body.measurements:
            return annotations.measurement_report(session=session, study=study, author=author,
                                                  measurements=body.measurements), None
        return annotations.rejection_note(session=session, study=study, author=author,
                                          documents=annotations.own_measurements(session, study, author)), None

    stored, _ = _save(request, session, principal, author, study, action, build, len(body.measurements))
    if not body.measurements:  # withdrawn: no measurement document is current for this reader
        return MeasurementsSaved(sop_instance_uid=None, series_instance_uid=None, count=0)
    return MeasurementsSaved(sop_instance_uid=stored.sop_instance_uid,
                             series_instance_uid=stored.series_instance_uid, count=len(body.measurements))


@router.get("/{study_uid}/measurements", response_model=MeasurementDocuments)
def get_measurements(study_uid: str, request: Request, session: DbSession,
                     principal: CurrentPrincipal) -> MeasurementDocuments:
    """Each author's newest measurements of the study, newest first, read from the stored SR."""
    study = _visible_study(session, request, principal, study_uid, "study.measurements.read")
    documents = annotations.read_measurements(session=session, study=study)
    _audit(request, principal, "study.measurements.read", study_uid, documents=len(documents))
    return MeasurementDocuments.model_validate({"documents": documents})


@router.put("/{study_uid}/key-images", response_model=KeyImagesOut)
def save_key_images(study_uid: str, body: KeyImagesIn, request: Request, session: DbSession,
                    user: CurrentUser) -> KeyImagesOut:
    """Store the study's key images, in this order, as a new KOS; an empty list withdraws the
    current selection (a KOS must name at least one image)."""
    action = "study.key_images.save"
    principal, author, study = _annotator(session, request, user, study_uid, action)

    def build():
        if body.images:
            return annotations.key_object_selection(session=session, study=study, author=author, images=body.images,
                                                    note=body.note)
        return annotations.rejection_note(session=session, study=study, author=author,
                                          documents=annotations.current_selections(session, study)), []

    stored, refs = _save(request, session, principal, author, study, action, build, len(body.images))
    if not body.images:
        return KeyImagesOut(images=[], sop_instance_uid=None, author=None)
    return KeyImagesOut.model_validate({
        "images": [{"series_uid": r.series_uid, "sop_instance_uid": r.sop_uid, "frame": r.frame} for r in refs],
        "sop_instance_uid": stored.sop_instance_uid, "author": author.name or author.login})


@router.get("/{study_uid}/key-images", response_model=KeyImagesOut)
def get_key_images(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal) -> KeyImagesOut:
    """The study's current key images (its newest KOS that nothing withdrew)."""
    study = _visible_study(session, request, principal, study_uid, "study.key_images.read")
    found = annotations.read_key_images(session=session, study=study)
    _audit(request, principal, "study.key_images.read", study_uid, sop=found["sop_instance_uid"])
    return KeyImagesOut.model_validate(found)


def _visible_study(session: Session, request: Request, principal: Principal, study_uid: str, action: str, *,
                   change: bool = False) -> Study:
    """The study if the caller may see it; else the 404 an absent study gets, audited."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                 study_uid=study_uid):
        _audit(request, principal, action, study_uid, outcome="denied", change=change)
        # Same answer for "absent" and "not yours": existence is itself patient data.
        raise NotFound("未找到该检查 / study not found")
    return study


def _annotator(session: Session, request: Request, user: User, study_uid: str,
               action: str) -> tuple[Principal, annotations.Author, Study]:
    """The caller as principal and author and the study, if they may see it (else 404) and
    their role may save into it (else 403); refusals audited."""
    principal = identity.principal_for(user)
    study = _visible_study(session, request, principal, study_uid, action, change=True)
    try:
        policy.require_annotator(principal)
    except DomainError:
        _audit(request, principal, action, study_uid, outcome="denied", change=True)
        raise
    institution = session.get(Institution, user.institution_id)
    author = annotations.Author(name=user.display_name, login=user.username,
                                institution=institution.name_zh if institution else "")
    return principal, author, study


def _save(request: Request, session: Session, principal: Principal, author: annotations.Author, study: Study,
          action: str, build, count: int):
    """Build a document (with what the caller wants back), store it once the request's read
    connection is released (the Ingestor commits in its own transaction) and audit the save;
    a refused one is audited with the reason. (None, ...) when there was nothing to store."""
    study_uid, institution_id = study.study_instance_uid, study.institution_id
    try:
        document, extra = build()
        session.close()
        stored = None if document is None else annotations.store(
            ingestor=ingestor_for(request.app), document=document, institution_id=institution_id, author=author)
    except DomainError as exc:
        _audit(request, principal, action, study_uid, outcome="failed", change=True, count=count,
               reason=exc.detail[:300])
        raise
    _audit(request, principal, action, study_uid, change=True, count=count,
           sop=stored.sop_instance_uid if stored else None)
    return stored, extra


def _audit(request: Request, principal: Principal, action: str, study_uid: str, *, outcome: str = "ok",
           change: bool = False, **detail) -> None:
    """Audit a study access: reads in their own relaxed transaction, changes and refused
    changes synced with the change."""
    record = audit.record if change else audit.record_read
    record(request.app.state.runtime.db, principal=principal, action=action, object_type="study",
           object_id=study_uid, source=_source(request), outcome=outcome, detail=detail)


def _count(session: Session, scope, keys) -> int:
    rows = query.run(session, scope, query.Query("STUDY", {k: v for k, v in keys.items() if v}))
    return len(rows)


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _study(session: Session, row: dict) -> StudyOut:
    study, patient = row["_entities"]["Study"], row["_entities"]["Patient"]
    institution = session.get(Institution, study.institution_id)
    return StudyOut(
        study_instance_uid=study.study_instance_uid, patient_name=patient.name,
        patient_id=query.shown_patient_id(patient.patient_id),
        patient_sex=patient.sex, patient_birth_date=patient.birth_date, study_date=study.study_date,
        study_time=study.study_time, accession_number=study.accession_number, description=study.description,
        modalities=study.modalities, num_series=study.num_series, num_instances=study.num_instances,
        institution=institution.code if institution else "")
