"""Cloud film for patients: the phone pages behind a link and a PIN (no account; rate-limited
per address; every open, unlock, image and download audited).

    GET    /f/{token}                         PIN form (nothing about the study before the PIN)
    POST   /f/{token}/unlock                  check the PIN, set a short-lived cookie for this link
    GET    /f/{token}/view                    the study in plain Chinese, series, a swipeable viewer
    GET    /f/{token}/img/{id}/{frame}.jpg    one frame rendered for the phone's screen (?w=)
    GET    /f/{token}/th/{series}.jpg         a series thumbnail
    GET    /f/{token}/pv/{id}.jpg             an instance's small preview (placeholder while loading)
    GET    /f/{token}/report.pdf              the signed final report, once returned
    GET    /f/{token}/download                every DICOM file of the study as one streamed zip
"""

import json
import logging

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from film import archive
from film import service as shares
from imaging import derive, pixels
from storage import keys
from film.models import Share
from imaging.models import Instance, Series, Study
from storage import audit
from storage.errors import DomainError, Gone, Locked, NotAuthenticated, NotFound, TooManyRequests
from storage.objects import ObjectNotFound, StoreUnavailable
from storage.deps import DbSession, WriteSession, client_address, get_runtime
from storage.ratelimit import RateLimiter

log = logging.getLogger("lancang.film")

COOKIE = "lancang_film"
SCREEN_WIDTHS = (320, 480, 640, 800, 1080, 1440)   # rendered sizes: a few, so renders are cached
FIRST_IMAGE_WIDTH = 800                             # in the page's HTML, before film.js knows the screen
SCREEN_QUALITY = 80


class Limits:
    """Per-app limiters for the public endpoints, per client address (PIN lockout itself is
    in the database)."""

    def __init__(self):
        self.pages = RateLimiter(limit=60, per_seconds=60)
        self.unlock = RateLimiter(limit=20, per_seconds=60)
        # a phone swiping a 300-slice CT with prefetch asks for a few images a second
        self.images = RateLimiter(limit=900, per_seconds=60)


def limits_of(request: Request) -> Limits:
    """This app's limiters (web/app.py makes one set per app, as the login limiter)."""
    return request.app.state.film_limits


def _agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:300]


def render_page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    context.setdefault("user", None)
    response = request.app.state.templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the path
    return response


def _film_error(request: Request, exc: DomainError) -> HTMLResponse:
    """A friendly Chinese page for a dead link (404/410/423/429)."""
    return render_page(request, "film/error.html", status=exc.status, status_code=exc.status, detail=exc.detail,
                   kind=exc.code)


def _snap_width(requested: int | None) -> int:
    if not requested or requested <= 0:
        return 640
    return next((w for w in SCREEN_WIDTHS if w >= requested), SCREEN_WIDTHS[-1])


router = APIRouter(tags=["cloud film"])


# ------------------------------------------------------------------ patient pages

def _limit(limiter, request: Request) -> None:
    limiter.hit(client_address(request))


def _unlocked(request: Request, session: Session, token: str) -> Share:
    """The share, if usable and this browser has entered its PIN recently."""
    share = shares.find_share(session, token)
    shares.require_usable(share)
    if not shares.cookie_valid(get_runtime(request).settings.effective_secret_key, share,
                               request.cookies.get(COOKIE)):
        raise NotAuthenticated("请先输入提取码 / enter the PIN first")
    return share


def _patient_share(request: Request, session: Session, token: str, action: str):
    """(unlocked share, None), or (None, the page to show instead: PIN form or friendly error)."""
    try:
        _limit(limits_of(request).pages, request)
        return _unlocked(request, session, token), None
    except NotAuthenticated:
        return None, RedirectResponse(f"/f/{token}", status_code=303)
    except (NotFound, Gone, Locked, TooManyRequests) as exc:
        _audit_dead_link(session, request, token, exc, action)
        return None, _film_error(request, exc)


def _image_access(request: Request, session: Session, token: str) -> Share | Response:
    """The unlocked share for an image request (rate-limited), or the answer to give instead."""
    _limit(limits_of(request).images, request)
    try:
        return _unlocked(request, session, token)
    except NotAuthenticated:
        # The PIN page or a plain 401, never the staff login page the error handler picks.
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/f/{token}", status_code=303)
        return JSONResponse({"error": "not_authenticated", "detail": "请先输入提取码 / enter the PIN first"},
                            status_code=401)


