"""Pages of the edge transfer: the township's status page and the region's list of edges.

    GET  /edge/status                  (at the edge) the line to the region, the queue in sending
                                       order with bytes and ETA, what was sent and when it goes
    GET  /admin/edges                  (at the region, admins) each edge of the admin's subtree:
                                       last seen, backlog, version, studies in transfer
    POST /admin/edges                  issue a credential (a new edge, or a new secret): shown once
    POST /admin/edges/{name}/revoke    the credential stops working at once

The status page refreshes itself every 15 s (no script) and reads well on a phone. Its read is
audited (it names patients); issuing and revoking are audited with the CLI's action names.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from edge import region
from edge.models import EdgeNode, EdgeStudy
from edge.status import edge_status, kind_words
from storage import access, audit, identity, localtime
from storage import service as tenancy
from storage.deps import CurrentUser, DbSession, RuntimeDep, WriteSession, client_address
from storage.errors import DomainError, NotFound, NotPermitted
from storage.models import User
from storage.types import utcnow

router = APIRouter(include_in_schema=False)
ONLINE = timedelta(minutes=2)  # the edge reports every 30 s


def size_words(n: int | float) -> str:
    """Bytes as people read them: 850 KB, 12.4 MB, 1.2 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


@router.get("/edge/status", response_class=HTMLResponse)
def edge_status_page(request: Request, session: DbSession, user: CurrentUser, runtime: RuntimeDep):
    """The township's view of its transfer to the region."""
    settings = runtime.settings
    if not settings.edge_region_url:
        raise NotFound("本机不是乡镇边缘节点 / this installation is not a township edge")
    status = edge_status(session=session, settings=settings, now=utcnow())
    audit.record_read(runtime.db, principal=identity.principal_for(user), action="edge.status.view",
                      object_type="edge", object_id="outbox", source=client_address(request),
                      detail={"queued": len(status.queue)})
    return request.app.state.templates.TemplateResponse(
        request, "edge/transfer_status.html",
        {"user": user, "status": status, "size": size_words, "zone_label": localtime.label(settings.timezone),
         "retention_days": settings.edge_retention_days})


# -- the region's console -------------------------------------------------------------------------


def _admin_scope(session: Session, user: User) -> frozenset[int]:
    """The institutions an admin looks after (their subtree), as the admin console's."""
    if user.role != "admin":
        raise NotPermitted("仅管理员可用 / for admins only")
    return frozenset(access.subtree_ids(session, user.institution_id))


def _transfers(session: Session, edge_ids: list[int]) -> dict[int, tuple[int, int]]:
    """{edge id: (studies in transfer, studies confirmed in the last 24 h)}."""
    if not edge_ids:
        return {}
    since = utcnow() - timedelta(days=1)
    rows = session.execute(
        select(EdgeStudy.edge_id, func.sum(case((EdgeStudy.completed_at.is_(None), 1), else_=0)),
               func.sum(case((EdgeStudy.completed_at >= since, 1), else_=0)))
        .where(EdgeStudy.edge_id.in_(edge_ids)).group_by(EdgeStudy.edge_id))
    return {edge_id: (int(open_ or 0), int(done or 0)) for edge_id, open_, done in rows}


def _edges_page(request: Request, session: Session, user: User, ids: frozenset[int], status: int = 200,
                **context) -> HTMLResponse:
    edges = region.list_edges(session=session, institution_ids=ids)
    now = utcnow()
    context.update(
        user=user, edges=edges, transfers=_transfers(session, [e.id for e in edges]), size=size_words,
        kind_words=kind_words,
        online={e.id: bool(e.last_seen_at and now - e.last_seen_at < ONLINE) for e in edges},
        institutions=[i for i in tenancy.list_institutions(session=session) if i.id in ids],
        errors=context.get("errors") or {}, values=context.get("values") or {},
        done="凭据已撤销 Credential revoked" if request.query_params.get("done") == "revoked" else None)
    return request.app.state.templates.TemplateResponse(request, "edge/admin_edges.html", context, status_code=status)


@router.get("/admin/edges", response_class=HTMLResponse)
def edges(request: Request, session: DbSession, user: CurrentUser):
    return _edges_page(request, session, user, _admin_scope(session, user))


@router.post("/admin/edges", response_class=HTMLResponse)
def issue_credential(request: Request, session: WriteSession, user: CurrentUser, name: str = Form(""),
                     institution: str = Form("")):
    """A credential for an edge of an institution in the admin's subtree, shown once."""
    ids = _admin_scope(session, user)
    values = {"name": name, "institution": institution}
    try:
        found = tenancy.get_institution(session=session, code=institution)
        if found.id not in ids:
            raise NotFound("未找到该机构 / unknown institution")
        secret, edge = region.issue_credential(session=session, institution_code=institution, name=name.strip(),
                                               issued_by=user.username)
    except DomainError as exc:
        session.rollback()
        return _edges_page(request, session, user, ids, exc.status, errors={"add": exc.detail}, values=values)
    audit.append(session, principal=identity.principal_for(user), action="admin.edge.issue", object_type="edge",
                 object_id=edge.name, source=client_address(request), detail={"institution": institution,
                                                                               "from": "page"})
    return _edges_page(request, session, user, ids, created=(edge.name, secret))


@router.post("/admin/edges/{name}/revoke", response_class=HTMLResponse)
def revoke_credential(name: str, request: Request, session: WriteSession, user: CurrentUser):
    ids = _admin_scope(session, user)
    edge = session.scalar(select(EdgeNode).where(EdgeNode.name == name))
    if edge is None or edge.institution_id not in ids:
        raise NotFound("未找到该边缘节点 / unknown edge")
    region.revoke_credential(session=session, name=name)
    audit.append(session, principal=identity.principal_for(user), action="admin.edge.revoke", object_type="edge",
                 object_id=name, source=client_address(request), detail={"from": "page"})
    return RedirectResponse("/admin/edges?done=revoked", status_code=303)
