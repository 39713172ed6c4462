"""Cloud film over HTTP: the radiographer's API and page, and the patient's phone pages.

Radiographer (signed in; the performing institution's radiographers and admins):
    POST   /api/studies/{uid}/shares          create a link + PIN (JSON, the PIN shown once)
    GET    /api/studies/{uid}/shares          the study's links and their state
    DELETE /api/shares/{id}                   revoke a link
    GET    /api/shares/{id}/film.pdf          the printable film sheet (202 while a worker makes it)
    GET    /api/studies/{uid}/film.pdf        the same, for the newest active link
    GET    /studies/{uid}/film                page: links, create, revoke, print

Patient (no account; the link, then the PIN; rate-limited per address; audited):
    GET    /f/{token}                         PIN form (nothing about the study before the PIN)
    POST   /f/{token}/unlock                  check the PIN, set a short-lived cookie for this link
    GET    /f/{token}/view                    the study in plain Chinese, series, a swipeable viewer
    GET    /f/{token}/img/{id}/{frame}.jpg    one frame rendered for the phone's screen (?w=)
    GET    /f/{token}/pv/{id}.jpg             an instance's small preview (placeholder while loading)
    GET    /f/{token}/download                every DICOM file of the study as one streamed zip
"""


import io
import json
import logging
import time
import zipfile
from datetime import timedelta
from types import SimpleNamespace
from typing import Annotated, Iterator

import segno
from fastapi import APIRouter, Body, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from imaging import compat_zipfile, derive, pixels, shares
from storage import keys
from imaging.models import Instance, Series, Share, Study
from storage import audit, jobs
from storage.access import Principal
from storage.errors import DomainError, Gone, Locked, NotAuthenticated, NotFound, TooManyRequests
from storage.models import Institution
from storage.objects import ObjectNotFound, StoreUnavailable
from storage.types import RowId

log = logging.getLogger("lancang.imaging")

COOKIE = "lancang_film"
SCREEN_WIDTHS = (320, 480, 640, 800, 1080, 1440)   # rendered sizes: a few, so renders are cached
FIRST_IMAGE_WIDTH = 800                             # in the page's HTML, before film.js knows the screen
SCREEN_QUALITY = 80
SIGNED_URL_TTL = timedelta(minutes=15)
STATE_ZH = {"active": "有效 Active", "revoked": "已撤销 Revoked", "expired": "已过期 Expired",
            "locked": "已锁定 Locked"}
FILM_ZH = {"ready": "可下载 Ready", "pending": "生成中 Being made", "failed": "失败 Failed", "": "—"}


class ShareIn(BaseModel):
    days: float = Field(shares.DEFAULT_DAYS, gt=0, le=shares.MAX_DAYS, description="days until the link expires")


class ShareCreatedOut(BaseModel):
    id: int
    url: str
    pin: str
    expires_at: str
    study_instance_uid: str


class ShareOut(BaseModel):
    id: int
    study_instance_uid: str
    state: str
    created_at: str
    created_by: str
    expires_at: str
    revoked_at: str | None
    failed_attempts: int
    opened_count: int
    last_opened_at: str | None
    film_state: str
    film_url: str | None


class Limits:
    """Per-app limiters for the public endpoints, per client address (PIN lockout itself is
    in the database). The limiter class comes from the web layer (web.ratelimit.RateLimiter)."""

    def __init__(self, rate_limiter):
        self.pages = rate_limiter(limit=60, per_seconds=60)
        self.unlock = rate_limiter(limit=20, per_seconds=60)
        # a phone swiping a 300-slice CT with prefetch asks for a few images a second
        self.images = rate_limiter(limit=900, per_seconds=60)


def _iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:300]


def _render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("user", None)
    response = request.app.state.templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the path
    return response


def _film_error(request: Request, exc: DomainError) -> HTMLResponse:
    """A friendly Chinese page for a dead link (404/410/423/429)."""
    return _render(request, "film/error.html", status=exc.status, status_code=exc.status, detail=exc.detail,
                   kind=exc.code)


def _snap_width(requested: int | None) -> int:
    if not requested or requested <= 0:
        return 640
    return next((w for w in SCREEN_WIDTHS if w >= requested), SCREEN_WIDTHS[-1])