def _audit_dead_link(session: Session, request: Request, token: str, exc: DomainError, action: str) -> None:
    """Audit a refused patient request in the request's own transaction (kept: we return, not raise)."""
    if isinstance(exc, TooManyRequests):
        # Not audited: a flood would otherwise serialize on the audit chain. Logged instead.
        log.warning("imaging.film.rate_limited action=%s source=%s", action, client_address(request))
        return
    share = None
    if not isinstance(exc, NotFound):
        share = session.scalar(select(Share).where(Share.token_hash == shares.hash_token(token)))
    if share is not None:
        shares.record_access(session, share, action, source=client_address(request), user_agent=_agent(request),
                             outcome="denied", reason=exc.code)
    else:
        audit.append(session, principal=None, actor="anonymous", action=action, outcome="denied",
                     object_type="share", object_id="unknown", source=client_address(request),
                     detail={"user_agent": _agent(request), "reason": exc.code})


@router.get("/f/{token}", response_class=HTMLResponse, include_in_schema=False)
def film_open(token: str, request: Request, session: WriteSession):
    try:
        _limit(limits_of(request).pages, request)
        share = shares.open_share(session=session, token=token, source=client_address(request),
                                  user_agent=_agent(request))
    except (NotFound, Gone, Locked, TooManyRequests) as exc:
        _audit_dead_link(session, request, token, exc, "film.open")
        return _film_error(request, exc)
    if shares.cookie_valid(get_runtime(request).settings.effective_secret_key, share, request.cookies.get(COOKIE)):
        return RedirectResponse(f"/f/{token}/view", status_code=303)
    return render_page(request, "film/pin.html", token=token, error=None, remaining=None)


@router.post("/f/{token}/unlock", include_in_schema=False)
def film_unlock(token: str, request: Request, session: WriteSession, pin: str = Form("")):
    settings = get_runtime(request).settings
    try:
        _limit(limits_of(request).unlock, request)
        result = shares.unlock(session=session, token=token, pin=pin[:32], secret_key=settings.effective_secret_key,
                               source=client_address(request), user_agent=_agent(request))
    except (NotFound, Gone, Locked, TooManyRequests) as exc:
        _audit_dead_link(session, request, token, exc, "film.unlock")
        return _film_error(request, exc)
    if result.locked:
        return _film_error(request, Locked(shares.locked_message(result.share)))
    if not result.ok:
        return render_page(request, "film/pin.html", status=403, token=token, remaining=result.remaining,
                       error="提取码不正确 The PIN is not correct")
    value, max_age = shares.unlock_cookie(settings.effective_secret_key, result.share)
    response = RedirectResponse(f"/f/{token}/view", status_code=303)
    response.set_cookie(COOKIE, value, max_age=max_age, path=f"/f/{token}", httponly=True, samesite="lax",
                        secure=settings.effective_public_url.startswith("https"))
    return response


def _chosen(studies: list[tuple[int, str]], s: int) -> tuple[int, str]:
    """The link's s-th study (0: the first) of shares.shared_studies(), or NotFound."""
    if not 0 <= s < len(studies):
        raise NotFound("未找到该检查 / study not found")
    return studies[s]


@router.get("/f/{token}/view", response_class=HTMLResponse, include_in_schema=False)
def film_view(token: str, request: Request, session: WriteSession, s: int = 0):
    """The study in plain Chinese; `s` picks another study shared through the same link."""
    share, answer = _patient_share(request, session, token, "film.view")
    if answer is not None:
        return answer
    studies = shares.shared_studies(session, share)
    study_pk, study_uid = _chosen(studies, s)
    study = shares.film_study(session, share, study_pk)
    others = [(k, shares.film_study(session, share, pk)) for k, (pk, _) in enumerate(studies) if k != s]
    report = shares.report_for_study(session, study_uid)
    if report is not None and report.pdf_key:
        report.pdf_url = f"/f/{token}/report.pdf" + (f"?s={s}" if s else "")
    shares.record_access(session, share, "film.view", source=client_address(request), user_agent=_agent(request),
                         images=study.images)
    # Through /f/ (share and unlock checked on every request), never a signed object
    # URL: a revoked link must stop showing thumbnails at once.
    thumbs = {s.series_uid: (f"/f/{token}/th/{s.series_uid}.jpg" if s.thumbnail_key else None)
              for s in study.series}
    data = {"base": f"/f/{token}", "widths": list(SCREEN_WIDTHS),
            "series": [{"label": x.label, "items": x.items} for x in study.series]}
    download_bytes = _study_bytes(session, study_pk)
    first = study.series[0].items[0] if study.series else None
    return render_page(request, "film/view.html", token=token, study=study, thumbs=thumbs, report=report,
                   others=others, chosen=s,
                   data=Markup(json.dumps(data, separators=(",", ":")).replace("</", "<\\/")),
                   first=first, first_width=FIRST_IMAGE_WIDTH, save_width=SCREEN_WIDTHS[-1],
                   download_mb=max(1, round(download_bytes / 1e6)) if download_bytes else 0)


