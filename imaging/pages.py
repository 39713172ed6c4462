"""Imaging pages: the diagnostic viewer of a study, its MPR page and the radiographer's upload
page. All are thin shells over DICOMweb (web/static/viewer/, web/static/upload.js)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from imaging import persons, policy
from imaging.models import Series, Study
from storage import access, audit, identity
from storage.deps import OptionalUser, RuntimeDep, client_address, sign_in_redirect
from storage.errors import NotFound

router = APIRouter(include_in_schema=False)


def _render(request: Request, template: str, **context) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, template, context)


def _visible_study(session, principal, study_uid: str) -> Study | None:
    """The study if this principal may see it; None for one unknown or hidden (both a 404)."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                 study_uid=study_uid):
        return None
    return study


@router.get("/studies/{study_uid}/view", response_class=HTMLResponse)
def study_viewer(study_uid: str, request: Request, runtime: RuntimeDep, user: OptionalUser, embedded: bool = False):
    """The diagnostic viewer over our DICOMweb service (404 for a study the user may not see),
    with the person's other studies the user may see, to open one beside it. `embedded`: one
    pane of the side-by-side comparison (no page header)."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    with runtime.db.scope(readonly=True) as session:
        study = _visible_study(session, principal, study_uid)
        priors = _priors(session, principal, study) if study is not None and not embedded else []
    _audit_view(request, runtime, principal, study_uid, study is not None)
    return _render(request, "viewer.html", user=user, study_uid=study_uid, dicomweb_base="/dicom-web",
                   priors=priors, embedded=embedded)


def _priors(session, principal, study: Study) -> list[dict]:
    """The person's other studies this principal may see, newest first, for the viewer's list."""
    return [{"uid": other.study_instance_uid, "modality": other.modalities.replace("\\", "/"),
             "date": f"{other.study_date[:4]}-{other.study_date[4:6]}-{other.study_date[6:]}" if other.study_date else "—",
             "description": other.description, "institution": name, "body_part": part}
            for other, name, part in persons.priors(session, principal, study)]


def _audit_view(request: Request, runtime, principal, study_uid: str, visible: bool, detail: dict | None = None):
    """Every opening of a study's images is audited, a refused one too; a refusal is a 404."""
    audit.record_read(runtime.db, principal=principal, action="study.view", object_type="study", object_id=study_uid,
                      source=client_address(request), outcome="ok" if visible else "denied", detail=detail)
    if not visible:
        raise NotFound("未找到该检查 / study not found")


@router.get("/viewer/{study_uid}/mpr", response_class=HTMLResponse)
def study_mpr(study_uid: str, request: Request, runtime: RuntimeDep, user: OptionalUser, series: str = ""):
    """Multiplanar reformation of one CT/MR series of the study, computed in the browser from its
    raw frames (web/static/viewer/mpr.js, volume.js); 404 for a study the user may not see, as the
    viewer, and for a series that is not the study's. Without `series` the page picks the
    study's largest series."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    with runtime.db.scope(readonly=True) as session:
        study = _visible_study(session, principal, study_uid)
        known = not series or (study is not None and session.scalar(select(Series.id).where(
            Series.series_instance_uid == series, Series.study_pk == study.id)) is not None)
    _audit_view(request, runtime, principal, study_uid, study is not None,
                {"page": "mpr", "series": series} if series else {"page": "mpr"})
    if not known:
        raise NotFound("未找到该序列 / series not found")
    return _render(request, "mpr.html", user=user, study_uid=study_uid, series_uid=series, dicomweb_base="/dicom-web")


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, user: OptionalUser):
    """Upload DICOM files, folders or zip archives from the browser (STOW-RS, web/static/upload.js)."""
    if user is None:
        return sign_in_redirect(request)
    policy.require_uploader(identity.principal_for(user))  # the same rule as STOW-RS
    return _render(request, "upload.html", user=user, dicomweb_base="/dicom-web")
