"""The hub people live in: the study list, a study's page, a person's timeline, 互认.

    GET  /                               each role's landing page (workspace.service.landing)
    GET  /menu                           everything a role can open
    GET  /studies                        the studies the user may see, newest first, cursor-paged
    GET  /studies/{uid}                  series, demographics, actions, 互认, opens (admins)
    GET  /studies/{uid}/layout           several series at once (1x1, 1x2, 2x2), drag and drop
    GET  /studies/{uid}/thumbnail.jpg    the first derived series thumbnail
    GET  /studies/{uid}/series/{s}/thumbnail.jpg
    GET  /studies/{uid}/download         every DICOM file as a streamed zip
    POST /studies/{uid}/recognition      record 互认 / 不互认
    GET  /patients/{pk}                  the person's timeline across institutions
    POST /patients/link, /patients/{pk}/unlink   admins join or part records, with a reason

Every read names what it showed in the audit trail; visibility is storage/access.py only.
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import critical
from edge import region as edge_region
from film import archive
from imaging import persons, recognition
from imaging.models import RECOGNITION_REASONS, Instance, Patient, Series, Study
from storage import access, audit, identity
from storage.access import Principal
from storage.deps import DbSession, OptionalUser, RuntimeDep, WriteSession, client_address, sign_in_redirect
from storage.errors import DomainError, NotFound, NotPermitted, passes
from storage.models import AuditRecord, Institution
from workspace import service

router = APIRouter(include_in_schema=False)

STAFF_README = ("本压缩包内是一次检查的全部 DICOM 原始文件，按序列分文件夹。请按患者隐私规定保管。\r\n"
                "All DICOM files of one study, a folder per series. Keep them as patient data.\r\n")
VIEW_ACTIONS = ("study.view", "study.page", "study.read", "study.download", "film.create", "study.recognition")


def _render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("reasons", RECOGNITION_REASONS)
    context.setdefault("report_labels", service.REPORT_STATES)
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


@router.get("/", response_class=HTMLResponse)
def landing(user: OptionalUser, request: Request):
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(service.landing(user.role), status_code=303)


def _filter(request: Request, principal: Principal, **given) -> service.StudyFilter:
    institution = given.get("institution") or ""
    institution_id = int(institution) if str(institution).isdigit() else None
    today = given.get("today") == "1"
    if today and institution_id is None:
        institution_id = principal.institution_id  # "today's studies of my institution"
    return service.StudyFilter(date_from=given.get("date_from", ""), date_to=given.get("date_to", ""),
                               modality=given.get("modality", ""), institution_id=institution_id,
                               report=given.get("report", ""), text=given.get("q", ""), today=today)


@router.get("/studies", response_class=HTMLResponse)
def study_list(request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser,
               q: str = "", modality: str = "", institution: str = "", report: str = "", today: str = "",
               cursor: str = ""):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    params = request.query_params
    wanted = _filter(request, principal, q=q, modality=modality, institution=institution, report=report,
                     today=today, date_from=params.get("from", ""), date_to=params.get("to", ""))
    try:
        page, error = service.search(session, principal, wanted, cursor=cursor), None
    except DomainError as exc:  # a bad date or cursor: said beside the filters, not a 500
        page, error = service.StudyPage(), exc.detail
    audit.record_read(runtime.db, principal=principal, action="study.list", object_type="study",
                      object_id=",".join(row.uid for row in page.rows)[:4000], source=client_address(request),
                      detail={"filter": wanted.as_query(), "shown": len(page.rows)})
    return _render(request, "workspace/studies.html", status=400 if error else 200, user=user, page=page,
                   wanted=wanted, error=error, institutions=_institutions(session, principal),
                   modalities=("CT", "DX", "CR", "MR", "US", "MG", "XA", "RF", "NM", "PT", "SR"))


def _institutions(session: Session, principal: Principal) -> list[Institution]:
    """The institutions a filter may name: the user's subtree (admins) or their own."""
    ids = access.subtree_ids(session, principal.institution_id) if principal.institution_id else set()
    return list(session.scalars(select(Institution).where(Institution.id.in_(ids)).order_by(Institution.id)))


def _visible_study(session: Session, principal: Principal, study_uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                 study_uid=study_uid):
        raise NotFound("未找到该检查 / study not found")
    return study


def _visible_or_denied(session: Session, runtime, request: Request, principal: Principal, study_uid: str,
                       action: str) -> Study:
    """The study if the principal may see it; otherwise the refusal is audited and NotFound raised."""
    try:
        return _visible_study(session, principal, study_uid)
    except NotFound:
        _read(runtime, request, principal, action, study_uid, False)
        raise


