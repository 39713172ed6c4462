"""The region's API for township edges, authenticated by an edge credential (`Authorization:
Bearer lce_…`, issued by `edge.region.issue_credential`) bound to one institution.

    POST /api/edge/hello                                  the edge's report (version, backlog)
    PUT  /api/edge/studies/{study}/manifest               {"instances": [{"sop", "sha256", "size"}]}
                                                          → {"instances": [{"sop", "done", "offset"}]}
    GET  /api/edge/studies/{study}/instances/{sop}        → {"done", "offset", "size"}
    PUT  /api/edge/studies/{study}/instances/{sop}?offset=N
         body: the instance's bytes from N, each chunk compressed on its own
         (Content-Encoding: xz or gzip, as the hello answered), or identity
                                                          → {"done", "offset"}; 409 {"error": "offset"|"busy", "offset"}
    POST /api/edge/studies/{study}/complete               → {"complete", "instances", "verified", "missing"}

A finished instance is verified against the manifest's SHA-256 and stored through the same
Ingestor as C-STORE and STOW-RS, with the edge's institution (the same validation and
ownership rules). A wrong or revoked credential is 401, another institution's study 403 (or
409 while another institution's edge is sending it); each refusal is audited, and so are the
manifest, each verified instance and each completion check. The heartbeat and the chunks
that do not finish an instance are not: they disclose and change nothing a reader can see.

The upload takes no request-long session: its body may take minutes on a township line, and
a write transaction held that long would stop every other writer on SQLite.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from edge import region, uploads
from edge.models import EdgeNode
from imaging.dataset import InvalidInstance
from imaging.dicomweb.common import check_uid
from imaging.dicomweb.stow import ingestor_for
from imaging.limits import check_instance
from imaging.service import OwnershipConflict, parse_part10
from storage import audit
from storage.access import Principal
from storage.db import after_commit
from storage.deps import DbSession, WriteSession, client_address
from storage.errors import DomainError, Invalid, NotAuthenticated, NotPermitted
from storage.runtime import Runtime
from storage.types import utcnow

log = logging.getLogger("lancang.edge")


class DigestMismatch(Invalid):
    """The bytes received do not hash to the manifest's SHA-256 (they were discarded)."""

    code = "sha256_mismatch"

router = APIRouter(prefix="/api/edge", tags=["edge"])
SWEEP_EVERY_S = 3600
_last_sweep = [0.0]


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _authenticated(request: Request, session: Session) -> EdgeNode:
    """The calling edge, or 401: audited as a security event in its own transaction (the
    request's own is rolled back first, so on SQLite the record does not wait on it)."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not secret.strip():
            raise NotAuthenticated("请使用边缘节点凭据 / use 'Authorization: Bearer <edge credential>'")
        return region.authenticate(session=session, secret=secret.strip())
    except NotAuthenticated as exc:
        session.rollback()
        audit.record(_runtime(request).db, principal=None, actor="edge:unknown", action="edge.auth.refused",
                     outcome="denied", object_type="edge", source=client_address(request),
                     detail={"reason": exc.detail, "path": request.url.path[:200]})
        raise


def _refused(request: Request, session: Session, principal: Principal, action: str, object_id: str,
             exc: DomainError) -> None:
    """Roll the request back and audit the refusal in its own transaction (then re-raise)."""
    session.rollback()
    audit.record(_runtime(request).db, principal=principal, action=action, outcome="denied", object_type="study",
                 object_id=object_id, source=client_address(request),
                 detail={"reason": exc.detail, "status": exc.status})


@router.post("/hello")
def hello(request: Request, session: WriteSession, report: dict = Body(default_factory=dict)) -> dict:
    """The edge's heartbeat: what it reports shows on the admin console; the answer says the
    region's time and the body encodings it takes, best first."""
    edge = _authenticated(request, session)
    region.note_report(session=session, edge=edge, address=client_address(request), report=report)
    if time.monotonic() - _last_sweep[0] > SWEEP_EVERY_S:
        _last_sweep[0] = time.monotonic()
        removed = uploads.sweep(_runtime(request).settings.data_dir)
        if removed:
            log.info("edge.partials.swept removed=%s", removed)
    return {"edge": edge.name, "institution": edge.institution.code, "time": utcnow().isoformat(),
            "encodings": list(uploads.ENCODINGS)}


