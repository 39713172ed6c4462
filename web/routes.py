"""Platform API: who am I, health, and signed links to objects in the filesystem store."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from storage import audit
from storage.broker import check_broker
from storage.errors import Gone, NotPermitted
from storage.objects import FilesystemStore, check_url_signature, content_disposition
from storage.deps import CurrentUser, RuntimeDep
from web.schemas import HealthOut, InstitutionOut, MeOut

router = APIRouter()


@router.get("/api/me", response_model=MeOut, tags=["identity"])
def me(user: CurrentUser) -> MeOut:
    """The signed-in user (bearer token or browser session)."""
    inst = user.institution
    return MeOut(
        username=user.username, display_name=user.display_name, role=user.role,
        institution=InstitutionOut(code=inst.code, name=inst.name_zh, name_en=inst.name_en, level=inst.level),
    )


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # a health probe reports, it does not raise
        return f"down: {getattr(exc, 'detail', None) or type(exc).__name__}"


@router.get("/healthz", response_model=HealthOut, tags=["platform"])
async def healthz(runtime: RuntimeDep):
    """Database, object store and broker; 503 when one is down."""
    checks = await asyncio.gather(
        asyncio.to_thread(_check, runtime.db.ping),
        asyncio.to_thread(_check, runtime.store.check),
        asyncio.to_thread(_check, lambda: check_broker(runtime.celery)),
    )
    result = dict(zip(("database", "object_store", "broker"), checks))
    healthy = all(value == "ok" for value in result.values())
    body = {"status": "ok" if healthy else "degraded", "checks": result}
    return JSONResponse(body, status_code=200 if healthy else 503)


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.get("/objects/{key:path}", include_in_schema=False)
def signed_object(key: str, runtime: RuntimeDep, request: Request,
                  expires: int = Query(...), signature: str = Query(...), filename: str | None = None):
    """Serves a time-limited link made by the filesystem store (S3 links go to S3 itself)."""
    store = runtime.store
    if not isinstance(store, FilesystemStore):
        raise NotPermitted("object links are served by the object store")
    verdict = check_url_signature(store.secret, key, expires, signature, filename or "")
    if verdict == "invalid":
        raise NotPermitted("链接无效 / this link is not valid")
    if verdict == "expired":
        raise Gone("链接已过期 / this link has expired")
    size = store.size(key)
    # A link is a bearer credential to patient data: every download is a read to audit.
    audit.record_read(runtime.db, principal=None, actor="link", action="object.read", object_type="object",
                      object_id=key, source=request.client.host if request.client else "",
                      detail={"expires": expires})
    start, end, status = 0, size - 1, 200
    match = _RANGE.match(request.headers.get("range", ""))
    if match and (match.group(1) or match.group(2)):
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:
            start = max(size - int(match.group(2)), 0)
        if start > end or start >= size:
            return JSONResponse({"error": "range_not_satisfiable", "detail": f"size is {size}"},
                                status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if filename:
        headers["Content-Disposition"] = content_disposition(filename)
    return StreamingResponse(store.stream(key, start, end - start + 1), status_code=status,
                             headers=headers, media_type="application/octet-stream")
