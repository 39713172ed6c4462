"""Cloud film for staff (signed in; the performing institution's radiographers and admins).

    POST   /api/studies/{uid}/shares          create a link + PIN (JSON, the PIN shown once)
    GET    /api/studies/{uid}/shares          the study's links and their state
    DELETE /api/shares/{id}                   revoke a link
    POST   /api/shares/{id}/unlock            lift a PIN lockout
    POST   /api/shares/{id}/pin               a new PIN
    GET    /api/shares/{id}/film.pdf          the printable film sheet (202 while a worker makes it)
    GET    /api/studies/{uid}/film.pdf        the same, for the newest active link
    GET    /studies/{uid}/film                page: links, create, revoke, print
"""

import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Annotated

import segno
from fastapi import APIRouter, Body, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from film import policy
from film import service as shares
from film.models import Share
from imaging.models import Study
from storage import audit, jobs, localtime
from storage.access import Principal
from storage.errors import Gone, NotFound
from storage.models import Institution
from storage.objects import ObjectNotFound
from storage.types import RowId
from storage.deps import CurrentPrincipal, DbSession, WriteSession, client_address, get_runtime
from film.pages import render_page
from film.schemas import ShareCreatedOut, ShareIn, ShareOut

log = logging.getLogger("lancang.film")

SIGNED_URL_TTL = timedelta(minutes=15)
STATE_ZH = {"active": "有效 Active", "revoked": "已撤销 Revoked", "expired": "已过期 Expired",
            "locked": "已锁定 Locked"}
FILM_ZH = {"ready": "可下载 Ready", "pending": "生成中 Being made", "failed": "失败 Failed", "": "—"}


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _share_out(share: Share, store) -> ShareOut:
    film_url = None
    if share.film_state == "ready" and share.film_key:
        film_url = store.url(share.film_key, SIGNED_URL_TTL, filename=f"film-{share.id}.pdf")
    return ShareOut(id=share.id, study_instance_uid=share.study_instance_uid, state=shares.share_state(share),
                    created_at=_iso(share.created_at), created_by=share.created_by,
                    expires_at=_iso(share.expires_at), revoked_at=_iso(share.revoked_at),
                    failed_attempts=share.failed_attempts, opened_count=share.opened_count,
                    last_opened_at=_iso(share.last_opened_at), film_state=share.film_state, film_url=film_url)


router = APIRouter(tags=["cloud film"])


# ------------------------------------------------------------------ radiographer API