def _share_out(share: Share, store) -> ShareOut:
    film_url = None
    if share.film_state == "ready" and share.film_key:
        film_url = store.url(share.film_key, SIGNED_URL_TTL, filename=f"film-{share.id}.pdf")
    return ShareOut(id=share.id, study_instance_uid=share.study_instance_uid, state=shares.share_state(share),
                    created_at=_iso(share.created_at), created_by=share.created_by,
                    expires_at=_iso(share.expires_at), revoked_at=_iso(share.revoked_at),
                    failed_attempts=share.failed_attempts, opened_count=share.opened_count,
                    last_opened_at=_iso(share.last_opened_at), film_state=share.film_state, film_url=film_url)


# --------------------------------------------------------------------------- zip streaming


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable sink: zipfile then writes data descriptors and never seeks."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._written = 0
        self.buffered = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        self.buffered += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return data


README_TXT = (
    "本压缩包内是您的检查影像原始文件（DICOM 格式），可用医院或电脑上的 DICOM 阅片软件打开，"
    "也可交给其他医院的医生。请妥善保管，勿随意转发。\r\n"
    "These are the original images of your examination in DICOM format. Any DICOM viewer opens them; "
    "you may give them to another hospital. Keep them private.\r\n"
)


ZIP_FLUSH = 256 * 1024


def _zip_stream(store, entries: list[tuple[str, str, int]]) -> Iterator[bytes]:
    """Stream a zip of (name, object key, size) without holding a file in memory.

    Deflate level 1: DICOM often halves, for little CPU, and the patient is on mobile data.
    """
    pipe = _Pipe()
    today = time.localtime()[:6]
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("README.txt", README_TXT.encode("utf-8"))
        for name, key, size in entries:
            info = zipfile.ZipInfo(name, date_time=today)
            info.compress_type = zipfile.ZIP_DEFLATED
            compat_zipfile.set_compress_level(info, 1)  # what ZipFile.open(name) would set (default 6)
            with archive.open(info, "w", force_zip64=size > 2**31 - 2**24) as member:
                for chunk in store.stream(key):
                    member.write(chunk)
                    if pipe.buffered >= ZIP_FLUSH:
                        yield pipe.drain()
    yield pipe.drain()


# --------------------------------------------------------------------------- router