def _read(runtime, request: Request, principal: Principal, action: str, study_uid: str, ok: bool, **detail):
    audit.record_read(runtime.db, principal=principal, action=action, object_type="study", object_id=study_uid,
                      source=client_address(request), outcome="ok" if ok else "denied", detail=detail or None)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(study_uid: str, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    study = _visible_or_denied(session, runtime, request, principal, study_uid, "study.page")
    _read(runtime, request, principal, "study.page", study_uid, True)
    row = service.study_row(session, principal, study)
    series = session.scalars(select(Series).where(Series.study_pk == study.id)
                             .order_by(Series.series_number.asc().nullslast(), Series.id)).all()
    return _render(request, "workspace/study.html", user=user, row=row, study=study, series=series,
                   decisions=recognition.history(session, study_uid),
                   may_decide=passes(recognition.require_decider, session, principal, study), form_error=None,
                   linked=service.linked_records(session, principal, study.patient_pk),
                   opens=_opens(session, study_uid) if principal.is_admin else None,
                   critical_categories=critical.categories(runtime.settings) if user.role == "specialist" else [],
                   findings=critical.findings_on(session, study_uid=study_uid),
                   edge_transfer=edge_region.transfer_state(session=session, study_uid=study_uid))


def _opens(session: Session, study_uid: str) -> list[AuditRecord]:
    """Who opened the study: its page, viewer, downloads, decisions (newest first, 100)."""
    return list(session.scalars(select(AuditRecord).where(AuditRecord.object_id == study_uid,
                                                          AuditRecord.action.in_(VIEW_ACTIONS))
                                .order_by(AuditRecord.id.desc()).limit(100)))


@router.post("/studies/{study_uid}/recognition", response_class=HTMLResponse)
def record_recognition(study_uid: str, request: Request, session: WriteSession, user: OptionalUser,
                       decision: str = Form(""), reason: str = Form(""), reason_text: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    try:
        recognition.decide(session=session, principal=principal, study_uid=study_uid,
                           recognised=decision == "recognised", reason=reason, reason_text=reason_text,
                           source=client_address(request))
    except (NotPermitted, NotFound):
        raise
    except DomainError as exc:  # the reason missing or too long: shown beside the form
        session.rollback()
        study = _visible_study(session, principal, study_uid)
        return _render(request, "workspace/study.html", status=exc.status, user=user,
                       row=service.study_row(session, principal, study), study=study,
                       series=session.scalars(select(Series).where(Series.study_pk == study.id)).all(),
                       decisions=recognition.history(session, study_uid), may_decide=True,
                       form_error=exc.detail, chosen={"decision": decision, "reason": reason, "text": reason_text},
                       linked=service.linked_records(session, principal, study.patient_pk), opens=None)
    return RedirectResponse(f"/studies/{study_uid}#recognition", status_code=303)


def _thumbnail(request: Request, session: Session, runtime, principal: Principal, study: Study,
               series: Series | None) -> Response:
    if series is None or not series.thumbnail_key:
        raise NotFound("缩略图尚未生成 / no thumbnail yet")
    session.close()
    _read(runtime, request, principal, "study.thumbnail", study.study_instance_uid, True,
          series=series.series_instance_uid)
    return Response(runtime.store.get(series.thumbnail_key), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=600"})


@router.get("/studies/{study_uid}/thumbnail.jpg")
def study_thumbnail(study_uid: str, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser):
    if user is None:
        raise NotFound("未找到该检查 / study not found")
    principal = identity.principal_for(user)
    study = _visible_study(session, principal, study_uid)
    series = session.scalars(select(Series).where(Series.study_pk == study.id, Series.thumbnail_key.is_not(None))
                             .order_by(Series.series_number.asc().nullslast(), Series.id).limit(1)).first()
    return _thumbnail(request, session, runtime, principal, study, series)


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail.jpg")
def series_thumbnail(study_uid: str, series_uid: str, request: Request, session: DbSession, runtime: RuntimeDep,
                     user: OptionalUser):
    if user is None:
        raise NotFound("未找到该检查 / study not found")
    principal = identity.principal_for(user)
    study = _visible_study(session, principal, study_uid)
    series = session.scalar(select(Series).where(Series.study_pk == study.id,
                                                 Series.series_instance_uid == series_uid))
    return _thumbnail(request, session, runtime, principal, study, series)


@router.get("/studies/{study_uid}/download")
def study_download(study_uid: str, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser):
    """Every DICOM file of the study as one zip (a CD for another hospital, a teaching file)."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    study = _visible_or_denied(session, runtime, request, principal, study_uid, "study.download")
    rows = session.execute(select(Series, Instance).join(Instance, Instance.series_pk == Series.id)
                           .where(Series.study_pk == study.id)
                           .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)).all()
    entries = archive.entries(rows)
    _read(runtime, request, principal, "study.download", study_uid, True, files=len(entries),
          bytes=sum(size for _, _, size in entries))
    session.close()
    name = f"study-{study.study_date or 'undated'}-{study.id}.zip"
    return StreamingResponse(archive.zip_stream(runtime.store, entries, readme=STAFF_README),
                             media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})


@router.get("/patients/{patient_pk}", response_class=HTMLResponse)
def patient_timeline(patient_pk: int, request: Request, session: DbSession, runtime: RuntimeDep,
                     user: OptionalUser):
    """Every study of the person that the user may see, from every institution, newest first."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    timeline = service.timeline(session, principal, patient_pk)
    audit.record_read(runtime.db, principal=principal, action="patient.timeline", object_type="patient",
                      object_id=str(patient_pk), source=client_address(request),
                      outcome="ok" if timeline.rows else "denied", detail={"studies": len(timeline.rows)})
    if not timeline.rows:
        raise NotFound("未找到该患者 / patient not found")
    return _render(request, "workspace/patient.html", user=user, timeline=timeline,
                   suggestions=persons.suggestions(session, access.subtree_ids(session, principal.institution_id),
                                                   like=session.get(Patient, patient_pk))
                   if principal.is_admin else [])


@router.post("/patients/link", response_class=HTMLResponse)
def link_patients(request: Request, session: WriteSession, user: OptionalUser, back: int = Form(...),
                  records: list[int] = Form(...), reason: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    _require_records_in_subtree(session, principal, records)
    persons.link(session=session, principal=principal, patient_pks=records, reason=reason,
                 source=client_address(request))
    return RedirectResponse(f"/patients/{back}", status_code=303)


@router.post("/patients/{patient_pk}/unlink", response_class=HTMLResponse)
def unlink_patient(patient_pk: int, request: Request, session: WriteSession, user: OptionalUser,
                   reason: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    _require_records_in_subtree(session, principal, [patient_pk])
    persons.unlink(session=session, principal=principal, patient_pk=patient_pk, reason=reason,
                   source=client_address(request))
    return RedirectResponse(f"/patients/{patient_pk}", status_code=303)


def _require_records_in_subtree(session: Session, principal: Principal, records: list[int]) -> None:
    """An admin joins and parts only records of institutions they look after."""
    if not principal.is_admin:
        raise NotPermitted("仅管理员可关联或解除关联患者 / only admins link patient records")
    below = access.subtree_ids(session, principal.institution_id)
    owners = set(session.scalars(select(Patient.institution_id).where(Patient.id.in_(records))))
    if not owners or not owners <= below:
        raise NotFound("未找到该患者记录 / patient record not found")


@router.get("/studies/{study_uid}/compare", response_class=HTMLResponse)
def compare(study_uid: str, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser,
            prior: str = ""):
    """The current study left and a prior right, scrolling together by slice position. Without
    `prior`, the most relevant one (same modality and body part, newest) is hung."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    study = _visible_or_denied(session, runtime, request, principal, study_uid, "study.compare")
    candidates = persons.priors(session, principal, study)
    if not prior:
        if not candidates:
            return RedirectResponse(f"/studies/{study_uid}/view", status_code=303)
        prior = candidates[0][0].study_instance_uid
    other = _visible_or_denied(session, runtime, request, principal, prior, "study.compare")
    _read(runtime, request, principal, "study.compare", study_uid, True, prior=prior)
    return _render(request, "workspace/compare.html", user=user, current=service.study_row(session, principal, study),
                   prior=service.study_row(session, principal, other), candidates=candidates)


LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}
NON_IMAGE_MODALITIES = {"SR", "KO", "PR", "DOC"}  # documents in the study, not pictures to hang


@router.get("/studies/{study_uid}/layout", response_class=HTMLResponse)
def hanging_layout(study_uid: str, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser,
                   grid: str = "1x2"):
    """Several series of one study at once (1x1, 1x2, 2x2): each cell a compact viewer; series are
    dragged (or tapped) from the list onto a cell; scrolling can be linked by slice position."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    study = _visible_or_denied(session, runtime, request, principal, study_uid, "study.layout")
    _read(runtime, request, principal, "study.layout", study_uid, True)
    series = [s for s in session.scalars(select(Series).where(Series.study_pk == study.id, Series.num_instances > 0)
                                         .order_by(Series.series_number.asc().nullslast(), Series.id))
              if s.modality not in NON_IMAGE_MODALITIES]
    return _render(request, "workspace/layout.html", user=user, row=service.study_row(session, principal, study),
                   series=series, grid=grid if grid in LAYOUTS else "1x2", layouts=list(LAYOUTS))
