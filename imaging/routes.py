"""JSON API over the index for pages (worklists, study summaries). Every read goes through
the authorization scope and is audited."""


from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging import query
from imaging.models import Series, Study
from imaging.schemas import SeriesOut, StudyDetailOut, StudyOut, StudyPage
from storage import access, audit
from storage.deps import CurrentPrincipal, DbSession
from storage.errors import NotFound
from storage.models import Institution


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
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    runtime_db = request.app.state.runtime.db
    if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                 study_uid=study_uid):
        audit.record_read(runtime_db, principal=principal, action="study.read", object_type="study",
                     object_id=study_uid, source=_source(request), outcome="denied")
        # Same answer for "absent" and "not yours": existence is itself patient data.
        raise NotFound("未找到该检查 / study not found")
    audit.record_read(runtime_db, principal=principal, action="study.read", object_type="study",
                 object_id=study_uid, source=_source(request))
    series = session.scalars(select(Series).where(Series.study_pk == study.id)
                             .order_by(Series.series_number.asc().nullslast(), Series.id)).all()
    base = _study(session, {"_entities": {"Study": study, "Patient": study.patient}})
    return StudyDetailOut(**base.model_dump(), series=[
        SeriesOut(series_instance_uid=s.series_instance_uid, modality=s.modality,
                  series_number=s.series_number, description=s.description,
                  num_instances=s.num_instances) for s in series])


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