def build_router(db_session, write_session, current_principal, *, rate_limiter) -> APIRouter:
    """The router, given the web layer's read/write units of work, principal dependency and
    rate-limiter class (imports point downward: imaging never imports web)."""
    router = APIRouter(tags=["cloud film"])
    DbSession = Annotated[Session, Depends(db_session, scope="function")]
    WriteSession = Annotated[Session, Depends(write_session, scope="function")]
    CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
    limits = Limits(rate_limiter)

    def runtime(request: Request):
        return request.app.state.runtime

    # ------------------------------------------------------------------ radiographer API

    @router.post("/api/studies/{study_uid}/shares", response_model=ShareCreatedOut, status_code=201)
    def create_share(study_uid: str, request: Request, session: WriteSession, principal: CurrentPrincipal,
                     body: Annotated[ShareIn | None, Body()] = None):
        """Creates a cloud-film link and PIN for the study. The PIN is in this answer only."""
        settings = runtime(request).settings
        created = shares.create_share(session=session, principal=principal, study_uid=study_uid,
                                      secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url,
                                      days=(body or ShareIn()).days, source=_source(request))
        return JSONResponse(created.as_json(), status_code=201, headers={"Cache-Control": "no-store"})

    @router.get("/api/studies/{study_uid}/shares", response_model=list[ShareOut])
    def list_shares(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal):
        """The study's links, newest first, with their state."""
        store = runtime(request).store
        listed = [_share_out(s, store) for s in shares.list_shares(session=session, principal=principal,
                                                                    study_uid=study_uid)]
        _audit_staff_read(request, principal, "film.share.list", study_uid)
        return listed

    @router.delete("/api/shares/{share_id}", response_model=ShareOut)
    def revoke_share(share_id: int, request: Request, session: WriteSession, principal: CurrentPrincipal):
        """Revokes a link at once; the patient's page stops working."""
        share = shares.revoke_share(session=session, principal=principal, share_id=share_id,
                                    source=_source(request))
        return _share_out(share, runtime(request).store)

    @router.post("/api/shares/{share_id}/unlock", response_model=ShareOut)
    def unlock_share(share_id: RowId, request: Request, session: WriteSession, principal: CurrentPrincipal):
        """Lift a PIN lockout now (the patient called the hospital); audited."""
        share = shares.unlock_by_staff(session=session, principal=principal, share_id=share_id,
                                       source=_source(request))
        return _share_out(share, runtime(request).store)

    @router.post("/api/shares/{share_id}/pin")
    def new_share_pin(share_id: RowId, request: Request, session: WriteSession, principal: CurrentPrincipal):
        """A new PIN for the same link and QR (shown once); the old PIN stops working."""
        pin = shares.new_pin(session=session, principal=principal, share_id=share_id,
                             secret_key=runtime(request).settings.effective_secret_key, source=_source(request))
        return {"id": share_id, "pin": pin}

    def _audit_staff_read(request: Request, principal: Principal, action: str, study_uid: str) -> None:
        audit.record_read(runtime(request).db, principal=principal, action=action, object_type="study",
                          object_id=study_uid, source=_source(request))

    def _film_response(request: Request, session: Session, principal: Principal, share: Share):
        rt = runtime(request)
        if shares.share_state(share) in ("revoked", "expired"):  # its QR code opens nothing any more
            raise Gone("this link is no longer active; create a new one / 该链接已失效，请新建")
        if share.film_state == "ready" and share.film_key:
            try:
                size = rt.store.size(share.film_key)
                body = rt.store.stream(share.film_key)
            except ObjectNotFound:
                share.film_state = ""
            else:
                audit.append(session, principal=principal, action="film.sheet.download", object_type="share",
                             object_id=str(share.id), source=_source(request))
                return StreamingResponse(body, media_type="application/pdf", headers={
                    "Content-Length": str(size),
                    "Content-Disposition": f'attachment; filename="film-{share.id}.pdf"'})
        # Not made yet (or lost): ask again; the task is idempotent.
        share.film_state = "pending"
        jobs.send_after_commit(session, shares.FILM_TASK, share.id, queue="render")
        if "text/html" in request.headers.get("accept", ""):
            return _render(request, "film/pending.html", status=202, share=share)
        return JSONResponse({"status": "pending", "detail": "the film sheet is being made / 胶片页生成中"},
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
            raise NotFound("no active cloud-film link for this study: create one first / 该检查尚无有效云胶片链接")
        return _film_response(request, session, principal, active[0])

    # ------------------------------------------------------------------ radiographer page

    def _manage_page(request: Request, session: Session, principal: Principal, study_uid: str,
                     created: shares.CreatedShare | None = None, status: int = 200,
                     new_pin: tuple[int, str] | None = None) -> HTMLResponse:
        listing = shares.list_shares(session=session, principal=principal, study_uid=study_uid)
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        institution = session.get(Institution, principal.institution_id) if principal.institution_id else None
        user = SimpleNamespace(display_name=principal.name,
                               institution=SimpleNamespace(name_zh=institution.name_zh if institution else ""))
        qr = Markup(segno.make(created.url, error="m").svg_inline(scale=4)) if created else None
        rows = [{"share": s, "state": shares.share_state(s), "state_zh": STATE_ZH[shares.share_state(s)],
                 "film_zh": FILM_ZH.get(s.film_state, s.film_state), "created": shares.local_time(s.created_at),
                 "expires": shares.local_time(s.expires_at)} for s in listing]
        return _render(request, "film/manage.html", status=status, user=user, study=study,
                       patient=shares.display_name(study.patient.name) if study else "",
                       date=shares.chinese_date(study.study_date) if study else "",
                       rows=rows, created=created, qr=qr, default_days=int(shares.DEFAULT_DAYS), new_pin=new_pin,
                       loopback_url=(runtime(request).settings.effective_public_url
                                     if runtime(request).settings.public_url_is_loopback else ""))

    @router.get("/studies/{study_uid}/film", response_class=HTMLResponse, include_in_schema=False)
    def manage_page(study_uid: str, request: Request, session: DbSession, principal: CurrentPrincipal):
        shares.require_sharer(session, principal, study_uid)
        page = _manage_page(request, session, principal, study_uid)
        _audit_staff_read(request, principal, "film.share.page", study_uid)
        return page

    @router.post("/studies/{study_uid}/film", response_class=HTMLResponse, include_in_schema=False)
    def manage_create(study_uid: str, request: Request, session: WriteSession, principal: CurrentPrincipal,
                      days: str = Form(str(shares.DEFAULT_DAYS))):
        try:
            number = float(days)
        except ValueError:
            number = -1
        settings = runtime(request).settings
        created = shares.create_share(session=session, principal=principal, study_uid=study_uid,
                                      secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url, days=number,
                                      source=_source(request))
        return _manage_page(request, session, principal, study_uid, created=created, status=201)

    @router.post("/studies/{study_uid}/film/{share_id}/unlock", include_in_schema=False)
    def manage_unlock(study_uid: str, share_id: RowId, request: Request, session: WriteSession,
                      principal: CurrentPrincipal):
        share = shares.unlock_by_staff(session=session, principal=principal, share_id=share_id,
                                       source=_source(request))
        return RedirectResponse(f"/studies/{share.study_instance_uid}/film", status_code=303)

    @router.post("/studies/{study_uid}/film/{share_id}/pin", response_class=HTMLResponse, include_in_schema=False)
    def manage_new_pin(study_uid: str, share_id: RowId, request: Request, session: WriteSession,
                       principal: CurrentPrincipal):
        pin = shares.new_pin(session=session, principal=principal, share_id=share_id,
                             secret_key=runtime(request).settings.effective_secret_key, source=_source(request))
        return _manage_page(request, session, principal, study_uid, new_pin=(share_id, pin))

    @router.post("/studies/{study_uid}/film/{share_id}/revoke", include_in_schema=False)
    def manage_revoke(study_uid: str, share_id: int, request: Request, session: WriteSession,
                      principal: CurrentPrincipal):
        share = shares.revoke_share(session=session, principal=principal, share_id=share_id,
                                    source=_source(request))
        return RedirectResponse(f"/studies/{share.study_instance_uid}/film", status_code=303)

    # ------------------------------------------------------------------ patient pages

    def _limit(limiter, request: Request) -> None:
        limiter.hit(_source(request))

    def _unlocked(request: Request, session: Session, token: str) -> Share:
        """The share, if usable and this browser has entered its PIN recently."""
        share = shares.find_share(session, token)
        shares.require_usable(share)
        if not shares.cookie_valid(runtime(request).settings.effective_secret_key, share,
                                   request.cookies.get(COOKIE)):
            raise NotAuthenticated("enter the PIN first / 请先输入提取码")
        return share

    def _patient_share(request: Request, session: Session, token: str, action: str):
        """(unlocked share, None), or (None, the page to show instead: PIN form or friendly error)."""
        try:
            _limit(limits.pages, request)
            return _unlocked(request, session, token), None
        except NotAuthenticated:
            return None, RedirectResponse(f"/f/{token}", status_code=303)
        except (NotFound, Gone, Locked, TooManyRequests) as exc:
            _audit_dead_link(session, request, token, exc, action)
            return None, _film_error(request, exc)

    def _image_access(request: Request, session: Session, token: str) -> Share | Response:
        try:
            return _unlocked(request, session, token)
        except NotAuthenticated:
            # The PIN page or a plain 401, never the staff login page the error handler picks.
            if "text/html" in request.headers.get("accept", ""):
                return RedirectResponse(f"/f/{token}", status_code=303)
            return JSONResponse({"error": "not_authenticated", "detail": "enter the PIN first / 请先输入提取码"},
                                status_code=401)

    def _audit_dead_link(session: Session, request: Request, token: str, exc: DomainError, action: str) -> None:
        """Audit a refused patient request in the request's own transaction (kept: we return, not raise)."""
        if isinstance(exc, TooManyRequests):
            # Not audited: a flood would otherwise serialize on the audit chain. Logged instead.
            log.warning("imaging.film.rate_limited action=%s source=%s", action, _source(request))
            return
        share = None
        if not isinstance(exc, NotFound):
            share = session.scalar(select(Share).where(Share.token_hash == shares.hash_token(token)))
        if share is not None:
            shares.record_access(session, share, action, source=_source(request), user_agent=_agent(request),
                                 outcome="denied", reason=exc.code)
        else:
            audit.append(session, principal=None, actor="anonymous", action=action, outcome="denied",
                         object_type="share", object_id="unknown", source=_source(request),
                         detail={"user_agent": _agent(request), "reason": exc.code})

    @router.get("/f/{token}", response_class=HTMLResponse, include_in_schema=False)
    def film_open(token: str, request: Request, session: WriteSession):
        try:
            _limit(limits.pages, request)
            share = shares.open_share(session=session, token=token, source=_source(request),
                                      user_agent=_agent(request))
        except (NotFound, Gone, Locked, TooManyRequests) as exc:
            _audit_dead_link(session, request, token, exc, "film.open")
            return _film_error(request, exc)
        if shares.cookie_valid(runtime(request).settings.effective_secret_key, share, request.cookies.get(COOKIE)):
            return RedirectResponse(f"/f/{token}/view", status_code=303)
        return _render(request, "film/pin.html", token=token, error=None, remaining=None)

    @router.post("/f/{token}/unlock", include_in_schema=False)
    def film_unlock(token: str, request: Request, session: WriteSession, pin: str = Form("")):
        settings = runtime(request).settings
        try:
            _limit(limits.unlock, request)
            result = shares.unlock(session=session, token=token, pin=pin[:32], secret_key=settings.effective_secret_key,
                                   source=_source(request), user_agent=_agent(request))
        except (NotFound, Gone, Locked, TooManyRequests) as exc:
            _audit_dead_link(session, request, token, exc, "film.unlock")
            return _film_error(request, exc)
        if result.locked:
            return _film_error(request, Locked(shares.locked_message(result.share)))
        if not result.ok:
            return _render(request, "film/pin.html", status=403, token=token, remaining=result.remaining,
                           error="提取码不正确 The PIN is not correct")
        value, max_age = shares.unlock_cookie(settings.effective_secret_key, result.share)
        response = RedirectResponse(f"/f/{token}/view", status_code=303)
        response.set_cookie(COOKIE, value, max_age=max_age, path=f"/f/{token}", httponly=True, samesite="lax",
                            secure=settings.effective_public_url.startswith("https"))
        return response

    @router.get("/f/{token}/view", response_class=HTMLResponse, include_in_schema=False)
    def film_view(token: str, request: Request, session: WriteSession):
        rt = runtime(request)
        share, answer = _patient_share(request, session, token, "film.view")
        if answer is not None:
            return answer
        study = shares.film_study(session, share)
        report = shares.report_for_study(session, share.study_instance_uid)
        if report is not None and report.pdf_key:
            report.pdf_url = f"/f/{token}/report.pdf"
        shares.record_access(session, share, "film.view", source=_source(request), user_agent=_agent(request),
                             images=study.images)
        # Through /f/ (share and unlock checked on every request), never a signed object
        # URL: a revoked link must stop showing thumbnails at once.
        thumbs = {s.series_uid: (f"/f/{token}/th/{s.series_uid}.jpg" if s.thumbnail_key else None)
                  for s in study.series}
        data = {"base": f"/f/{token}", "widths": list(SCREEN_WIDTHS),
                "series": [{"label": s.label, "items": s.items} for s in study.series]}
        download_bytes = _study_bytes(session, share)
        first = study.series[0].items[0] if study.series else None
        return _render(request, "film/view.html", token=token, study=study, thumbs=thumbs, report=report,
                       data=Markup(json.dumps(data, separators=(",", ":")).replace("</", "<\\/")),
                       first=first, first_width=FIRST_IMAGE_WIDTH,
                       download_mb=max(1, round(download_bytes / 1e6)) if download_bytes else 0)

    @router.get("/f/{token}/img/{instance_id}/{frame}.jpg", include_in_schema=False)
    def film_image(token: str, instance_id: int, frame: int, request: Request, session: DbSession,
                   w: int | None = None):
        _limit(limits.images, request)
        share = _image_access(request, session, token)
        if isinstance(share, Response):
            return share
        instance = shares.instance_in_share(session, share, instance_id)
        series = session.get(Series, instance.series_pk)
        if not 0 <= frame < max(1, instance.number_of_frames or 1):
            raise NotFound("image not found / 未找到该图像")
        # Never wider than the image itself (the phone scales up), so sizes share one render.
        width = min(_snap_width(w), max(instance.columns or 0, instance.rows or 0) or SCREEN_WIDTHS[-1])
        store = runtime(request).store
        key = keys.screen_frame(share.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid,
                                frame, width, instance.sha256)
        session.close()  # release the connection before seconds of decoding
        shares.record_image_read(runtime(request).db, share, "film.image", instance_uid=instance.sop_instance_uid,
                                 source=_source(request))
        try:
            jpeg = store.get(key)
        except ObjectNotFound:
            jpeg = _render_screen(store, instance.object_key, frame, width)
            try:
                store.put(key, jpeg, content_type="image/jpeg")
            except StoreUnavailable:
                log.warning("imaging.film_image.cache_failed key=%s", key)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/f/{token}/th/{series_uid}.jpg", include_in_schema=False)
    def film_thumbnail(token: str, series_uid: str, request: Request, session: DbSession):
        _limit(limits.images, request)
        share = _image_access(request, session, token)
        if isinstance(share, Response):
            return share
        series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid,
                                                     Series.study_pk == share.study_pk))
        if series is None or not series.thumbnail_key:
            raise NotFound("no thumbnail / 无缩略图")
        key = series.thumbnail_key
        session.close()
        shares.record_image_read(runtime(request).db, share, "film.thumbnail", instance_uid=series_uid,
                                 source=_source(request))
        return Response(runtime(request).store.get(key), media_type="image/jpeg",
                        headers={"Cache-Control": "private, no-store"})

    @router.get("/f/{token}/pv/{instance_id}.jpg", include_in_schema=False)
    def film_preview(token: str, instance_id: int, request: Request, session: DbSession):
        _limit(limits.images, request)
        share = _image_access(request, session, token)
        if isinstance(share, Response):
            return share
        instance = shares.instance_in_share(session, share, instance_id)
        if not instance.preview_key:
            raise NotFound("no preview yet / 预览图尚未生成")
        session.close()
        shares.record_image_read(runtime(request).db, share, "film.preview", instance_uid=instance.sop_instance_uid,
                                 source=_source(request))
        jpeg = runtime(request).store.get(instance.preview_key)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/f/{token}/report.pdf", include_in_schema=False)
    def film_report(token: str, request: Request, session: WriteSession):
        """The signed report PDF, for the patient who unlocked the link."""
        share, answer = _patient_share(request, session, token, "film.report")
        if answer is not None:
            return answer
        report = shares.report_for_study(session, share.study_instance_uid)
        if report is None or not report.pdf_key:
            return _film_error(request, NotFound("the report is not ready yet / 报告尚未出具"))
        shares.record_access(session, share, "film.report", source=_source(request), user_agent=_agent(request))
        return Response(runtime(request).store.get(report.pdf_key), media_type="application/pdf",
                        headers={"Content-Disposition": 'inline; filename="report.pdf"', "Cache-Control": "no-store"})

    @router.get("/f/{token}/download", include_in_schema=False)
    def film_download(token: str, request: Request, session: WriteSession):
        share, answer = _patient_share(request, session, token, "film.download")
        if answer is not None:
            return answer
        rows = shares.study_instances(session, share)
        entries, numbers = [], {}
        for series, instance in rows:
            folder = f"S{(series.series_number if series.series_number is not None else 0):03d}_" \
                     f"{''.join(c for c in series.modality if c.isalnum()) or 'OT'}_{series.id}"
            numbers[folder] = numbers.get(folder, 0) + 1
            entries.append((f"{folder}/IM{numbers[folder]:04d}.dcm", instance.object_key, instance.size))
        study = session.get(Study, share.study_pk)
        shares.record_access(session, share, "film.download", source=_source(request), user_agent=_agent(request),
                             files=len(entries), bytes=sum(e[2] for e in entries))
        name = f"images-{study.study_date or 'study'}.zip"
        return StreamingResponse(_zip_stream(runtime(request).store, entries), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"',
                                          "Cache-Control": "no-store"})

    return router


def _render_screen(store, object_key: str, frame: int, width: int) -> bytes:
    """One frame fitted to a phone screen `width` pixels wide (never enlarged: CSS scales up)."""
    ds = derive.load_dataset(store, object_key)
    try:
        image = pixels.render_frame(ds, frame)
        return pixels.encode(pixels.fit(image, width, width * 2), "image/jpeg", SCREEN_QUALITY)
    except (pixels.PixelDataError, IndexError, ValueError) as exc:
        log.warning("imaging.film_image.failed key=%s reason=%s", object_key, exc)
        raise NotFound("this image cannot be shown / 该图像无法显示") from None


def _study_bytes(session: Session, share: Share) -> int:
    total = session.scalar(select(func.coalesce(func.sum(Instance.size), 0))
                           .join(Series, Series.id == Instance.series_pk)
                           .where(Series.study_pk == share.study_pk))
    return int(total or 0)  # PostgreSQL sums BIGINT as NUMERIC