@router.get("/f/{token}/img/{instance_id}/{frame}.jpg", include_in_schema=False)
def film_image(token: str, instance_id: int, frame: int, request: Request, session: DbSession,
               w: int | None = None):
    share = _image_access(request, session, token)
    if isinstance(share, Response):
        return share
    instance = shares.instance_in_share(session, share, instance_id)
    series = session.get(Series, instance.series_pk)
    if not 0 <= frame < max(1, instance.number_of_frames or 1):
        raise NotFound("未找到该图像 / image not found")
    # Never wider than the image itself (the phone scales up), so sizes share one render.
    width = min(_snap_width(w), max(instance.columns or 0, instance.rows or 0) or SCREEN_WIDTHS[-1])
    store = get_runtime(request).store
    key = keys.screen_frame(series.study.study_instance_uid, series.series_instance_uid, instance.sop_instance_uid,
                            frame, width, instance.sha256)
    session.close()  # release the connection before seconds of decoding
    shares.record_image_read(get_runtime(request).db, share, "film.image", instance_uid=instance.sop_instance_uid,
                             source=client_address(request))
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
    share = _image_access(request, session, token)
    if isinstance(share, Response):
        return share
    pks = [pk for pk, _ in shares.shared_studies(session, share)]
    series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid,
                                                 Series.study_pk.in_(pks)))
    if series is None or not series.thumbnail_key:
        raise NotFound("无缩略图 / no thumbnail")
    return _stored_jpeg(request, session, share, "film.thumbnail", series_uid, series.thumbnail_key,
                        cache="private, no-store")


def _stored_jpeg(request: Request, session: Session, share: Share, action: str, uid: str, key: str, *,
                 cache: str) -> Response:
    """A derived JPEG from the store, its read audited (after the request's connection is freed)."""
    session.close()
    shares.record_image_read(get_runtime(request).db, share, action, instance_uid=uid, source=client_address(request))
    return Response(get_runtime(request).store.get(key), media_type="image/jpeg", headers={"Cache-Control": cache})


@router.get("/f/{token}/pv/{instance_id}.jpg", include_in_schema=False)
def film_preview(token: str, instance_id: int, request: Request, session: DbSession):
    share = _image_access(request, session, token)
    if isinstance(share, Response):
        return share
    instance = shares.instance_in_share(session, share, instance_id)
    if not instance.preview_key:
        raise NotFound("预览图尚未生成 / no preview yet")
    return _stored_jpeg(request, session, share, "film.preview", instance.sop_instance_uid, instance.preview_key,
                        cache="private, max-age=3600")


@router.get("/f/{token}/report.pdf", include_in_schema=False)
def film_report(token: str, request: Request, session: WriteSession, s: int = 0):
    """The signed report PDF of one shared study, for the patient who unlocked the link."""
    share, answer = _patient_share(request, session, token, "film.report")
    if answer is not None:
        return answer
    report = shares.report_for_study(session, _chosen(shares.shared_studies(session, share), s)[1])
    if report is None or not report.pdf_key:
        return _film_error(request, NotFound("报告尚未出具 / the report is not ready yet"))
    shares.record_access(session, share, "film.report", source=client_address(request), user_agent=_agent(request))
    return Response(get_runtime(request).store.get(report.pdf_key), media_type="application/pdf",
                    headers={"Content-Disposition": 'inline; filename="report.pdf"', "Cache-Control": "no-store"})


@router.get("/f/{token}/download", include_in_schema=False)
def film_download(token: str, request: Request, session: WriteSession, s: int = 0):
    share, answer = _patient_share(request, session, token, "film.download")
    if answer is not None:
        return answer
    study_pk, _ = _chosen(shares.shared_studies(session, share), s)
    entries = archive.entries(shares.study_instances(session, share, study_pk))
    study = session.get(Study, study_pk)
    shares.record_access(session, share, "film.download", source=client_address(request), user_agent=_agent(request),
                         files=len(entries), bytes=sum(e[2] for e in entries))
    name = f"images-{study.study_date or 'study'}.zip"
    return StreamingResponse(archive.zip_stream(get_runtime(request).store, entries), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})

def _render_screen(store, object_key: str, frame: int, width: int) -> bytes:
    """One frame fitted to a phone screen `width` pixels wide (never enlarged: CSS scales up)."""
    ds = derive.load_dataset(store, object_key)
    try:
        image = pixels.render_frame(ds, frame)
        return pixels.encode(pixels.fit(image, width, width * 2), "image/jpeg", SCREEN_QUALITY)
    except (pixels.PixelDataError, IndexError, ValueError) as exc:
        log.warning("imaging.film_image.failed key=%s reason=%s", object_key, exc)
        raise NotFound("该图像无法显示 / this image cannot be shown") from None


def _study_bytes(session: Session, study_pk: int) -> int:
    total = session.scalar(select(func.coalesce(func.sum(Instance.size), 0))
                           .join(Series, Series.id == Instance.series_pk)
                           .where(Series.study_pk == study_pk))
    return int(total or 0)  # PostgreSQL sums BIGINT as NUMERIC