@router.put("/studies/{study}/manifest")
def put_manifest(study: str, request: Request, session: WriteSession, body: dict = Body(...)) -> dict:
    """Announce (or re-announce) a study's instances; answers what is done and where to resume."""
    check_uid(study, "StudyInstanceUID")
    edge = _authenticated(request, session)
    principal, settings = region.principal_of(edge), _runtime(request).settings
    try:
        items = region.parse_manifest(body.get("instances"), max_instance=settings.max_instance_bytes)
        manifest, rows, stale = region.set_manifest(session=session, edge=edge, study_uid=study, items=items)
    except DomainError as exc:
        _refused(request, session, principal, "edge.study.refused", study, exc)
        raise
    answer = [{"sop": row.sop_instance_uid, "done": bool(row.done),
               "offset": row.size if row.done else _held(settings.data_dir, edge.id, row.id, row.sha256)}
              for row in rows]
    audit.append(session, principal=principal, action="edge.study.manifest", object_type="study", object_id=study,
                 source=client_address(request),
                 detail={"instances": len(rows), "bytes": manifest.size, "done": sum(a["done"] for a in answer)})
    done = [(row.id, row.sha256) for row in rows if row.done]
    after_commit(session, lambda: _remove_partials(settings.data_dir, edge.id, stale + done))
    return {"study": study, "instances": answer}


def _held(data_dir, edge_id: int, upload_id: int, sha256: str) -> int:
    try:
        return uploads.partial_path(data_dir, edge_id, upload_id, sha256).stat().st_size
    except FileNotFoundError:
        return 0


def _remove_partials(data_dir, edge_id: int, versions: list[tuple[int, str]]) -> None:
    for upload_id, sha256 in versions:
        uploads.partial_path(data_dir, edge_id, upload_id, sha256).unlink(missing_ok=True)


@router.get("/studies/{study}/instances/{sop}")
def instance_state(study: str, sop: str, request: Request, session: DbSession) -> dict:
    """Where an upload stands: done, or how many bytes the region holds."""
    edge = _authenticated(request, session)
    row = region.upload_of(session=session, edge=edge, study_uid=study, sop=sop)
    offset = row.size if row.done else _held(_runtime(request).settings.data_dir, edge.id, row.id, row.sha256)
    return {"done": bool(row.done), "offset": offset, "size": row.size}


@router.post("/studies/{study}/complete")
def complete(study: str, request: Request, session: WriteSession) -> dict:
    """Complete only when every instance of the manifest is verified and indexed."""
    edge = _authenticated(request, session)
    answer = region.completion(session=session, edge=edge, study_uid=study)
    audit.append(session, principal=region.principal_of(edge), action="edge.study.complete",
                 outcome="ok" if answer["complete"] else "failed", object_type="study", object_id=study,
                 source=client_address(request),
                 detail={"instances": answer["instances"], "verified": answer["verified"]})
    if answer["complete"]:
        log.info("edge.study.complete edge=%s study=%s instances=%s", edge.name, study, answer["instances"])
    return answer


# -- the upload ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An upload as the request needs it once its short lookup transaction has ended."""

    principal: Principal
    edge_id: int
    edge_name: str
    institution_id: int
    study: str
    sop: str
    upload_id: int
    sha256: str
    size: int
    done: bool


def _target(request: Request, study: str, sop: str) -> Target:
    with _runtime(request).db.scope(readonly=True) as session:
        edge = _authenticated(request, session)
        row = region.upload_of(session=session, edge=edge, study_uid=study, sop=sop)
        return Target(region.principal_of(edge), edge.id, edge.name, edge.institution_id, study, sop, row.id,
                      row.sha256, row.size, bool(row.done))


def _still_wanted(request: Request, target: Target) -> Target | None:
    """The upload again, under the file lock: another request may have finished it, or a new
    manifest replaced its version, while this one waited."""
    with _runtime(request).db.scope(readonly=True) as session:
        edge = session.get(EdgeNode, target.edge_id)
        try:
            row = region.upload_of(session=session, edge=edge, study_uid=target.study, sop=target.sop)
        except DomainError:
            return None
        if (row.id, row.sha256) != (target.upload_id, target.sha256):
            return None
        return replace(target, done=bool(row.done))


@router.put("/studies/{study}/instances/{sop}")
async def put_instance(study: str, sop: str, request: Request, offset: int = Query(..., ge=0)) -> JSONResponse:
    """Append the body at `offset` (it must be the offset held); the last byte verifies the
    SHA-256 and stores the instance. A body cut short is kept up to where it broke."""
    target = await run_in_threadpool(_target, request, study, sop)
    version = request.headers.get("lancang-sha256", target.sha256)
    if version != target.sha256:
        return _conflict("version", "清单中的版本已变化，请重新提交清单 / the manifest lists another version: "
                         "send the manifest again", None)
    if target.done:
        return JSONResponse({"done": True, "offset": target.size})
    partial = uploads.PartialFile(uploads.partial_path(_runtime(request).settings.data_dir, target.edge_id,
                                                       target.upload_id, target.sha256))
    if not await run_in_threadpool(partial.acquire):
        return _conflict("busy", "上一次传输仍在进行，请稍后重试 / an earlier request still writes this instance",
                         None)
    finished = False
    try:
        answer, finished = await _append(request, target, partial, offset)
        return answer
    finally:
        partial.release(remove=finished)


