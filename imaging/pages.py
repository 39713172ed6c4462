"""Imaging pages: the diagnostic viewer of a study, its MPR page and the radiographer's upload
page. All are thin shells over DICOMweb (web/static/viewer/, web/static/upload.js)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from imaging import persons, policy
from imaging.models import Series, Study
from storage import access, audit, identity
from storage.deps import OptionalUser, RuntimeDep, client_address
from storage.errors import NotFound

router = APIRouter(include_in_schema=False)


def _render(request: Request, template: str, **context) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, template, context)


@router.get("/studies/{study_uid}/view", response_class=HTMLResponse)
def study_viewer(study_uid: str, request: Request, runtime: RuntimeDep, user: OptionalUser, embedded: bool = False):
    """The diagnostic viewer over our DICOMweb service (404 for a study the user may not see),
    with the person's other studies the user may see, to open one beside it. `embedded`: one
    pane of the side-by-side comparison (no page header)."""
    if user is None:
        return RedirectResponse(f"/login?next=/studies/{study_uid}/view", status_code=303)
    principal = identity.principal_for(user)
    with runtime.db.scope(readonly=True) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        visible = study is not None and access.can_see_study(
            session, principal, institution_id=study.institution_id, study_uid=study_uid)
        priors = [] if not visible or embedded else [
            {"uid": other.study_instance_uid, "modality": other.modalities.replace("\\", "/"),
             "date": f"{other.study_date[:4]}-{other.study_date[4:6]}-{other.study_date[6:]}" if other.study_date else "—",
             "description": other.description, "institution": name, "body_part": part}
            for other, name, part in persons.priors(session, principal, study)]
    audit.record_read(runtime.db, principal=principal, action="study.view", object_type="study", object_id=study_uid,
                 source=client_address(request), outcome="ok" if visible else "denied")
    if not visible:
        raise NotFound("未找到该检查 / study not found")
    return _render(request, "viewer.html", user=user, study_uid=study_uid, dicomweb_base="/dicom-web",
                   priors=priors, embedded=embedded)


@router.get("/viewer/{study_uid}/mpr", response_class=HTMLResponse)
def study_mpr(study_uid: str, request: Request, runtime: RuntimeDep, user: OptionalUser, series: str = ""):
    """Multiplanar reformation of one CT/MR series of the study, computed in the browser from its
    raw frames (web/static/viewer/mpr.js, volume.js); 404 for a study the user may not see, as the
    viewer, and for a series that is not the study's. Without `series` the page picks the
    study's largest series."""
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
    principal = identity.principal_for(user)
    with runtime.db.scope(readonly=True) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        visible = study is not None and access.can_see_study(
            session, principal, institution_id=study.institution_id, study_uid=study_uid)
        known = not series or (visible and session.scalar(select(Series.id).where(
            Series.series_instance_uid == series, Series.study_pk == study.id)) is not None)
    audit.record_read(runtime.db, principal=principal, action="study.view", object_type="study", object_id=study_uid,
                      source=client_address(request), outcome="ok" if visible else "denied",
                      detail={"page": "mpr", "series": series} if series else {"page": "mpr"})
    if not visible:
        raise NotFound("未找到该检查 / study not found")
    if not known:
        raise NotFound("未找到该序列 / series not found")
    return _render(request, "mpr.html", user=user, study_uid=study_uid, series_uid=series, dicomweb_base="/dicom-web")


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, user: OptionalUser):
    """Upload DICOM files, folders or zip archives from the browser (STOW-RS, web/static/upload.js)."""
    if user is None:
        return RedirectResponse("/login?next=/upload", status_code=303)
    policy.require_uploader(identity.principal_for(user))  # the same rule as STOW-RS
    return _render(request, "upload.html", user=user, dicomweb_base="/dicom-web")