@router.post("/api/studies/{study_uid}/shares", response_model=ShareCreatedOut, status_code=201)
def create_share(study_uid: str, request: Request, session: WriteSession, principal: CurrentPrincipal,
                 body: Annotated[ShareIn | None, Body()] = None):
    """Creates a cloud-film link and PIN for the study. The PIN is in this answer only."""
    settings = get_runtime(request).settings
    created = shares.create_share(session=session, principal=principal, study_uid=study_uid,
                                  secret_key=settings.effective_secret_key,
                                  public_url=settings.effective_public_url,
                                  days=(body or ShareIn()).days, source=client_address(request),
                                  together=(body or ShareIn()).together)
    return JSONResponse(created.as_json(), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/api/studies/{study_uid}/shares", response_model=list[ShareOut])
def list_shares(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal):
    """The study's links, newest first, with their state."""
    store = get_runtime(request).store
    listed = [_share_out(s, store) for s in shares.list_shares(session=session, principal=principal,
                                                                study_uid=study_uid)]
    _audit_staff_read(request, principal, "film.share.list", study_uid)
    return listed


@router.delete("/api/shares/{share_id}", response_model=ShareOut)
def revoke_share(share_id: int, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """Revokes a link at once; the patient's page stops working."""
    share = shares.revoke_share(session=session, principal=principal, share_id=share_id,
                                source=client_address(request))
    return _share_out(share, get_runtime(request).store)


@router.post("/api/shares/{share_id}/unlock", response_model=ShareOut)
def unlock_share(share_id: RowId, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """Lift a PIN lockout now (the patient called the hospital); audited."""
    share = shares.unlock_by_staff(session=session, principal=principal, share_id=share_id,
                                   source=client_address(request))
    return _share_out(share, get_runtime(request).store)


@router.post("/api/shares/{share_id}/pin")
def new_share_pin(share_id: RowId, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """A new PIN for the same link and QR (shown once); the old PIN stops working."""
    pin = shares.new_pin(session=session, principal=principal, share_id=share_id,
                         secret_key=get_runtime(request).settings.effective_secret_key, source=client_address(request))
    return {"id": share_id, "pin": pin}


def _audit_staff_read(request: Request, principal: Principal, action: str, study_uid: str) -> None:
    audit.record_read(get_runtime(request).db, principal=principal, action=action, object_type="study",
                      object_id=study_uid, source=client_address(request))


def _film_response(request: Request, session: Session, principal: Principal, share: Share):
    rt = get_runtime(request)
    if shares.share_state(share) in ("revoked", "expired"):  # its QR code opens nothing any more
        raise Gone("该链接已失效，请新建 / this link is no longer active; create a new one")
    if share.film_state == "ready" and share.film_key:
        try:
            size = rt.store.size(share.film_key)
            body = rt.store.stream(share.film_key)
        except ObjectNotFound:
            share.film_state = ""
        else:
            audit.append(session, principal=principal, action="film.sheet.download", object_type="share",
                         object_id=str(share.id), source=client_address(request))
            return StreamingResponse(body, media_type="application/pdf", headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="film-{share.id}.pdf"'})
    # Not made yet (or lost): ask again; the task is idempotent.
    share.film_state = "pending"
    jobs.send_after_commit(session, shares.FILM_TASK, share.id, queue="render")
    if "text/html" in request.headers.get("accept", ""):
        return render_page(request, "film/pending.html", status=202, share=share)
    return JSONResponse({"status": "pending", "detail": "胶片页生成中 / the film sheet is being made"},
                        status_code=202, headers={"Retry-After": "3"})


@router.get("/api/shares/{share_id}/film.pdf", response_class=Response)
def share_film(share_id: int, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """The printable A4 film sheet of a link (202 + Retry-After while a worker makes it)."""
    share = shares.get_share_for(session=session, principal=principal, share_id=share_id)
    return _film_response(request, session, principal, share)


@router.get("/api/studies/{study_uid}/film.pdf", response_class=Response)
def study_film(study_uid: str, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """The film sheet of the study's newest active link."""
    active = [s for s in shares.list_shares(session=session, principal=principal, study_uid=study_uid)
              if shares.share_state(s) == "active"]
    if not active:
        raise NotFound("该检查尚无有效云胶片链接 / no active cloud-film link for this study: create one first")
    return _film_response(request, session, principal, active[0])

# ------------------------------------------------------------------ radiographer page

def _manage_page(request: Request, session: Session, principal: Principal, study_uid: str,
                 created: shares.CreatedShare | None = None, status: int = 200,
                 new_pin: tuple[int, str] | None = None) -> HTMLResponse:
    listing = shares.list_shares(session=session, principal=principal, study_uid=study_uid)
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    institution = session.get(Institution, principal.institution_id) if principal.institution_id else None
    user = SimpleNamespace(id=principal.user_id, display_name=principal.name,
                           institution=SimpleNamespace(name_zh=institution.name_zh if institution else ""))
    qr = Markup(segno.make(created.url, error="m").svg_inline(scale=4)) if created else None
    rows = [{"share": s, "state": shares.share_state(s), "state_zh": STATE_ZH[shares.share_state(s)],
             "film_zh": FILM_ZH.get(s.film_state, s.film_state), "created": localtime.display(s.created_at),
             "expires": localtime.display(s.expires_at)} for s in listing]
    together = shares.shareable_with(session, principal, study) if study else []
    return render_page(request, "film/manage.html", status=status, user=user, study=study, together=together,
                   patient=shares.display_name(study.patient.name) if study else "",
                   date=shares.chinese_date(study.study_date) if study else "",
                   rows=rows, created=created, qr=qr, default_days=int(shares.DEFAULT_DAYS), new_pin=new_pin,
                   loopback_url=(get_runtime(request).settings.effective_public_url
                                 if get_runtime(request).settings.public_url_is_loopback else ""))


@router.get("/studies/{study_uid}/film", response_class=HTMLResponse, include_in_schema=False)
def manage_page(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal):
    policy.require_sharer(session, principal, study_uid)
    page = _manage_page(request, session, principal, study_uid)
    _audit_staff_read(request, principal, "film.share.page", study_uid)
    return page


@router.post("/studies/{study_uid}/film", response_class=HTMLResponse, include_in_schema=False)
def manage_create(study_uid: str, request: Request, session: WriteSession, principal: CurrentPrincipal,
                  days: str = Form(str(shares.DEFAULT_DAYS)), together: list[str] = Form([])):
    try:
        number = float(days)
    except ValueError:
        number = -1
    settings = get_runtime(request).settings
    created = shares.create_share(session=session, principal=principal, study_uid=study_uid,
                                  secret_key=settings.effective_secret_key,
                                  public_url=settings.effective_public_url, days=number,
                                  source=client_address(request), together=together)
    return _manage_page(request, session, principal, study_uid, created=created, status=201)


@router.post("/studies/{study_uid}/film/{share_id}/unlock", include_in_schema=False)
def manage_unlock(study_uid: str, share_id: RowId, request: Request, session: WriteSession,
                  principal: CurrentPrincipal):
    return _changed(shares.unlock_by_staff, share_id, request, session, principal)


def _changed(change, share_id: int, request: Request, session, principal) -> RedirectResponse:
    """Unlock or revoke a share as staff, then back to the study's film list."""
    share = change(session=session, principal=principal, share_id=share_id, source=client_address(request))
    return RedirectResponse(f"/studies/{share.study_instance_uid}/film", status_code=303)


@router.post("/studies/{study_uid}/film/{share_id}/pin", response_class=HTMLResponse, include_in_schema=False)
def manage_new_pin(study_uid: str, share_id: RowId, request: Request, session: WriteSession,
                   principal: CurrentPrincipal):
    pin = shares.new_pin(session=session, principal=principal, share_id=share_id,
                         secret_key=get_runtime(request).settings.effective_secret_key, source=client_address(request))
    return _manage_page(request, session, principal, study_uid, new_pin=(share_id, pin))


@router.post("/studies/{study_uid}/film/{share_id}/revoke", include_in_schema=False)
def manage_revoke(study_uid: str, share_id: int, request: Request, session: WriteSession,
                  principal: CurrentPrincipal):
    return _changed(shares.revoke_share, share_id, request, session, principal)