def _conflict(error: str, detail: str, offset: int | None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail, "offset": offset}, status_code=409)


async def _append(request: Request, target: Target, partial: uploads.PartialFile,
                  offset: int) -> tuple[JSONResponse, bool]:
    """(answer, whether the partial file may go). Runs under the file's lock."""
    current = await run_in_threadpool(_still_wanted, request, target)
    if current is None:
        return _conflict("version", "清单已变化，请重新提交清单 / the manifest changed: send it again", None), False
    if current.done:
        return JSONResponse({"done": True, "offset": target.size}), True
    held = partial.size
    if held > target.size:  # cannot happen through this API; start again rather than trust it
        partial.truncate(0)
        held = 0
    if offset != held:
        return _conflict("offset", f"请从第 {held} 字节续传 / resume at byte {held}", held), False
    inflater = uploads.Inflater(request.headers.get("content-encoding", ""), target.size - held)
    try:
        ended = await uploads.receive_into(request, partial, inflater)
    except Invalid as exc:
        partial.truncate(held)
        await run_in_threadpool(_audit_refusal, request, target, exc.detail)
        raise
    finally:
        await run_in_threadpool(partial.sync)
    if partial.size < target.size:
        if ended != "end":
            log.info("edge.upload.%s edge=%s sop=%s held=%s", ended, target.edge_name, target.sop, partial.size)
        return JSONResponse({"done": False, "offset": partial.size}), False
    outcome = await run_in_threadpool(_finish, request, target, partial)
    return JSONResponse({"done": True, "offset": target.size, "outcome": outcome}), True


def _audit_refusal(request: Request, target: Target, reason: str) -> None:
    audit.record(_runtime(request).db, principal=target.principal, action="edge.instance.refused", outcome="denied",
                 object_type="instance", object_id=target.sop, source=client_address(request),
                 detail={"study": target.study, "reason": reason[:500]})


def _finish(request: Request, target: Target, partial: uploads.PartialFile) -> str:
    """Verify the whole instance against the manifest's SHA-256, store it through the Ingestor
    with the edge's institution, and mark it verified. Bytes that fail are discarded (the edge
    sends them again); bytes the Ingestor refuses are discarded too (sending them again would
    not help: the refusal says why)."""
    got = partial.digest()
    if got != target.sha256:
        partial.truncate(0)
        _audit_refusal(request, target, f"sha256 mismatch: got {got}")
        raise DigestMismatch("SHA-256 不符，已丢弃，请重新发送 / the bytes do not match the manifest's SHA-256: "
                      "discarded, send them again")
    data = partial.read_all()
    try:
        result = _ingest(request, target, data)
    except InvalidInstance as exc:
        partial.truncate(0)
        _audit_refusal(request, target, exc.reason)
        if isinstance(exc, OwnershipConflict) and exc.status == 0x0124:
            raise NotPermitted(f"该影像属于其他机构 / {exc.reason}") from None
        raise Invalid(f"县级平台无法保存该影像 / the region cannot store this instance: {exc.reason}") from None
    with _runtime(request).db.scope() as session:
        region.mark_verified(session=session, upload_id=target.upload_id)
        audit.append(session, principal=target.principal, action="edge.instance.store", object_type="instance",
                     object_id=target.sop, source=client_address(request),
                     detail={"study": target.study, "outcome": result.outcome, "sha256": target.sha256,
                             "size": target.size})
    return result.outcome


def _ingest(request: Request, target: Target, data: bytes):
    """Ingestor.ingest as STOW-RS calls it, after checking the bytes are the instance and study
    the manifest named (an edge may not slip another study past the ownership check)."""
    ingestor = ingestor_for(request.app)
    check_instance(data, max_instance=ingestor.limits.max_instance, max_inflated=ingestor.limits.max_inflated)
    ds = parse_part10(data)
    named = (str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", "")))
    if named != (target.sop, target.study):
        raise InvalidInstance(f"the data set is SOP {named[0]} of study {named[1]}, not what the manifest named")
    return ingestor.ingest(data, ds=ds, institution_id=target.institution_id, source=f"edge:{target.edge_name}")
